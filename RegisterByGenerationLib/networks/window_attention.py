"""Deformable window attention: the exact operation of DACA with memory independent of P².

Interim implementation (streams over offsets with ``grid_sample`` and an online softmax);
the interface is final.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["deformable_window_attention", "window_offsets"]


def window_offsets(window: int) -> range:
    """Integer offsets along one axis of a ``window x window`` attention window.

    Even ``window`` uses ``-(P/2 - 1) ... +P/2`` (the published convention), odd uses
    ``-(P-1)/2 ... +(P-1)/2``.
    """
    if window < 1:
        raise ValueError(f"window must be a positive integer, got {window}")
    return range(-((window - 1) // 2), window // 2 + 1)


def deformable_window_attention(
    query: Tensor, key: Tensor, value: Tensor, flow: Tensor, window: int, scale: float | None = None
) -> Tensor:
    """Attention of each query pixel over a ``window x window`` window of keys around ``p + flow(p)``."""
    batch, heads, dim, height, width = query.shape
    if scale is None:
        scale = dim**-0.5
    offsets = window_offsets(window)
    ys = torch.arange(height, device=query.device, dtype=query.dtype).view(1, height, 1)
    xs = torch.arange(width, device=query.device, dtype=query.dtype).view(1, 1, width)
    base_y = ys + flow[:, 0].detach()
    base_x = xs + flow[:, 1].detach()
    k = key.reshape(batch, heads * dim, height, width)
    v = value.reshape(batch, heads * dim, height, width)
    run_max = run_den = acc = None
    for oy in offsets:
        for ox in offsets:
            gy = 2 * (base_y + oy) / max(height - 1, 1) - 1
            gx = 2 * (base_x + ox) / max(width - 1, 1) - 1
            grid = torch.stack((gx, gy), dim=-1)
            ko = F.grid_sample(k, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            vo = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            ko = ko.view(batch, heads, dim, height, width)
            vo = vo.view(batch, heads, dim, height, width)
            logit = scale * (query * ko).sum(2, keepdim=True)
            if run_max is None:
                run_max, run_den, acc = logit, torch.ones_like(logit), vo
                continue
            new_max = torch.maximum(run_max, logit)
            rescale = torch.exp(run_max - new_max)
            weight = torch.exp(logit - new_max)
            run_den = run_den * rescale + weight
            acc = acc * rescale + weight * vo
            run_max = new_max
    return acc / run_den
