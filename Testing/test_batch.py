"""``rbg batch``: every case of a SynthRAD2023-layout folder, resume, isolated failures, summary CSV."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from RegisterByGenerationLib.batch import AUTOMATIC_MASK, SUMMARY_COLUMNS, CaseResult, find_cases, parse_shard, read_summary, run_batch, write_summary
from RegisterByGenerationLib.cli import main
from RegisterByGenerationLib.errors import InputError, ModelError


@pytest.fixture(autouse=True)
def one_thread():
    """One compute thread: on a shared, busy CPU, OpenMP threads waiting for each other
    make the tiny model ~100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("phantoms")


@pytest.fixture
def data_dir(phantom_root, tmp_path) -> Path:
    """Two good phantom cases, one with a corrupt mr.nii.gz, and a non-case folder."""
    from RegisterByGenerationLib.phantoms import write_phantom_dataset

    if not any(phantom_root.iterdir()):
        write_phantom_dataset(phantom_root, cases=2, seed=3, modality="mr", size=(48, 40, 16))
    data = tmp_path / "data"
    shutil.copytree(phantom_root, data)
    good = sorted(p for p in data.iterdir() if p.is_dir())
    broken = data / "zz-broken"
    broken.mkdir()
    (broken / "mr.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    shutil.copy(good[0] / "ct.nii.gz", broken / "ct.nii.gz")
    (data / "overview").mkdir()  # SynthRAD ships spreadsheets here; not a case
    (data / "overview" / "notes.txt").write_text("not a case")
    return data


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return {row["case"]: row for row in csv.DictReader(stream)}


def test_batch_isolates_failures_and_resumes(data_dir, tiny_mr_model, tmp_path):
    out = tmp_path / "out"
    seen = []
    results = run_batch(data_dir, out, model=tiny_mr_model, device="cpu", prealign=False, bones="threshold", on_case=seen.append)
    good = sorted(p.name for p in data_dir.iterdir() if (p / "ct_aligned.nii.gz").exists())
    assert [r.case_id for r in results] == [*good, "zz-broken"] == [r.case_id for r in seen]
    assert [r.status for r in results] == ["done", "done", "failed"]
    assert "mr.nii.gz: cannot be read as an image" in results[2].error
    for case in good:  # the files of rbg run
        assert sorted(p.name for p in (out / case).iterdir()) == ["bones.nii.gz", "bones.seg.nrrd", "overview.png", "pseudo_ct.nii.gz", "report.json"]
    assert not (out / "zz-broken").exists() or not any((out / "zz-broken").iterdir())

    rows = _rows(out / "summary.csv")
    assert list(rows) == [*good, "zz-broken"]
    header = list(next(iter(rows.values())))
    assert header[: len(SUMMARY_COLUMNS)] == list(SUMMARY_COLUMNS)
    for case in good:
        row = rows[case]
        assert row["status"] == "done" and float(row["seconds"]) > 0 and row["error"] == ""
        assert row["metrics_mask"] == str(data_dir / case / "mask.nii.gz")  # the case's own mask, said so
        for metric in ("mae", "psnr", "gradient_correlation", "nmi", "sharpness", "tv_z", "bone_dice", "bone_dice_label_1"):
            assert row[metric] != "", f"{case}: {metric} missing"
        assert float(row["mae"]) >= 0  # vs ct_aligned.nii.gz, the phantom's truth
        assert 0 <= float(row["bone_dice_label_1"]) <= 1  # vs the phantom's bones.nii.gz
    assert rows["zz-broken"]["status"] == "failed" and rows["zz-broken"]["mae"] == ""

    stamps = {case: (out / case / "pseudo_ct.nii.gz").stat().st_mtime_ns for case in good}
    again = run_batch(data_dir, out, model=tiny_mr_model, device="cpu", prealign=False, bones="threshold")
    assert [r.status for r in again] == ["skipped", "skipped", "failed"]
    assert {case: (out / case / "pseudo_ct.nii.gz").stat().st_mtime_ns for case in good} == stamps
    rows_again = _rows(out / "summary.csv")
    for case in good:  # a skipped case keeps the metrics of the run that made it
        assert rows_again[case]["mae"] == rows[case]["mae"] and rows_again[case]["status"] == "skipped"
        assert rows_again[case]["metrics_mask"] == rows[case]["metrics_mask"]


def test_batch_says_when_metrics_use_the_automatic_mask(data_dir, tiny_mr_model, tmp_path):
    shutil.rmtree(data_dir / "zz-broken")
    first, second = sorted(p for p in data_dir.iterdir() if (p / "ct_aligned.nii.gz").exists())
    (first / "mask.nii.gz").unlink()
    results = run_batch(data_dir, tmp_path / "out", model=tiny_mr_model, device="cpu", prealign=False, bones="none")
    assert [r.metrics_mask for r in results] == [AUTOMATIC_MASK, str(second / "mask.nii.gz")]
    assert _rows(tmp_path / "out" / "summary.csv")[first.name]["metrics_mask"] == AUTOMATIC_MASK


def test_batch_command(data_dir, tiny_mr_model, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.rmtree(data_dir / "zz-broken")
    first = sorted(p for p in data_dir.iterdir() if (p / "ct_aligned.nii.gz").exists())[0]
    (out / first.name).mkdir(parents=True)
    shutil.copy(first / "ct.nii.gz", out / first.name / "pseudo_ct.nii.gz")  # looks done: skipped
    code = main(["batch", str(data_dir), "-o", str(out), "--model", str(tiny_mr_model), "--device", "cpu", "--no-prealign", "--bones", "none", "--progress", "none"])
    assert code == 0
    assert "1 done, 1 skipped, 0 failed" in capsys.readouterr().err
    rows = _rows(out / "summary.csv")
    assert [row["status"] for row in rows.values()] == ["skipped", "done"]


def test_batch_stops_on_a_model_that_cannot_load(data_dir, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        run_batch(data_dir, tmp_path / "out", model="no-such-model", device="cpu")


def test_find_cases(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        find_cases(tmp_path / "missing")
    with pytest.raises(InputError, match="no case folders"):
        find_cases(tmp_path)
    for name, files in {"a": ["mr.nii.gz", "ct.nii.gz", "mask.nii.gz"], "b": ["ct.nii.gz"], "c": ["cbct.nii.gz"]}.items():
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_bytes(b"")
    with pytest.raises(InputError, match="both mr.nii.gz and cbct.nii.gz"):
        find_cases(tmp_path)
    modality, cases = find_cases(tmp_path, "mr")
    assert modality == "mr"
    assert cases[0].case_id == "a" and cases[0].mask_path == tmp_path / "a" / "mask.nii.gz" and cases[0].truth_path is None
    assert isinstance(cases[1], CaseResult) and cases[1].status == "failed" and "missing mr.nii.gz" in cases[1].error
    assert [c.case_id for c in cases] == ["a", "b"]  # c has no mr.nii.gz and no ct.nii.gz
    modality, cases = find_cases(tmp_path, "cbct")
    assert [(c.case_id, c.status) for c in cases] == [("a", "failed"), ("b", "failed"), ("c", "failed")]
    assert "missing ct.nii.gz" in cases[2].error


def test_summary_round_trip_and_odd_values(tmp_path):
    results = [CaseResult("x", "done", 1.234, metrics={"mae": 12.5, "bone_hd95": float("inf"), "zeta": 1.0}), CaseResult("y", "failed", 0.5, error="y: broken, really")]
    path = write_summary(results, tmp_path / "summary.csv")
    rows = read_summary(path)
    assert list(rows[0]) == [*SUMMARY_COLUMNS, "mae", "bone_hd95", "zeta"]
    assert rows[0]["bone_hd95"] == "inf" and rows[0]["seconds"] == "1.23"
    assert rows[1]["error"] == "y: broken, really" and rows[1]["mae"] == ""
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]  # no temporary file left


def test_shards_split_the_cases_and_merge_into_one_summary(data_dir, tiny_mr_model, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--model", str(tiny_mr_model), "--device", "cpu", "--no-prealign", "--bones", "none", "--progress", "none"]
    cases = [c.case_id for c in find_cases(data_dir)[1]]  # two good cases, then zz-broken
    assert main(["batch", str(data_dir), "-o", str(out), "--merge-shards"]) == InputError.exit_code  # nothing yet
    assert "no shard summaries" in capsys.readouterr().err
    assert main(["batch", str(data_dir), "-o", str(out), "--shard", "2/2", *common]) == 0  # the second good case only
    assert list(_rows(out / "summary.shard-2-of-2.csv")) == [cases[1]]
    assert main(["batch", str(data_dir), "-o", str(out), "--merge-shards"]) == InputError.exit_code
    assert "shards 1 of 2 have no summary yet" in capsys.readouterr().err
    assert main(["batch", str(data_dir), "-o", str(out), "--shard", "1/2", *common]) == 1  # first good case and zz-broken
    assert list(_rows(out / "summary.shard-1-of-2.csv")) == [cases[0], cases[2]]
    assert not (out / "summary.csv").exists()
    capsys.readouterr()
    assert main(["batch", str(data_dir), "-o", str(out), "--merge-shards"]) == 1  # zz-broken failed
    assert "3 cases merged" in capsys.readouterr().err
    merged = _rows(out / "summary.csv")
    assert list(merged) == cases and [row["status"] for row in merged.values()] == ["done", "done", "failed"]
    assert merged[cases[0]]["mae"] != "" and merged[cases[1]]["mae"] != ""
    assert list(next(iter(merged.values())))[: len(SUMMARY_COLUMNS)] == list(SUMMARY_COLUMNS)

    (out / "summary.shard-1-of-3.csv").write_text("case,status\n")
    assert main(["batch", str(data_dir), "-o", str(out), "--merge-shards"]) == InputError.exit_code
    assert "different shard counts (2, 3)" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/2/3"])
def test_shard_must_be_k_of_n(text):
    with pytest.raises(InputError, match="--shard"):
        parse_shard(text)
