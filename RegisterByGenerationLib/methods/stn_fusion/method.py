"""``stn-fusion``: the STN + early-fusion 3-D U-Net on the canvas volume, by sliding windows."""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ...errors import InputMismatchError
from ...modelstore import ModelInfo, load_model
from ...plausibility import check_memory, estimate_peak_bytes
from ...progress import SubProgress
from ..base import Method, MethodInputs, MethodOutput
from ..canvas import canvas_grid, conditions_warnings, to_canvas
from .inference import predict_volume, window_count
from .network import STNFusionConfig, STNFusionNet

__all__ = ["STNFusionMethod", "MIN_SLICES"]

#: Fewest input slices the 3-D network accepts: below half a window the volume is mostly
#: padding, and the STN and the U-Net see no 3-D context.
MIN_SLICES = 8


class STNFusionMethod(Method):
    name = "stn-fusion"
    family = "stn_fusion"
    summary = "STN + early fusion (arXiv 2507.06067): a 3-D U-Net on the input and the reference CT warped by a learned affine"
    default_models = {"cbct": "stn-fusion-cbct-lite"}

    def __init__(self, info: ModelInfo | None, **options: Any) -> None:
        super().__init__(info, **options)
        self.network: STNFusionNet = load_model(info, self.device)

    @classmethod
    def build_network(cls, architecture: dict[str, Any]) -> torch.nn.Module:
        return STNFusionNet(STNFusionConfig.from_dict(architecture))

    def check(self, input_image: sitk.Image, *, input_name: str) -> list[str]:
        grid = canvas_grid(input_image, self.info, self.network.size_multiple)
        if grid.shape[0] < MIN_SLICES:
            raise InputMismatchError(
                f"{input_name}: {grid.shape[0]} slice(s); method stn-fusion needs at least {MIN_SLICES} "
                f"(its 3-D window is {self.network.config.patch[0]} slices deep)"
            )
        check_memory(estimate_peak_bytes(input_image, grid.shape), name=input_name)
        return conditions_warnings(input_image, grid.pixel_spacing, self.info)

    def generate(self, inputs: MethodInputs) -> MethodOutput:
        inputs.checkpoint("preprocessing")
        inputs.progress(0.0, "preprocess", "resampling to the model canvas and normalising")
        case = to_canvas(inputs, self.info, self.network.size_multiple)
        report = SubProgress(inputs.progress, 0.06, 1.0)
        output = predict_volume(self.network, case.x, case.y, device=self.device, autocast_dtype=self.autocast_dtype,
                                batch_size=self.batch_size or 1, progress=lambda f, m: report(f, "generate", m),
                                checkpoint=inputs.checkpoint)  # fmt: skip
        report(1.0, "generate", "volume done")
        windows = window_count(case.x.shape, tuple(self.network.config.patch))
        return MethodOutput(image=case.to_input_grid(np.clip(output, -1.0, 1.0)), complete=False,
                            details={"batch_size": self.batch_size or 1, "canvas": case.grid.to_dict(), "windows": windows})  # fmt: skip
