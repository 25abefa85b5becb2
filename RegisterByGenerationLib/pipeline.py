"""The inference engine: DESIGN §3 from two SimpleITK images to a pseudo-CT on the input grid.

``Pipeline`` loads a model once and runs it on many cases::

    pipeline = Pipeline("phantom-mr-lite", device="auto")
    result = pipeline.run(read_image("mr.nii.gz"), read_image("ct.nii.gz"))
    process_case(pipeline, "mr.nii.gz", "ct.nii.gz", "out/")   # files to files: case.py

Per case: rigid pre-alignment of the reference CT to the input (optional), resampling of
the reference onto the input grid, the slice canvas of the model (reorientation,
in-plane spacing, pad/crop), intensity normalisation, slice batches through
Stage 1 → registration → Stage 2, and the exact inverse of every step back to the
input's grid. Progress goes to a callback; a ``threading.Event`` cancels between batches,
and nothing is written by ``run`` itself, so a cancelled run leaves no files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from .errors import Cancelled, InputError, ModelError, TensorError
from .fov import blend_outside, field_of_view
from .geometry import CanvasGrid
from .intensity import normalization_from_config
from .modelstore import ModelInfo, default_model_name, find_model, load_model
from .plausibility import check_memory, check_modalities, estimate_peak_bytes
from .prealign import check_overlap
from .preprocess import AIR_HU, normalise_input, prealign_reference
from .progress import ProgressCallback, SubProgress
from .refine import REFINEMENTS, register_onto_generated

__all__ = ["Pipeline", "PipelineResult", "select_device", "select_precision", "conditions_warnings", "PRECISIONS", "OUTPUT_FILES", "FOV_BLEND_MM"]

logger = logging.getLogger(__name__)

#: File names of the images :func:`~RegisterByGenerationLib.case.process_case` writes.
OUTPUT_FILES = {
    "pseudo_ct": "pseudo_ct.nii.gz",
    "stage1": "stage1.nii.gz",
    "flow_magnitude": "flow_magnitude_mm.nii.gz",
    "reference_prealigned": "reference_prealigned.nii.gz",
}


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, else the CPU; Apple MPS only when asked for (``mps``).

    MPS is opt-in: the streaming window attention and the grid sampling of the flows have
    not been checked on MPS (no Apple machine here), so ``auto`` does not pick it.

    Raises:
        InputError: unknown name, or the requested accelerator is not available.
    """
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(f"device must be auto, cpu, cuda[:N] or mps, got {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is usable (torch reports none); use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("device 'mps' requested but Apple MPS is not available; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device must be auto, cpu, cuda[:N] or mps, got {name!r}")
    return device


#: ``--precision`` choices: ``auto`` is mixed precision on CUDA (bfloat16 where the GPU
#: has it, else float16) and float32 elsewhere.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def select_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the heavy convolutions, or None for plain float32.

    Inputs, flows and every network's output stay float32 whatever is chosen (each
    network's output layer runs in float32, :func:`~.networks.blocks.float32_head`).
    Reduced precision on the CPU is allowed (``bfloat16``, as tests run the CUDA path).

    Raises:
        InputError: unknown name, or float16 asked for on the CPU (autocast has none there).
    """
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    elif name == "float32":
        return None
    elif name == "bfloat16":
        return torch.bfloat16
    elif name == "float16":
        if device.type == "cpu":
            raise InputError("precision float16 needs a GPU; use bfloat16 or float32 on the CPU")
        return torch.float16
    else:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")


@dataclass
class PipelineResult:
    """Everything a run produced, on the input's grid; nothing is on disk yet."""

    pseudo_ct: sitk.Image
    reference_prealigned: sitk.Image
    transform: sitk.Transform
    stage1: sitk.Image | None = None
    flow_magnitude: sitk.Image | None = None
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    batch_size: int = 0
    canvas: dict[str, Any] = field(default_factory=dict)
    field_of_view: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Pipeline:
    """Load a model once; generate pseudo-CTs for many (input, reference CT) pairs.

    Args:
        model: installed model name, model directory, or None for the default model of
            ``modality``.
        modality: ``"mr"`` or ``"cbct"``, the kind of input image; must match the model.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        batch_size: slices per forward pass; None chooses one (and halves it on CUDA
            out-of-memory errors).
        prealign: rigidly pre-align the reference CT to the input (mutual information).
        seed: seed of the pre-alignment's metric sampling.
        precision: one of :data:`PRECISIONS` (see :func:`select_precision`).
        threads: threads of the rigid pre-alignment (None: one, bit-reproducible; the
            CLI passes its ``--threads``, the networks' thread count).
        refine: ``"none"``, or ``"demons"``: the pre-aligned reference registered onto the
            network's pseudo-CT by mono-modal demons becomes the pseudo-CT
            (:mod:`~RegisterByGenerationLib.refine`).

    Raises:
        ModelError: the model is missing, corrupt, or made for another modality.
        InputError: an unknown device, modality or precision, or a batch size below 1.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        modality: str = "mr",
        device: str = "auto",
        batch_size: int | None = None,
        prealign: bool = True,
        seed: int = 0,
        precision: str = "auto",
        refine: str = "none",
        threads: int | None = None,
    ) -> None:
        if modality not in ("mr", "cbct"):
            raise InputError(f"modality must be 'mr' or 'cbct', got {modality!r}")
        if refine not in REFINEMENTS:
            raise InputError(f"refine must be one of {', '.join(REFINEMENTS)}, got {refine!r}")
        self.refine = refine
        self.threads = threads
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.info: ModelInfo = find_model(model if model is not None else default_model_name(modality))
        if self.info.modality != modality:
            raise ModelError(f"model {self.info.name!r} is for {self.info.modality.upper()} input, not {modality.upper()}; pick a {modality.upper()} model or change --modality")
        self.modality = modality
        self.device = select_device(device)
        self.autocast_dtype = select_precision(precision, self.device)
        self.model = load_model(self.info, self.device)
        self.batch_size = batch_size
        self.prealign = prealign
        self.seed = seed
        self._last_batch_size = 0
        self.ct_normalization = normalization_from_config(self.info.metadata["normalization"]["reference"])

    def run(
        self,
        input_image: sitk.Image,
        reference_ct: sitk.Image,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        keep_intermediate: bool = False,
        input_name: str = "input",
        reference_name: str = "reference",
    ) -> PipelineResult:
        """Generate the pseudo-CT of ``input_image`` with the texture of ``reference_ct``.

        ``input_name`` and ``reference_name`` (e.g. the files' paths) start the messages
        of the input checks.

        Returns:
            A :class:`PipelineResult`; ``pseudo_ct`` is int16 HU with exactly the input's
            size, spacing, origin and direction.

        Raises:
            InputMismatchError: the images do not overlap physically, the input is a
                label map, the reference is not a CT in HU, or an MR input looks like a CT.
            InvalidImageError: the case would not fit in RAM.
            Cancelled: ``cancel`` was set; nothing is returned or written.
        """
        report = progress or (lambda fraction, stage, message="": None)
        timings: dict[str, float] = {}

        def checkpoint(stage: str) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"stopped before {stage}")

        grid = CanvasGrid.for_image(input_image, self.info.pixel_spacing, self.info.canvas, multiple=self.model.size_multiple)
        warnings = conditions_warnings(input_image, grid.pixel_spacing, self.info)
        for warning in warnings:
            logger.warning(warning)
        cpu_batch = (self.batch_size or 4) if self.device.type == "cpu" else 0  # GPU activations are not RAM
        check_memory(estimate_peak_bytes(input_image, grid.shape, self.info.metadata["architecture"]["stage1"], cpu_batch), name=input_name)
        check_modalities(input_image, reference_ct, self.modality, input_name=input_name, reference_name=reference_name)
        check_overlap(input_image, reference_ct, fixed_name=input_name, moving_name=reference_name)  # also without pre-alignment
        checkpoint("pre-alignment")
        start = time.perf_counter()
        if self.prealign:
            report(0.0, "prealign", "rigid mutual-information registration of the reference CT")
        prealign_progress = SubProgress(report, 0.0, 0.15)
        transform, reference_on_input = prealign_reference(
            input_image, reference_ct, modality=self.modality, prealign=self.prealign, seed=self.seed, threads=self.threads,
            progress=lambda fraction, message: prealign_progress(fraction, "prealign", message),
        )  # fmt: skip
        timings["prealign_s"] = time.perf_counter() - start

        checkpoint("preprocessing")
        report(0.15, "preprocess", "resampling to the model canvas and normalising")
        start = time.perf_counter()
        x, _ = normalise_input(input_image, grid, modality=self.modality, config=self.info.metadata["normalization"]["input"])
        ct_map = self.ct_normalization.fit(reference_on_input)
        y = ct_map.forward(grid.to_canvas(reference_on_input, default_value=AIR_HU))
        timings["preprocess_s"] = time.perf_counter() - start

        start = time.perf_counter()
        outputs = self._generate(x, y, SubProgress(report, 0.2, 0.95), checkpoint, keep_intermediate)
        timings["generate_s"] = time.perf_counter() - start

        checkpoint("postprocessing")
        report(0.95, "postprocess", "restoring the input grid")
        start = time.perf_counter()
        generated = grid.from_canvas(ct_map.inverse(outputs["output"]), default_value=AIR_HU)
        timings["postprocess_s"] = time.perf_counter() - start
        if self.refine == "demons":
            checkpoint("the demons refinement")
            report(0.95, "refine", "registering the reference CT onto the generated CT (demons)")
            start = time.perf_counter()
            generated, _ = register_onto_generated(generated, reference_on_input)
            timings["refine_s"] = time.perf_counter() - start
        start = time.perf_counter()
        fov, fill = field_of_view(input_image)
        inside = float(np.mean(sitk.GetArrayViewFromImage(fov)))
        pseudo_ct = _to_int16_hu(blend_outside(generated, reference_on_input, fov, FOV_BLEND_MM))
        result = PipelineResult(
            pseudo_ct=pseudo_ct,
            reference_prealigned=reference_on_input,
            transform=transform,
            device=str(self.device),
            batch_size=self._last_batch_size,
            canvas=grid.to_dict(),
            field_of_view={
                "fraction_of_grid": inside,
                "fill_value": fill,
                "outside": "pre-aligned reference CT" if inside < 1 else "none: the input covers its whole grid",
                "blend_mm": FOV_BLEND_MM,
            },
            warnings=warnings,
        )
        if keep_intermediate:
            result.stage1 = grid.from_canvas(ct_map.inverse(outputs["stage1"]), default_value=AIR_HU)
            magnitude = np.hypot(outputs["flow"][:, 0] * grid.pixel_spacing[0], outputs["flow"][:, 1] * grid.pixel_spacing[1])
            result.flow_magnitude = grid.from_canvas(magnitude.astype(np.float32), default_value=0.0)
        timings["postprocess_s"] += time.perf_counter() - start
        result.timings = timings
        report(1.0, "done", "pseudo-CT ready")
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
        try:
            with torch.inference_mode(), autocast:
                x_t, y_t = to_tensor(x), to_tensor(y)
                if self.info.pseudo_ct_output == "stage2":
                    produced = self.model(x_t, y_t)
                else:  # the card's pseudo-CT is Stage 1's: Stage 2 is not run
                    y_hat = self.model.stage1(x_t, y_t)
                    if self.info.test_time_flip:  # the mirrored slice (W is left-right) as a second opinion
                        y_hat = 0.5 * (y_hat + self.model.stage1(x_t.flip(-1), y_t.flip(-1)).flip(-1))
                    produced = {"stage1": y_hat, "output": y_hat}
                    if need_flow:
                        produced["flow"] = self.model.registration(fixed=y_hat, moving=y_t)
        except TensorError as error:
            raise ModelError(f"{self.info.name}: {error}") from error
        return {key: value[:, 0].float().cpu().numpy() if value.shape[1] == 1 else value.float().cpu().numpy() for key, value in produced.items()}


def _to_int16_hu(image: sitk.Image) -> sitk.Image:
    array = np.clip(np.rint(sitk.GetArrayViewFromImage(image)), -32768, 32767).astype(np.int16)
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(image)
    return result


#: How far (as a ratio) an input's pixel spacing may lie outside a native-spacing
#: model's training range before :class:`Pipeline` warns.
NATIVE_SPACING_TOLERANCE = 1.25

#: Width (mm) of the seam inside the input's field of view where the pseudo-CT fades
#: into the pre-aligned reference CT that fills the rest (DESIGN §3 step 8).
FOV_BLEND_MM = 10.0


def conditions_warnings(input_image: sitk.Image, canvas_spacing: tuple[float, float], info: ModelInfo) -> list[str]:
    """What about this input lies outside the model's training or validation conditions.

    A native-spacing model sees anatomy at the input's own scale: warn when that is far
    from the scales it was trained at. A model whose card records the input spacings it
    was validated on (``valid_input_spacing_mm``) warns outside them.
    """
    warnings = []
    trained = info.native_pixel_spacing_range
    if info.pixel_spacing is None and trained is not None:
        low, high = trained
        if min(canvas_spacing) < low / NATIVE_SPACING_TOLERANCE or max(canvas_spacing) > high * NATIVE_SPACING_TOLERANCE:
            warnings.append(
                f"model {info.name} runs at each input's own pixel spacing and was trained at {low:.2f}-{high:.2f} mm; "
                f"this input has {canvas_spacing[0]:.2f} x {canvas_spacing[1]:.2f} mm, so expect a poor pseudo-CT "
                "(resample the input, or use a model trained at this spacing)"
            )
    spacing = sorted(input_image.GetSpacing())  # the two smallest are in-plane for axial scans
    for key, values in (("in_plane", spacing[:2]), ("slice", spacing[2:])):
        valid = info.valid_input_spacing.get(key)
        if valid is not None and (min(values) < valid[0] - 1e-6 or max(values) > valid[1] + 1e-6):
            shown = " x ".join(f"{v:.2f}" for v in values)
            warnings.append(
                f"input {key.replace('_', '-')} spacing {shown} mm is outside {valid[0]:g}-{valid[1]:g} mm, "
                f"where model {info.name} was validated; check the pseudo-CT before use"
            )
    return warnings
