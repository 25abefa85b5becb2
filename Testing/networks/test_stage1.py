"""Stage 1 networks: PAdaIN (RbG) and the MUNIT-style AdaIN generator (RegistFormer)."""

from __future__ import annotations

import pytest
import torch

from RegisterByGenerationLib.networks import AdaINGenerator, PAdaINGenerator
from RegisterByGenerationLib.networks.blocks import NoiseInjection
from RegisterByGenerationLib.networks.stage1 import StyleConvBlock


def _images(batch=2, height=32, width=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, height, width, generator=generator) * 2 - 1
    y = torch.rand(batch, 1, height, width, generator=generator) * 2 - 1
    return x, y


def _padain(noise=True, seed=0) -> PAdaINGenerator:
    torch.manual_seed(seed)
    return PAdaINGenerator(channels=8, blocks=5, style_hidden=8, style_downsample=4, noise=noise)


def _adain(seed=0) -> AdaINGenerator:
    torch.manual_seed(seed)
    return AdaINGenerator(channels=4, blocks=2, style_hidden=8)


def _set_noise_strength(net: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, NoiseInjection):
                module.weight.fill_(value)


@pytest.mark.parametrize("make", [_padain, _adain], ids=["padain", "adain"])
@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
def test_output_shape_and_range(make, size):
    net = make().eval()
    x, y = _images(height=size[0], width=size[1])
    with torch.no_grad():
        out = net(x, y)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert out.abs().max() <= 1.0
    assert out.std() > 0  # not a constant image


@pytest.mark.parametrize("make", [_padain, _adain], ids=["padain", "adain"])
def test_output_range_holds_for_extreme_weights(make):
    net = make().eval()
    with torch.no_grad():
        net.head.weight.mul_(1000) if isinstance(net, PAdaINGenerator) else net.decoder_up[-1].weight.mul_(1000)
        out = net(*_images())
    assert out.abs().max() <= 1.0
    assert out.abs().max() > 0.99  # tanh saturates, it does not clip elsewhere


@pytest.mark.parametrize("make", [_padain, _adain], ids=["padain", "adain"])
def test_reference_changes_output(make):
    """The style path is connected: another reference gives another output."""
    net = make().eval()
    x, y = _images()
    with torch.no_grad():
        assert not torch.allclose(net(x, y), net(x, -y))


def test_eval_mode_is_deterministic_even_with_noise():
    net = _padain()
    _set_noise_strength(net, 1.0)
    net.eval()
    x, y = _images()
    with torch.no_grad():
        first = net(x, y, generator=torch.Generator().manual_seed(1))
        second = net(x, y, generator=torch.Generator().manual_seed(2))
        third = net(x, y)
    assert torch.equal(first, second)
    assert torch.equal(first, third)


def test_noise_only_in_training_mode_and_reproducible_with_generator():
    net = _padain()
    _set_noise_strength(net, 1.0)
    x, y = _images()
    net.train()
    with torch.no_grad():
        a = net(x, y, generator=torch.Generator().manual_seed(7))
        b = net(x, y, generator=torch.Generator().manual_seed(7))
        c = net(x, y, generator=torch.Generator().manual_seed(8))
    net.eval()
    with torch.no_grad():
        d = net(x, y)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, d)


def test_noise_disabled_has_no_noise_modules_and_is_deterministic_in_training():
    net = _padain(noise=False).train()
    assert not any(isinstance(module, NoiseInjection) for module in net.modules())
    x, y = _images()
    with torch.no_grad():
        assert torch.equal(net(x, y), net(x, y))


def test_noise_injection_starts_at_zero_strength_and_scales_per_channel():
    block = NoiseInjection(3).train()
    features = torch.zeros(2, 3, 5, 5)
    assert torch.equal(block(features), features)  # zero strength at initialisation
    with torch.no_grad():
        block.weight.copy_(torch.tensor([0.0, 1.0, 2.0]).view(1, 3, 1, 1))
    out = block(features, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], features[:, 0])
    torch.testing.assert_close(out[:, 2], 2 * out[:, 1])  # one noise image, per-channel scale
    assert not torch.equal(out[0, 1], out[1, 1])  # independent per sample


def test_style_block_modulates_with_the_style_image():
    torch.manual_seed(0)
    block = StyleConvBlock(4, 6, hidden=5, stride=2, noise=False).eval()
    features = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        out = block(features, torch.zeros(1, 1, 8, 8))
        other = block(features, torch.ones(1, 1, 8, 8))
    assert out.shape == (1, 6, 8, 8)
    assert not torch.allclose(out, other)
    with pytest.raises(ValueError, match="style must have the block's output size"):
        block(features, torch.zeros(1, 1, 16, 16))


def test_coarse_reference_downsamples_by_the_factor_and_averages():
    net = PAdaINGenerator(channels=4, blocks=5, style_hidden=4, style_downsample=16)
    y = torch.full((1, 1, 384, 320), 0.25)
    coarse = net.coarse_reference(y)
    assert coarse.shape == (1, 1, 24, 20)
    torch.testing.assert_close(coarse, torch.full_like(coarse, 0.25))
    # Antialiased: a checkerboard (mean 0) averages out instead of aliasing to ±1.
    checker = (torch.arange(384).view(-1, 1) + torch.arange(320).view(1, -1)) % 2 * 2.0 - 1.0
    assert net.coarse_reference(checker.view(1, 1, 384, 320)).abs().max() < 0.05


def test_layout_published_block_count():
    net = PAdaINGenerator(channels=8, blocks=12, style_hidden=8)
    assert len(net.down) == 2 and len(net.up) == 2 and len(net.bottleneck) == 8
    assert sum(isinstance(m, StyleConvBlock) for m in net.modules()) == 12


def test_adain_style_code_is_global_and_has_dimension_8():
    net = _adain().eval()
    x, y = _images()
    assert net.style_code(y).shape == (2, 8)
    with torch.no_grad():
        # Generator accepted for interchangeability, but unused: same output.
        assert torch.equal(net(x, y), net(x, y, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("make", [_padain, _adain], ids=["padain", "adain"])
def test_gradients_reach_every_parameter(make):
    net = make().train()
    _set_noise_strength(net, 0.1)
    x, y = _images()
    out = net(x, y, generator=torch.Generator().manual_seed(0))
    (out * torch.randn_like(out)).sum().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().max() > 0, name


@pytest.mark.parametrize("make", [_padain, _adain], ids=["padain", "adain"])
def test_bad_inputs_raise_clear_errors(make):
    net = make()
    x, y = _images()
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, H, W\], got \(1, 32, 32\)"):
        net(x[0], y)
    with pytest.raises(ValueError, match=r"y must have shape \[B, 1, H, W\], got \(2, 2, 32, 32\)"):
        net(x, torch.cat([y, y], dim=1))
    with pytest.raises(ValueError, match="y must have the batch and spatial size of x"):
        net(x, y[:, :, :16])
    with pytest.raises(ValueError, match=r"H and W must be multiples of 4, got \(30, 32\)"):
        net(x[:, :, :30], y[:, :, :30])
    with pytest.raises(ValueError, match="floating-point"):
        net(x.to(torch.int32), y.to(torch.int32))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        net(x.numpy(), y)


def test_bad_constructor_arguments_raise():
    with pytest.raises(ValueError, match="blocks must be at least 5"):
        PAdaINGenerator(channels=8, blocks=4)
    with pytest.raises(ValueError, match="style_downsample must be positive"):
        PAdaINGenerator(channels=8, blocks=5, style_downsample=0)
    with pytest.raises(ValueError, match="channels must be positive"):
        AdaINGenerator(channels=0)
