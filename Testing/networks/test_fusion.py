"""The fusion Stage 1 (MONAI BasicUNet on [x, y]): the plain and the residual form."""

from __future__ import annotations

import pytest
import torch

from RegisterByGenerationLib.networks import FusionUNet, ModelConfig, build_model
from RegisterByGenerationLib.networks.config import Stage1Config


def test_residual_form_starts_as_the_reference_exactly():
    torch.manual_seed(0)
    net = FusionUNet(channels=4, residual=True).eval()
    x, y = torch.rand(2, 1, 32, 48) * 2 - 1, torch.rand(2, 1, 32, 48) * 2 - 1
    assert torch.equal(net(x, y), y)


def test_residual_output_is_clamped_to_the_window_but_keeps_the_gradient():
    net = FusionUNet(channels=4, residual=True)
    torch.nn.init.constant_(net.head.bias, 0.5)  # pushes every voxel of y = 0.8 past +1
    x, y = torch.zeros(1, 1, 32, 32), torch.full((1, 1, 32, 32), 0.8)
    out = net(x, y)
    assert torch.equal(out, torch.ones_like(out))
    out.sum().backward()
    assert net.head.bias.grad is not None and float(net.head.bias.grad) == pytest.approx(1024.0)  # the identity's gradient


def test_plain_form_is_tanh_bounded_and_depends_on_both_inputs():
    torch.manual_seed(0)
    net = FusionUNet(channels=4).eval()
    x, y = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    out = net(x, y)
    assert out.abs().max() < 1 and not torch.equal(out, net(x, -y)) and not torch.equal(out, net(-x, y))


def test_residual_config_round_trips_and_old_cards_load_as_plain():
    config = ModelConfig.lite("fusion")
    data = config.to_dict()
    data["stage1"]["residual"] = True
    assert isinstance(build_model(ModelConfig.from_dict(data)).stage1, FusionUNet)
    assert build_model(ModelConfig.from_dict(data)).stage1.residual is True
    del data["stage1"]["residual"]  # a card written before the key existed
    assert ModelConfig.from_dict(data).stage1.residual is False
    with pytest.raises(ValueError, match="residual applies to kind 'fusion' only"):
        Stage1Config(kind="padain", residual=True)
    with pytest.raises(ValueError, match="residual must be true or false"):
        Stage1Config(kind="fusion", residual=1)
