"""Deformable window attention: the exact operation of DACA with memory independent of P².

For every query pixel ``p`` and every integer offset ``o`` of a ``P x P`` window, the key
and value are sampled bilinearly at ``p + flow(p) + o`` and the query attends to those
``P²`` samples with a softmax. The published implementation materialises all ``P²``
sampled keys and values (about 23 GB for one 384x320 slice with ``P = 28``). Here the
result is the same (to float rounding) but nothing of size ``P²`` is ever stored:

* The fractional part of ``p + flow(p) + o`` does not depend on the integer offset ``o``,
  so the four bilinear weights of a pixel are computed once, and every sample is a
  weighted sum of the key/value at four *integer* positions ``b(p) + m``, where
  ``b(p) = floor(p + flow(p))`` and ``m`` runs over a ``(P + 1) x (P + 1)`` grid. Each
  integer position is gathered once and shared by up to four offsets.
* The window is streamed a few rows of integer positions at a time with an online
  softmax (running maximum, running denominator, running weighted sum of values), and
  pixels are processed in chunks. A step's gathered buffer is ``chunk · (rows + 1) ·
  (P + 1) · C`` elements, with ``rows`` chosen to fit a fixed budget (2²² elements on
  the CPU), so the working memory is bounded independently of ``P²`` and of the image;
  the only full-size copies are zero-padded K and V, ``B · (H + 2) · (W + 2P + 2) · C``.
* Training uses a custom backward in the style of FlashAttention: the forward saves
  only ``q, k, v, flow``, the output and the log-sum-exp of the logits; the backward
  recomputes the window row by row and scatters the key/value gradients back through
  the bilinear gather. Training memory does not grow with ``P²`` either.

Samples that fall outside the image take part in the softmax with a **zero key and a
zero value** (bilinear interpolation with zero padding, as
``grid_sample(..., mode="bilinear", padding_mode="zeros", align_corners=True)`` does for
pixel coordinates): their logit is 0, not minus infinity. A window entirely outside the
image therefore returns zero.

Hand-written because no library we can depend on (MONAI, timm, torchvision) provides a
deformable window attention that streams over the window; ``grid_sample``-based versions
materialise the ``P²`` samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["deformable_window_attention", "window_offsets"]

#: (elements of one gathered buffer, pixels per chunk) by device type: small on the CPU
#: so that a buffer stays in cache, large on accelerators to fill the device.
_BUDGET = {"cpu": (1 << 22, 512)}
_BUDGET_DEFAULT = (1 << 26, 1 << 16)


def window_offsets(window: int) -> range:
    """Integer offsets along one axis of a ``window x window`` attention window.

    Args:
        window: side ``P`` of the window, in pixels.

    Returns:
        ``range(-(P // 2 - 1), P // 2 + 1)`` for even ``P`` (the published convention,
        e.g. ``-13 ... 14`` for ``P = 28``) and ``range(-(P - 1) // 2, (P - 1) // 2 + 1)``
        for odd ``P``.

    Raises:
        ValueError: if ``window`` is not a positive integer.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    return range(-((window - 1) // 2), window // 2 + 1)


def deformable_window_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    flow: Tensor,
    window: int,
    scale: float | None = None,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Attention of each query pixel over a ``P x P`` window of keys around ``p + flow(p)``.

    .. math::

        \mathrm{out}(p) = \sum_{o} \operatorname{softmax}_o\big(s\,\langle q(p),
        k(p + \varphi(p) + o)\rangle\big)\, v(p + \varphi(p) + o)

    with ``k(·)``, ``v(·)`` bilinear with zero padding and ``o`` over
    :func:`window_offsets` squared. Exact (no approximation); memory does not grow with
    ``P²``; differentiable with respect to ``query``, ``key`` and ``value``.

    Args:
        query: ``[B, heads, d, H, W]`` queries.
        key: ``[B, heads, d, H, W]`` keys on the same grid.
        value: ``[B, heads, d, H, W]`` values on the same grid.
        flow: ``[B, 2, H, W]`` displacement in pixels (channel 0 = dy along rows,
            channel 1 = dx along columns, DESIGN §4): pixel ``p`` looks at
            ``p + flow(p)``. It is detached and receives **no gradient** (the
            registration network is frozen while Stage 2 trains). Must be finite; any
            size is allowed (samples outside the image are zero).
        window: side ``P`` of the window (see :func:`window_offsets`).
        scale: logit scale ``s``; ``None`` means ``d ** -0.5``.
        chunk_size: pixels processed at once (memory/speed trade-off only; the result
            does not depend on it). ``None`` picks a size for the device.

    Returns:
        ``[B, heads, d, H, W]`` attended values, in the dtype of ``query``. Half and
        bfloat16 inputs (e.g. under autocast) are computed in float32.

    Raises:
        ValueError: if shapes, dtypes or devices disagree, the flow is not finite, or an
            argument is out of range.

    Example:
        >>> q = k = v = torch.randn(1, 2, 7, 12, 10)
        >>> deformable_window_attention(q, k, v, torch.zeros(1, 2, 12, 10), window=4).shape
        torch.Size([1, 2, 7, 12, 10])
    """
    offsets = window_offsets(window)
    if query.ndim != 5:
        raise ValueError(f"query must be [B, heads, d, H, W], got {list(query.shape)}")
    for name, tensor in (("key", key), ("value", value)):
        if tensor.shape != query.shape:
            raise ValueError(f"{name} must match query {list(query.shape)}, got {list(tensor.shape)}")
    batch, _, dim, height, width = query.shape
    if flow.shape != (batch, 2, height, width):
        raise ValueError(
            f"flow must be [B, 2, H, W] matching features {list(query.shape)}, got {list(flow.shape)}"
        )
    tensors = (query, key, value, flow)
    if any(not t.is_floating_point() for t in tensors):
        raise ValueError("query, key, value and flow must be floating point tensors")
    if len({t.device for t in tensors}) != 1:
        devices = [str(t.device) for t in tensors]
        raise ValueError(f"query, key, value and flow must be on one device, got {devices}")
    if not torch.isfinite(flow).all():
        raise ValueError("flow must be finite (no NaN or infinity)")
    if scale is None:
        scale = dim**-0.5
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
    if query.numel() == 0:
        return torch.zeros_like(query)

    # Softmax statistics need float32 at least: half inputs are promoted here, and the
    # result is cast back so the op is a drop-in under autocast.
    out_dtype = query.dtype
    compute_dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)
    if compute_dtype in (torch.float16, torch.bfloat16):
        compute_dtype = torch.float32
    q, k, v = (t.to(compute_dtype) for t in (query, key, value))
    with torch.autocast(device_type=query.device.type, enabled=False):
        out = _DeformableWindowAttention.apply(
            q, k, v, flow.detach().to(compute_dtype), len(offsets), float(scale), chunk_size
        )
    return out.to(out_dtype)


class _WindowSampler:
    """Where each pixel's window lies in zero-padded, channels-last copies of K and V.

    A table is ``[B * (H + 2) * (W + 2P + 2), heads * d]``: one zero row above and below
    the image and ``P + 1`` zero columns left and right. Row ``r`` of the integer grid
    of pixel ``p`` (``r = 0 ... P``) is then ``P + 1`` *consecutive* table rows, so it
    is gathered with one contiguous copy per pixel from an overlapping strided view.
    Rows outside the image are clamped onto a zero row and window starts far outside
    onto zero columns, which leaves every sample unchanged (all zero) and keeps indices
    bounded for arbitrarily large flows. Gradients are accumulated channels-first,
    ``[heads * d, rows]``, where the scatter is fastest.
    """

    def __init__(self, flow: Tensor, window: int, heads: int, dim: int) -> None:
        batch, _, height, width = flow.shape
        self.window, self.heads, self.dim = window, heads, dim
        self.batch, self.height, self.width = batch, height, width
        self.padded_width = width + 2 * window + 2
        self.table_rows = batch * (height + 2) * self.padded_width
        lo, hi = -((window - 1) // 2), window // 2
        ys = torch.arange(height, device=flow.device, dtype=flow.dtype).view(1, height, 1) + flow[:, 0]
        xs = torch.arange(width, device=flow.device, dtype=flow.dtype).view(1, 1, width) + flow[:, 1]
        y0, x0 = ys.floor(), xs.floor()
        self.frac_y = (ys - y0).reshape(-1)  # [N] bilinear weight of the lower row
        self.frac_x = (xs - x0).reshape(-1)  # [N] bilinear weight of the right column
        # Integer rows of the grid are y0 + lo ... y0 + hi + 1; clamping y0 to
        # [-(hi + 2), H - lo] keeps a window that lies wholly outside wholly outside.
        self.first_row = y0.clamp(-(hi + 2), height - lo).long().reshape(-1) + lo
        x0 = x0.clamp(-(hi + 2), width - lo).long()
        image_start = torch.arange(batch, device=flow.device).view(batch, 1, 1) * (
            (height + 2) * self.padded_width
        )
        # table index of column x0 + lo in padded row 0
        self.column_start = (image_start + x0 + lo + window + 1).reshape(-1)
        self.span = torch.arange(window + 1, device=flow.device)

    def table(self, x: Tensor) -> Tensor:
        """``[B, heads, d, H, W]`` -> zero-padded channels-last table ``[rows, heads * d]``."""
        x = x.reshape(self.batch, self.heads * self.dim, self.height, self.width)
        pad = self.window + 1
        return F.pad(x, (pad, pad, 1, 1)).permute(0, 2, 3, 1).reshape(self.table_rows, -1).contiguous()

    def untable_channels_first(self, table: Tensor) -> Tensor:
        """Crop a channels-first ``[heads * d, rows]`` table back to ``[B, heads, d, H, W]``."""
        pad = self.window + 1
        grid = table.view(self.heads, self.dim, self.batch, self.height + 2, self.padded_width)
        return grid[..., 1:-1, pad:-pad].permute(2, 0, 1, 3, 4).contiguous()

    def grid_starts(self, pixels: slice) -> Tensor:
        """Table index of the first position of every grid row, ``[n, P + 1]``."""
        rows = self.first_row[pixels, None] + self.span
        rows = rows.clamp_(-1, self.height).add_(1).mul_(self.padded_width)
        return rows.add_(self.column_start[pixels, None])

    def gather(self, table: Tensor, starts: Tensor) -> Tensor:
        """The ``P + 1`` table rows from each of ``starts`` ``[n, r]``: ``[n, r, P + 1, heads, d]``."""
        span = self.window + 1
        channels = table.shape[1]
        windows = table.view(-1).as_strided((self.table_rows - span + 1, span * channels), (channels, 1))
        rows = windows.index_select(0, starts.reshape(-1))
        return rows.view(*starts.shape, span, self.heads, self.dim)

    def scatter_add(self, table: Tensor, starts: Tensor, weights: Tensor, vectors: Tensor) -> None:
        """Transpose of :meth:`gather` for rank-one rows.

        Adds ``weights[n, r, m, h] * vectors[n, h, :]`` to row ``starts[n, r] + m`` of
        the channels-first ``table`` ``[heads * d, rows]``.
        """
        index = (starts[..., None] + self.span).view(-1)
        # contiguous channels-first factors make the outer product a long-inner-loop multiply
        vectors = vectors.permute(1, 2, 0).contiguous()[..., None]  # [h, d, n, 1]
        weights = weights.permute(3, 0, 1, 2).reshape(self.heads, 1, weights.shape[0], -1)  # [h, 1, n, r m]
        table.index_add_(1, index, (vectors * weights).view(table.shape[0], -1))


def _dot(rows: Tensor, vectors: Tensor, ones: Tensor) -> Tensor:
    """``<rows[n, r, m, h, :], vectors[n, 1, 1, h, :]>`` -> ``[n, r, m, h]``.

    A multiply and a matrix-vector product with ones: faster on the CPU than ``sum(-1)``
    over the short head dimension.
    """
    return torch.mul(rows, vectors) @ ones


def _weighted_sum(weights: Tensor, rows: Tensor) -> Tensor:
    """``sum_{r, m} weights[n, r, m, h] * rows[n, r, m, h, :]`` -> ``[n, h, d]``.

    One batched matrix product over all heads; the cross-head blocks it also computes
    are dropped (cheaper than a broadcast multiply and reduction for a few heads).
    """
    pixels, heads, dim = rows.shape[0], rows.shape[-2], rows.shape[-1]
    weights = weights.reshape(pixels, -1, heads).transpose(1, 2)  # [n, h, r m]
    products = torch.bmm(weights, rows.reshape(pixels, -1, heads * dim))  # [n, h, h d]
    return products.view(pixels, heads, heads, dim).diagonal(dim1=1, dim2=2).transpose(1, 2)


def _bilinear(grid: Tensor, frac_y: Tensor, frac_x: Tensor) -> Tensor:
    """Per-offset values from grid values: ``[n, r + 1, P + 1, h]`` -> ``[n, r, P, h]``."""
    columns = torch.lerp(grid[:, :, :-1], grid[:, :, 1:], frac_x)
    return torch.lerp(columns[:, :-1], columns[:, 1:], frac_y)


def _splat(per_offset: Tensor, frac_y: Tensor, frac_x: Tensor) -> Tensor:
    """Transpose of :func:`_bilinear`: ``[n, r, P, h]`` -> ``[n, r + 1, P + 1, h]``."""
    right = per_offset * frac_x
    columns = F.pad(per_offset - right, (0, 0, 0, 1)) + F.pad(right, (0, 0, 1, 0))
    lower = columns * frac_y
    return F.pad(columns - lower, (0, 0, 0, 0, 0, 1)) + F.pad(lower, (0, 0, 0, 0, 1, 0))


def _plan(pixels: int, window: int, channels: int, device: torch.device, chunk_size: int | None):
    """Pixels per chunk and window rows per step, so one gathered buffer fits the budget.

    A buffer holds ``chunk · (rows + 1) · (P + 1) · channels`` elements; its size is
    bounded by the budget (or by ``chunk_size · 2 (P + 1) · channels``), never by ``P²``.
    """
    budget, default_chunk = _BUDGET.get(device.type, _BUDGET_DEFAULT)
    chunk = min(pixels, chunk_size or default_chunk)
    rows = budget // (chunk * (window + 1) * channels) - 1
    return chunk, max(1, min(window, rows))


class _DeformableWindowAttention(torch.autograd.Function):
    """Streaming forward with online softmax; recomputing backward (see module docstring).

    The window is processed ``rows`` offset rows at a time: a step gathers the
    ``rows + 1`` grid rows those offsets touch (the grid row shared with the next step
    is gathered again there; by linearity each step adds its own share of it).
    """

    @staticmethod
    def forward(ctx, query, key, value, flow, window, scale, chunk_size):  # noqa: D102
        batch, heads, dim, height, width = query.shape
        sampler = _WindowSampler(flow, window, heads, dim)
        keys, values = sampler.table(key), sampler.table(value)
        queries = query.permute(0, 3, 4, 1, 2).reshape(-1, heads, dim) * scale
        pixels, ones = queries.shape[0], query.new_ones(dim)
        chunk_pixels, rows = _plan(pixels, window, heads * dim, query.device, chunk_size)
        out = torch.empty_like(queries)
        lse = query.new_empty(pixels, heads)
        for chunk in (slice(i, min(pixels, i + chunk_pixels)) for i in range(0, pixels, chunk_pixels)):
            q = queries[chunk]
            fy, fx = sampler.frac_y[chunk, None, None, None], sampler.frac_x[chunk, None, None, None]
            starts = sampler.grid_starts(chunk)
            run_max = q.new_full(q.shape[:2], float("-inf"))
            denom = q.new_zeros(q.shape[:2])
            acc = torch.zeros_like(q)
            for first in range(0, window, rows):
                grid = starts[:, first : min(window, first + rows) + 1]
                logits = _bilinear(_dot(sampler.gather(keys, grid), q[:, None, None], ones), fy, fx)
                new_max = torch.maximum(run_max, logits.amax((1, 2)))
                rescale = torch.exp(run_max - new_max)
                probs = torch.exp(logits - new_max[:, None, None])
                denom = denom * rescale + probs.sum((1, 2))
                contribution = _weighted_sum(_splat(probs, fy, fx), sampler.gather(values, grid))
                acc = acc * rescale[..., None] + contribution
                run_max = new_max
            out[chunk] = acc / denom[..., None]
            lse[chunk] = run_max + torch.log(denom)
        ctx.save_for_backward(query, key, value, flow, out, lse)
        ctx.window, ctx.scale, ctx.chunk_size = window, scale, chunk_size
        return out.view(batch, height, width, heads, dim).permute(0, 3, 4, 1, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):  # noqa: D102
        query, key, value, flow, out, lse = ctx.saved_tensors
        window, scale = ctx.window, ctx.scale
        batch, heads, dim, height, width = query.shape
        sampler = _WindowSampler(flow, window, heads, dim)
        keys, values = sampler.table(key), sampler.table(value)
        queries = query.permute(0, 3, 4, 1, 2).reshape(-1, heads, dim) * scale
        grad_out = grad_output.permute(0, 3, 4, 1, 2).reshape(-1, heads, dim)
        pixels, ones = queries.shape[0], query.new_ones(dim)
        # the backward keeps two gathered buffers (keys and values) per step
        chunk_pixels, rows = _plan(pixels, window, 2 * heads * dim, query.device, ctx.chunk_size)
        grad_keys = query.new_zeros(heads * dim, sampler.table_rows)
        grad_values = torch.zeros_like(grad_keys)
        grad_queries = torch.empty_like(queries)
        for chunk in (slice(i, min(pixels, i + chunk_pixels)) for i in range(0, pixels, chunk_pixels)):
            q, g = queries[chunk], grad_out[chunk]
            fy, fx = sampler.frac_y[chunk, None, None, None], sampler.frac_x[chunk, None, None, None]
            starts = sampler.grid_starts(chunk)
            chunk_lse = lse[chunk][:, None, None]
            delta = (g * out[chunk]).sum(-1)[:, None, None]  # [n, 1, 1, h]
            grad_q = torch.zeros_like(q)
            for first in range(0, window, rows):
                grid = starts[:, first : min(window, first + rows) + 1]
                key_rows, value_rows = sampler.gather(keys, grid), sampler.gather(values, grid)
                probs = torch.exp(_bilinear(_dot(key_rows, q[:, None, None], ones), fy, fx) - chunk_lse)
                grad_probs = _bilinear(_dot(value_rows, g[:, None, None], ones), fy, fx)
                weights_v = _splat(probs, fy, fx)
                weights_s = _splat(probs * (grad_probs - delta), fy, fx)
                sampler.scatter_add(grad_values, grid, weights_v, g)
                sampler.scatter_add(grad_keys, grid, weights_s, q)
                grad_q += _weighted_sum(weights_s, key_rows)
            grad_queries[chunk] = grad_q * scale
        grad_query = grad_queries.view(batch, height, width, heads, dim).permute(0, 3, 4, 1, 2)
        grad_key = sampler.untable_channels_first(grad_keys)
        grad_value = sampler.untable_channels_first(grad_values)
        return grad_query, grad_key, grad_value, None, None, None, None
