"""Argument checks shared by the metric functions (private)."""

from __future__ import annotations

import numpy as np

__all__: list[str] = []


def check_same_shape(**arrays: np.ndarray | None) -> tuple[int, ...]:
    """Return the common shape of the given arrays (``None`` ones are skipped).

    Raises:
        ValueError: an array is not 3D, or the shapes differ (the message names them).
    """
    given = {name: np.asarray(array) for name, array in arrays.items() if array is not None}
    shapes = {name: array.shape for name, array in given.items()}
    for name, shape in shapes.items():
        if len(shape) != 3:
            raise ValueError(f"{name} must be a 3D array [z, y, x], got shape {shape}")
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"arrays must have the same shape, got {listed}")
    return next(iter(shapes.values()))


def as_mask(mask: np.ndarray | None, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """``mask > 0`` as a boolean array, or all ``True`` when ``mask`` is ``None``.

    Raises:
        ValueError: the mask selects no voxel.
    """
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask) > 0
    if not mask.any():
        raise ValueError(f"{name} is empty (no voxel > 0)")
    return mask


def check_spacing(spacing, ndim: int = 3) -> tuple[float, ...]:
    """Validate a per-axis spacing in array order ``(z, y, x)``, in mm.

    Raises:
        ValueError: wrong length, or a non-positive / non-finite value.
    """
    values = tuple(float(s) for s in np.ravel(spacing))
    if len(values) != ndim or not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be {ndim} positive values (z, y, x) in mm, got {spacing}")
    return values
