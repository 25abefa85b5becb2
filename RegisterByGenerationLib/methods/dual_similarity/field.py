"""From canvas volumes to the displacement the network predicts, on the canvas.

The network reads the canvas averaged down to its coarse grid (:func:`to_coarse`) and
returns a displacement there; :func:`canvas_displacement` brings it back to canvas voxels
(trilinear, scaled by the factors). Average pooling by ``f`` and ``F.interpolate`` by ``f``
(``align_corners=False``) share their voxel centres, so training (on the coarse grid) and
inference (on the canvas) see the same field.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from .network import DualSimilarityNet, coarse_factors

__all__ = ["to_coarse", "canvas_displacement"]


def to_coarse(volume: np.ndarray, factors: tuple[int, int, int], multiple: int) -> torch.Tensor:
    """``[Z, H, W]`` → ``[1, 1, z, y, x]``: edge-padded to a multiple of ``factor · multiple``
    per axis, then averaged over ``factors`` voxels."""
    pad = [(-n) % (f * multiple) for n, f in zip(volume.shape, factors)]
    padded = np.pad(volume.astype(np.float32, copy=False), [(0, p) for p in pad], mode="edge")
    return F.avg_pool3d(torch.from_numpy(np.ascontiguousarray(padded))[None, None], kernel_size=factors)


@torch.inference_mode()
def canvas_displacement(
    net: DualSimilarityNet, x: np.ndarray, y: np.ndarray, spacing_zyx: tuple[float, float, float], *,
    device: torch.device, autocast_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, tuple[int, int, int]]:  # fmt: skip
    """The displacement ``[3, Z, H, W]`` (canvas voxels, float32) that warps the canvas CT
    ``y`` onto the canvas MR ``x``, and the coarse factors used."""
    factors = coarse_factors(spacing_zyx, net.config.coarse_spacing_mm)
    fixed, moving = (to_coarse(v, factors, net.size_multiple).to(device) for v in (x, y))
    with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext():
        ddf = net(fixed, moving)["ddf"].float()
    fine = F.interpolate(ddf, scale_factor=factors, mode="trilinear", align_corners=False)
    fine = fine * torch.tensor(factors, dtype=fine.dtype, device=fine.device)[None, :, None, None, None]
    z, h, w = x.shape
    return fine[0, :, :z, :h, :w].cpu().numpy(), factors
