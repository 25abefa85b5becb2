"""The slice-network methods: Stage 1 → registration → Stage 2 on each canvas slice.

RbG (PAdaIN Stage 1, or our fusion U-Net) and RegistFormer (AdaIN/MUNIT Stage 1) share
this engine; they differ in their networks, which the model card describes. Slices go
through in batches; on a CUDA out-of-memory error the batch is halved (unless the user
fixed it). A card whose pseudo-CT is Stage 1's (``pseudo_ct_output``) skips Stage 2 and
may average Stage 1 with its left-right mirror (``test_time_flip``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ...errors import ModelError, TensorError
from ...modelstore import ModelInfo, load_model
from ...plausibility import check_memory, estimate_peak_bytes
from ...progress import SubProgress
from ..base import Method, MethodInputs, MethodOutput
from ..canvas import canvas_grid, conditions_warnings, to_canvas

__all__ = ["SliceNetworkMethod", "RbgMethod", "RegistFormerMethod"]

logger = logging.getLogger(__name__)


class SliceNetworkMethod(Method):
    """The engine of :class:`RbgMethod` and :class:`RegistFormerMethod`."""

    family = "slice_networks"

    def __init__(self, info: ModelInfo | None, **options: Any) -> None:
        super().__init__(info, **options)
        self.network = load_model(info, self.device)
        self._last_batch_size = 0

    @classmethod
    def build_network(cls, architecture: dict[str, Any]) -> torch.nn.Module:
        from ...networks import build_from_architecture

        return build_from_architecture(architecture)

    def check(self, input_image: sitk.Image, *, input_name: str) -> list[str]:
        grid = canvas_grid(input_image, self.info, self.network.size_multiple)
        cpu_batch = (self.batch_size or 4) if self.device.type == "cpu" else 0  # GPU activations are not RAM
        check_memory(estimate_peak_bytes(input_image, grid.shape, self.info.metadata["architecture"]["stage1"], cpu_batch), name=input_name)
        return conditions_warnings(input_image, grid.pixel_spacing, self.info)

    def generate(self, inputs: MethodInputs) -> MethodOutput:
        inputs.checkpoint("preprocessing")
        inputs.progress(0.0, "preprocess", "resampling to the model canvas and normalising")
        case = to_canvas(inputs, self.info, self.network.size_multiple)
        outputs = self._generate(case.x, case.y, SubProgress(inputs.progress, 0.06, 1.0), inputs.checkpoint, inputs.keep_intermediate)
        result = MethodOutput(image=case.to_input_grid(outputs["output"]), complete=False,
                              details={"batch_size": self._last_batch_size, "canvas": case.grid.to_dict()})  # fmt: skip
        if inputs.keep_intermediate:
            result.stage1 = case.to_input_grid(outputs["stage1"])
            spacing = case.grid.pixel_spacing
            magnitude = np.hypot(outputs["flow"][:, 0] * spacing[0], outputs["flow"][:, 1] * spacing[1])
            result.flow_magnitude = case.grid.from_canvas(magnitude.astype(np.float32), default_value=0.0)
        return result

    def _generate(self, x: np.ndarray, y: np.ndarray, report: SubProgress, checkpoint, keep_intermediate: bool) -> dict[str, np.ndarray]:
        """Run the model slice batch by slice batch; back off the batch size on CUDA OOM."""
        slices = x.shape[0]
        keys = ("output", "stage1", "flow") if keep_intermediate else ("output",)
        results: dict[str, list[np.ndarray]] = {key: [] for key in keys}
        batch = self.batch_size or (16 if self.device.type == "cuda" else 4)
        done = 0
        while done < slices:
            checkpoint("the next slice batch")
            stop = min(done + batch, slices)
            report(done / slices, "generate", f"slices {done + 1}-{stop} of {slices}")
            try:
                produced = self._forward(x[done:stop], y[done:stop], need_flow=keep_intermediate)
            except torch.OutOfMemoryError:
                if self.batch_size is not None or batch == 1:
                    raise
                batch = max(1, batch // 2)
                torch.cuda.empty_cache()
                logger.warning("out of GPU memory; retrying with batch size %d", batch)
                continue
            for key in keys:
                results[key].append(produced[key])
            done = stop
        report(1.0, "generate", f"{slices} slices done")
        self._last_batch_size = batch
        return {key: np.concatenate(parts) for key, parts in results.items()}

    def _forward(self, x: np.ndarray, y: np.ndarray, *, need_flow: bool) -> dict[str, np.ndarray]:
        """One batch ``[b, H, W]`` → model outputs as float32 NumPy arrays (the flow only
        when ``need_flow`` or when the full model runs anyway)."""

        def to_tensor(slices: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(slices[:, None])).to(self.device)

        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        model = self.network
        try:
            with torch.inference_mode(), autocast:
                x_t, y_t = to_tensor(x), to_tensor(y)
                if self.info.pseudo_ct_output == "stage2":
                    produced = model(x_t, y_t)
                else:  # the card's pseudo-CT is Stage 1's: Stage 2 is not run
                    y_hat = model.stage1(x_t, y_t)
                    if self.info.test_time_flip:  # the mirrored slice (W is left-right) as a second opinion
                        y_hat = 0.5 * (y_hat + model.stage1(x_t.flip(-1), y_t.flip(-1)).flip(-1))
                    produced = {"stage1": y_hat, "output": y_hat}
                    if need_flow:
                        produced["flow"] = model.registration(fixed=y_hat, moving=y_t)
        except TensorError as error:
            raise ModelError(f"{self.info.name}: {error}") from error
        return {key: value[:, 0].float().cpu().numpy() if value.shape[1] == 1 else value.float().cpu().numpy() for key, value in produced.items()}


class RbgMethod(SliceNetworkMethod):
    name = "rbg"
    summary = "Register by Generation: Stage 1 synthesis guided by the reference, registration, Stage 2 (DACA) reconstruction"
    default_models = {"mr": "phantom-mr-lite", "cbct": "phantom-cbct-lite"}


class RegistFormerMethod(SliceNetworkMethod):
    name = "registformer"
    summary = "RegistFormer: the RbG pipeline with an AdaIN (MUNIT) Stage 1; no bundled model (import the published one)"
