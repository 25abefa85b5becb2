"""Stage 1 of RbG: the synthesis network with Patch Adaptive Instance Normalisation.

``ŷ = G(x, y)``: a U-shaped convolutional generator that keeps the structure of the
input ``x`` (MR or CBCT) and takes local intensity and contrast from the reference CT
``y``. Every "style conv" block normalises its features and re-modulates them with
γ(p), β(p) computed from a heavily downsampled copy of ``y``: the reference is
misaligned, so only its patch-level statistics are trusted (RbG paper, §III-C).

Layout for ``blocks = N`` (N ≥ 5), all style blocks ``C`` channels wide::

    x ─ stem conv ─┬─ block↓2 ─┬─ block↓2 ─ (N-4) blocks @ H/4 ─ ↑2 block ─(+)─ ↑2 block ─(+)─ conv ─ tanh ─ ŷ
                   │           └──────────────────────────────────────────┘        │
                   └───────────────────────────────────────────────────────────────┘

With the published sizes (C = 256, N = 12, γ/β hidden width 512) this has ≈ 35 M
parameters, matching the published ≈ 34 M.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import NoiseInjection, check_input_pair, float32_head, init_normal

__all__ = ["PatchStyleModulation", "StyleConvBlock", "PAdaINGenerator"]


class PatchStyleModulation(nn.Module):
    """γ(p) and β(p) from a (coarse, resized) reference image: shared conv + ReLU, two convs.

    Args:
        channels: number of feature channels C to modulate.
        hidden: width of the shared 3×3 convolution (published 512).
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(1, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``style [B, 1, h, w]`` → ``(γ, β)``, each ``[B, C, h, w]``."""
        hidden = self.shared(style)
        return self.gamma(hidden), self.beta(hidden)


class StyleConvBlock(nn.Module):
    """conv3×3 → InstanceNorm (no affine) → noise → ``x·γ + β`` → LeakyReLU(0.2).

    Args:
        in_channels: input feature channels.
        out_channels: output feature channels C.
        hidden: width of the γ/β network.
        stride: 1, or 2 for a downsampling block.
        noise: add learned-scale noise (training mode only).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, stride: int = 1, noise: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        # No bias: the instance norm right after would remove it.
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm = nn.InstanceNorm2d(out_channels, affine=False)
        self.noise = NoiseInjection(out_channels) if noise else None
        self.modulation = PatchStyleModulation(out_channels, hidden)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(
        self, features: torch.Tensor, style: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Args:
            features: ``[B, C_in, H, W]``.
            style: ``[B, 1, H', W']``, the coarse reference already resized to this
                block's output size (``H' = H / stride``).
            generator: optional generator for the noise (training mode only).

        Returns:
            ``[B, C, H / stride, W / stride]``.
        """
        out = self.norm(self.conv(features))
        if out.shape[-2:] != style.shape[-2:]:
            raise ValueError(f"style must have the block's output size {tuple(out.shape[-2:])}, got {tuple(style.shape)}")
        if self.noise is not None:
            out = self.noise(out, generator)
        gamma, beta = self.modulation(style)
        return self.act(out * gamma + beta)


class PAdaINGenerator(nn.Module):
    """RbG's Stage 1: ``ŷ = G(x, y)`` with Patch Adaptive Instance Normalisation.

    Args:
        channels: width of every style block (published 256).
        blocks: number of style blocks, at least 5 (published 12).
        style_hidden: hidden width of the γ/β convolutions (published 512).
        style_downsample: factor n by which the reference is downsampled (antialiased
            bilinear) before it is resized to each block's size (paper 32, code 16).
        noise: learned-scale noise injection in every block (training mode only).

    Example::

        >>> net = PAdaINGenerator(channels=8, blocks=5, style_hidden=8).eval()
        >>> x, y = torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)
        >>> net(x, y).shape
        torch.Size([1, 1, 32, 32])
    """

    size_multiple = 4

    def __init__(
        self,
        channels: int = 256,
        blocks: int = 12,
        style_hidden: int = 512,
        style_downsample: int = 16,
        noise: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("style_hidden", style_hidden), ("style_downsample", style_downsample)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if blocks < 5:
            raise ValueError(f"blocks must be at least 5 (2 down, >= 1 bottleneck, 2 up), got {blocks}")
        self.style_downsample = style_downsample

        def block(stride: int = 1) -> StyleConvBlock:
            return StyleConvBlock(channels, channels, style_hidden, stride=stride, noise=noise)

        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))
        self.down = nn.ModuleList([block(stride=2), block(stride=2)])
        self.bottleneck = nn.ModuleList([block() for _ in range(blocks - 4)])
        self.up = nn.ModuleList([block(), block()])
        self.head = nn.Conv2d(channels, 1, 3, padding=1)
        init_normal(self)  # the published "normal" initialisation, std 0.02

    def coarse_reference(self, y: torch.Tensor) -> torch.Tensor:
        """The reference downsampled by ``style_downsample``: ``[B, 1, ⌈H/n⌉, ⌈W/n⌉]``.

        Antialiased bilinear, so each coarse pixel aggregates its patch (the paper's
        "aggregate information at a patch level"); plain bilinear at a factor of 16
        would read 4 of every 256 pixels and alias.
        """
        height, width = y.shape[-2:]
        size = (max(1, -(-height // self.style_downsample)), max(1, -(-width // self.style_downsample)))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False, antialias=True)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Synthesise ``ŷ``, structurally aligned with ``x``, with the intensities of ``y``.

        Args:
            x: ``[B, 1, H, W]`` input (MR/CBCT) in [-1, 1]; H and W multiples of 4.
            y: ``[B, 1, H, W]`` reference CT in [-1, 1], same grid as ``x``.
            generator: optional generator for the noise (used in training mode only).

        Returns:
            ``[B, 1, H, W]`` in (-1, 1).

        Raises:
            ValueError: bad shapes (see :func:`~.blocks.check_image`).
        """
        check_input_pair(x, y, self.size_multiple)
        coarse = self.coarse_reference(y)
        styles: dict[tuple[int, int], torch.Tensor] = {}

        def style_at(size: torch.Size) -> torch.Tensor:
            key = (int(size[0]), int(size[1]))
            if key not in styles:
                styles[key] = F.interpolate(coarse, size=key, mode="bilinear", align_corners=False)
            return styles[key]

        def run(block: StyleConvBlock, features: torch.Tensor, stride: int = 1) -> torch.Tensor:
            size = features.shape[-2:]
            return block(features, style_at((size[0] // stride, size[1] // stride)), generator)

        full = self.stem(x)
        half = run(self.down[0], full, stride=2)
        out = run(self.down[1], half, stride=2)
        for block in self.bottleneck:
            out = run(block, out)
        out = run(self.up[0], F.interpolate(out, scale_factor=2.0, mode="bilinear", align_corners=False)) + half
        out = run(self.up[1], F.interpolate(out, scale_factor=2.0, mode="bilinear", align_corners=False)) + full
        return float32_head(self.head, out)
