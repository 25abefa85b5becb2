"""The published Stage 2 (FE1, FE2, three DACA blocks, FR), computed as the authors' code.

It differs from our :class:`~..stage2.Stage2Network` and :class:`~..daca.DACABlock` in:

- FE1, FE2 and FR are ``C``-wide throughout (14), 3×3 convolutions with biases and
  LeakyReLU(0.2), no normalisation, stride-2 convolutions down, nearest ×2 up, and
  additive skips; DACA reads FE's features at H/4 (``f3``), H/2 (``f4``) and H (``f6``);
- DACA: projections without biases; **no residual of the query**: ``a = fc(attn)``,
  ``out = GroupNorm₁(a + MLP(a))`` with one GroupNorm and a LeakyReLU(0.2) MLP;
- the flow is resized to each scale by plain bilinear interpolation
  (``align_corners=False``), its channel 0 scaled by the width ratio and channel 1 by the
  height ratio, and inside the attention **channel 0 displaces x (columns)** and
  channel 1 displaces y (rows), the opposite of the VoxelMorph flow it is given.

The attention itself is our exact streaming
:func:`~..window_attention.deformable_window_attention` (same window offsets, zero
padding and softmax as the published naive formula, without its P² copies of K and V).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..blocks import float32_head
from ..window_attention import deformable_window_attention

__all__ = ["PublishedDACA", "PublishedFeatureUNet", "PublishedReconstruction", "PublishedStage2", "resize_published_flow"]


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class _Double(nn.Module):
    """Two 3×3 convolutions with LeakyReLU; the first of stride 2 (``"down"``) or after
    nearest ×2 (``"up"``) when asked."""

    def __init__(self, in_channels: int, channels: int, resampling: str = "none") -> None:
        super().__init__()
        if resampling not in ("none", "down", "up"):
            raise ValueError(f"resampling must be 'none', 'down' or 'up', got {resampling!r}")
        self.resampling = resampling
        self.conv_a = nn.Conv2d(in_channels, channels, 3, stride=2 if resampling == "down" else 1, padding=1)
        self.conv_b = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resampling == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return _act(self.conv_b(_act(self.conv_a(x))))


class PublishedFeatureUNet(nn.Module):
    """FE1/FE2: features at (H/4, H/2, H), each ``[B, C, ·, ·]``."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down1 = _Double(channels, channels, "down")
        self.down2 = _Double(channels, channels, "down")
        self.middle = _Double(channels, channels)
        self.up1 = _Double(channels, channels, "up")
        self.up2 = _Double(channels, channels, "up")
        self.out = _Double(channels, channels)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f0 = _act(self.conv_in(image))
        f1 = self.down1(f0)
        f2 = self.down2(f1)
        f3 = self.middle(f2) + f2
        f4 = self.up1(f3) + f1
        f5 = self.up2(f4) + f0
        return f3, f4, self.out(f5)


def resize_published_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The published ``resize_deform_field``: channel 0 × width ratio, channel 1 × height
    ratio, then plain bilinear (``align_corners=False``) to ``size``."""
    height, width = flow.shape[-2:]
    if (height, width) == tuple(size):
        return flow
    scale = torch.tensor([size[1] / width, size[0] / height], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return F.interpolate(flow * scale, size=size, mode="bilinear", align_corners=False)


class PublishedDACA(nn.Module):
    """One published DACA block: ``GroupNorm₁(a + MLP(a))`` with ``a = fc(attention)``.

    Args:
        channels: feature channels C.
        heads: attention heads (divides C).
        window: window side P.
        mlp_hidden: hidden width of the MLP.
    """

    def __init__(self, channels: int, heads: int, window: int, mlp_hidden: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.q_proj = nn.Conv2d(channels, channels, 1, bias=False)
        self.k_proj = nn.Conv2d(channels, channels, 1, bias=False)
        self.v_proj = nn.Conv2d(channels, channels, 1, bias=False)
        self.out_proj = nn.Conv2d(channels, channels, 1, bias=False)
        self.mlp = nn.Sequential(nn.Conv2d(channels, mlp_hidden, 1), nn.LeakyReLU(0.2), nn.Conv2d(mlp_hidden, channels, 1))
        self.norm = nn.GroupNorm(1, channels)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """``query``, ``reference`` ``[B, C, h, w]``; ``flow`` the full-size published
        VoxelMorph field ``[B, 2, H, W]`` (resized here as published)."""
        batch, channels, height, width = query.shape
        flow = resize_published_flow(flow, (height, width))
        split = (batch, self.heads, channels // self.heads, height, width)
        q = self.q_proj(query).reshape(split)
        k = self.k_proj(reference).reshape(split)
        v = self.v_proj(reference).reshape(split)
        # The published sampler adds channel 0 to x and channel 1 to y; ours takes (dy, dx).
        attended = deformable_window_attention(q, k, v, flow.flip(1), self.window)
        out = self.out_proj(attended.reshape(query.shape))
        return self.norm(out + self.mlp(out))


class PublishedReconstruction(nn.Module):
    """FR: fuses the DACA outputs at H/4, H/2, H with additive skips → tanh image."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.full = _Double(channels, channels)
        self.down1 = _Double(channels, channels, "down")
        self.down2 = _Double(channels, channels, "down")
        self.middle = _Double(channels, channels)
        self.up1 = _Double(channels, channels, "up")
        self.up2 = _Double(channels, channels, "up")
        self.out_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.head = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, quarter: torch.Tensor, half: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        f0 = self.full(full)
        f1 = self.down1(f0) + half
        f2 = self.down2(f1) + quarter
        f3 = self.middle(f2) + quarter + f2
        f4 = self.up1(f3) + half + f1
        f5 = self.up2(f4) + full + f0
        return float32_head(self.head, _act(self.out_conv(f5)))


class PublishedStage2(nn.Module):
    """``ỹ = F(x, ŷ, y, φ)`` as published; φ is the published VoxelMorph field.

    Example::

        >>> net = PublishedStage2(channels=4, heads=2, window=3, mlp_hidden=8).eval()
        >>> x = torch.zeros(1, 1, 32, 32); flow = torch.zeros(1, 2, 32, 32)
        >>> net(x, x, x, flow).shape
        torch.Size([1, 1, 32, 32])
    """

    def __init__(self, channels: int = 14, heads: int = 2, window: int = 28, mlp_hidden: int = 28) -> None:
        super().__init__()
        self.fe1 = PublishedFeatureUNet(2, channels)
        self.fe2 = PublishedFeatureUNet(1, channels)
        self.daca = nn.ModuleList(PublishedDACA(channels, heads, window, mlp_hidden) for _ in range(3))
        self.fr = PublishedReconstruction(channels)

    def fuse(self, x: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor, flow: torch.Tensor) -> list[torch.Tensor]:
        """The three DACA outputs (H/4, H/2, H)."""
        queries = self.fe1(torch.cat([x, y_hat], dim=1))
        references = self.fe2(y)
        return [block(query, reference, flow) for block, query, reference in zip(self.daca, queries, references)]

    def forward(self, x: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.fr(*self.fuse(x.float(), y_hat.float(), y.float(), flow.float()))
