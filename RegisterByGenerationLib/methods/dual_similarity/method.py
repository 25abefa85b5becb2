"""``dual-similarity``: the reference CT warped onto the MR by the dual-similarity network's field."""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ...errors import InputMismatchError
from ...geometry import warp_once
from ...modelstore import ModelInfo, load_model
from ...plausibility import check_memory, estimate_peak_bytes
from ...preprocess import AIR_HU
from ..base import Method, MethodInputs, MethodOutput
from ..canvas import canvas_grid, conditions_warnings, to_canvas
from .field import canvas_displacement
from .network import DualSimilarityConfig, DualSimilarityNet, coarse_factors

__all__ = ["DualSimilarityMethod"]


class DualSimilarityMethod(Method):
    name = "dual-similarity"
    family = "dual_similarity"
    summary = "dual-similarity registration (Cao et al. 2018): a 3-D network predicts a diffeomorphic MR→CT field; the pseudo-CT is the warped reference CT"
    default_models = {"mr": "dual-similarity-mr-lite"}
    generative = False

    def __init__(self, info: ModelInfo | None, **options: Any) -> None:
        super().__init__(info, **options)
        self.network: DualSimilarityNet = load_model(info, self.device)

    @classmethod
    def build_network(cls, architecture: dict[str, Any]) -> torch.nn.Module:
        return DualSimilarityNet(DualSimilarityConfig.from_dict(architecture))

    def check(self, input_image: sitk.Image, *, input_name: str) -> list[str]:
        grid = canvas_grid(input_image, self.info, 1)
        factors = coarse_factors(grid.spacing_zyx, self.network.config.coarse_spacing_mm)
        coarse = [-(-n // f) for n, f in zip(grid.shape, factors)]
        if min(coarse) < 2 * self.network.size_multiple:
            raise InputMismatchError(
                f"{input_name}: {grid.shape[0]} slice(s) of {grid.spacing_zyx[0]:.1f} mm make {coarse[0]} voxel(s) of the network's "
                f"{self.network.config.coarse_spacing_mm:g} mm grid along z; method dual-similarity needs at least {2 * self.network.size_multiple}"
            )
        check_memory(estimate_peak_bytes(input_image, grid.shape), name=input_name)
        return conditions_warnings(input_image, grid.pixel_spacing, self.info)

    def generate(self, inputs: MethodInputs) -> MethodOutput:
        inputs.checkpoint("preprocessing")
        inputs.progress(0.0, "preprocess", "resampling to the model canvas and normalising")
        case = to_canvas(inputs, self.info, 1)
        inputs.checkpoint("the registration network")
        inputs.progress(0.3, "generate", "predicting the deformation")
        ddf, factors = canvas_displacement(self.network, case.x, case.y, case.grid.spacing_zyx, device=self.device,
                                           autocast_dtype=self.autocast_dtype)  # fmt: skip
        inputs.checkpoint("warping the reference CT")
        inputs.progress(0.7, "generate", "warping the reference CT")
        field = case.grid.displacement_from_canvas(ddf)
        warped = warp_once(inputs.reference_ct, inputs.input_image, inputs.prealign_transform, field, default_value=AIR_HU)
        magnitude = None
        if inputs.keep_intermediate:
            magnitude = sitk.GetImageFromArray(np.linalg.norm(sitk.GetArrayViewFromImage(field), axis=-1).astype(np.float32))
            magnitude.CopyInformation(inputs.input_image)
        return MethodOutput(image=warped, complete=True, flow_magnitude=magnitude, displacement=field,
                            details={"canvas": case.grid.to_dict(), "coarse_factors_zyx": list(factors)})  # fmt: skip
