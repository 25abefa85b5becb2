"""Smoothness of a displacement field and the registration loss (DESIGN §4, §5).

VoxelMorph's diffusion regulariser: the mean squared forward difference of the flow
along rows and columns, in pixels² per pixel². It is zero exactly for constant flows
(translations) and grows with the flow's local stretching and shearing.

Example::

    >>> flow = torch.full((1, 2, 8, 8), 3.0)
    >>> smoothness(flow).item()
    0.0
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..networks.blocks import check_image, check_same_grid, warp

__all__ = ["smoothness", "registration_loss"]


def smoothness(flow: torch.Tensor) -> torch.Tensor:
    """Gradient L2 of a flow: ``½ (mean (∂φ/∂y)² + mean (∂φ/∂x)²)`` over channels and pixels.

    Args:
        flow: ``[B, 2, H, W]`` displacement in pixels, H and W at least 2.

    Returns:
        Scalar, 0 for a constant flow.
    """
    check_image("flow", flow, channels=2)
    if min(flow.shape[-2:]) < 2:
        raise ValueError(f"flow must be at least 2×2 pixels, got {tuple(flow.shape)}")
    dy = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    dx = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    return 0.5 * (dy.pow(2).mean() + dx.pow(2).mean())


def registration_loss(
    fixed: torch.Tensor, moving: torch.Tensor, flow: torch.Tensor, smooth_weight: float = 0.5
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``MSE(fixed, warp(moving, φ)) + λ · smooth(φ)`` (RbG §IV-B-2: λ = 0.5).

    Args:
        fixed: ``[B, 1, H, W]`` Stage 1 output ŷ.
        moving: ``[B, 1, H, W]`` reference CT y.
        flow: ``[B, 2, H, W]`` φ = R(fixed=ŷ, moving=y), pixels (dy, dx).
        smooth_weight: λ.

    Returns:
        ``(total, {"mse": ..., "smooth": ...})``, scalars.
    """
    check_image("fixed", fixed, channels=1)
    check_same_grid("moving", moving, "fixed", fixed)
    if smooth_weight < 0:
        raise ValueError(f"smooth_weight must be non-negative, got {smooth_weight}")
    similarity = F.mse_loss(warp(moving, flow), fixed)
    regulariser = smoothness(flow)
    return similarity + smooth_weight * regulariser, {"mse": similarity, "smooth": regulariser}
