"""The two ways an MR-GAN model makes a pseudo-CT.

- ``mr-gan``: synthesis alone, ``syn_ct`` on the input MR, slice by slice. The reference CT
  is not used inside the MR's field of view (the pipeline fills the rest with the
  pre-aligned reference), so this shows what MR→CT synthesis makes up on its own: the
  image-to-image baseline the RbG paper compares against.
- ``registration-by-synthesis``: ``syn_mr`` turns the pre-aligned reference CT into an MR,
  mono-modal demons registers that MR onto the input MR, and the field warps the
  reference CT; the output keeps the reference's own HU everywhere.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import SimpleITK as sitk
import torch

from ...errors import ModelError, TensorError
from ...geometry import warp_once
from ...modelstore import ModelInfo, load_model
from ...plausibility import check_memory, estimate_peak_bytes
from ...preprocess import AIR_HU
from ...refine import DemonsSettings, demons_field
from ..base import Method, MethodInputs, MethodOutput
from ..canvas import CanvasCase, canvas_grid, conditions_warnings, to_canvas
from .inference import translate
from .network import MRGAN, MRGANConfig

__all__ = ["MRGANMethod", "RegistrationBySynthesisMethod", "MR_DEMONS"]

#: Demons between two MRs in the canvas normalisation ([-1, 1]) scaled by 1000: the
#: default HU settings, with a window that keeps the whole normalised range.
MR_DEMONS = DemonsSettings(clip_hu=(-1000.0, 1000.0))


class _MRGANModelMethod(Method):
    """What both methods share: the model, the checks, one network over the canvas."""

    family = "mr_gan"
    model_method: ClassVar[str] = "mr-gan"
    default_models = {"mr": "mr-gan-mr-lite"}

    def __init__(self, info: ModelInfo | None, **options: Any) -> None:
        super().__init__(info, **options)
        self.network: MRGAN = load_model(info, self.device)

    @classmethod
    def build_network(cls, architecture: dict[str, Any]) -> torch.nn.Module:
        return MRGAN(MRGANConfig.from_dict(architecture))

    def check(self, input_image: sitk.Image, *, input_name: str) -> list[str]:
        grid = canvas_grid(input_image, self.info, self.network.size_multiple)
        check_memory(estimate_peak_bytes(input_image, grid.shape), name=input_name)
        return conditions_warnings(input_image, grid.pixel_spacing, self.info)

    def _translate(self, generator: torch.nn.Module, slices: np.ndarray, inputs: MethodInputs, what: str) -> np.ndarray:
        def before_batch(done: int, total: int) -> None:
            inputs.checkpoint("the next slice batch")
            inputs.progress(0.1 + 0.5 * done / total, "generate", f"{what}: slices {done + 1}-{min(done + self._batch, total)} of {total}")

        try:
            return translate(generator, slices, device=self.device, autocast_dtype=self.autocast_dtype, batch_size=self._batch,
                             before_batch=before_batch)  # fmt: skip
        except TensorError as error:
            raise ModelError(f"{self.info.name}: {error}") from error

    @property
    def _batch(self) -> int:
        return self.batch_size or (16 if self.device.type == "cuda" else 4)

    def _canvas(self, inputs: MethodInputs) -> CanvasCase:
        inputs.checkpoint("preprocessing")
        inputs.progress(0.0, "preprocess", "resampling to the model canvas and normalising")
        return to_canvas(inputs, self.info, self.network.size_multiple)


class MRGANMethod(_MRGANModelMethod):
    name = "mr-gan"
    summary = "MR-GAN (Jin et al. 2019) MR→CT synthesis alone, slice by slice: the reference CT is not used inside the MR's field of view"

    def generate(self, inputs: MethodInputs) -> MethodOutput:
        case = self._canvas(inputs)
        ct = self._translate(self.network.syn_ct, case.x, inputs, "synthesising the CT")
        return MethodOutput(image=case.to_input_grid(ct), complete=False, details={"batch_size": self._batch, "canvas": case.grid.to_dict()})


class RegistrationBySynthesisMethod(_MRGANModelMethod):
    name = "registration-by-synthesis"
    summary = "registration by synthesis: MR-GAN's CT→MR network makes an MR of the reference CT, demons registers it onto the input MR, the field warps the reference CT"
    generative = False

    def generate(self, inputs: MethodInputs) -> MethodOutput:
        case = self._canvas(inputs)
        synthetic = self._translate(self.network.syn_mr, case.y, inputs, "synthesising an MR of the reference CT")
        inputs.checkpoint("the mono-modal registration")
        inputs.progress(0.6, "generate", "registering the synthetic MR onto the input MR (demons)")
        fixed, moving = (case.grid.from_canvas(1000.0 * values, default_value=-1000.0) for values in (case.x, synthetic))
        field = demons_field(fixed, moving, MR_DEMONS)
        warped = warp_once(inputs.reference_ct, inputs.input_image, inputs.prealign_transform, field, default_value=AIR_HU)
        output = MethodOutput(image=warped, complete=True, displacement=field, details={"batch_size": self._batch, "canvas": case.grid.to_dict()})
        if inputs.keep_intermediate:
            magnitude = sitk.GetImageFromArray(np.linalg.norm(sitk.GetArrayViewFromImage(field), axis=-1).astype(np.float32))
            magnitude.CopyInformation(inputs.input_image)
            output.flow_magnitude = magnitude
        return output
