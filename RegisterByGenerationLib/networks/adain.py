"""RegistFormer's Stage 1: a MUNIT-style generator with global AdaIN style transfer.

``ŷ = G(x, y)``: a content encoder reads the structure of the input ``x``; a style
encoder reduces the reference CT ``y`` to one global style code (dimension 8); an MLP
turns the code into the γ/β of the adaptive instance normalisations (AdaIN) in the
decoder's residual blocks; the decoder upsamples back to the input size. The layer
sizes follow MUNIT (Huang et al., ECCV 2018): 7×7 stem, 4×4 stride-2 downsamplings
doubling the width, residual blocks, nearest ×2 upsampling + 5×5 conv with a
layer norm, 7×7 output conv → tanh.

It has the call signature of :class:`~.stage1.PAdaINGenerator`, so the two are
interchangeable (``Stage1Config.kind``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import check_input_pair, float32_head

__all__ = ["AdaINGenerator", "STYLE_DIM"]

STYLE_DIM = 8  # MUNIT's style code dimension


def _conv(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True
) -> nn.Conv2d:
    # Reflection padding at the image border, as MUNIT. No bias before an instance
    # norm, which would remove it.
    return nn.Conv2d(
        in_channels, out_channels, kernel, stride=stride, padding=padding, padding_mode="reflect", bias=bias
    )


class _ResBlock(nn.Module):
    """Two 3×3 convs with instance norm (content encoder) or AdaIN (decoder), plus identity."""

    def __init__(self, channels: int, adaptive: bool) -> None:
        super().__init__()
        self.adaptive = adaptive
        self.conv1 = _conv(channels, channels, 3, padding=1, bias=False)
        self.conv2 = _conv(channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm2d(channels, affine=not adaptive)
        self.norm2 = nn.InstanceNorm2d(channels, affine=not adaptive)

    @property
    def num_adain_params(self) -> int:
        return 4 * self.conv1.out_channels if self.adaptive else 0

    def forward(self, features: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        """``params [B, 4C]`` = (γ1, β1, γ2, β2) when adaptive."""
        out = self.norm1(self.conv1(features))
        if self.adaptive:
            gamma1, beta1, gamma2, beta2 = (p[:, :, None, None] for p in params.chunk(4, dim=1))
            out = out * gamma1 + beta1
        out = self.norm2(self.conv2(F.relu(out)))
        if self.adaptive:
            out = out * gamma2 + beta2
        return features + out


class AdaINGenerator(nn.Module):
    """MUNIT-style Stage 1 (RegistFormer): content of ``x`` + global style of ``y``.

    Args:
        channels: width after the 7×7 stem; doubled at each of the two downsamplings
            (MUNIT 64).
        blocks: residual blocks in the content encoder and in the decoder (MUNIT 4).
        style_hidden: hidden width of the 3-layer MLP from the style code to the AdaIN
            parameters (MUNIT 256).
        style_dim: dimension of the style code (MUNIT 8).

    Example::

        >>> net = AdaINGenerator(channels=4, blocks=1, style_hidden=8).eval()
        >>> net(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 1, 32, 32])
    """

    size_multiple = 4

    def __init__(self, channels: int = 64, blocks: int = 4, style_hidden: int = 256, style_dim: int = STYLE_DIM) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("blocks", blocks), ("style_hidden", style_hidden), ("style_dim", style_dim)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        width = 4 * channels  # after two doublings

        self.content_encoder = nn.Sequential(
            _conv(1, channels, 7, padding=3, bias=False), nn.InstanceNorm2d(channels, affine=True), nn.ReLU(inplace=True),
            _conv(channels, 2 * channels, 4, stride=2, padding=1, bias=False), nn.InstanceNorm2d(2 * channels, affine=True), nn.ReLU(inplace=True),
            _conv(2 * channels, width, 4, stride=2, padding=1, bias=False), nn.InstanceNorm2d(width, affine=True), nn.ReLU(inplace=True),
            *[_ResBlock(width, adaptive=False) for _ in range(blocks)],
        )  # fmt: skip
        # MUNIT's style encoder has no normalisation (it would erase the style) and
        # downsamples four times before the global average.
        self.style_encoder = nn.Sequential(
            _conv(1, channels, 7, padding=3), nn.ReLU(inplace=True),
            _conv(channels, 2 * channels, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            _conv(2 * channels, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            _conv(width, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            _conv(width, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(width, style_dim, 1),
        )  # fmt: skip
        self.decoder_blocks = nn.ModuleList([_ResBlock(width, adaptive=True) for _ in range(blocks)])
        num_params = sum(block.num_adain_params for block in self.decoder_blocks)
        self.mlp = nn.Sequential(
            nn.Linear(style_dim, style_hidden), nn.ReLU(inplace=True),
            nn.Linear(style_hidden, style_hidden), nn.ReLU(inplace=True),
            nn.Linear(style_hidden, num_params),
        )  # fmt: skip
        # GroupNorm with one group = MUNIT's layer norm: statistics over (C, H, W) per
        # sample, affine per channel.
        self.decoder_up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            _conv(width, 2 * channels, 5, padding=2), nn.GroupNorm(1, 2 * channels), nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            _conv(2 * channels, channels, 5, padding=2), nn.GroupNorm(1, channels), nn.ReLU(inplace=True),
            _conv(channels, 1, 7, padding=3),
        )  # fmt: skip
        # MUNIT's "kaiming" initialisation. With N(0, 0.02²) the three-layer MLP would
        # output γ ≈ 1e-5 and switch the decoder's residual blocks off at the start.
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(layer.weight, a=0.0, mode="fan_in")
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    def style_code(self, y: torch.Tensor) -> torch.Tensor:
        """``y [B, 1, H, W]`` → style code ``[B, style_dim]``."""
        return self.style_encoder(y).flatten(1)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Synthesise ``ŷ`` from the content of ``x`` and the global style of ``y``.

        Args:
            x: ``[B, 1, H, W]`` input (MR/CBCT) in [-1, 1]; H and W multiples of 4.
            y: ``[B, 1, H, W]`` reference CT in [-1, 1], same grid as ``x``.
            generator: accepted for interchangeability with :class:`~.stage1.PAdaINGenerator`;
                this network draws no noise, so it is unused.

        Returns:
            ``[B, 1, H, W]`` in (-1, 1).

        Raises:
            ValueError: bad shapes (see :func:`~.blocks.check_image`).
        """
        check_input_pair(x, y, self.size_multiple)
        content = self.content_encoder(x)
        params = self.mlp(self.style_code(y))
        offset = 0
        for block in self.decoder_blocks:
            count = block.num_adain_params
            content = block(content, params[:, offset : offset + count])
            offset += count
        return float32_head(self.decoder_up[-1], self.decoder_up[:-1](content))
