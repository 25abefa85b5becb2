"""Configs, presets and the whole RbgModel."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from RegisterByGenerationLib.networks import (
    AdaINGenerator,
    DiffeomorphicRegistration,
    ModelConfig,
    PAdaINGenerator,
    RbgModel,
    RegistrationConfig,
    Stage1Config,
    Stage2Config,
    Stage2Network,
    build_model,
    build_stage1,
    count_parameters,
)
from RegisterByGenerationLib.networks.blocks import NoiseInjection

PRESETS = ["tiny", "lite", "full"]
KINDS = ["padain", "adain"]


def _images(batch=2, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(batch, 1, size, size, generator=generator) * 2 - 1 for _ in range(2))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trips_through_json(preset, kind):
    config = getattr(ModelConfig, preset)(kind)
    data = json.loads(json.dumps(config.to_dict()))
    assert ModelConfig.from_dict(data) == config
    assert config.stage1.kind == kind


def test_config_to_dict_is_plain_json_types():
    data = ModelConfig.full().to_dict()
    assert data["stage2"]["windows"] == [28, 28, 28]
    assert data["registration"]["encoder"] == [16, 32, 32, 32]
    assert data["registration"]["decoder"] == [32, 32, 32, 32, 32, 16, 16]
    assert data["stage1"] == {
        "kind": "padain", "channels": 256, "blocks": 12, "style_hidden": 512, "style_downsample": 16, "noise": True, "residual": False,
    }  # fmt: skip


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(extra=1), r"ModelConfig: unknown keys \['extra'\]"),
        (lambda d: d["stage1"].update(depth=3), r"Stage1Config: unknown keys \['depth'\]"),
        (lambda d: d["stage2"].update(window=7), r"Stage2Config: unknown keys \['window'\]"),
        (lambda d: d["registration"].pop("integration_steps"), r"RegistrationConfig: missing keys \['integration_steps'\]"),
        (lambda d: d.pop("stage2"), r"ModelConfig: missing keys \['stage2'\]"),
        (lambda d: d["stage1"].update(kind="spade"), "Stage1Config.kind must be one of"),
        (lambda d: d["stage1"].update(blocks=4), "blocks must be at least 5"),
        (lambda d: d["stage1"].update(channels=0), "Stage1Config.channels must be a positive integer"),
        (lambda d: d["stage1"].update(noise="yes"), "Stage1Config.noise must be true or false"),
        (lambda d: d["stage2"].update(windows=[7, 7]), "windows must have 3 entries"),
        (lambda d: d["stage2"].update(heads=3), r"heads \(3\) must divide feature_channels \(14\)"),
        (lambda d: d["stage2"].update(unet_channels=[16, 32]), "unet_channels must have at least 3 entries"),
        (lambda d: d["stage2"].update(mlp_ratio=0), "mlp_ratio must be a positive number"),
        (lambda d: d["registration"].update(decoder=[32, 32, 32, 32]), "decoder must have at least 5 entries"),
        (lambda d: d["registration"].update(encoder=[16, 32.5]), "encoder must be a sequence of positive integers"),
    ],
)
def test_config_from_dict_is_strict(mutate, message):
    data = ModelConfig.lite().to_dict()
    mutate(data)
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)


def test_config_rejects_non_mappings_and_unknown_preset_kind():
    with pytest.raises(ValueError, match="expected a mapping"):
        ModelConfig.from_dict([1, 2])
    with pytest.raises(ValueError, match="kind must be one of"):
        ModelConfig.lite("munit")


def test_size_multiple_is_16_for_all_presets_and_grows_with_deeper_nets():
    assert {getattr(ModelConfig, preset)().size_multiple for preset in PRESETS} == {16}
    deeper = ModelConfig(registration=RegistrationConfig(encoder=(8, 8, 8, 8, 8), decoder=(8,) * 6))
    assert deeper.size_multiple == 32


# --------------------------------------------------------------------------- building


def test_build_stage1_dispatches_on_kind():
    assert isinstance(build_stage1(Stage1Config(kind="padain", channels=4, blocks=5, style_hidden=4)), PAdaINGenerator)
    assert isinstance(build_stage1(Stage1Config(kind="adain", channels=4, blocks=1, style_hidden=4)), AdaINGenerator)
    bogus = Stage1Config(channels=4, blocks=5, style_hidden=4)
    object.__setattr__(bogus, "kind", "spade")  # bypass validation to reach the dispatch
    with pytest.raises(ValueError, match="unknown Stage 1 kind 'spade'"):
        build_stage1(bogus)


def test_full_preset_matches_the_published_sizes():
    """Construction only (a full forward at 384×320 is not run in tests)."""
    model = build_model(ModelConfig.full())
    assert isinstance(model.stage1, PAdaINGenerator)
    assert isinstance(model.registration, DiffeomorphicRegistration)
    assert isinstance(model.stage2, Stage2Network)
    # Published: ~34 M parameters in Stage 1 (12 blocks of 256 channels, γ/β hidden 512).
    assert 30e6 < count_parameters(model.stage1) < 40e6
    assert sum(isinstance(m, NoiseInjection) for m in model.stage1.modules()) == 12
    assert count_parameters(model.registration) == count_parameters(DiffeomorphicRegistration())
    assert [block.window for block in model.stage2.daca] == [28, 28, 28]
    assert {block.channels for block in model.stage2.daca} == {14}
    assert {block.heads for block in model.stage2.daca} == {2}
    # RegistFormer's Stage 1 at MUNIT's sizes is about 15 M parameters.
    assert 10e6 < count_parameters(build_stage1(ModelConfig.full("adain").stage1)) < 20e6


def test_presets_are_ordered_by_size():
    counts = {preset: count_parameters(build_model(getattr(ModelConfig, preset)())) for preset in ("tiny", "lite")}
    assert counts["tiny"] < 100_000 < counts["lite"] < 2_000_000


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_model_forward_shapes_and_ranges(kind):
    torch.manual_seed(0)
    model = build_model(ModelConfig.tiny(kind)).eval()
    x, y = _images()
    with torch.no_grad():
        out = model(x, y)
    assert set(out) == {"stage1", "flow", "output"}
    assert out["stage1"].shape == out["output"].shape == x.shape
    assert out["flow"].shape == (2, 2, 32, 32)
    for key in ("stage1", "output"):
        assert torch.isfinite(out[key]).all() and out[key].abs().max() <= 1.0
    assert out["flow"].abs().max() < 1e-2  # the registration head starts at the identity


def test_lite_model_runs_on_a_small_canvas():
    torch.manual_seed(0)
    model = build_model(ModelConfig.lite()).eval()
    x, y = _images(batch=1, size=48)
    with torch.inference_mode():
        out = model(x, y)
    assert out["output"].shape == (1, 1, 48, 48) and out["output"].abs().max() <= 1.0


def test_model_is_deterministic_in_eval_mode_and_noisy_only_in_training():
    torch.manual_seed(0)
    model = build_model(ModelConfig.tiny())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, NoiseInjection):
                module.weight.fill_(1.0)
    x, y = _images()
    model.eval()
    with torch.no_grad():
        first = model(x, y, generator=torch.Generator().manual_seed(1))
        second = model(x, y, generator=torch.Generator().manual_seed(2))
    for key in first:
        assert torch.equal(first[key], second[key]), key
    model.train()
    with torch.no_grad():
        a = model(x, y, generator=torch.Generator().manual_seed(1))
        b = model(x, y, generator=torch.Generator().manual_seed(1))
        c = model(x, y, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a["output"], b["output"])
    assert not torch.allclose(a["stage1"], c["stage1"])


def test_state_dict_reloads_strictly_into_a_model_built_from_the_saved_config():
    torch.manual_seed(0)
    model = build_model(ModelConfig.tiny()).eval()
    clone = build_model(ModelConfig.from_dict(json.loads(json.dumps(model.config.to_dict())))).eval()
    clone.load_state_dict(model.state_dict(), strict=True)
    x, y = _images()
    with torch.no_grad():
        torch.testing.assert_close(clone(x, y)["output"], model(x, y)["output"], rtol=0, atol=0)
    other = build_model(dataclasses.replace(ModelConfig.tiny(), stage2=Stage2Config(8, (4, 8, 8), 2, (3, 3, 3))))
    with pytest.raises(RuntimeError):
        other.load_state_dict(model.state_dict(), strict=True)


def test_model_rejects_bad_inputs_with_clear_messages():
    model = build_model(ModelConfig.tiny())
    x, y = _images()
    with pytest.raises(ValueError, match=r"H and W must be multiples of 16, got \(40, 32\)"):
        model(torch.zeros(1, 1, 40, 32), torch.zeros(1, 1, 40, 32))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, H, W\], got \(32, 32\)"):
        model(x[0, 0], y)
    with pytest.raises(ValueError, match="y must have the batch and spatial size of x"):
        model(x, y[:1])
    with pytest.raises(TypeError, match="config must be a ModelConfig"):
        RbgModel(ModelConfig.tiny().to_dict())
