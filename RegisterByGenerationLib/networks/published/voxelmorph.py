"""The published VoxelMorph registration, computed exactly as the authors' ``VxmDense``.

It differs from our :class:`~..registration.DiffeomorphicRegistration` in:

- the U-Net: one 3×3 conv (bias) + LeakyReLU(0.2) per level, max pooling, nearest
  upsampling, and the skip concatenated **after** the upsampled features;
- the integration: the velocity is resized to half size by bilinear interpolation with
  ``align_corners=True`` and halved, integrated by scaling and squaring with **zero**
  padding at the border (``grid_sample(align_corners=True)``), then doubled and resized
  back with ``align_corners=True``.

The flow is ``[B, 2, H, W]`` in pixels with channel 0 along H, as VoxelMorph's, and the
network is called as the published Stage 2 calls it: ``cat(ŷ, y)``, i.e. VoxelMorph's
``source = ŷ``, ``target = y``; the field lives on ``y``'s grid and samples ``ŷ``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["PublishedVoxelMorph", "warp_zeros"]


def warp_zeros(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image(p + flow(p))``, bilinear, zero outside (VoxelMorph's spatial transformer).

    Args:
        image: ``[B, C, H, W]``.
        flow: ``[B, 2, H, W]`` in pixels, channel 0 along H, channel 1 along W.
    """
    height, width = flow.shape[-2:]
    rows = torch.arange(height, device=flow.device, dtype=flow.dtype).view(height, 1).expand(height, width)
    columns = torch.arange(width, device=flow.device, dtype=flow.dtype).view(1, width).expand(height, width)
    # The published normalisation, 2 (p / (n - 1) - 0.5), kept literally: it rounds
    # differently from 2 p / (n - 1) - 1.
    y = 2 * ((rows + flow[:, 0]) / (height - 1) - 0.5)
    x = 2 * ((columns + flow[:, 1]) / (width - 1) - 0.5)
    return F.grid_sample(image, torch.stack([x, y], dim=-1), mode="bilinear", padding_mode="zeros", align_corners=True)


class PublishedVoxelMorph(nn.Module):
    """``flow = R(ŷ, y)`` as the published VoxelMorph.

    Args:
        encoder: encoder widths (16, 32, 32, 32).
        decoder: decoder widths (32, 32, 32, 32, 32, 16, 16).
        integration_steps: scaling-and-squaring steps (7).

    Example::

        >>> net = PublishedVoxelMorph(encoder=(4, 8), decoder=(8, 8, 4)).eval()
        >>> net(fixed=torch.zeros(1, 1, 32, 32), moving=torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 2, 32, 32])
    """

    def __init__(
        self,
        encoder: Sequence[int] = (16, 32, 32, 32),
        decoder: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        integration_steps: int = 7,
    ) -> None:
        super().__init__()
        encoder, decoder = tuple(encoder), tuple(decoder)
        levels = len(encoder)
        if len(decoder) < levels + 1:
            raise ValueError(f"decoder needs at least {levels + 1} widths, got {decoder}")
        self.integration_steps = integration_steps
        self.encoder = nn.ModuleList()
        previous, skips = 2, []
        for width in encoder:
            self.encoder.append(nn.Conv2d(previous, width, 3, padding=1))
            skips.append(width)
            previous = width
        self.decoder = nn.ModuleList()
        for level, width in enumerate(decoder[:levels]):
            self.decoder.append(nn.Conv2d(previous, width, 3, padding=1))
            previous = width + skips[levels - 1 - level]
        self.remaining = nn.ModuleList()
        for width in decoder[levels:]:
            self.remaining.append(nn.Conv2d(previous, width, 3, padding=1))
            previous = width
        self.flow_head = nn.Conv2d(previous, 2, 3, padding=1)

    def velocity(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """The U-Net's stationary velocity field ``[B, 2, H, W]`` of ``cat(fixed, moving)``."""
        x = torch.cat([fixed, moving], dim=1)
        history = []
        for conv in self.encoder:
            x = F.leaky_relu(conv(x), 0.2)
            history.append(x)
            x = F.max_pool2d(x, 2)
        for conv in self.decoder:
            x = F.interpolate(F.leaky_relu(conv(x), 0.2), scale_factor=2.0, mode="nearest")
            x = torch.cat([x, history.pop()], dim=1)
        for conv in self.remaining:
            x = F.leaky_relu(conv(x), 0.2)
        return self.flow_head(x)

    def integrate(self, velocity: torch.Tensor) -> torch.Tensor:
        """Velocity → displacement: at half size, by scaling and squaring with zero padding."""
        height, width = velocity.shape[-2:]
        half = F.interpolate(velocity, size=(height // 2, width // 2), mode="bilinear", align_corners=True) * 0.5
        field = half * (1.0 / 2**self.integration_steps)
        for _ in range(self.integration_steps):
            field = field + warp_zeros(field, field)
        return F.interpolate(field * 2.0, size=(height, width), mode="bilinear", align_corners=True)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """``fixed = ŷ``, ``moving = y`` ``[B, 1, H, W]`` (H, W multiples of
        ``2 ** len(encoder)``) → the published displacement ``[B, 2, H, W]`` (channel 0 along H)."""
        velocity = self.velocity(fixed, moving).float()
        with torch.autocast(device_type=velocity.device.type, enabled=False):
            return self.integrate(velocity)
