"""RegistFormer's Stage 1 as published: MUNIT's content of the MR, style of the CT.

The published Stage 1 is two MUNIT generators: generator A encodes the input's content,
generator B encodes the reference's style and decodes. Only those four parts take part
(A's content encoder; B's style encoder, MLP and decoder). It differs from our
:class:`~..adain.AdaINGenerator` where a trained model's numbers change:

- every convolution has a bias, the content encoder's instance norms have no affine part;
- the AdaIN parameters of each norm come as ``(β, γ)`` (bias first), norm by norm;
- the decoder's layer norm is MUNIT's: one mean and an **unbiased** standard deviation
  over ``(C, H, W)`` per sample, ``(x - μ) / (σ + ε)``, then a per-channel affine;
- all paddings reflect; the output is a 7×7 convolution → tanh.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..blocks import float32_head

__all__ = ["PublishedLayerNorm", "PublishedMUNIT"]


class PublishedLayerNorm(nn.Module):
    """MUNIT's layer norm: ``γ_c (x - μ) / (σ + ε) + β_c`` with μ, σ (unbiased) over ``(C, H, W)``."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        mean = flat.mean(1).view(-1, 1, 1, 1)
        std = flat.std(1).view(-1, 1, 1, 1)
        return (x - mean) / (std + self.eps) * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


class _Conv(nn.Module):
    """Reflection-padded convolution with a bias → optional norm → optional activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, norm: str, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, padding_mode="reflect")
        if norm == "instance":
            self.norm = nn.InstanceNorm2d(out_channels, affine=False)
        elif norm == "layer":
            self.norm = PublishedLayerNorm(out_channels)
        elif norm == "none":
            self.norm = None
        else:
            raise ValueError(f"norm must be 'instance', 'layer' or 'none', got {norm!r}")
        if act not in ("relu", "none"):
            raise ValueError(f"act must be 'relu' or 'none', got {act!r}")
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.act == "relu" else x


class _ResBlock(nn.Module):
    """``x + conv(relu(norm(conv(x))))``-style block: instance norm, or AdaIN with given (β, γ)."""

    def __init__(self, channels: int, adaptive: bool) -> None:
        super().__init__()
        norm = "none" if adaptive else "instance"
        self.adaptive = adaptive
        self.conv1 = _Conv(channels, channels, 3, 1, 1, norm, "none" if adaptive else "relu")
        self.conv2 = _Conv(channels, channels, 3, 1, 1, norm, "none")

    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        """``params [B, 4C]`` = (β1, γ1, β2, γ2) when adaptive."""
        if not self.adaptive:
            return x + self.conv2(self.conv1(x))
        beta1, gamma1, beta2, gamma2 = params.chunk(4, dim=1)
        out = F.relu(_adain(self.conv1(x), gamma1, beta1))
        return x + _adain(self.conv2(out), gamma2, beta2)


def _adain(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Instance norm with per-sample ``γ, β [B, C]``, as MUNIT computes it (one batch norm
    over ``[1, B·C, H, W]``, the affine fused), so the rounding matches too."""
    batch, channels = x.shape[:2]
    flat = x.reshape(1, batch * channels, *x.shape[2:])
    return F.batch_norm(flat, None, None, gamma.reshape(-1), beta.reshape(-1), True, 0.0, 1e-5).view_as(x)


class PublishedMUNIT(nn.Module):
    """``ŷ = decode_B(content_A(x), style_B(y))`` as the published RegistFormer Stage 1.

    Args:
        channels: ``ngf`` (published 64).
        blocks: residual blocks in the content encoder and in the decoder (4).
        style_hidden: MLP width (256).
        style_dim: style code dimension (8).

    Example::

        >>> net = PublishedMUNIT(channels=4, blocks=1, style_hidden=8).eval()
        >>> net(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 1, 32, 32])
    """

    def __init__(self, channels: int = 64, blocks: int = 4, style_hidden: int = 256, style_dim: int = 8) -> None:
        super().__init__()
        c = channels
        self.content = nn.Sequential(
            _Conv(1, c, 7, 1, 3, "instance", "relu"),
            _Conv(c, 2 * c, 4, 2, 1, "instance", "relu"),
            _Conv(2 * c, 4 * c, 4, 2, 1, "instance", "relu"),
            *[_ResBlock(4 * c, adaptive=False) for _ in range(blocks)],
        )
        self.style = nn.Sequential(
            _Conv(1, c, 7, 1, 3, "none", "relu"),
            _Conv(c, 2 * c, 4, 2, 1, "none", "relu"),
            _Conv(2 * c, 4 * c, 4, 2, 1, "none", "relu"),
            _Conv(4 * c, 4 * c, 4, 2, 1, "none", "relu"),
            _Conv(4 * c, 4 * c, 4, 2, 1, "none", "relu"),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(4 * c, style_dim, 1),
        )
        self.mlp = nn.Sequential(
            nn.Linear(style_dim, style_hidden), nn.ReLU(),
            nn.Linear(style_hidden, style_hidden), nn.ReLU(),
            nn.Linear(style_hidden, blocks * 4 * 4 * c),
        )  # fmt: skip
        self.decoder = nn.ModuleList(_ResBlock(4 * c, adaptive=True) for _ in range(blocks))
        self.up = nn.Sequential(_Conv(4 * c, 2 * c, 5, 1, 2, "layer", "relu"), _Conv(2 * c, c, 5, 1, 2, "layer", "relu"))
        self.head = _Conv(c, 1, 7, 1, 3, "none", "none")

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x``, ``y`` ``[B, 1, H, W]`` in [-1, 1] (H, W multiples of 16) → ``ŷ``.
        ``generator`` is accepted for interchangeability; nothing here is random."""
        content = self.content(x)
        params = self.mlp(self.style(y).flatten(1))
        for block, block_params in zip(self.decoder, params.chunk(len(self.decoder), dim=1)):
            content = block(content, block_params)
        for layer in self.up:
            content = layer(F.interpolate(content, scale_factor=2.0, mode="nearest"))
        return float32_head(self.head, content)
