"""Deformation-Aware Cross-Attention (DACA), the attention block of Stage 2 (DESIGN §5).

Queries come from the features of the input (FE1), keys and values from the features of
the reference CT (FE2). Each query pixel ``p`` attends to a ``P x P`` window of reference
features centred on ``p + flow(p)``, where ``flow`` is the registration network's
displacement field (DESIGN §4: ``[B, 2, H, W]`` in pixels, channel 0 = dy, channel 1 = dx,
on the query grid, pointing into the reference). The attention itself is
:func:`~RegisterByGenerationLib.networks.window_attention.deformable_window_attention`:
exact, with memory that does not grow with the window area ``P²``. Window samples that
fall outside the image take part with a zero key and a zero value (bilinear sampling
with zero padding).

Block structure (post-norm transformer layer, 1x1 convolutions as per-pixel linears)::

    q = q_proj(query_features)            k = k_proj(reference)     v = v_proj(reference)
    x = norm1(query_features + out_proj(window_attention(q, k, v, flow)))
    y = norm2(x + mlp(x))                 mlp = conv1x1 -> GELU -> conv1x1
"""

from __future__ import annotations

from torch import Tensor, nn

from .window_attention import deformable_window_attention, window_offsets

__all__ = ["DACABlock", "deformable_window_attention", "window_offsets"]


class DACABlock(nn.Module):
    """Deformation-aware cross-attention block with a GroupNorm'd MLP.

    Args:
        channels: number of feature channels ``C`` of both inputs and of the output.
        heads: number of attention heads; must divide ``channels``.
        window: side ``P`` of the square attention window, in pixels at the block's
            resolution (the paper uses 28).
        mlp_ratio: hidden width of the MLP as a multiple of ``channels``.
        groups: number of GroupNorm groups; must divide ``channels``. ``None`` uses
            ``heads`` groups (one group per head's channels).

    Raises:
        ValueError: if an argument is out of range or ``heads``/``groups`` do not
            divide ``channels``.

    Example:
        >>> import torch
        >>> block = DACABlock(channels=14, heads=2, window=5)
        >>> x, ref = torch.randn(1, 14, 24, 20), torch.randn(1, 14, 24, 20)
        >>> flow = torch.zeros(1, 2, 24, 20)
        >>> block(x, ref, flow).shape
        torch.Size([1, 14, 24, 20])
    """

    def __init__(
        self,
        channels: int,
        heads: int = 2,
        window: int = 28,
        mlp_ratio: float = 2.0,
        groups: int | None = None,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels}")
        if heads < 1:
            raise ValueError(f"heads must be a positive integer, got {heads}")
        if channels % heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        if window < 1:
            raise ValueError(f"window must be a positive integer, got {window}")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        groups = heads if groups is None else groups
        if groups < 1 or channels % groups != 0:
            raise ValueError(f"groups must be a positive divisor of channels ({channels}), got {groups}")
        hidden = max(1, round(mlp_ratio * channels))

        self.channels = channels
        self.heads = heads
        self.window = window
        self.head_dim = channels // heads
        self.q_proj = nn.Conv2d(channels, channels, kernel_size=1)
        self.k_proj = nn.Conv2d(channels, channels, kernel_size=1)
        self.v_proj = nn.Conv2d(channels, channels, kernel_size=1)
        self.out_proj = nn.Conv2d(channels, channels, kernel_size=1)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        self.norm2 = nn.GroupNorm(groups, channels)

    def forward(self, query_features: Tensor, reference_features: Tensor, flow: Tensor) -> Tensor:
        """Attend from the query features to the flow-displaced reference features.

        Args:
            query_features: ``[B, C, H, W]`` features of the input (queries).
            reference_features: ``[B, C, H, W]`` features of the reference CT (keys, values).
            flow: ``[B, 2, H, W]`` displacement in pixels **at this resolution** (channel
                0 = dy, channel 1 = dx). It receives no gradient (the registration
                network is frozen while Stage 2 trains).

        Returns:
            ``[B, C, H, W]`` fused features.

        Raises:
            ValueError: if the shapes do not match.
        """
        if query_features.ndim != 4 or query_features.shape[1] != self.channels:
            raise ValueError(
                f"query_features must be [B, {self.channels}, H, W], got {list(query_features.shape)}"
            )
        batch, _, height, width = query_features.shape
        if reference_features.shape != query_features.shape:
            raise ValueError(
                f"reference_features must be [B, C, H, W] matching query_features "
                f"{list(query_features.shape)}, got {list(reference_features.shape)}"
            )
        if flow.shape != (batch, 2, height, width):
            raise ValueError(
                f"flow must be [B, 2, H, W] matching features {list(query_features.shape)}, "
                f"got {list(flow.shape)}"
            )
        split = (batch, self.heads, self.head_dim, height, width)
        q = self.q_proj(query_features).reshape(split)
        k = self.k_proj(reference_features).reshape(split)
        v = self.v_proj(reference_features).reshape(split)
        attended = deformable_window_attention(q, k, v, flow, self.window)
        x = self.norm1(query_features + self.out_proj(attended.reshape(query_features.shape)))
        return self.norm2(x + self.mlp(x))
