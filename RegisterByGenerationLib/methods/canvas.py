"""The model canvas that learned methods share (DESIGN §3 steps 5-6 and their inverse).

A model's card fixes the canvas: its in-plane pixel spacing (or the input's own), its size,
the normalisation of input and reference. :func:`to_canvas` puts one pre-aligned case on
it; :meth:`CanvasCase.to_input_grid` brings normalised values back to HU on the input
grid. 2-D methods read the canvas slice by slice, 3-D methods as a volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..geometry import CanvasGrid
from ..intensity import normalization_from_config
from ..modelstore import ModelInfo
from ..preprocess import AIR_HU, normalise_input
from .base import MethodInputs

__all__ = ["CanvasCase", "canvas_grid", "to_canvas", "conditions_warnings", "NATIVE_SPACING_TOLERANCE"]

#: How far (as a ratio) an input's pixel spacing may lie outside a native-spacing
#: model's training range before a warning.
NATIVE_SPACING_TOLERANCE = 1.25


@dataclass
class CanvasCase:
    """One case on the canvas: ``x`` and ``y`` are ``[Z, H, W]`` float32 in [-1, 1]."""

    grid: CanvasGrid
    x: np.ndarray
    y: np.ndarray
    ct_map: Any

    def to_input_grid(self, values: np.ndarray) -> sitk.Image:
        """Normalised CT values on the canvas → HU on the input grid (air outside)."""
        return self.grid.from_canvas(self.ct_map.inverse(values), default_value=AIR_HU)


def canvas_grid(input_image: sitk.Image, info: ModelInfo, multiple: int) -> CanvasGrid:
    return CanvasGrid.for_image(input_image, info.pixel_spacing, info.canvas, multiple=multiple)


def to_canvas(inputs: MethodInputs, info: ModelInfo, multiple: int) -> CanvasCase:
    """The input and the pre-aligned reference on ``info``'s canvas, normalised as it says."""
    grid = canvas_grid(inputs.input_image, info, multiple)
    normalization = info.metadata["normalization"]
    x, _ = normalise_input(inputs.input_image, grid, modality=inputs.modality, config=normalization["input"])
    ct_map = normalization_from_config(normalization["reference"]).fit(inputs.reference_on_input)
    y = ct_map.forward(grid.to_canvas(inputs.reference_on_input, default_value=AIR_HU))
    return CanvasCase(grid, x, y, ct_map)


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
