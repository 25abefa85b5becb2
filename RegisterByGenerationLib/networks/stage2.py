"""Stage 2 of RbG: refinement with Deformation-Aware Cross-Attention (DACA).

``ỹ = F(x, ŷ, y, φ)``: FE1 extracts features of the input and the Stage 1 output
(``concat(x, ŷ)``), FE2 features of the reference CT ``y``, each at H/4, H/2 and H. At
every scale a :class:`~.daca.DACABlock` lets each input feature attend to a window of
reference features around ``p + φ(p)`` (the registration flow resized to that scale),
which copies the reference's texture to where it belongs on the input grid. FR
decodes the three fused feature maps, coarse to fine, into the output::

    concat(x, ŷ) ─ FE1 ─┬ q/4 ─┐          y ─ FE2 ─┬ r/4 ─┐
                        ├ q/2 ─┼─ DACA(q, r, φ↓s) ─ f/4, f/2, f/1 ─ FR ─ tanh ─ ỹ
                        └ q/1 ─┘                  └ ...

All three networks are small U-nets of :func:`~.blocks.conv_block` layers (3×3 conv,
instance norm, LeakyReLU 0.2), initialised N(0, 0.02²) as published.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import check_image, check_multiple, check_same_grid, conv_block, float32_head, init_normal, resize_flow
from .daca import DACABlock

__all__ = ["FeatureUNet", "FeatureReconstruction", "Stage2Network", "resize_flow"]

SCALES = (4, 2, 1)  # DACA scales, coarse to fine: H/4, H/2, H


def _upsample(features: torch.Tensor) -> torch.Tensor:
    return F.interpolate(features, scale_factor=2.0, mode="bilinear", align_corners=False)


class FeatureUNet(nn.Module):
    """U-net feature extractor returning features at H/4, H/2 and H (FE1, FE2).

    Encoder level k (at H/2^k) has ``channels[k]`` channels, two conv blocks each
    (the first strided for k > 0). The decoder climbs back to H with skip
    concatenations; 1×1 heads project the H/4, H/2 and H maps to ``out_channels``.

    Args:
        in_channels: input channels (2 for FE1: x and ŷ; 1 for FE2: y).
        channels: widths of the levels at H, H/2, H/4, …; at least 3.
        out_channels: feature channels of every output (published 14).

    Example::

        >>> net = FeatureUNet(1, (4, 8, 8), 6)
        >>> [tuple(f.shape) for f in net(torch.zeros(1, 1, 32, 32))]
        [(1, 6, 8, 8), (1, 6, 16, 16), (1, 6, 32, 32)]
    """

    def __init__(self, in_channels: int, channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        channels = tuple(channels)
        if len(channels) < 3 or min(channels) <= 0:
            raise ValueError(f"channels must be at least 3 positive widths (H, H/2, H/4, ...), got {channels}")
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}")
        self.in_channels = in_channels
        self.size_multiple = 2 ** (len(channels) - 1)
        self.encoder = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(channels):
            stride = 1 if level == 0 else 2
            self.encoder.append(nn.Sequential(conv_block(previous, width, strides=stride), conv_block(width, width)))
            previous = width
        # decoder[i] brings level i + 1 up to level i (deepest first in forward).
        self.decoder = nn.ModuleList(
            nn.Sequential(conv_block(channels[level + 1] + channels[level], channels[level]), conv_block(channels[level], channels[level]))
            for level in range(len(channels) - 1)
        )  # fmt: skip
        self.heads = nn.ModuleList(nn.Conv2d(channels[level], out_channels, 1) for level in (2, 1, 0))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``image [B, in_channels, H, W]`` → features at (H/4, H/2, H), each ``[B, out_channels, ·, ·]``."""
        skips = []
        out = image
        for block in self.encoder:
            out = block(out)
            skips.append(out)
        levels: dict[int, torch.Tensor] = {len(skips) - 1: out}
        for level in range(len(skips) - 2, -1, -1):
            out = self.decoder[level](torch.cat([_upsample(out), skips[level]], dim=1))
            levels[level] = out
        return tuple(head(levels[level]) for head, level in zip(self.heads, (2, 1, 0)))  # type: ignore[return-value]


class FeatureReconstruction(nn.Module):
    """FR: decode the DACA outputs at H/4, H/2, H, coarse to fine, into an image.

    ``h = blocks4(f/4)``; ``h = blocks2(concat(up(h), f/2))``; ``h = blocks1(concat(up(h), f/1))``;
    output ``tanh(conv3×3(h))``.

    Args:
        feature_channels: channels of each fused feature map.
        channels: widths at H, H/2, H/4 (the first three U-net widths).
    """

    def __init__(self, feature_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        full, half, quarter = tuple(channels)[:3]
        self.blocks4 = nn.Sequential(conv_block(feature_channels, quarter), conv_block(quarter, quarter))
        self.blocks2 = nn.Sequential(conv_block(quarter + feature_channels, half), conv_block(half, half))
        self.blocks1 = nn.Sequential(conv_block(half + feature_channels, full), conv_block(full, full))
        self.head = nn.Conv2d(full, 1, 3, padding=1)

    def forward(self, fused: Sequence[torch.Tensor]) -> torch.Tensor:
        """``fused`` = (f/4, f/2, f/1) → ``[B, 1, H, W]`` in (-1, 1)."""
        if len(fused) != 3:
            raise ValueError(f"fused must hold 3 feature maps (H/4, H/2, H), got {len(fused)}")
        quarter, half, full = fused
        out = self.blocks4(quarter)
        out = self.blocks2(torch.cat([_upsample(out), half], dim=1))
        out = self.blocks1(torch.cat([_upsample(out), full], dim=1))
        return float32_head(self.head, out)


class Stage2Network(nn.Module):
    """Stage 2: ``ỹ = F(x, ŷ, y, φ)`` with DACA at H/4, H/2 and H.

    Args:
        feature_channels: channels of FE1/FE2 features and of the DACA blocks (published 14).
        unet_channels: widths of the FE1/FE2 levels at H, H/2, H/4, …; at least 3.
        heads: attention heads per DACA block.
        windows: DACA window side P at H/4, H/2, H, in pixels of that scale (paper 28).
        mlp_ratio: DACA MLP width as a multiple of ``feature_channels``.

    Example::

        >>> net = Stage2Network(4, (4, 8, 8), heads=2, windows=(3, 3, 3)).eval()
        >>> x = y_hat = y = torch.zeros(1, 1, 32, 32); flow = torch.zeros(1, 2, 32, 32)
        >>> net(x, y_hat, y, flow).shape
        torch.Size([1, 1, 32, 32])
    """

    def __init__(
        self,
        feature_channels: int = 14,
        unet_channels: Sequence[int] = (32, 64, 128, 256),
        heads: int = 2,
        windows: Sequence[int] = (28, 28, 28),
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        windows = tuple(windows)
        if len(windows) != len(SCALES):
            raise ValueError(f"windows must give one window per scale (H/4, H/2, H), got {windows}")
        self.fe1 = FeatureUNet(2, unet_channels, feature_channels)
        self.fe2 = FeatureUNet(1, unet_channels, feature_channels)
        self.fr = FeatureReconstruction(feature_channels, unet_channels)
        init_normal(self)  # before adding DACA: its blocks keep their own initialisation
        self.daca = nn.ModuleList(
            DACABlock(feature_channels, heads=heads, window=window, mlp_ratio=mlp_ratio) for window in windows
        )
        self.size_multiple = max(4, self.fe1.size_multiple)

    def forward(self, x: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Refine ``ŷ`` with reference features fetched along ``φ``.

        Args:
            x: ``[B, 1, H, W]`` input (MR/CBCT) in [-1, 1]; H and W multiples of
                ``size_multiple`` (8 for the published sizes).
            y_hat: ``[B, 1, H, W]`` Stage 1 output in [-1, 1].
            y: ``[B, 1, H, W]`` reference CT in [-1, 1].
            flow: ``[B, 2, H, W]`` registration flow in pixels (channel 0 = dy, 1 = dx)
                on the grid of ``x``, pointing into ``y``.

        Returns:
            ``[B, 1, H, W]`` in (-1, 1).

        Raises:
            ValueError: bad shapes or sizes.
        """
        check_image("x", x, channels=1)
        for name, tensor, channels in (("y_hat", y_hat, 1), ("y", y, 1), ("flow", flow, 2)):
            check_image(name, tensor, channels=channels)
            check_same_grid(name, tensor, "x", x)
        check_multiple("x", x, self.size_multiple)
        # Stage 2 always runs in float32: under bfloat16 autocast its small feature maps
        # (14 channels) turned 0.7 HU of Stage 1 rounding into 3-4 HU at the output.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._fuse(x, y_hat, y, flow)

    def _fuse(self, x: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        queries = self.fe1(torch.cat([x, y_hat], dim=1))
        references = self.fe2(y)
        fused = []
        for block, query, reference, scale in zip(self.daca, queries, references, SCALES):
            flow_s = resize_flow(flow, (height // scale, width // scale))
            fused.append(block(query, reference, flow_s))
        return self.fr(fused)
