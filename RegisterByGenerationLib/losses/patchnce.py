"""PatchNCE: contrastive structure loss between the output and the input (RbG §III-E-1).

For every feature layer ``l`` the same ``S`` spatial positions are sampled in the
features of the output (queries ``q``) and of the input (keys ``k``); both go through a
per-layer two-layer MLP projection head and are L2-normalised. For query ``s`` the key
at the same position is the positive and the keys at the other ``S - 1`` positions *of
the same image* are the negatives (InfoNCE):

.. math::

    \\ell_s = -\\log \\frac{\\exp(q_s \\cdot k_s / \\tau)}{\\sum_{t=1}^{S} \\exp(q_s \\cdot k_t / \\tau)}

averaged over positions, images and layers; τ = 0.07, S = 256 (Park et al., "Contrastive
Learning for Unpaired Image-to-Image Translation", ECCV 2020; the RbG paper uses it in
both stages). Keys are detached: they are the targets, the gradient flows through the
queries (the output image) and through the projection heads.

Example::

    >>> heads = PatchProjection([8, 16], out_features=32)
    >>> loss = PatchNCELoss()
    >>> q = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
    >>> k = [f.clone() for f in q]
    >>> value = loss(*heads(q, k, num_patches=64, generator=torch.Generator().manual_seed(0)))
    >>> value.ndim
    0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["PatchProjection", "PatchNCELoss", "sample_positions"]


def sample_positions(height: int, width: int, count: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """``min(count, height * width)`` distinct flat positions, drawn without replacement.

    Args:
        height, width: size of the feature map.
        count: how many positions to draw.
        generator: CPU generator for the draw (reproducible with a seeded generator).
        device: where to put the result.

    Returns:
        Long tensor ``[S]`` of indices into the flattened ``H * W`` map.
    """
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    total = height * width
    order = torch.randperm(total, generator=generator)
    return order[: min(count, total)].to(device)


class PatchProjection(nn.Module):
    """Per-layer projection heads: Linear → ReLU → Linear, then L2 normalisation.

    Args:
        in_channels: channels of each feature layer, in the order the layers are given.
        out_features: width of both linear layers (CUT: 256).

    Weights are Xavier-initialised (the RbG implementation details, §IV-B).
    """

    def __init__(self, in_channels: Sequence[int], out_features: int = 256) -> None:
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if not in_channels or min(in_channels) <= 0:
            raise ValueError(f"in_channels must be a non-empty sequence of positive ints, got {in_channels}")
        if out_features <= 0:
            raise ValueError(f"out_features must be positive, got {out_features}")
        self.in_channels = in_channels
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, out_features), nn.ReLU(inplace=True), nn.Linear(out_features, out_features))
            for c in in_channels
        )
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight, gain=0.02)
                nn.init.zeros_(layer.bias)

    def forward(
        self,
        queries: Sequence[torch.Tensor],
        keys: Sequence[torch.Tensor],
        *,
        num_patches: int = 256,
        generator: torch.Generator | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Sample the same positions in each query/key layer and project them.

        Args:
            queries: per layer ``[B, C_l, H_l, W_l]`` features of the output image.
            keys: per layer features of the input image, same shapes.
            num_patches: positions per layer and image (S).
            generator: CPU generator for the positions.

        Returns:
            ``(q, k)``: per layer ``[B, S_l, D]`` unit vectors (``k`` detached).
        """
        if len(queries) != len(self.mlps) or len(keys) != len(self.mlps):
            raise ValueError(
                f"expected {len(self.mlps)} feature layers, got {len(queries)} queries and {len(keys)} keys"
            )
        projected_q, projected_k = [], []
        for layer, (mlp, q, k) in enumerate(zip(self.mlps, queries, keys)):
            if q.shape != k.shape or q.ndim != 4 or q.shape[1] != self.in_channels[layer]:
                raise ValueError(
                    f"layer {layer}: queries and keys must both be [B, {self.in_channels[layer]}, H, W], "
                    f"got {tuple(q.shape)} and {tuple(k.shape)}"
                )
            batch, channels, height, width = q.shape
            ids = sample_positions(height, width, num_patches, generator=generator, device=q.device)
            pick = lambda f: f.flatten(2)[:, :, ids].transpose(1, 2)  # noqa: E731  [B, S, C]
            projected_q.append(F.normalize(mlp(pick(q)), dim=-1))
            projected_k.append(F.normalize(mlp(pick(k)), dim=-1).detach())
        return projected_q, projected_k


class PatchNCELoss(nn.Module):
    """InfoNCE over sampled positions, negatives from the same image.

    Args:
        temperature: τ (CUT and RbG: 0.07).
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, queries: Sequence[torch.Tensor], keys: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean InfoNCE over layers.

        Args:
            queries: per layer ``[B, S, D]`` L2-normalised projections of the output.
            keys: per layer ``[B, S, D]`` projections of the input at the same positions.

        Returns:
            Scalar loss; ``log S`` for features that carry no information about position.
        """
        if len(queries) != len(keys) or not queries:
            raise ValueError(f"queries and keys must be equally many non-empty lists, got {len(queries)} and {len(keys)}")
        losses = []
        for q, k in zip(queries, keys):
            if q.shape != k.shape or q.ndim != 3:
                raise ValueError(f"queries and keys must both be [B, S, D], got {tuple(q.shape)} and {tuple(k.shape)}")
            batch, count, _ = q.shape
            # logits[b, s, t] = q_s · k_t / τ; the positive of row s is column s.
            logits = torch.bmm(q, k.transpose(1, 2)) / self.temperature
            target = torch.arange(count, device=q.device).repeat(batch)
            losses.append(F.cross_entropy(logits.reshape(batch * count, count).float(), target))
        return torch.stack(losses).mean()
