"""Stage 2: resize_flow, the FE U-nets, FR and the DACA wiring."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from RegisterByGenerationLib.networks import DACABlock, FeatureUNet, Stage2Network, resize_flow, warp


def _inputs(batch=2, height=32, width=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x, y_hat, y = (torch.rand(batch, 1, height, width, generator=generator) * 2 - 1 for _ in range(3))
    flow = torch.randn(batch, 2, height, width, generator=generator) * 2
    return x, y_hat, y, flow


def _stage2(seed=0, windows=(3, 3, 3), unet_channels=(4, 8, 8)) -> Stage2Network:
    torch.manual_seed(seed)
    return Stage2Network(feature_channels=4, unet_channels=unet_channels, heads=2, windows=windows)


# --------------------------------------------------------------------------- resize_flow


def test_resize_flow_scales_values_per_axis():
    flow = torch.empty(1, 2, 32, 24)
    flow[:, 0], flow[:, 1] = 2.0, 3.0
    small = resize_flow(flow, (8, 12))  # rows / 4, columns / 2
    assert small.shape == (1, 2, 8, 12)
    torch.testing.assert_close(small[:, 0], torch.full((1, 8, 12), 0.5))
    torch.testing.assert_close(small[:, 1], torch.full((1, 8, 12), 1.5))
    torch.testing.assert_close(resize_flow(small, (32, 24)), flow)


def test_resize_flow_keeps_the_mapping_of_a_translation():
    """Warping at half resolution with the resized flow moves the image by half as many pixels."""
    image = torch.zeros(1, 1, 16, 16)
    image[0, 0, 8:10, 6:8] = 1.0  # a 2×2 block = one pixel at half resolution
    flow = torch.zeros(1, 2, 32, 32)
    flow[:, 0] = 4.0  # 4 pixels at full resolution
    half_flow = resize_flow(flow, (16, 16))
    moved = warp(image, half_flow)
    assert moved[0, 0, 6:8, 6:8].min() == 1.0 and moved.sum() == 4.0


def test_resize_flow_round_trip_of_a_smooth_field():
    rows = torch.linspace(0, 1, 32).view(-1, 1)
    cols = torch.linspace(0, 1, 32).view(1, -1)
    flow = torch.stack([torch.sin(3 * rows) * cols * 4, torch.cos(2 * cols) * rows * 4]).unsqueeze(0)
    back = resize_flow(resize_flow(flow, (16, 16)), (32, 32))
    interior = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    torch.testing.assert_close(back[interior], flow[interior], atol=0.05, rtol=0)


def test_resize_flow_same_size_is_identity_and_bad_arguments_raise():
    flow = torch.randn(1, 2, 8, 8)
    assert resize_flow(flow, (8, 8)) is flow
    with pytest.raises(ValueError, match=r"flow must have shape \[B, 2, H, W\]"):
        resize_flow(torch.zeros(1, 3, 8, 8), (4, 4))
    with pytest.raises(ValueError, match="size must be two positive integers"):
        resize_flow(flow, (4, 0))
    with pytest.raises(ValueError, match="size must be two positive integers"):
        resize_flow(flow, (4, 4, 4))


# --------------------------------------------------------------------------- FE, FR


@pytest.mark.parametrize("channels", [(4, 8, 8), (4, 8, 8, 16)])
def test_feature_unet_returns_three_scales_coarse_to_fine(channels):
    net = FeatureUNet(2, channels, 6)
    features = net(torch.randn(1, 2, 32, 48))
    assert [tuple(f.shape) for f in features] == [(1, 6, 8, 12), (1, 6, 16, 24), (1, 6, 32, 48)]
    assert net.size_multiple == 2 ** (len(channels) - 1)


def test_feature_unet_rejects_too_few_levels():
    with pytest.raises(ValueError, match="at least 3 positive widths"):
        FeatureUNet(1, (4, 8), 6)


# --------------------------------------------------------------------------- Stage 2


@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
def test_stage2_output_shape_and_range(size):
    net = _stage2().eval()
    x, y_hat, y, flow = _inputs(height=size[0], width=size[1])
    with torch.no_grad():
        out = net(x, y_hat, y, flow)
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0 and out.std() > 0


def test_stage2_is_deterministic_in_eval_mode():
    net = _stage2().eval()
    inputs = _inputs()
    with torch.no_grad():
        assert torch.equal(net(*inputs), net(*inputs))


def test_stage2_uses_the_reference_and_the_flow():
    net = _stage2().eval()
    x, y_hat, y, flow = _inputs()
    with torch.no_grad():
        out = net(x, y_hat, y, flow)
        assert not torch.allclose(out, net(x, y_hat, -y, flow))
        assert not torch.allclose(out, net(x, y_hat, y, flow + 5.0))


class _RecordingDACA(nn.Module):
    """Stands in for a DACA block and records the flow it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.flow: torch.Tensor | None = None

    def forward(self, query: torch.Tensor, reference: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        self.flow = flow
        return query


def test_each_daca_block_gets_its_scale_and_the_flow_resized_to_it():
    net = _stage2(windows=(5, 3, 1)).eval()
    assert [block.window for block in net.daca] == [5, 3, 1]  # H/4, H/2, H
    assert all(isinstance(block, DACABlock) for block in net.daca)
    recorders = [_RecordingDACA() for _ in range(3)]
    net.daca = nn.ModuleList(recorders)
    x, y_hat, y, _ = _inputs(height=32, width=48)
    flow = torch.empty(2, 2, 32, 48)
    flow[:, 0], flow[:, 1] = 8.0, -4.0
    with torch.no_grad():
        net(x, y_hat, y, flow)
    for recorder, scale in zip(recorders, (4, 2, 1)):
        assert recorder.flow.shape == (2, 2, 32 // scale, 48 // scale)
        torch.testing.assert_close(recorder.flow[:, 0], torch.full_like(recorder.flow[:, 0], 8.0 / scale))
        torch.testing.assert_close(recorder.flow[:, 1], torch.full_like(recorder.flow[:, 1], -4.0 / scale))


def test_gradients_reach_every_stage2_parameter():
    net = _stage2().train()
    x, y_hat, y, flow = _inputs()
    out = net(x, y_hat, y, flow)
    (out * torch.randn_like(out)).sum().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().max() > 0, name


def test_stage2_rejects_bad_inputs():
    net = _stage2(unet_channels=(4, 8, 8, 8))
    x, y_hat, y, flow = _inputs()
    with pytest.raises(ValueError, match=r"flow must have shape \[B, 2, H, W\], got \(2, 1, 32, 32\)"):
        net(x, y_hat, y, flow[:, :1])
    with pytest.raises(ValueError, match="y_hat must have the batch and spatial size of x"):
        net(x, y_hat[:, :, :16], y, flow)
    with pytest.raises(ValueError, match=r"y must have shape \[B, 1, H, W\]"):
        net(x, y_hat, torch.cat([y, y], dim=1), flow)
    with pytest.raises(ValueError, match=r"H and W must be multiples of 8, got \(36, 32\)"):
        net(*(torch.zeros(2, c, 36, 32) for c in (1, 1, 1, 2)))
    with pytest.raises(ValueError, match="one window per scale"):
        Stage2Network(4, (4, 8, 8), heads=2, windows=(3, 3))
