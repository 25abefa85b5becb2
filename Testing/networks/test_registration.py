"""Registration network, warping and scaling-and-squaring (flow convention of DESIGN §4)."""

from __future__ import annotations

import math

import pytest
import torch

from RegisterByGenerationLib.networks import DiffeomorphicRegistration, scaling_and_squaring, warp
from RegisterByGenerationLib.networks.registration import FLOW_INIT_STD


def _constant_flow(dy: float, dx: float, height=16, width=12, batch=1) -> torch.Tensor:
    flow = torch.empty(batch, 2, height, width)
    flow[:, 0], flow[:, 1] = dy, dx
    return flow


def _blob(height=32, width=32, centre=(16.0, 16.0), sigma=3.0) -> torch.Tensor:
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1)
    blob = torch.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * sigma**2))
    return (2 * blob - 1).view(1, 1, height, width)


def _jacobian_determinant_min(flow: torch.Tensor) -> float:
    """Smallest det(I + ∇u) over interior pixels (central differences)."""
    d_dy = (flow[:, :, 2:, 1:-1] - flow[:, :, :-2, 1:-1]) / 2
    d_dx = (flow[:, :, 1:-1, 2:] - flow[:, :, 1:-1, :-2]) / 2
    det = (1 + d_dy[:, 0]) * (1 + d_dx[:, 1]) - d_dx[:, 0] * d_dy[:, 1]
    return det.min().item()


# --------------------------------------------------------------------------- warp


def test_warp_moves_in_the_documented_direction():
    """warped(p) = m(p + φ(p)): with dy = +2 the bright pixel at (r, c) appears at (r - 2, c)."""
    image = torch.zeros(1, 1, 16, 12)
    image[0, 0, 9, 4] = 1.0
    warped = warp(image, _constant_flow(2.0, 0.0))
    assert warped[0, 0, 7, 4] == 1.0
    assert warped.sum() == 1.0
    warped = warp(image, _constant_flow(0.0, -3.0))  # dx = -3: appears at (9, 7)
    assert warped[0, 0, 9, 7] == 1.0


def test_warp_is_bilinear_between_pixels():
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 4, 4] = 1.0
    warped = warp(image, _constant_flow(0.5, 0.0, 8, 8))
    assert warped[0, 0, 3, 4] == pytest.approx(0.5)
    assert warped[0, 0, 4, 4] == pytest.approx(0.5)


def test_warp_zero_flow_is_identity_and_keeps_channels():
    image = torch.randn(2, 3, 16, 12)
    torch.testing.assert_close(warp(image, torch.zeros(2, 2, 16, 12)), image)


def test_warp_pads_with_the_border_value():
    """Outside samples repeat the edge (air, -1), they do not bring in 0 (mid-range HU)."""
    image = torch.full((1, 1, 8, 8), -1.0)
    image[0, 0, 3:5, 3:5] = 1.0
    warped = warp(image, _constant_flow(20.0, 0.0, 8, 8))
    torch.testing.assert_close(warped, torch.full_like(warped, -1.0))


def test_warp_uses_device_and_dtype_of_its_inputs():
    image = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    image[0, 0, 5, 5] = 1.0
    warped = warp(image, _constant_flow(1.0, 1.0, 8, 8).double())
    assert warped.dtype == torch.float64
    assert warped[0, 0, 4, 4] == 1.0
    # Then a different size and batch with float32: nothing cached from the first call.
    assert warp(torch.zeros(3, 1, 6, 4), torch.zeros(3, 2, 6, 4)).shape == (3, 1, 6, 4)


def test_warp_rejects_mismatched_inputs():
    image = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"flow must have shape \[B, 2, H, W\], got \(1, 3, 8, 8\)"):
        warp(image, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="flow must have the batch and spatial size of image"):
        warp(image, torch.zeros(1, 2, 8, 6))
    with pytest.raises(ValueError, match="dtype"):
        warp(image, torch.zeros(1, 2, 8, 8, dtype=torch.float64))


# --------------------------------------------------------------------------- integration


@pytest.mark.parametrize("dy, dx", [(0.0, 0.0), (2.0, -3.0), (0.37, 5.5)])
def test_scaling_and_squaring_of_a_constant_field_is_that_field(dy, dx):
    velocity = _constant_flow(dy, dx)
    torch.testing.assert_close(scaling_and_squaring(7)(velocity), velocity)


def test_integrate_at_half_resolution_keeps_a_constant_field():
    net = DiffeomorphicRegistration(encoder=(4, 8), decoder=(8, 8, 4))
    velocity = _constant_flow(3.0, -1.5, 32, 32)
    torch.testing.assert_close(net.integrate(velocity), velocity)
    with pytest.raises(ValueError, match=r"H and W must be even, got \(15, 16\)"):
        net.integrate(torch.zeros(1, 2, 15, 16))


def test_scaling_and_squaring_gives_a_fold_free_displacement():
    height = width = 32
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1).expand(height, width)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1).expand(height, width)
    velocity = torch.stack([6 * torch.sin(2 * math.pi * cols / width), 6 * torch.sin(2 * math.pi * rows / height)])
    velocity = velocity.unsqueeze(0)
    assert _jacobian_determinant_min(velocity) < 0  # used directly as a displacement, it folds
    assert _jacobian_determinant_min(scaling_and_squaring(7)(velocity)) > 0


def test_optimised_velocity_recovers_a_known_translation():
    """End to end through integrate + warp: fixed(p) = moving(p + d) is solved by flow ≈ d."""
    moving = _blob(centre=(18.0, 13.0))
    fixed = _blob(centre=(15.0, 15.0))  # fixed(p) = moving(p + (3, -2))
    net = DiffeomorphicRegistration(encoder=(4, 8), decoder=(8, 8, 4))
    shift = torch.zeros(1, 2, 1, 1, requires_grad=True)
    optimiser = torch.optim.Adam([shift], lr=0.2)
    for _ in range(80):
        optimiser.zero_grad()
        flow = net.integrate(shift.expand(1, 2, 32, 32))
        loss = torch.nn.functional.mse_loss(warp(moving, flow), fixed)
        loss.backward()
        optimiser.step()
    torch.testing.assert_close(shift.detach().flatten(), torch.tensor([3.0, -2.0]), atol=0.1, rtol=0)


# --------------------------------------------------------------------------- network


def _registration(seed=0) -> DiffeomorphicRegistration:
    torch.manual_seed(seed)
    return DiffeomorphicRegistration(encoder=(4, 8, 8, 8), decoder=(8, 8, 8, 8, 8, 4))


def test_published_architecture_layer_by_layer():
    """VoxelMorph 2D: enc 16, 32, 32, 32; dec 32, 32, 32, 32, 32, 16, 16; 3×3 convs; flow head 16 → 2."""
    net = DiffeomorphicRegistration()
    convs = [module for module in net.modules() if isinstance(module, torch.nn.Conv2d)]
    layers = [(conv.in_channels, conv.out_channels) for conv in convs]
    expected = [(2, 16), (16, 32), (32, 32), (32, 32), (32, 32),  # encoder, bottom (H/16)
                (64, 32), (64, 32), (64, 32), (48, 32),           # up path H/8 … H/2, then H
                (32, 16), (16, 16), (16, 2)]                      # full resolution, flow head
    assert sorted(layers) == sorted(expected)
    assert all(conv.kernel_size == (3, 3) for conv in convs)
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.2}
    assert net.size_multiple == 16
    assert net.integrate_velocity.num_steps == 7


def test_flow_head_starts_near_zero_so_the_initial_flow_is_the_identity():
    net = _registration()
    head = net.unet.net[1].final_conv_out.conv
    assert head.weight.std().item() == pytest.approx(FLOW_INIT_STD, rel=0.5)
    assert torch.equal(head.bias, torch.zeros_like(head.bias))
    fixed, moving = _blob(centre=(10.0, 10.0)), _blob(centre=(20.0, 22.0))
    with torch.no_grad():
        flow = net(fixed=fixed, moving=moving)
    assert flow.shape == (1, 2, 32, 32)
    assert flow.abs().max() < 1e-3


def test_registration_is_deterministic_and_takes_fixed_then_moving():
    net = _registration().eval()
    with torch.no_grad():
        # Make the head large enough that the input order shows in the output.
        net.unet.net[1].final_conv_out.conv.weight.normal_(0.0, 0.1)
        a, b = _blob(centre=(10.0, 12.0)), _blob(centre=(20.0, 18.0))
        first, again = net(fixed=a, moving=b), net(fixed=a, moving=b)
        swapped = net(fixed=b, moving=a)
    assert torch.equal(first, again)
    assert not torch.allclose(first, swapped)


def test_gradients_reach_every_registration_parameter():
    net = _registration().train()
    flow = net(fixed=_blob(centre=(12.0, 12.0)), moving=_blob(centre=(14.0, 17.0)))
    (flow * torch.randn_like(flow)).sum().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, name


def test_registration_rejects_bad_inputs():
    net = _registration()
    image = torch.zeros(1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"H and W must be multiples of 16, got \(24, 32\)"):
        net(fixed=image[:, :, :24], moving=image[:, :, :24])
    with pytest.raises(ValueError, match="moving must have the batch and spatial size of fixed"):
        net(fixed=image, moving=torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"fixed must have shape \[B, 1, H, W\]"):
        net(fixed=torch.zeros(1, 2, 32, 32), moving=image)
    with pytest.raises(ValueError, match="decoder must have at least"):
        DiffeomorphicRegistration(encoder=(4, 8), decoder=(8, 8))
    with pytest.raises(ValueError, match="integration_steps must be positive"):
        DiffeomorphicRegistration(integration_steps=0)
