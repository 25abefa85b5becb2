"""The run report (report.json) and the overview picture (overview.png)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread
from scipy import ndimage

from RegisterByGenerationLib import __version__
from RegisterByGenerationLib.bones import BoneResult
from RegisterByGenerationLib.errors import OutputError
from RegisterByGenerationLib.geometry import resample_onto
from RegisterByGenerationLib.modelstore import ModelInfo
from RegisterByGenerationLib.overview import render_overview
from RegisterByGenerationLib.pipeline import PipelineResult
from RegisterByGenerationLib.report import build_report, peak_memory, transform_summary, write_report


@pytest.fixture(scope="module")
def case():
    from RegisterByGenerationLib.phantoms import generate_case

    return generate_case(1, "mr", size=(96, 72, 24))


@pytest.fixture(scope="module")
def reference_on_input(case):
    return resample_onto(case.reference_ct, case.input, None, default_value=-1024.0)


def _result(case, reference_on_input, transform=None) -> PipelineResult:
    if transform is None:
        transform = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.05, 0.2, (3.0, -2.0, 5.0))
    return PipelineResult(
        pseudo_ct=sitk.Cast(case.ct_aligned, sitk.sitkInt16),
        reference_prealigned=reference_on_input,
        transform=transform,
        timings={"prealign_s": 1.5, "preprocess_s": 0.25, "generate_s": 3.0, "postprocess_s": 0.125},
        device="cpu",
        precision="bfloat16",
        batch_size=4,
        canvas={"canvas_shape_zhw": [24, 64, 96]},
    )


def test_build_report_records_the_run(case, reference_on_input, tiny_mr_model, tmp_path):
    info = ModelInfo.from_directory(tiny_mr_model)
    bones = BoneResult(case.bones, "threshold", note="TotalSegmentator is not installed: pip install ...")
    report = build_report(
        case.input, case.reference_ct, _result(case, reference_on_input), model=info, input_path="in/mr.nii.gz",
        reference_path="in/ct.nii.gz", modality="mr", bones=bones, extra_timings={"bones_s": 0.5},
        outputs={"pseudo_ct": tmp_path / "pseudo_ct.nii.gz"},
    )
    given = report["inputs"]["input"]
    assert given["path"] == "in/mr.nii.gz" and given["modality"] == "mr"
    assert given["size"] == list(case.input.GetSize())
    assert np.allclose(given["spacing"], case.input.GetSpacing()) and np.allclose(given["origin"], case.input.GetOrigin())
    assert np.allclose(given["direction"], case.input.GetDirection())
    assert given["pixel_type"] == case.input.GetPixelIDTypeAsString() and given["orientation"] == "LPS"
    reference = report["inputs"]["reference_ct"]
    assert reference["size"] == list(case.reference_ct.GetSize()) and reference["path"] == "in/ct.nii.gz"
    assert reference["intensity"]["min"] <= reference["intensity"]["p50"] <= reference["intensity"]["max"]
    assert report["model"]["name"] == info.name and report["model"]["sha256"] == info.sha256 and report["model"]["version"] == "0.0.0"
    assert report["device"] == "cpu" and report["precision"] == "bfloat16" and report["batch_size"] == 4
    assert report["timings_s"] == {"prealign_s": 1.5, "preprocess_s": 0.25, "generate_s": 3.0, "postprocess_s": 0.125, "bones_s": 0.5}
    assert report["total_s"] == pytest.approx(5.375)
    assert report["memory"]["peak_rss_mib"] > 10 and report["memory"]["cuda_max_allocated_mib"] is None
    prealign = report["prealignment"]
    assert prealign["kind"] == "Euler3DTransform" and not prealign["identity"]
    assert np.allclose(prealign["rotation_deg"], [math.degrees(0.1), math.degrees(-0.05), math.degrees(0.2)])
    assert np.allclose(prealign["translation_mm"], [3.0, -2.0, 5.0]) and np.allclose(prealign["center_mm"], [1.0, 2.0, 3.0])
    assert report["bones"]["method"] == "threshold" and report["bones"]["note"].startswith("TotalSegmentator is not installed")
    assert report["bones"]["volumes_ml"]["hip_left"] > 10
    for name in ("sharpness", "tv_z", "gradient_correlation", "nmi"):
        assert math.isfinite(report["metrics"][name]), name
    assert report["metric_units"]["tv_z"] == "HU"
    assert report["library"]["RegisterByGeneration"] == __version__
    assert report["outputs"] == {"pseudo_ct": str(tmp_path / "pseudo_ct.nii.gz")}

    path = write_report(report, tmp_path / "report.json")
    assert json.loads(path.read_text(encoding="utf-8")) == report
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_undefined_metrics_become_null(case, reference_on_input, tmp_path):
    report = build_report(case.input, case.reference_ct, _result(case, reference_on_input), metrics={"mae": 31.5, "bone_hd95": math.inf, "ssim": math.nan})
    assert report["metrics"] == {"mae": 31.5, "bone_hd95": None, "ssim": None}
    assert report["undefined_metrics"] == ["bone_hd95", "ssim"]
    assert report["bones"]["method"] == "none"
    write_report(report, tmp_path / "report.json")  # strict JSON, no NaN


def test_metric_failure_is_recorded_not_raised(case, reference_on_input):
    other_grid = sitk.Image([10, 10, 10], sitk.sitkFloat32) + 1.0
    report = build_report(other_grid, case.reference_ct, _result(case, reference_on_input))
    assert "grid" in report["metrics_error"] and report["metrics"] == {}


def test_identity_transform_and_no_transform():
    assert transform_summary(sitk.Euler3DTransform())["identity"] is True
    assert transform_summary(None) is None
    assert transform_summary(sitk.TranslationTransform(3, (1.0, 2.0, 3.0)))["parameters"] == [1.0, 2.0, 3.0]


def test_write_report_refuses_bad_content_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="not plain JSON"):
        write_report({"value": math.nan}, tmp_path / "report.json")
    with pytest.raises(OutputError, match="does not exist"):
        write_report({"value": 1}, tmp_path / "missing" / "report.json")
    assert list(tmp_path.iterdir()) == []


def test_peak_memory_is_positive_and_cuda_only_on_cuda():
    memory = peak_memory("cpu")
    assert memory["peak_rss_mib"] > 0 and memory["cuda_max_allocated_mib"] is None


# --- overview.png -----------------------------------------------------------------------


def test_overview_is_written_with_all_panels(case, reference_on_input, tmp_path):
    path = render_overview(case.input, reference_on_input, case.ct_aligned, case.bones, tmp_path / "overview.png", modality="mr", title="phantom 1PS0001")
    picture = imread(str(path))
    assert picture.ndim == 3 and picture.shape[0] > 300 and picture.shape[1] > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["overview.png"]
    # Bone colours and the amber edge overlay are present.
    rgb = picture[..., :3]
    amber = (rgb[..., 0] > 0.9) & (rgb[..., 1] > 0.75) & (rgb[..., 2] < 0.2)
    assert amber.sum() > 200


def test_overview_keeps_physical_proportions(tmp_path):
    # A ball of radius 45 mm on a grid of 2 x 2 x 6 mm voxels: every panel must show a
    # disc, not an ellipse squashed 3:1 along the slice direction.
    size, spacing = (80, 80, 24), (2.0, 2.0, 6.0)
    z, y, x = np.meshgrid(*(np.arange(n) * s - n * s / 2 for n, s in zip(size[::-1], spacing[::-1])), indexing="ij")
    ball = np.where(x**2 + y**2 + z**2 < 45.0**2, 900.0, -1000.0).astype(np.float32)
    body = np.where(x**2 + y**2 < 75.0**2, np.maximum(ball, 40.0), -1000.0).astype(np.float32)
    images = []
    for array in (body, body, body):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        images.append(image)
    path = render_overview(*images, None, tmp_path / "overview.png", modality="cbct")
    bright = imread(str(path))[..., :3].mean(axis=2) > 0.97
    pieces, count = ndimage.label(bright)
    ratios = []
    for found in ndimage.find_objects(pieces):
        height, width = found[0].stop - found[0].start, found[1].stop - found[1].start
        if height * width > 1500:  # the discs, not text
            ratios.append(width / height)
    assert len(ratios) >= 6, ratios  # 2 views x (input, reference, pseudo-CT) at least
    assert all(0.85 < r < 1.15 for r in ratios), ratios


def test_overview_rejects_images_off_the_input_grid(case, reference_on_input, tmp_path):
    with pytest.raises(ValueError, match="reference_prealigned must be on the input's grid"):
        render_overview(case.input, case.reference_ct, case.ct_aligned, None, tmp_path / "overview.png")
    with pytest.raises(OutputError, match="does not exist"):
        render_overview(case.input, reference_on_input, case.ct_aligned, None, tmp_path / "missing" / "overview.png")
    assert list(tmp_path.iterdir()) == []
