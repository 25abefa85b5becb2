"""RbG's Stage 1 as published: the PAdaIN generator computed exactly as the authors' code.

It differs from our :class:`~..stage1.PAdaINGenerator` in the places that change the
numbers of a trained model:

- 12 style blocks, the first directly on the input (no plain stem), widths all ``C``:
  ``b0``; ``b1↓ b2``; ``b3↓ b4``; ``b5 b6``; ``b7↑(f3 + f2) b8``; ``b9↑(f4 + f1) b10``;
  ``b11(f5 + f0)``; 3×3 conv → tanh. Every skip is an addition.
- Downsampling blocks are a 1×1 convolution of stride 2; upsampling blocks are nearest
  ×2 then a 3×3 convolution; every convolution has a bias.
- The guide is ``y`` resized by bilinear interpolation with ``align_corners=True`` to
  ``⌊H/16⌋ × ⌊W/16⌋`` (no antialiasing), then resized to each block by *nearest*.
- The noise is one scalar strength per block times per-element N(0, 1) noise, drawn in
  every mode by the published code; here only when ``noise`` is set.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..blocks import float32_head
from ..stage1 import PatchStyleModulation

__all__ = ["PublishedStyleBlock", "PublishedPAdaIN", "BLOCK_RESAMPLING"]

#: Resampling of the 12 blocks in order: "down" (1×1 stride 2), "up" (nearest ×2 + 3×3) or "none".
BLOCK_RESAMPLING = ("none", "down", "none", "down", "none", "none", "none", "up", "none", "up", "none", "none")


class PublishedStyleBlock(nn.Module):
    """conv (with its resampling) → InstanceNorm (no affine) → [noise] → ``x·γ + β`` → LeakyReLU(0.2).

    Args:
        in_channels: input channels.
        channels: output channels C.
        hidden: width of the γ/β network.
        resampling: ``"none"``, ``"down"`` or ``"up"``.
        noise: add ``noise_strength · N(0, 1)`` per element (in every mode, as published).
    """

    def __init__(self, in_channels: int, channels: int, hidden: int, resampling: str = "none", noise: bool = False) -> None:
        super().__init__()
        if resampling == "down":
            self.conv = nn.Conv2d(in_channels, channels, 1, stride=2)
        elif resampling in ("none", "up"):
            self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        else:
            raise ValueError(f"resampling must be 'none', 'down' or 'up', got {resampling!r}")
        self.resampling = resampling
        self.noise = noise
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.noise_strength = nn.Parameter(torch.zeros(1))
        self.modulation = PatchStyleModulation(channels, hidden)

    def forward(self, features: torch.Tensor, guide: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``features [B, C_in, H, W]``, ``guide [B, 1, h, w]`` → ``[B, C, H', W']``."""
        if self.resampling == "up":
            features = F.interpolate(features, scale_factor=2.0, mode="nearest")
        out = self.norm(self.conv(features))
        if self.noise:
            noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
            out = out + noise * self.noise_strength
        gamma, beta = self.modulation(F.interpolate(guide, size=out.shape[-2:], mode="nearest"))
        return F.leaky_relu(out * gamma + beta, 0.2)


class PublishedPAdaIN(nn.Module):
    """``ŷ = G(x, y)`` with the published PAdaIN topology (see the module docstring).

    Args:
        channels: width C of every block (published 256).
        style_hidden: width of the γ/β network (published 512).
        guide_downsample: the guide is ``y`` resized by ``1 / guide_downsample`` (16).
        noise: draw the published per-element noise (off: deterministic).

    Example::

        >>> net = PublishedPAdaIN(channels=8, style_hidden=8).eval()
        >>> net(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 1, 32, 32])
    """

    def __init__(self, channels: int = 256, style_hidden: int = 512, guide_downsample: int = 16, noise: bool = False) -> None:
        super().__init__()
        self.guide_downsample = guide_downsample
        self.blocks = nn.ModuleList(
            PublishedStyleBlock(1 if index == 0 else channels, channels, style_hidden, resampling, noise)
            for index, resampling in enumerate(BLOCK_RESAMPLING)
        )
        self.head = nn.Conv2d(channels, 1, 3, padding=1)

    def guide(self, y: torch.Tensor) -> torch.Tensor:
        """The reference at ``1 / guide_downsample``: bilinear, ``align_corners=True``."""
        size = tuple(max(1, math.floor(s / self.guide_downsample)) for s in y.shape[-2:])
        return F.interpolate(y, size=size, mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x``, ``y`` ``[B, 1, H, W]`` in [-1, 1] (H, W multiples of 4) → ``ŷ [B, 1, H, W]``."""
        guide = self.guide(y)
        b = [lambda features, block=block: block(features, guide, generator) for block in self.blocks]
        f0 = b[0](x)
        f1 = b[2](b[1](f0))
        f2 = b[4](b[3](f1))
        f3 = b[6](b[5](f2))
        f4 = b[8](b[7](f3 + f2))
        f5 = b[10](b[9](f4 + f1))
        f6 = b[11](f5 + f0)
        return float32_head(self.head, f6)

    def noise_strengths(self) -> list[float]:
        """The trained noise strength of each block, in block order."""
        return [float(block.noise_strength.detach()) for block in self.blocks]
