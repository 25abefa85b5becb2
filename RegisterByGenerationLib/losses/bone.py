"""A soft bone Dice term: what ``rbg benchmark``'s bone Dice measures, made differentiable.

The benchmark counts bone as ``HU > 200`` on the output and on the truth. An L1 term
weighs a voxel 50 HU too dark at the edge of a bone like any other, although it flips
the voxel out of the bone mask; this term sees exactly those voxels. The output's
bone mask is softened with a sigmoid of width ``softness`` around the threshold, and
MONAI's :class:`~monai.losses.DiceLoss` compares it with the target's hard mask, over
the whole batch at once (so crops without bone do not divide by zero).

Example::

    >>> loss = SoftBoneDiceLoss(threshold=-0.4, softness=0.025)
    >>> y = torch.full((1, 1, 8, 8), -1.0); y[..., 2:6, 2:6] = 0.5
    >>> float(loss(y, y)) < 1e-3
    True
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn

from ..networks.blocks import check_image, check_same_grid

__all__ = ["SoftBoneDiceLoss"]


class SoftBoneDiceLoss(nn.Module):
    """``1 − Dice(σ((ŷ − t) / s), [y > t])`` over the batch, ŷ and y in the network's units.

    Args:
        threshold: the bone threshold in the network's (normalised) units.
        softness: the sigmoid's width in the same units; the loss tends to one minus
            the hard Dice as it tends to 0.
    """

    def __init__(self, threshold: float, softness: float) -> None:
        super().__init__()
        if not softness > 0:
            raise ValueError(f"softness must be positive, got {softness!r}")
        self.threshold = float(threshold)
        self.softness = float(softness)
        self.dice = DiceLoss(batch=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_image("output", output, channels=1)
        check_same_grid("target", target, "output", output)
        soft = torch.sigmoid((output - self.threshold) / self.softness)
        return self.dice(soft, (target > self.threshold).to(output.dtype))
