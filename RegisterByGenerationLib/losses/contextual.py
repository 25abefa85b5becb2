"""Contextual loss: texture similarity that tolerates misalignment (RbG §III-E-2).

Mechrez, Talmi and Zelnik-Manor, "The Contextual Loss for Image Transformation with
Non-Aligned Data", ECCV 2018. Features of the output ``x_i`` and of the reference
``y_j`` (one feature vector per position) are centred on the reference's mean and
compared by cosine distance ``d_ij``. Each distance is made relative to the closest
reference feature, turned into an affinity with band width ``h`` and normalised over
``j``:

.. math::

    \\tilde d_{ij} = \\frac{d_{ij}}{\\min_k d_{ik} + \\epsilon}, \\quad
    w_{ij} = \\exp\\Big(\\frac{1 - \\tilde d_{ij}}{h}\\Big), \\quad
    CX_{ij} = \\frac{w_{ij}}{\\sum_k w_{ik}}, \\quad
    \\mathcal{L}_{CX} = -\\log \\frac{1}{N} \\sum_i \\max_j CX_{ij}

``CX = 1`` (loss 0) when every output feature has a distinct, exactly matching
reference feature, wherever it is in the image; the loss grows as the output's features
stop resembling any of the reference's.

The similarity matrix has ``N × M`` entries per image; at 96×96 positions that is 85 M.
Large layers are therefore compared on a random subset of at most ``max_positions``
output and reference positions per image (drawn from the given generator), which keeps
memory bounded while every position is still sampled over training.

Example::

    >>> loss = ContextualLoss(band_width=0.5)
    >>> features = [torch.randn(2, 16, 8, 8)]
    >>> loss(features, features).item() < 1e-3
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .patchnce import sample_positions

__all__ = ["ContextualLoss", "contextual_similarity"]

_EPSILON = 1e-5


def contextual_similarity(x: torch.Tensor, y: torch.Tensor, band_width: float = 0.5) -> torch.Tensor:
    """The contextual similarity ``CX`` of two feature sets, per image.

    Args:
        x: ``[B, N, C]`` output features.
        y: ``[B, M, C]`` reference features.
        band_width: ``h`` (RbG: 0.5).

    Returns:
        ``[B]`` values in (0, 1]; 1 for identical feature sets.
    """
    if x.ndim != 3 or y.ndim != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"x and y must be [B, N, C] and [B, M, C], got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.float(), y.float()
    centre = y.mean(dim=1, keepdim=True)
    x = F.normalize(x - centre, dim=2)
    y = F.normalize(y - centre, dim=2)
    distance = (1.0 - torch.bmm(x, y.transpose(1, 2))).clamp_min(0.0)  # cosine distance [B, N, M]
    relative = distance / (distance.min(dim=2, keepdim=True).values + _EPSILON)
    # softmax over j of (1 - d̃)/h is exactly w_ij / Σ_k w_ik, computed stably.
    cx = torch.softmax((1.0 - relative) / band_width, dim=2)
    return cx.max(dim=2).values.mean(dim=1)


class ContextualLoss(nn.Module):
    """Contextual loss averaged over feature layers and images.

    Args:
        band_width: ``h`` (RbG: 0.5).
        max_positions: compare at most this many positions per image and layer (random
            subsets of output and reference positions); None compares all.
    """

    def __init__(self, band_width: float = 0.5, max_positions: int | None = 1024) -> None:
        super().__init__()
        if not band_width > 0:
            raise ValueError(f"band_width must be positive, got {band_width}")
        if max_positions is not None and max_positions <= 0:
            raise ValueError(f"max_positions must be positive or None, got {max_positions}")
        self.band_width = float(band_width)
        self.max_positions = max_positions

    def forward(
        self,
        output_features: Sequence[torch.Tensor],
        reference_features: Sequence[torch.Tensor],
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``-log CX`` averaged over layers and images.

        Args:
            output_features: per layer ``[B, C_l, H_l, W_l]`` features of the output.
            reference_features: per layer ``[B, C_l, H'_l, W'_l]`` features of the
                reference (any spatial size; not necessarily aligned).
            generator: CPU generator for the position subsets.

        Returns:
            Scalar loss, about 0 for identical features.
        """
        if len(output_features) != len(reference_features) or not output_features:
            raise ValueError(
                f"expected equally many non-empty feature lists, got {len(output_features)} and {len(reference_features)}"
            )
        losses = []
        for out, ref in zip(output_features, reference_features):
            if out.ndim != 4 or ref.ndim != 4 or out.shape[:2] != ref.shape[:2]:
                raise ValueError(f"features must be [B, C, H, W] with equal B and C, got {tuple(out.shape)} and {tuple(ref.shape)}")
            x = self._positions(out, generator)
            y = self._positions(ref, generator)
            losses.append(-torch.log(contextual_similarity(x, y, self.band_width) + _EPSILON).mean())
        return torch.stack(losses).mean()

    def _positions(self, features: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``[B, C, H, W]`` → ``[B, N, C]``, subsampled to ``max_positions``."""
        flat = features.flatten(2)
        if self.max_positions is not None and flat.shape[2] > self.max_positions:
            ids = sample_positions(features.shape[2], features.shape[3], self.max_positions, generator=generator, device=flat.device)
            flat = flat[:, :, ids]
        return flat.transpose(1, 2)
