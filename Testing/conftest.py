"""Shared fixtures: the real pelvis CT from ../shared/data and small synthetic volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_ct_path() -> Path:
    """The real abdomen/pelvis CT (122x101x112, 3 mm, LPS-flipped direction, int32 HU)."""
    path = SHARED_DATA / "example_ct_pelvis.nii.gz"
    if not path.exists():
        pytest.skip(f"real CT not found at {path} (clone the repository beside ../shared)")
    return path


@pytest.fixture(scope="session")
def real_ct(real_ct_path: Path) -> sitk.Image:
    return sitk.ReadImage(str(real_ct_path))


def make_volume(
    size=(40, 32, 12),
    spacing=(1.2, 0.9, 3.0),
    origin=(-20.0, 35.5, 102.0),
    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
    seed: int = 0,
    dtype=np.float32,
) -> sitk.Image:
    """A smooth random volume with the given geometry (size is x, y, z)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in size[::-1]), indexing="ij")
    array = 1000 * np.sin(3 * x + rng.uniform()) * np.cos(2 * y) + 300 * z + rng.normal(0, 5, x.shape)
    image = sitk.GetImageFromArray(array.astype(dtype))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


TEST_NORMALIZATION = {
    "mr": {"kind": "percentile", "lower": 0.5, "upper": 99.5, "n4": False},
    "cbct": {"kind": "ct_window", "low": -1024.0, "high": 3000.0},
}


def make_tiny_model(directory: Path, modality: str = "mr", *, name: str | None = None, seed: int = 0, pixel_spacing=(2.0, 2.0), native_range=None,
                    config=None, **card):  # fmt: skip
    """A random-weight model directory with the ``tiny`` config, or ``config`` (fast;
    output is meaningless)."""
    import torch

    from RegisterByGenerationLib.modelstore import save_model
    from RegisterByGenerationLib.networks import ModelConfig, build_model

    torch.manual_seed(seed)
    model = build_model(config or ModelConfig.tiny())
    metadata = {
        "name": name or f"tiny-{modality}",
        "modality": modality,
        "description": "random weights, for tests",
        "version": "0.0.0",
        "pixel_spacing_mm": None if pixel_spacing is None else list(pixel_spacing),
        "normalization": {"input": TEST_NORMALIZATION[modality], "reference": TEST_NORMALIZATION["cbct"]},
        "training": {"data": "none (random initialisation)"},
    }
    if native_range is not None:
        metadata["native_pixel_spacing_range_mm"] = list(native_range)
    metadata.update(card)  # e.g. pseudo_ct_output, valid_input_spacing_mm
    return save_model(model, directory, metadata)


@pytest.fixture(scope="session")
def tiny_mr_model(tmp_path_factory) -> Path:
    """Path of a tiny random-weight MR model directory (shared by the session)."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-mr").path
