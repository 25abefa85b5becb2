"""``rbg evaluate``: table and JSON end to end, one-line errors, nothing written on failure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from RegisterByGenerationLib import cli
from RegisterByGenerationLib.errors import InputError, InputMismatchError, MissingInputError, OutputError, UnreadableInputError
from RegisterByGenerationLib.metrics import evaluate_images

SHAPE = (12, 36, 40)  # [z, y, x]


@pytest.fixture(autouse=True)
def only_evaluate(monkeypatch):
    """Build the parser with this sub-command alone, so other sub-commands cannot break these tests."""
    monkeypatch.setattr(cli, "SUBCOMMANDS", {"evaluate": "evaluate"})


def write(array: np.ndarray, path, spacing=(1.1, 1.1, 2.5)) -> str:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing)
    image.SetOrigin((-30.0, 12.0, 40.0))
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture()
def case(tmp_path):
    """pseudo-CT, truth, MR-like input and body mask of a small pelvis-like phantom."""
    _, y, x = np.indices(SHAPE)
    body = ((y - 18) / 15) ** 2 + ((x - 20) / 17) ** 2 <= 1
    bone = (y - 20) ** 2 + (x - 14) ** 2 <= 20
    truth = np.where(body, 40.0, -1000.0) + np.where(bone, 800.0, 0.0)
    rng = np.random.default_rng(0)
    pred = truth + rng.normal(0, 15, SHAPE)
    mr = np.where(body, 300.0, 0.0) - np.where(bone, 200.0, 0.0) + rng.normal(0, 5, SHAPE)
    return {
        "pseudo_ct": write(pred.astype(np.float32), tmp_path / "pseudo_ct.nii.gz"),
        "truth": write(truth.astype(np.int16), tmp_path / "ct.nii.gz"),
        "input": write(mr.astype(np.float32), tmp_path / "mr.nrrd"),
        "mask": write(body.astype(np.uint8), tmp_path / "body.nii.gz"),
        "dir": tmp_path,
    }


def test_evaluate_is_registered_in_the_real_command_table(monkeypatch):
    monkeypatch.undo()
    assert cli.SUBCOMMANDS["evaluate"] == "evaluate"


def test_table_and_json_end_to_end(case, capsys):
    out = case["dir"] / "metrics.json"
    argv = ["evaluate", case["pseudo_ct"], "--truth", case["truth"], "--input", case["input"], "--mask", case["mask"], "--json", str(out)]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["metric", "value", "unit"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["mae"][1] == "HU" and rows["psnr"][1] == "dB" and rows["ssim"][1] == "-"
    assert len({len(line) - len(line.split()[-1]) for line in lines}) == 1  # aligned unit column

    document = json.loads(out.read_text())
    expected = evaluate_images(
        *(sitk.ReadImage(case[k]) for k in ("pseudo_ct",)),
        truth=sitk.ReadImage(case["truth"]),
        input_image=sitk.ReadImage(case["input"]),
        mask=sitk.ReadImage(case["mask"]),
    )
    assert document["metrics"] == pytest.approx(expected)
    assert document["units"]["mae"] == "HU" and document["units"]["bone_hd95"] == "mm"
    assert document["inputs"]["truth"] == case["truth"]
    assert 10 < document["metrics"]["mae"] < 14  # |N(0, 15)| has mean 12 HU
    assert float(rows["mae"][0]) == pytest.approx(document["metrics"]["mae"], rel=1e-5)
    assert sorted(p.name for p in case["dir"].iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_non_finite_values_and_automatic_mask(case, capsys):
    out = case["dir"] / "same.json"
    assert cli.main(["evaluate", case["truth"], "--truth", case["truth"], "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "automatic body mask" in captured.err
    document = json.loads(out.read_text())  # strict JSON: inf is written as a string
    assert document["metrics"]["psnr"] == "inf"
    assert document["metrics"]["mae"] == 0.0 and document["metrics"]["bone_dice"] == 1.0
    assert math.isinf(float([line for line in captured.out.splitlines() if line.startswith("psnr")][0].split()[1]))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("rbg: error: ")
    return err


def test_missing_and_unreadable_files_fail_with_one_line(case, capsys):
    missing = str(case["dir"] / "nope.nii.gz")
    assert cli.main(["evaluate", case["pseudo_ct"], "--truth", missing]) == MissingInputError.exit_code
    assert missing in one_line_error(capsys)
    broken = case["dir"] / "broken.nii.gz"
    broken.write_text("not an image")
    assert cli.main(["evaluate", str(broken)]) == UnreadableInputError.exit_code
    assert str(broken) in one_line_error(capsys)


def test_grid_mismatch_names_the_file_and_writes_nothing(case, capsys):
    out = case["dir"] / "metrics.json"
    other = write(np.random.default_rng(1).normal(size=SHAPE), case["dir"] / "other.nii.gz", spacing=(1.1, 1.1, 3.0))
    assert cli.main(["evaluate", case["pseudo_ct"], "--truth", other, "--json", str(out)]) == InputMismatchError.exit_code
    err = one_line_error(capsys)
    assert other in err and "spacing (1.1, 1.1, 3) vs (1.1, 1.1, 2.5)" in err
    assert not out.exists()


def test_output_folder_and_bone_arguments_checked_first(case, capsys):
    assert cli.main(["evaluate", case["pseudo_ct"], "--json", str(case["dir"] / "missing" / "m.json")]) == OutputError.exit_code
    assert "does not exist" in one_line_error(capsys)
    assert cli.main(["evaluate", case["pseudo_ct"], "--truth-bones", case["mask"]]) == InputError.exit_code
    assert "--pred-bones" in one_line_error(capsys)
    empty = write(np.zeros(SHAPE, np.uint8), case["dir"] / "empty.nii.gz")
    assert cli.main(["evaluate", case["pseudo_ct"], "--mask", empty]) == InputError.exit_code
    assert f"{empty}: mask is empty" in one_line_error(capsys)


def test_bone_label_maps(case, capsys):
    labels = sitk.GetArrayFromImage(sitk.ReadImage(case["mask"]))  # the body as "bone" label 1
    bones = write(labels * 3, case["dir"] / "bones.nii.gz")
    assert cli.main(["evaluate", case["pseudo_ct"], "--truth-bones", bones, "--pred-bones", bones]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["bone_dice"] == "1" and rows["bone_dice_label_3"] == "1" and rows["bone_hd95"] == "0"
