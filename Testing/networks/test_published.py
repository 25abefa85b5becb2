"""The published-layout networks keep the authors' computation where it differs from ours
(each fact from their code, checked here without it; docs/import-published.md measures
the whole against it)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from RegisterByGenerationLib.networks.published import (
    DACAStage2Config,
    PAdaINConfig,
    PublishedConfig,
    PublishedPAdaIN,
    PublishedRbgModel,
    PublishedVoxelMorph,
    VoxelMorphConfig,
)
from RegisterByGenerationLib.networks.published.munit import PublishedLayerNorm
from RegisterByGenerationLib.networks.published.stage2 import PublishedDACA, resize_published_flow
from RegisterByGenerationLib.networks.published.voxelmorph import warp_zeros


def test_daca_reads_flow_channel_0_as_a_column_displacement():
    block = PublishedDACA(channels=2, heads=1, window=1, mlp_hidden=2).eval()
    with torch.no_grad():
        for projection in (block.q_proj, block.k_proj, block.v_proj, block.out_proj):
            projection.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        for layer in block.mlp:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.zero_(), layer.bias.zero_()
    reference = torch.zeros(1, 2, 8, 8)
    reference[0, :, 2, 5] = torch.tensor([1.0, -1.0])  # one feature at row 2, column 5
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0] = 3.0  # channel 0 = +3: with a 1x1 window, pixel (2, 2) reads (2, 5)
    out = block(torch.zeros(1, 2, 8, 8), reference, flow)
    attended = torch.zeros(1, 2, 8, 8)
    attended[0, :, 2, 2] = torch.tensor([1.0, -1.0])
    torch.testing.assert_close(out, F.group_norm(attended, 1))  # no query residual, one GroupNorm


def test_flow_is_resized_with_channel_0_scaled_by_the_width_ratio():
    flow = torch.ones(1, 2, 8, 16)
    resized = resize_published_flow(flow, (4, 4))
    assert resized[0, 0].unique().tolist() == [0.25] and resized[0, 1].unique().tolist() == [0.5]


def test_squaring_pads_with_zeros_so_a_translation_shrinks_at_the_border():
    net = PublishedVoxelMorph(encoder=(4, 8), decoder=(8, 8, 4), integration_steps=7)
    field = net.integrate(torch.full((1, 2, 32, 32), 4.0))
    assert field[0, :, 16, 16].tolist() == pytest.approx([4.0, 4.0], abs=1e-4)  # the interior translates
    assert field[0, 0, -1, 16] < 3.0  # near the border the zero padding pulls it in
    assert warp_zeros(torch.ones(1, 1, 4, 4), torch.full((1, 2, 4, 4), 10.0)).abs().max() == 0


def test_padain_guide_is_bilinear_with_aligned_corners_at_a_sixteenth():
    net = PublishedPAdaIN(channels=4, style_hidden=4)
    y = torch.rand(1, 1, 64, 48)
    guide = net.guide(y)
    assert guide.shape == (1, 1, 4, 3)
    assert guide[0, 0, 0, 0] == y[0, 0, 0, 0] and guide[0, 0, -1, -1] == y[0, 0, -1, -1]  # corners aligned


def test_padain_noise_is_off_by_default_and_scaled_per_block_when_on():
    quiet = PublishedPAdaIN(channels=4, style_hidden=4).eval()
    x = y = torch.rand(1, 1, 32, 32)
    assert torch.equal(quiet(x, y), quiet(x, y))
    noisy = PublishedPAdaIN(channels=4, style_hidden=4, noise=True).eval()
    noisy.load_state_dict(quiet.state_dict())
    assert torch.equal(noisy(x, y), quiet(x, y))  # zero strength: no effect
    with torch.no_grad():
        noisy.blocks[0].noise_strength.fill_(1.0)
    one, two = noisy(x, y, generator=torch.Generator().manual_seed(1)), noisy(x, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(one, two) and not torch.equal(one, quiet(x, y))  # drawn in eval mode too, seeded


def test_munit_layer_norm_uses_the_unbiased_deviation_plus_epsilon():
    norm = PublishedLayerNorm(2, eps=0.5)
    x = torch.tensor([0.0, 2.0, 4.0, 6.0]).view(1, 2, 1, 2)
    std = torch.tensor([0.0, 2.0, 4.0, 6.0]).std()  # unbiased: sqrt(20 / 3)
    torch.testing.assert_close(norm(x), (x - 3.0) / (std + 0.5))


def test_transposed_model_sees_our_slices_transposed():
    config = PublishedConfig("RbG", True, PAdaINConfig(4, 4), VoxelMorphConfig((4, 8, 8, 8), (8, 8, 8, 8, 8, 4, 4), 7, (48, 32)),
                             DACAStage2Config(4, 2, 3, 8))  # fmt: skip
    torch.manual_seed(0)
    transposed = PublishedRbgModel(config).eval()
    canonical = PublishedRbgModel(PublishedConfig(**{**config.__dict__, "transpose": False})).eval()
    canonical.load_state_dict(transposed.state_dict())
    x, y = torch.rand(1, 1, 32, 48), torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        ours, published = transposed(x, y), canonical(x.mT, y.mT)
    torch.testing.assert_close(ours["output"], published["output"].mT)
    torch.testing.assert_close(ours["flow"], published["flow"].mT.flip(1))  # channel 0 along our rows
    assert config.canvas == (32, 48)
