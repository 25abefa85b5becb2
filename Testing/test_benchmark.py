"""``rbg benchmark``: cases, methods in worker processes, results files, missing extras."""

from __future__ import annotations

import csv
import importlib.util
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk

from RegisterByGenerationLib import benchmark, cli
from RegisterByGenerationLib.methods.classical import registration as classical_registration
from RegisterByGenerationLib.cli import benchmark as cli_benchmark
from RegisterByGenerationLib.errors import InputError, ModelError
from RegisterByGenerationLib.phantoms import generate_case, write_case

HAVE_ANTS = importlib.util.find_spec("ants") is not None
HAVE_ITK = importlib.util.find_spec("itk") is not None
#: The published comparison rests on the SyN and elastix adapters: CI (which installs them
#: with the train extra) must run their tests, never skip them; elsewhere they may be absent.
IN_CI = bool(os.environ.get("CI"))
TINY = (32, 32, 16)


@pytest.fixture(autouse=True)
def only_benchmark(monkeypatch):
    """Build the parser with this sub-command alone, so other sub-commands cannot break these tests."""
    monkeypatch.setattr(cli, "SUBCOMMANDS", {"benchmark": "benchmark"})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One tiny held-out MR phantom (seed 9100, never used in training)."""
    folder = tmp_path_factory.mktemp("bench-data")
    write_case(generate_case(9100, "mr", TINY), folder / "mr")
    return folder


def test_registered_and_method_lists_agree(monkeypatch):
    monkeypatch.undo()
    assert cli.SUBCOMMANDS["benchmark"] == "benchmark"
    assert cli_benchmark.METHODS == benchmark.METHODS


def test_find_cases(data_dir, tmp_path):
    cases = benchmark.find_cases(data_dir)
    assert [(c.case_id, c.modality, c.kind) for c in cases] == [("1PS9100", "mr", "phantom")]
    assert cases[0].input_path.name == "mr.nii.gz"
    with pytest.raises(InputError, match="no case folder"):
        benchmark.find_cases(tmp_path)
    with pytest.raises(InputError, match="--cases"):
        benchmark.find_cases(data_dir, cases=0)


def test_end_to_end_rigid_stage1_rbg(data_dir, tiny_mr_model, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["benchmark", "--data", str(data_dir), "-o", str(out), "--methods", "input", "rigid", "stage1", "rbg", "refined", "registformer",
            "--mr-model", str(tiny_mr_model), "--threads", "1"]
    assert cli.main(argv) == 0
    assert "rbg benchmark: 5 rows" in capsys.readouterr().out  # no "input" row: an MR is no CT
    with open(out / "results.csv", newline="") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["rigid", "stage1", "rbg", "refined", "registformer"]
    for method in ("rigid", "stage1", "rbg", "refined"):
        row = rows[method]
        assert row["case"] == "1PS9100" and row["threads"] == "1"
        for key in ("mae", "psnr", "ssim", "bone_dice", "gradient_correlation", "nmi", "sharpness", "tv_z", "wall_s", "peak_mem_mb"):
            assert math.isfinite(float(row[key])), (method, key)
        assert float(row["wall_s"]) > 0
    # the rigidly aligned real CT of the same phantom is far closer to the truth than random weights
    assert float(rows["rigid"]["mae"]) < float(rows["rbg"]["mae"])
    assert rows["stage1"]["wall_s"] == rows["rbg"]["wall_s"] and "timed together" in rows["stage1"]["note"]
    assert rows["refined"]["wall_s"] != rows["rbg"]["wall_s"]  # its own pipeline run, with the demons refinement
    assert rows["registformer"]["note"].startswith("skipped") and rows["registformer"]["mae"] == ""
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "| rigid | 1 |" in table and "| rbg | 1 |" in table and "### Every case" in table
    assert (out / "figure.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_extra_is_named_before_any_work(data_dir, tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.split(".")[0] in ("ants", "itk", "itk_elastix") else real_find_spec(name, *a))
    for method in ("syn", "elastix"):
        with pytest.raises(InputError, match=r"pip install -e \.\[benchmark\]"):
            benchmark.run_benchmark(data_dir, tmp_path / "out", methods=("rigid", method))
    assert not (tmp_path / "out").exists()
    assert benchmark.missing_extra("rigid") is None


def test_bad_arguments(data_dir, tiny_mr_model, tmp_path):
    with pytest.raises(InputError, match="--methods"):
        benchmark.run_benchmark(data_dir, tmp_path, methods=("demons",))
    with pytest.raises(InputError, match="--threads"):
        benchmark.run_benchmark(data_dir, tmp_path, methods=("rigid",), threads=0)
    cbct = tmp_path / "cbct-data"
    write_case(generate_case(9101, "cbct", (16, 16, 16)), cbct)
    with pytest.raises(ModelError, match="CBCT model"):
        benchmark.run_benchmark(cbct, tmp_path / "out", methods=("rbg",), models={"cbct": str(tiny_mr_model)})
    assert cli.main(["benchmark", "-o", str(tmp_path)]) == InputError.exit_code  # --data missing: one-line error


def oblique_image() -> sitk.Image:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.normal(size=(6, 7, 8)).astype(np.float32))
    image.SetSpacing((1.5, 0.8, 3.0))
    image.SetOrigin((10.0, -20.0, 5.0))
    rotation = sitk.VersorTransform((0.1, 0.2, 0.3), 0.4)
    image.SetDirection(rotation.GetMatrix())
    return image


@pytest.mark.skipif(not HAVE_ANTS and not IN_CI, reason="antspyx not installed (pip install -e .[benchmark])")
def test_ants_round_trip_keeps_voxels_and_geometry():
    image = oblique_image()
    converted = benchmark.sitk_to_ants(image)
    assert converted.shape == image.GetSize()
    np.testing.assert_allclose(converted.origin, image.GetOrigin())
    np.testing.assert_allclose(np.asarray(converted.direction).ravel(), image.GetDirection(), atol=1e-12)
    # same voxel at the same index: ANTs [x, y, z] vs SimpleITK [z, y, x]
    assert converted.numpy()[3, 2, 1] == sitk.GetArrayFromImage(image)[1, 2, 3]
    back = benchmark.ants_to_sitk(converted, like=image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)


@pytest.mark.skipif(not HAVE_ITK and not IN_CI, reason="itk-elastix not installed (pip install -e .[benchmark])")
def test_itk_conversion_keeps_geometry():
    import itk

    image = oblique_image()
    converted = classical_registration.sitk_to_itk(image)
    np.testing.assert_allclose(tuple(converted.GetOrigin()), image.GetOrigin())
    np.testing.assert_allclose(itk.array_from_matrix(converted.GetDirection()).ravel(), image.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(itk.GetArrayFromImage(converted), sitk.GetArrayFromImage(image))


@pytest.mark.skipif(not HAVE_ANTS and not IN_CI, reason="antspyx not installed (pip install -e .[benchmark])")
def test_syn_lands_on_the_input_grid_and_registers(registration_case):
    case = registration_case
    input_image = sitk.ReadImage(str(case.input_path))
    out, field = benchmark.run_baseline_with_field("syn", input_image, sitk.ReadImage(str(case.folder / "ct.nii.gz")), modality="mr")
    assert out.GetSize() == input_image.GetSize() and out.GetOrigin() == input_image.GetOrigin()
    array = sitk.GetArrayFromImage(out)
    assert array.min() >= -1100 and array.max() > 300  # HU, with bone carried over from the CT
    assert _mae(out, case) < 0.6 * _mae(_unregistered(input_image, case), case)  # it registered (~0.4 measured)
    # SyN's deformable field, on the input grid: diffeomorphic, so (almost) nothing folds
    assert field.GetSize() == input_image.GetSize() and field.GetOrigin() == input_image.GetOrigin()
    assert field.GetNumberOfComponentsPerPixel() == 3 and np.abs(sitk.GetArrayViewFromImage(field)).max() > 0.1
    assert _folds(field) < 0.001


def test_merge_two_runs(tmp_path, capsys):
    first = [{"case": "A", "kind": "phantom", "modality": "mr", "method": "rigid", **{k: 1.0 for k in benchmark.METRICS},
              "wall_s": 2.0, "peak_mem_mb": 3.0, "threads": 2, "note": ""}]
    second = [{**first[0], "method": "rbg", "mae": 0.5}, {"case": "A", "kind": "phantom", "modality": "mr", "method": "registformer", "threads": 2, "note": "skipped"}]
    benchmark.write_results(first, tmp_path / "a")
    benchmark.write_results(second, tmp_path / "b")
    assert cli.main(["benchmark", "--merge", str(tmp_path / "a" / "results.csv"), str(tmp_path / "b" / "results.csv"), "-o", str(tmp_path / "m")]) == 0
    rows = benchmark.read_results([tmp_path / "m" / "results.csv"])
    assert [(r["method"], r.get("mae")) for r in rows] == [("rigid", 1.0), ("rbg", 0.5), ("registformer", None)]
    assert "| rbg | 1 | 0.5 ± 0.0 |" in (tmp_path / "m" / "results.md").read_text(encoding="utf-8")
    with pytest.raises(InputError, match="not a results.csv"):
        benchmark.read_results([tmp_path / "m" / "results.md"])
    # a results.csv from before the folded-fraction column still reads
    old = tmp_path / "old.csv"
    lines = (tmp_path / "a" / "results.csv").read_text(encoding="utf-8").splitlines()
    index = lines[0].split(",").index("fold_fraction")
    old.write_text("\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != index) for line in lines) + "\n", encoding="utf-8")
    assert np.isnan(benchmark.read_results([old])[0]["fold_fraction"]) and benchmark.read_results([old])[0]["mae"] == 1.0


def test_the_input_method_is_the_cbct_as_it_is_and_refused_for_mr(data_dir):
    cbct = generate_case(9101, "cbct", TINY)
    out = benchmark.run_baseline("input", cbct.input, cbct.reference_ct, modality="cbct")
    assert np.array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(cbct.input).astype(np.float32))
    assert out.GetOrigin() == cbct.input.GetOrigin() and out.GetSpacing() == cbct.input.GetSpacing()
    with pytest.raises(InputError, match="only for CBCT"):
        benchmark.run_baseline("input", cbct.input, cbct.reference_ct, modality="mr")


@pytest.mark.skipif(not HAVE_ITK and not IN_CI, reason="itk-elastix is not installed (pip install -e .[benchmark])")
def test_elastix_lands_on_the_input_grid_and_registers(registration_case, tmp_path, monkeypatch):
    case = registration_case
    monkeypatch.chdir(tmp_path)  # nothing may be written beside the caller
    input_image = sitk.ReadImage(str(case.input_path))
    reference = sitk.ReadImage(str(case.folder / "ct.nii.gz"))
    out, field = benchmark.run_baseline_with_field("elastix", input_image, reference, modality="mr")
    assert out.GetSize() == input_image.GetSize() and out.GetOrigin() == input_image.GetOrigin()
    assert sitk.GetArrayViewFromImage(out).max() > 300
    # the field is elastix's whole transform: resampling the reference with it (and elastix's
    # final cubic B-spline interpolation) gives elastix's output
    again = sitk.Resample(reference, input_image, sitk.DisplacementFieldTransform(sitk.Image(field)), sitk.sitkBSpline3, -1024.0, sitk.sitkFloat32)
    body = sitk.GetArrayViewFromImage(sitk.ReadImage(str(case.folder / "mask.nii.gz"))) > 0
    assert np.abs(sitk.GetArrayViewFromImage(again) - sitk.GetArrayViewFromImage(out))[body].mean() < 0.01
    assert _folds(field) < 0.01
    assert list(tmp_path.iterdir()) == []
    assert _mae(out, case) < 0.6 * _mae(_unregistered(input_image, case), case)  # it registered (~0.4 measured)


@pytest.fixture(scope="module")
def registration_case(tmp_path_factory):
    """An MR phantom at ~3.7 mm: coarse enough to be quick, fine enough to register (at
    the ~11 mm of TINY both methods make the reference worse than the identity)."""
    folder = tmp_path_factory.mktemp("registration")
    write_case(generate_case(9100, "mr", (96, 80, 24)), folder)
    return benchmark.find_cases(folder)[0]


def _folds(field: sitk.Image) -> float:
    from RegisterByGenerationLib.metrics import deformation_statistics

    return deformation_statistics(field)["fold_fraction"]


def _unregistered(input_image: sitk.Image, case) -> sitk.Image:
    """The reference CT resampled onto the input grid as it lies (identity)."""
    return sitk.Resample(sitk.ReadImage(str(case.folder / "ct.nii.gz")), input_image, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)


def _mae(image: sitk.Image, case) -> float:
    """MAE (HU) against the case's truth inside its body mask."""
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.folder / "ct_aligned.nii.gz"))).astype(np.float32)
    inside = sitk.GetArrayFromImage(sitk.ReadImage(str(case.folder / "mask.nii.gz"))) > 0
    return float(np.abs(sitk.GetArrayFromImage(image).astype(np.float32) - truth)[inside].mean())
