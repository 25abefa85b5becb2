"""What the Slicer module installs on first use: pinned packages and imported model folders."""

from __future__ import annotations

import shutil
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from conftest import make_tiny_model
from RegisterByGenerationLib.errors import ModelError
from RegisterByGenerationLib.install import (
    HOST_REQUIREMENTS,
    PROTECTED_PACKAGES,
    import_model_folder,
    missing_requirements,
    protection_constraints,
    torch_is_usable,
)
from RegisterByGenerationLib.modelstore import ModelInfo, find_model

REPO = Path(__file__).resolve().parents[1]


def test_host_requirements_are_the_pyproject_pins_without_torch_numpy_simpleitk():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    pinned = {d.split("==")[0]: d for d in dependencies if "==" in d}
    provided_by_host = {"torch", *PROTECTED_PACKAGES}
    expected = {name: spec for name, spec in pinned.items() if name not in provided_by_host}
    assert dict((r.split("==")[0], r) for r in HOST_REQUIREMENTS) == expected
    unpinned = {d.split(">")[0].split("<")[0] for d in dependencies if "==" not in d}
    assert unpinned <= set(PROTECTED_PACKAGES), f"unpinned dependencies the host would not install: {unpinned}"


def test_missing_requirements():
    assert missing_requirements() == []  # the test environment is what we pin
    pytest_version = metadata.version("pytest")
    wanted = ["pytest", f"pytest=={pytest_version}", "pytest==0.0.1", "surely-not-an-installed-package==1.0"]
    assert missing_requirements(wanted) == ["pytest==0.0.1", "surely-not-an-installed-package==1.0"]
    with pytest.raises(ValueError, match="name==version"):
        missing_requirements(["numpy>=1.0"])


def test_protection_constraints_pin_the_installed_versions():
    lines = protection_constraints()
    assert lines == [f"{name}=={metadata.version(name)}" for name in PROTECTED_PACKAGES]
    assert protection_constraints(("surely-not-an-installed-package",)) == []


def test_torch_is_usable():
    ok, message = torch_is_usable()
    assert ok and metadata.version("torch") in message
    ok, message = torch_is_usable("999.0")
    assert not ok and "999.0 or newer is needed" in message


def test_import_model_folder(tmp_path, monkeypatch):
    source = make_tiny_model(tmp_path / "downloaded" / "some-folder", name="imported-tiny").path
    models = tmp_path / "models"
    monkeypatch.setenv("RBG_MODELS_DIR", str(models))
    info = import_model_folder(source)
    assert info.path == models / "imported-tiny"
    assert find_model("imported-tiny").path == info.path
    assert (info.path / "weights.safetensors").read_bytes() == (source / "weights.safetensors").read_bytes()
    assert [p.name for p in models.iterdir()] == ["imported-tiny"], "staging folder left behind"
    with pytest.raises(ModelError, match="already installed"):
        import_model_folder(source)
    again = import_model_folder(source, overwrite=True)
    assert again.sha256 == info.sha256


def test_import_model_folder_refuses_broken_folders_before_copying(tmp_path):
    models = tmp_path / "models"
    with pytest.raises(ModelError, match="not a model directory"):
        import_model_folder(tmp_path, models)
    corrupt = make_tiny_model(tmp_path / "corrupt", name="corrupt").path
    weights = corrupt / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelError, match="sha256 does not match"):
        import_model_folder(corrupt, models)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(corrupt, incomplete)
    (incomplete / "weights.safetensors").unlink()
    with pytest.raises(ModelError, match="weights file missing"):
        import_model_folder(incomplete, models)
    assert not models.exists() or not any(models.iterdir())
    assert ModelInfo.from_directory(corrupt).name == "corrupt"  # the source is left as it was
