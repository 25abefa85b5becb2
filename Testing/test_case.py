"""One case from files to files (`process_case`, `rbg run`): outputs, staging, errors."""

from __future__ import annotations

import json
import threading

import pytest
import SimpleITK as sitk
import slicerio

from RegisterByGenerationLib.bone_labels import BONE_LABELS
from RegisterByGenerationLib.case import process_case
from RegisterByGenerationLib.cli import main
from RegisterByGenerationLib.errors import Cancelled, InputError, ModelError, OutputError
from RegisterByGenerationLib.io import same_geometry
from RegisterByGenerationLib.phantoms import generate_case, write_case
from RegisterByGenerationLib.pipeline import Pipeline
from RegisterByGenerationLib.progress import parse_progress_line


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    return write_case(generate_case(seed=21, modality="mr", size=(96, 72, 16)), tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def pipeline(tiny_mr_model):
    return Pipeline(tiny_mr_model, modality="mr", device="cpu", prealign=False)


def test_cli_run_writes_every_output_with_the_input_geometry(tiny_mr_model, case_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", str(case_dir / "mr.nii.gz"), str(case_dir / "ct.nii.gz"), "-o", str(out), "--model", str(tiny_mr_model)]
    status = main([*argv, "--device", "cpu", "--no-prealign", "--bones", "threshold", "--save-intermediate", "--progress", "json"])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    events = [parse_progress_line(line) for line in lines]
    assert all(events), lines
    fractions = [event[0] for event in events]
    assert fractions == sorted(fractions)
    final = json.loads(lines[-1])
    assert final["stage"] == "finished"
    expected = {"pseudo_ct", "stage1", "flow_magnitude", "reference_prealigned", "labelmap", "segmentation", "overview", "report"}
    assert set(final["result"]["outputs"]) == expected
    assert final["result"]["precision"] in ("float32", "bfloat16")  # auto: bfloat16 only on a CPU with it natively
    assert set(final["result"]["timings_s"]) >= {"prealign_s", "generate_s", "body_mask_s", "bones_s"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["pseudo_ct.nii.gz", "stage1.nii.gz", "flow_magnitude_mm.nii.gz", "reference_prealigned.nii.gz", "bones.nii.gz", "bones.seg.nrrd", "overview.png", "report.json"]
    )
    source = sitk.ReadImage(str(case_dir / "mr.nii.gz"))
    for name in ("pseudo_ct.nii.gz", "stage1.nii.gz", "bones.nii.gz"):
        assert same_geometry(sitk.ReadImage(str(out / name)), source), name
    report = json.loads((out / "report.json").read_text())
    assert report["bones"]["method"] == "threshold" and report["model"]["name"] == "tiny-mr"
    assert {"prealign_s", "generate_s", "bones_s"} <= set(report["timings_s"])
    segment_names = {segment["name"] for segment in slicerio.read_segmentation(str(out / "bones.seg.nrrd"), skip_voxels=True)["segments"]}
    assert segment_names <= set(BONE_LABELS.values())


def test_cancel_leaves_the_output_folder_untouched(pipeline, case_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier file")
    cancel = threading.Event()

    def progress(fraction, stage, message=""):
        if stage == "bones":
            cancel.set()

    with pytest.raises(Cancelled):
        process_case(pipeline, case_dir / "mr.nii.gz", case_dir / "ct.nii.gz", out, bones="threshold", progress=progress, cancel=cancel)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failure_while_writing_leaves_nothing(pipeline, case_dir, tmp_path, monkeypatch):
    import RegisterByGenerationLib.overview as overview

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(overview, "render_overview", broken)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="cannot write the outputs \\(disk full\\)"):
        process_case(pipeline, case_dir / "mr.nii.gz", case_dir / "ct.nii.gz", out / "a" / "b", bones="none")
    assert not out.exists()  # the folders it created are removed again
    out.mkdir()
    with pytest.raises(OutputError, match="disk full"):
        process_case(pipeline, case_dir / "mr.nii.gz", case_dir / "ct.nii.gz", out, bones="none")
    assert out.is_dir() and list(out.iterdir()) == []  # a folder that was there stays


@pytest.mark.parametrize(
    "args, message, status",
    [
        (["{mr}", "{ct}", "--model", "no-such-model"], "model 'no-such-model' not found", ModelError.exit_code),
        (["{mr}", "{ct}", "--device", "tpu"], "device must be", InputError.exit_code),
        (["{mr}", "{ct}", "--batch-size", "0"], "batch_size must be >= 1", InputError.exit_code),
        (["{mr}", "{ct}", "--modality", "cbct"], "is for MR input, not CBCT", ModelError.exit_code),
    ],
)
def test_cli_run_option_errors_are_one_line_and_write_nothing(tiny_mr_model, case_dir, tmp_path, capsys, args, message, status):
    out = tmp_path / "out"
    argv = ["run", *[a.format(mr=case_dir / "mr.nii.gz", ct=case_dir / "ct.nii.gz") for a in args], "-o", str(out), "--progress", "none"]
    if "--model" not in args:
        argv += ["--model", str(tiny_mr_model)]
    assert main(argv) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rbg: error:") and message in err[0], err
    assert not out.exists()


def test_report_carries_the_pipelines_warnings_and_field_of_view(case_dir, tmp_path):
    from conftest import make_tiny_model

    model = make_tiny_model(tmp_path / "ranged", valid_input_spacing_mm={"in_plane": [0.5, 1.0], "slice": [1.0, 5.0]}).path
    outputs = process_case(Pipeline(model, device="cpu", prealign=False), case_dir / "mr.nii.gz", case_dir / "ct.nii.gz", tmp_path / "out", bones="none")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["warnings"] and "outside 0.5-1 mm" in report["warnings"][0]
    assert report["field_of_view"]["fraction_of_grid"] == 1.0 and outputs.report["warnings"] == report["warnings"]
