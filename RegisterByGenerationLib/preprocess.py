"""The preprocessing of DESIGN §3 steps 2-6, shared by inference and training.

Training must see exactly what inference sees, so both call :func:`prepare_case`:
physical-overlap check, optional rigid pre-alignment of the reference CT to the input
(mutual information), resampling of the reference onto the input grid, the model's
slice canvas (:class:`~RegisterByGenerationLib.geometry.CanvasGrid`) and the
intensity normalisation recorded in the model (the input's on its body mask, after N4
when the model asks for it; the CT's on the resampled reference).

Example:
    >>> case = prepare_case(mr, ct, modality="mr", pixel_spacing=(1.0, 1.0), canvas=None,
    ...                     normalization={"input": {...}, "reference": {...}})
    >>> case.x.shape == case.y.shape == case.grid.shape
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from .geometry import CanvasGrid, resample_onto
from .intensity import n4_bias_correct, normalization_from_config
from .mask import body_mask
from .prealign import check_overlap, rigid_prealign

__all__ = ["AIR_HU", "PreparedCase", "prealign_reference", "normalise_input", "prepare_case"]

#: Value of CT voxels outside the reference's field of view.
AIR_HU = -1024.0


@dataclass
class PreparedCase:
    """One case on the model canvas.

    Attributes:
        x: input ``[Z, H, W]`` float32 in [-1, 1].
        y: reference CT ``[Z, H, W]`` float32 in [-1, 1], resampled onto the input grid.
        grid: the canvas mapping (``grid.from_canvas`` goes back to the input grid).
        ct_map: the fitted CT normalisation (``ct_map.inverse`` gives HU).
        transform: the rigid pre-alignment (input physical points → reference points).
        reference_on_input: the pre-aligned reference CT on the input grid (HU).
        input_mask: body mask of the input (uint8, input grid) used for normalisation.
    """

    x: np.ndarray
    y: np.ndarray
    grid: CanvasGrid
    ct_map: Any
    transform: sitk.Transform
    reference_on_input: sitk.Image
    input_mask: sitk.Image


def prealign_reference(
    input_image: sitk.Image, reference_ct: sitk.Image, *, modality: str, prealign: bool = True, seed: int = 0,
    threads: int | None = None, progress=None,
) -> tuple[sitk.Transform, sitk.Image]:
    """DESIGN §3 steps 2-4: overlap check, rigid pre-alignment, resampling onto the input grid.

    ``threads`` and ``progress`` go to :func:`~.prealign.rigid_prealign` (None: one
    thread, bit-reproducible).

    Returns:
        ``(transform, reference_on_input)``; the reference in HU on the input's grid, with
        -1024 HU outside its field of view.

    Raises:
        InputError: the images do not overlap physically.
    """
    check_overlap(input_image, reference_ct)
    if prealign:
        transform = rigid_prealign(input_image, reference_ct, fixed_modality=modality, seed=seed, threads=threads, progress=progress)
    else:
        transform = sitk.Euler3DTransform()
    return transform, resample_onto(reference_ct, input_image, transform, default_value=AIR_HU)


def normalise_input(
    input_image: sitk.Image, grid: CanvasGrid, *, modality: str, config: dict[str, Any]
) -> tuple[np.ndarray, sitk.Image]:
    """The input on the canvas in [-1, 1] with the model's input normalisation ``config``.

    The body mask of the input restricts the fitted statistics; N4 runs first when
    ``config["n4"]`` is true. The canvas padding takes the image's minimum.

    Returns:
        ``(x [Z, H, W] float32, body mask on the input grid)``.
    """
    mask = body_mask(input_image, modality=modality)
    image = n4_bias_correct(input_image, mask) if config.get("n4") else input_image
    input_map = normalization_from_config(config).fit(image, mask)
    background = float(sitk.GetArrayViewFromImage(image).min())
    return input_map.forward(grid.to_canvas(image, default_value=background)), mask


def prepare_case(
    input_image: sitk.Image,
    reference_ct: sitk.Image,
    *,
    modality: str,
    pixel_spacing: tuple[float, float] | None,
    canvas: tuple[int, int] | None,
    normalization: dict[str, dict[str, Any]],
    prealign: bool = True,
    seed: int = 0,
    multiple: int = 16,
) -> PreparedCase:
    """DESIGN §3 steps 2-6 for one (input, reference CT) pair.

    Args:
        input_image: the MR or CBCT volume.
        reference_ct: the reference CT of the same patient (any grid).
        modality: ``"mr"`` or ``"cbct"``.
        pixel_spacing: the model's in-plane spacing (rows, columns) in mm; None: the input's own.
        canvas: the model's canvas (H, W) or None for the image's own extent.
        normalization: ``{"input": config, "reference": config}`` as in ``model.json``.
        prealign: rigidly pre-align the reference to the input.
        seed: seed of the pre-alignment's metric sampling.
        multiple: the canvas's H and W are multiples of this, the model's size divisor
            (``ModelConfig.size_multiple``).

    Returns:
        The :class:`PreparedCase`.

    Raises:
        InputError: the images do not overlap physically.
    """
    if modality not in ("mr", "cbct"):
        raise ValueError(f"modality must be 'mr' or 'cbct', got {modality!r}")
    transform, reference_on_input = prealign_reference(input_image, reference_ct, modality=modality, prealign=prealign, seed=seed)
    grid = CanvasGrid.for_image(input_image, pixel_spacing, canvas, multiple=multiple)
    x, mask = normalise_input(input_image, grid, modality=modality, config=normalization["input"])
    ct_map = normalization_from_config(normalization["reference"]).fit(reference_on_input)
    y = ct_map.forward(grid.to_canvas(reference_on_input, default_value=AIR_HU))
    return PreparedCase(
        x=np.asarray(x, dtype=np.float32),
        y=np.asarray(y, dtype=np.float32),
        grid=grid,
        ct_map=ct_map,
        transform=transform,
        reference_on_input=reference_on_input,
        input_mask=mask,
    )
