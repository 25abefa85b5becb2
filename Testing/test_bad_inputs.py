"""Every class of bad input to ``rbg run``: one line naming the file and the problem, the
class's own exit status, no traceback, nothing in the output folder."""

from __future__ import annotations

import errno
import gzip
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_io import write_dicom_series, write_mha

from RegisterByGenerationLib.cli import main
from RegisterByGenerationLib.errors import (
    EXIT_CODES,
    InputMismatchError,
    InvalidImageError,
    MissingInputError,
    OutputError,
    UnreadableInputError,
)
from RegisterByGenerationLib.io import same_geometry
from RegisterByGenerationLib.phantoms import generate_case, write_case
from RegisterByGenerationLib.progress import parse_progress_line

MISSING, UNREADABLE, INVALID, MISMATCH, OUTPUT = (
    MissingInputError.exit_code, UnreadableInputError.exit_code, InvalidImageError.exit_code, InputMismatchError.exit_code, OutputError.exit_code,
)  # fmt: skip


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict[str, Path]:
    folder = write_case(generate_case(seed=23, modality="mr", size=(64, 48, 16)), tmp_path_factory.mktemp("case"))
    return {"mr": folder / "mr.nii.gz", "ct": folder / "ct.nii.gz", "mask": folder / "mask.nii.gz", "dir": folder}


def _like(reference: sitk.Image, array: np.ndarray, **geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    for key, value in geometry.items():
        getattr(image, f"Set{key}")(value)
    return image


def _bad_input(kind: str, case: dict[str, Path], folder: Path) -> Path:
    """Write the bad input of ``kind`` into ``folder`` and return its path."""
    mr = sitk.ReadImage(str(case["mr"]))
    array = sitk.GetArrayFromImage(mr).astype(np.float32)
    path = folder / f"{kind}.nii.gz"
    if kind == "truncated":
        data = case["mr"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not an image":
        path.write_bytes(gzip.compress(b"patient notes, not a volume\n"))
    elif kind == "2-D":
        sitk.WriteImage(mr[:, :, 5], str(path))
    elif kind == "4-D":
        sitk.WriteImage(sitk.JoinSeries([mr, mr]), str(path))
    elif kind == "RGB":
        channel = sitk.Cast(sitk.RescaleIntensity(mr, 0, 255), sitk.sitkUInt8)
        path = folder / "screenshot.nrrd"
        sitk.WriteImage(sitk.Compose(channel, channel, channel), str(path))
    elif kind == "single slice":
        sitk.WriteImage(mr[:, :, 5:6], str(path))
    elif kind == "label map":
        sitk.WriteImage(sitk.ReadImage(str(case["mask"])), str(path))
    elif kind == "non-finite":
        array[3, 10, 10] = np.nan
        path = folder / "non-finite.nrrd"  # ITK's NIfTI writer turns NaN into 0
        sitk.WriteImage(_like(mr, array), str(path))
    elif kind == "zero spacing":
        path = write_mha(folder / "zero.mha", "1 0 1", size=(8, 8, 8))
    elif kind == "anisotropic":
        sitk.WriteImage(_like(mr, array, Spacing=(0.5, 0.5, 25.0)), str(path))
    elif kind == "elsewhere":
        ct = sitk.ReadImage(str(case["ct"]))
        ct.SetOrigin(tuple(o + 5000.0 for o in ct.GetOrigin()))
        sitk.WriteImage(ct, str(path))
    else:
        raise AssertionError(kind)
    return path


def _run(args: list[str], model: Path, capsys) -> tuple[int, list[str]]:
    status = main(["run", *args, "--model", str(model), "--device", "cpu", "--bones", "none", "--progress", "none"])
    return status, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "kind, role, status, message",
    [
        ("missing", "input", MISSING, "file not found"),
        ("truncated", "input", UNREADABLE, "cannot be read as an image"),
        ("not an image", "reference", UNREADABLE, "cannot be read as an image"),
        ("2-D", "input", INVALID, "image is 2D, a 3D volume is required"),
        ("4-D", "input", INVALID, "image is 4D, a 3D volume is required"),
        ("RGB", "input", INVALID, "3 components per voxel"),
        ("single slice", "input", INVALID, "has a single slice along an axis"),
        ("non-finite", "input", INVALID, "non-finite (NaN or Inf) voxels"),
        ("zero spacing", "input", UNREADABLE, "Zero-valued spacing"),  # ITK refuses the header itself
        ("anisotropic", "input", INVALID, "more than 20 times coarser"),
        ("label map", "input", MISMATCH, "looks like a label map (2 distinct integer values)"),
        ("elsewhere", "reference", MISMATCH, "do not overlap in physical space"),
    ],
)
def test_each_bad_input_class(kind, role, status, message, case, tiny_mr_model, tmp_path, capsys):
    bad = tmp_path / "missing.nii.gz" if kind == "missing" else _bad_input(kind, case, tmp_path)
    inputs = [str(bad), str(case["ct"])] if role == "input" else [str(case["mr"]), str(bad)]
    out = tmp_path / "out"
    code, err = _run([*inputs, "-o", str(out)], tiny_mr_model, capsys)
    assert code == status, err
    assert len(err) == 1 and err[0].startswith(f"rbg: error: {bad}") and message in err[0], err
    assert not out.exists()


@pytest.mark.parametrize(
    "inputs, message",
    [
        (("ct", "mr"), "does not look like a CT in Hounsfield units"),  # MR given as the reference
        (("ct", "ct_copy"), "declared MR but looks like a CT"),  # CT given as the MR
        (("mr", "mr"), "the same file as the input"),
    ],
)
def test_inputs_in_the_wrong_role(inputs, message, case, tiny_mr_model, tmp_path, capsys):
    (tmp_path / "ct_copy.nii.gz").write_bytes(case["ct"].read_bytes())
    paths = {"mr": case["mr"], "ct": case["ct"], "ct_copy": tmp_path / "ct_copy.nii.gz"}
    out = tmp_path / "out"
    code, err = _run([str(paths[inputs[0]]), str(paths[inputs[1]]), "-o", str(out)], tiny_mr_model, capsys)
    assert code == MISMATCH and len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_dicom_folder_with_several_series(case, tiny_mr_model, tmp_path, capsys, caplog):
    mr = sitk.Cast(sitk.ReadImage(str(case["mr"])), sitk.sitkInt16)
    folder = tmp_path / "dicom"
    write_dicom_series(mr, folder, "1.2.826.0.1.3680043.2.1125.31")
    write_dicom_series(mr[:, :, :4], folder, "1.2.826.0.1.3680043.2.1125.32")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="RegisterByGenerationLib.io"):
        code, err = _run([str(folder), str(case["ct"]), "-o", str(out), "--no-prealign"], tiny_mr_model, capsys)
    assert code == 0, err
    warning = next(r.getMessage() for r in caplog.records if "reading DICOM series" in r.getMessage())
    assert "1.2.826.0.1.3680043.2.1125.31 (most files)" in warning and "1.2.826.0.1.3680043.2.1125.32" in warning and "--input-series" in warning
    assert sitk.ReadImage(str(out / "pseudo_ct.nii.gz")).GetSize() == mr.GetSize()

    chosen = tmp_path / "chosen"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="RegisterByGenerationLib.io"):
        code, err = _run([str(folder), str(case["ct"]), "-o", str(chosen), "--no-prealign", "--input-series", "1.2.826.0.1.3680043.2.1125.32"], tiny_mr_model, capsys)
    assert code == 0 and not any("reading DICOM series" in r.getMessage() for r in caplog.records), err
    assert sitk.ReadImage(str(chosen / "pseudo_ct.nii.gz")).GetSize() == (*mr.GetSize()[:2], 4)

    wrong = tmp_path / "wrong"
    code, err = _run([str(folder), str(case["ct"]), "-o", str(wrong), "--input-series", "1.2.3"], tiny_mr_model, capsys)
    assert code == UNREADABLE and len(err) == 1 and "holds no DICOM series 1.2.3; it holds" in err[0], err
    assert not wrong.exists()


def test_unwritable_and_full_output(case, tiny_mr_model, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = _run([str(case["mr"]), str(case["ct"]), "-o", str(blocker / "out")], tiny_mr_model, capsys)
    assert code == OUTPUT and len(err) == 1 and "output folder is not writable" in err[0], err

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "out"
    code, err = _run([str(case["mr"]), str(case["ct"]), "-o", str(out), "--no-prealign"], tiny_mr_model, capsys)
    assert code == OUTPUT and len(err) == 1 and err[0].startswith(f"rbg: error: {out}") and os.strerror(errno.ENOSPC) in err[0], err
    assert not out.exists()


def test_paths_with_spaces_and_non_ascii_characters(case, tiny_mr_model, tmp_path, capsys):
    folder = tmp_path / "Patient Müller – 東京"
    folder.mkdir()
    for name in ("mr", "ct"):
        (folder / f"{name} scan é.nii.gz").write_bytes(case[name].read_bytes())
    out = folder / "résultats 1"
    code, err = _run([str(folder / "mr scan é.nii.gz"), str(folder / "ct scan é.nii.gz"), "-o", str(out), "--no-prealign"], tiny_mr_model, capsys)
    assert code == 0, err
    assert same_geometry(sitk.ReadImage(str(out / "pseudo_ct.nii.gz")), sitk.ReadImage(str(case["mr"])))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals (Windows has no SIGTERM to send to a child)")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_midway_stops_cleanly_and_writes_nothing(signum, case, tiny_mr_model, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "RegisterByGenerationLib", "run", str(case["mr"]), str(case["ct"]), "-o", str(out),
               "--model", str(tiny_mr_model), "--device", "cpu", "--bones", "none", "--progress", "json", "--batch-size", "1"]  # fmt: skip
    # A shell's background job (nohup ... &) ignores SIGINT, and a child inherits that; the
    # command is checked for a SIGINT that reaches it, as Ctrl-C does in a terminal.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        for line in process.stdout:
            event = parse_progress_line(line)
            if event is not None and event[1] == "prealign":
                # The run has started its work. The tiny model's whole generate stage takes
                # milliseconds (a signal sent then could miss the end of the run); the rigid
                # pre-alignment takes seconds: a signal now lands midway.
                break
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] in ("rbg: terminated; nothing was written", "rbg: interrupted; nothing was written"), err
    assert "Traceback" not in err
    assert not out.exists()


def test_exit_codes_are_distinct_and_documented():
    codes = [MISSING, UNREADABLE, INVALID, MISMATCH, OUTPUT]
    assert len(set(codes)) == len(codes) and set(codes) <= set(EXIT_CODES)
    guide = (Path(__file__).parents[1] / "docs" / "user-guide.md").read_text(encoding="utf-8")
    for code in EXIT_CODES:
        assert f"| {code} |" in guide, code
