"""Model directories: writing, checksums, strict loading, the registry and `rbg models`."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_tiny_model
from RegisterByGenerationLib.cli import main
from RegisterByGenerationLib.errors import ModelError
from RegisterByGenerationLib.modelstore import ModelInfo, default_model_name, file_sha256, find_model, list_models, load_model


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    folder = tmp_path / "user-models"
    folder.mkdir()
    monkeypatch.setenv("RBG_MODELS_DIR", str(folder))
    return folder


def test_save_load_round_trip_is_exact(tmp_path):
    info = make_tiny_model(tmp_path / "m", seed=3)
    assert info.sha256 == file_sha256(info.path / "weights.safetensors")
    again = ModelInfo.from_directory(info.path)
    assert again.metadata == info.metadata
    first, second = load_model(info), load_model(again)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert not first.training


def test_corrupt_weights_are_refused(tmp_path):
    info = make_tiny_model(tmp_path / "m")
    weights = info.path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 .* does not match"):
        load_model(ModelInfo.from_directory(info.path))


def test_weights_not_matching_architecture_are_refused(tmp_path):
    info = make_tiny_model(tmp_path / "m")
    card = json.loads((info.path / "model.json").read_text())
    card["architecture"]["registration"]["encoder"] = [8, 8, 8, 8]
    (info.path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="weights do not match the architecture"):
        load_model(ModelInfo.from_directory(info.path))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda card: card.pop("modality"), "missing keys modality"),
        (lambda card: card.update(modality="pet"), "modality 'pet'"),
        (lambda card: card.update(format_version=99), "format_version 99"),
    ],
)
def test_malformed_cards_are_refused(tmp_path, edit, message):
    info = make_tiny_model(tmp_path / "m")
    card = json.loads((info.path / "model.json").read_text())
    edit(card)
    (info.path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message):
        ModelInfo.from_directory(info.path)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ModelError, match="not a model directory"):
        ModelInfo.from_directory(tmp_path)
    (tmp_path / "model.json").write_text("{broken")
    with pytest.raises(ModelError, match="cannot be parsed"):
        ModelInfo.from_directory(tmp_path)


def test_registry_finds_user_models_by_name(user_models):
    make_tiny_model(user_models / "a", name="my-model")
    (user_models / "junk").mkdir()
    assert "my-model" in [m.name for m in list_models()]
    assert find_model("my-model").path == user_models / "a"
    with pytest.raises(ModelError, match="'nope' not found.*my-model"):
        find_model("nope")
    assert default_model_name("cbct") == "phantom-cbct-lite"


def test_cli_models_list_and_info(user_models, capsys):
    info = make_tiny_model(user_models / "a", name="cli-model")
    assert main(["models", "list"]) == 0
    assert "cli-model" in capsys.readouterr().out
    assert main(["models", "info", "cli-model"]) == 0
    out = capsys.readouterr().out
    assert '"name": "cli-model"' in out and "sha256 ok" in out
    (info.path / "weights.safetensors").write_bytes(b"tampered")
    assert main(["models", "info", "cli-model"]) == ModelError.exit_code
    assert "MISMATCH" in capsys.readouterr().out
    assert main(["models", "info", "nope"]) == ModelError.exit_code
    assert "rbg: error: model 'nope' not found" in capsys.readouterr().err


def test_saved_model_folder_is_readable_by_others(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        info = make_tiny_model(tmp_path / "m")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(info.path.stat().st_mode) == 0o755
    assert stat.S_IMODE((info.path / "weights.safetensors").stat().st_mode) == 0o644
