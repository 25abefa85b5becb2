"""DACA: the streaming window attention against the naive formula, its gradients, the block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from RegisterByGenerationLib.networks import window_attention
from RegisterByGenerationLib.networks.daca import DACABlock
from RegisterByGenerationLib.networks.window_attention import deformable_window_attention, window_offsets

# How the window is streamed: (pixels per chunk, offset rows per step); None = the default plan.
STREAMING_PLANS = [None, (17, 1), (17, 3)]


def use_plan(monkeypatch, plan, channels, window):
    """Make the CPU plan stream `rows` offset rows per step over chunks of `pixels`."""
    if plan is not None:
        pixels, rows = plan
        budget = (rows + 1) * pixels * (window + 1) * channels  # elements of one gathered buffer
        monkeypatch.setitem(window_attention._BUDGET, "cpu", (budget, pixels))


def naive_window_attention(query, key, value, flow, window, scale=None):
    """The published approach, written plainly: materialise all P² sampled keys and values."""
    batch, heads, dim, height, width = query.shape
    scale = dim**-0.5 if scale is None else scale
    ys = torch.arange(height, dtype=query.dtype).view(1, height, 1) + flow[:, 0]
    xs = torch.arange(width, dtype=query.dtype).view(1, 1, width) + flow[:, 1]
    keys, values = [], []
    for oy in window_offsets(window):
        for ox in window_offsets(window):
            # pixel coordinates -> normalised coordinates of grid_sample(align_corners=True)
            grid = torch.stack((2 * (xs + ox) / (width - 1) - 1, 2 * (ys + oy) / (height - 1) - 1), dim=-1)
            for out, source in ((keys, key), (values, value)):
                sampled = F.grid_sample(
                    source.reshape(batch, heads * dim, height, width),
                    grid,
                    mode="bilinear",
                    padding_mode="zeros",
                    align_corners=True,
                )
                out.append(sampled.view(batch, heads, dim, height, width))
    keys, values = torch.stack(keys, dim=2), torch.stack(values, dim=2)  # [B, h, P², d, H, W]
    weights = torch.softmax(scale * (query.unsqueeze(2) * keys).sum(3), dim=2)  # [B, h, P², H, W]
    return (weights.unsqueeze(3) * values).sum(2)


def make_flow(kind: str, batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "fractional":  # small sub-pixel displacements
        return 2.5 * (2 * torch.rand(batch, 2, height, width, generator=generator) - 1)
    if kind == "large":  # many windows partly or wholly outside the image
        return 8 * torch.randn(batch, 2, height, width, generator=generator)
    if kind == "outward":  # every pixel pushed towards or past the nearest border, some exact integers
        ys = torch.arange(height, dtype=torch.float32).view(height, 1).expand(height, width)
        xs = torch.arange(width, dtype=torch.float32).view(1, width).expand(height, width)
        dy = torch.where(ys < height / 2, -ys - 1.5, height - ys + 0.25)
        dx = torch.where(xs < width / 2, -xs.floor(), 3.0 * (width - xs))
        return torch.stack((dy, dx)).expand(batch, 2, height, width).clone()
    raise ValueError(kind)


def random_inputs(batch, heads, dim, height, width, flow_kind, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, heads, dim, height, width)
    q, k, v = (torch.randn(shape, generator=generator, dtype=dtype) for _ in range(3))
    return q, k, v, make_flow(flow_kind, batch, height, width, generator).to(dtype)


@pytest.mark.parametrize("window", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("flow_kind", ["fractional", "large", "outward"])
@pytest.mark.parametrize("plan", STREAMING_PLANS)
def test_matches_naive_formula(window, heads, flow_kind, plan, monkeypatch):
    q, k, v, flow = random_inputs(2, heads, 3, 9, 13, flow_kind, seed=window * 10 + heads)
    use_plan(monkeypatch, plan, heads * 3, window)  # chunks of 17 split image rows and batch items
    ours = deformable_window_attention(q, k, v, flow, window)
    expected = naive_window_attention(q, k, v, flow, window)
    assert ours.shape == expected.shape and ours.dtype == torch.float32
    assert (ours - expected).abs().max().item() < 1e-5


def test_chunk_size_does_not_change_the_result():
    q, k, v, flow = random_inputs(2, 2, 3, 9, 13, "large")
    reference = deformable_window_attention(q, k, v, flow, 5)
    for chunk_size in (7, 40, 10_000):
        ours = deformable_window_attention(q, k, v, flow, 5, chunk_size=chunk_size)
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_scale_argument():
    q, k, v, flow = random_inputs(1, 2, 4, 6, 7, "fractional")
    ours = deformable_window_attention(q, k, v, flow, 4, scale=1.7)
    torch.testing.assert_close(ours, naive_window_attention(q, k, v, flow, 4, scale=1.7), rtol=0, atol=1e-5)


def test_window_offsets_convention():
    assert list(window_offsets(28)) == list(range(-13, 15))  # published: -(P/2 - 1) ... P/2
    assert list(window_offsets(4)) == [-1, 0, 1, 2]
    assert list(window_offsets(3)) == [-1, 0, 1]
    assert list(window_offsets(1)) == [0]


def test_single_offset_without_flow_returns_value_exactly():
    q, k, v, _ = random_inputs(2, 2, 5, 7, 6, "fractional")
    out = deformable_window_attention(q, k, v, torch.zeros(2, 2, 7, 6), window=1)
    assert torch.equal(out, v)  # softmax over one key is exactly 1


def test_window_wholly_outside_gives_zero():
    q, k, v, _ = random_inputs(1, 1, 3, 5, 5, "fractional")
    flow = torch.full((1, 2, 5, 5), 100.0)  # every sample is zero padding: equal logits, zero values
    assert torch.equal(deformable_window_attention(q, k, v, flow, window=3), torch.zeros_like(q))


@pytest.mark.parametrize("plan", [None, (7, 1)])
def test_gradcheck_float64(plan, monkeypatch):
    use_plan(monkeypatch, plan, 4, 3)
    q, k, v, flow = random_inputs(1, 2, 2, 4, 3, "large", dtype=torch.float64)
    flow[0, :, 0, 0] = torch.tensor([-1.0, 2.0])  # an exact integer position too
    inputs = tuple(t.requires_grad_(True) for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: deformable_window_attention(a, b, c, flow, 3), inputs)
    if plan is None:  # an even window too
        assert torch.autograd.gradcheck(lambda a, b, c: deformable_window_attention(a, b, c, flow, 2), inputs)


@pytest.mark.parametrize("window", [2, 5])
@pytest.mark.parametrize("plan", STREAMING_PLANS)
def test_gradients_match_naive(window, plan, monkeypatch):
    use_plan(monkeypatch, plan, 6, window)
    q, k, v, flow = random_inputs(2, 2, 3, 8, 10, "large", seed=3)
    flow.requires_grad_(True)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(9))
    grads = []
    for function in (deformable_window_attention, naive_window_attention):
        inputs = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        function(*inputs, flow.detach(), window).backward(grad_out)
        grads.append([t.grad for t in inputs])
    for ours, expected in zip(*grads):
        assert (ours - expected).abs().max().item() < 1e-5
    out = deformable_window_attention(q, k, v, flow, window)
    assert not out.requires_grad  # the flow is detached: nothing to differentiate here


def test_training_memory_does_not_grow_with_window():
    """What the backward keeps is the inputs, the output and a log-sum-exp, whatever P is."""

    def saved_bytes(window):
        q, k, v, flow = random_inputs(1, 2, 4, 12, 10, "fractional")
        total = []

        def pack(tensor):
            total.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            deformable_window_attention(*(t.requires_grad_(True) for t in (q, k, v)), flow, window)
        return sum(total)

    small, large = saved_bytes(2), saved_bytes(9)
    assert small == large
    assert large <= 6 * 4 * (2 * 4 * 12 * 10)  # q, k, v, flow, output, lse: all O(H W C)


def test_half_precision_is_computed_in_float32():
    q, k, v, flow = random_inputs(1, 2, 4, 6, 7, "fractional")
    q16, k16, v16 = (t.to(torch.bfloat16) for t in (q, k, v))
    out = deformable_window_attention(q16, k16, v16, flow, 3)
    assert out.dtype == torch.bfloat16
    reference = deformable_window_attention(*(t.float() for t in (q16, k16, v16)), flow, 3)
    assert torch.equal(out, reference.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        block = DACABlock(8, heads=2, window=3)
        y = block(torch.randn(1, 8, 6, 7), torch.randn(1, 8, 6, 7), flow)
    assert y.shape == (1, 8, 6, 7) and torch.isfinite(y).all()


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((1, 2, 3, 5, 5), (1, 2, 3, 5, 4), (1, 2, 3, 5, 5), (1, 2, 5, 5)), "key must match"),
        (((1, 2, 3, 5, 5), (1, 2, 3, 5, 5), (1, 2, 3, 4, 5), (1, 2, 5, 5)), "value must match"),
        (((1, 2, 3, 5, 5), (1, 2, 3, 5, 5), (1, 2, 3, 5, 5), (1, 3, 5, 5)), "flow must be"),
        (((2, 3, 5, 5), (2, 3, 5, 5), (2, 3, 5, 5), (2, 2, 5, 5)), "query must be"),
    ],
)
def test_attention_rejects_bad_shapes(shapes, match):
    tensors = [torch.zeros(shape) for shape in shapes]
    with pytest.raises(ValueError, match=match):
        deformable_window_attention(*tensors, window=3)


def test_attention_rejects_bad_arguments():
    q, k, v, flow = random_inputs(1, 1, 2, 4, 4, "fractional")
    for window in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="window must be a positive integer"):
            deformable_window_attention(q, k, v, flow, window)
    with pytest.raises(ValueError, match="chunk_size"):
        deformable_window_attention(q, k, v, flow, 3, chunk_size=0)
    with pytest.raises(ValueError, match="floating point"):
        deformable_window_attention(q, k, v, flow.long(), 3)
    flow[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="flow must be finite"):
        deformable_window_attention(q, k, v, flow, 3)


def test_block_shape_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    block = DACABlock(channels=12, heads=2, window=4, mlp_ratio=2.0)
    x = torch.randn(2, 12, 10, 9, requires_grad=True)
    ref = torch.randn(2, 12, 10, 9, requires_grad=True)
    flow = 2 * torch.randn(2, 2, 10, 9)
    y = block(x, ref, flow)
    assert y.shape == x.shape
    y.square().mean().backward()
    names = {name for name, _ in block.named_parameters()}
    stable = {"q_proj", "k_proj", "v_proj", "out_proj", "norm1", "norm2"}  # names checkpoints map onto
    assert {f"{name}.weight" for name in stable} <= names
    assert any(name.startswith("mlp.") for name in names)
    for name, parameter in block.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0 and ref.grad.abs().sum() > 0


def test_looks_up_the_reference_at_p_plus_flow():
    """DESIGN §4: moving the reference content by (dy, dx) is undone by a flow of (dy, dx)."""
    q, k, v, _ = random_inputs(1, 2, 3, 12, 11, "fractional")
    k_moved, v_moved = torch.zeros_like(k), torch.zeros_like(v)
    # content moved down 2 rows and left 1 column
    k_moved[..., 2:, :-1], v_moved[..., 2:, :-1] = k[..., :-2, 1:], v[..., :-2, 1:]
    zero = torch.zeros(1, 2, 12, 11)
    base = deformable_window_attention(q, k, v, zero, window=3)
    flow = zero + torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)  # dy = +2, dx = -1
    moved = deformable_window_attention(q, k_moved, v_moved, flow, window=3)
    # pixels whose whole window lies inside the image and inside the moved content
    torch.testing.assert_close(moved[..., 1:9, 2:10], base[..., 1:9, 2:10], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 14, "heads": 3}, "divisible by heads"),
        ({"channels": 0}, "channels must be"),
        ({"channels": 8, "heads": 0}, "heads must be"),
        ({"channels": 8, "window": 0}, "window must be"),
        ({"channels": 8, "mlp_ratio": 0.0}, "mlp_ratio"),
        ({"channels": 8, "groups": 3}, "groups"),
    ],
)
def test_block_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DACABlock(**kwargs)


def test_block_rejects_mismatched_inputs():
    block = DACABlock(channels=4, heads=2, window=3)
    x = torch.zeros(1, 4, 6, 5)
    expected = r"flow must be \[B, 2, H, W\] matching features \[1, 4, 6, 5\], got \[1, 2, 6, 6\]"
    with pytest.raises(ValueError, match=expected):
        block(x, x, torch.zeros(1, 2, 6, 6))
    with pytest.raises(ValueError, match="reference_features"):
        block(x, torch.zeros(1, 4, 6, 6), torch.zeros(1, 2, 6, 5))
    with pytest.raises(ValueError, match="query_features"):
        block(torch.zeros(1, 3, 6, 5), torch.zeros(1, 3, 6, 5), torch.zeros(1, 2, 6, 5))
