"""`rbg demo` end to end with a tiny random model (the bundled models are exercised by the README command)."""

from __future__ import annotations

import json

import SimpleITK as sitk
from conftest import make_tiny_model

from RegisterByGenerationLib.cli import main
from RegisterByGenerationLib.cli.demo import DEMO_SIZE
from RegisterByGenerationLib.errors import InputError, ModelError


def test_demo_writes_results_and_scores_against_the_truth(tmp_path, capsys):
    model = make_tiny_model(tmp_path / "model", "cbct").path
    out = tmp_path / "demo"
    argv = ["demo", "-o", str(out), "--modality", "cbct", "--model", str(model), "--device", "cpu", "--bones", "threshold", "--no-baselines"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "MAE in body (HU)" in printed and "demo wall time" in printed
    assert "CBCT as is" in printed and "Stage 1 alone" in printed
    scores = json.loads((out / "evaluation.json").read_text())
    assert set(scores) == {"pseudo_ct", "input_as_is", "rigid_reference", "stage1"}
    # The rigidly pre-aligned reference of a phantom is close to its truth; a random model is not.
    assert scores["rigid_reference"]["mae_hu"] < 150 < scores["pseudo_ct"]["mae_hu"]
    assert 0.0 <= scores["pseudo_ct"]["bone_dice_labels"] <= 1.0
    for name in ("pseudo_ct.nii.gz", "bones.seg.nrrd", "overview.png", "report.json"):
        assert (out / "result" / name).is_file(), name
    # The demo case is DEMO_SIZE (~3 mm voxels).
    (input_file,) = (out / "data").glob("*/cbct.nii.gz")
    assert sitk.ReadImage(str(input_file)).GetSize() == DEMO_SIZE


def test_a_model_whose_pseudo_ct_is_stage1_is_not_scored_twice(tmp_path, capsys):
    """Its pseudo-CT is Stage 1's: the demo shows no "Stage 1 alone" column equal to it."""
    model = make_tiny_model(tmp_path / "model", "mr", pseudo_ct_output="stage1").path
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--modality", "mr", "--model", str(model), "--device", "cpu", "--bones", "none", "--no-baselines"]) == 0
    assert "Stage 1 alone" not in capsys.readouterr().out
    assert set(json.loads((out / "evaluation.json").read_text())) == {"pseudo_ct", "rigid_reference"}


def test_demo_with_a_model_for_the_other_modality_fails_cleanly(tmp_path, capsys):
    model = make_tiny_model(tmp_path / "model", "mr").path
    assert main(["demo", "-o", str(tmp_path / "demo"), "--modality", "cbct", "--model", str(model)]) == ModelError.exit_code
    assert "is for MR input, not CBCT" in capsys.readouterr().err


def test_demo_with_a_bad_size_fails_cleanly_and_creates_nothing(tmp_path, capsys):
    model = make_tiny_model(tmp_path / "model", "cbct").path
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--modality", "cbct", "--model", str(model), "--size", "4", "4", "4"]) == InputError.exit_code
    assert "at least 16 voxels" in capsys.readouterr().err
    assert not out.exists()
