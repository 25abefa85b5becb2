"""Bone masks: the threshold method against phantom truth and on the real CT, the
TotalSegmentator boundary (arguments, label map, missing package or weights), and the
bones.nii.gz / bones.seg.nrrd outputs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from RegisterByGenerationLib.bone_labels import BONE_COLORS, BONE_LABELS, GENERIC_BONE, PELVIC_LABELS, label_of
from RegisterByGenerationLib.bones import BoneResult, segment_bones, threshold_bones, write_bone_outputs
from RegisterByGenerationLib.bones import totalsegmentator as ts
from RegisterByGenerationLib.errors import ModelError
from RegisterByGenerationLib.mask import body_mask
from RegisterByGenerationLib.metrics.segmentation import dice

# Measured on this case (seed 2, 2.2 mm pixels, 3.5 mm slices, phantom 1.0): overall
# 0.90, hips 0.82/0.83, femurs 0.76/0.76, sacrum 0.84, L5 0.85. Floors sit a little below.
PHANTOM_FLOORS = {"overall": 0.85, "hip_left": 0.75, "hip_right": 0.75, "femur_left": 0.68, "femur_right": 0.68, "sacrum": 0.75, "vertebrae_L5": 0.75}


@pytest.fixture(scope="module")
def phantom():
    from RegisterByGenerationLib.phantoms import generate_case

    return generate_case(2, "mr", size=(192, 144, 40))


@pytest.fixture(scope="module")
def phantom_labels(phantom):
    return threshold_bones(phantom.ct_aligned)


def _centroid_mm(labels: sitk.Image, value: int) -> np.ndarray:
    index = np.argwhere(sitk.GetArrayViewFromImage(labels) == value)[:, ::-1].mean(axis=0)
    return np.asarray(labels.TransformContinuousIndexToPhysicalPoint(index.tolist()))


# --- threshold method ---------------------------------------------------------------


def test_threshold_bones_matches_phantom_truth(phantom, phantom_labels):
    labels, info = phantom_labels
    assert labels.GetSize() == phantom.ct_aligned.GetSize()
    assert labels.GetDirection() == phantom.ct_aligned.GetDirection()
    predicted, truth = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(phantom.bones)
    scores = {name: dice(predicted, truth, label=value) for value, name in PELVIC_LABELS.items()}
    scores["overall"] = dice(predicted, truth)
    print("threshold bones Dice on phantom seed 2:", {k: round(v, 3) for k, v in scores.items()})
    for name, floor in PHANTOM_FLOORS.items():
        assert scores[name] >= floor, f"{name}: Dice {scores[name]:.3f} < {floor}"
    assert info["missing"] == []
    assert set(info["femoral_heads_mm"]) == {"left", "right"}


def test_threshold_bones_left_is_patient_left_in_any_orientation(phantom, phantom_labels):
    labels, _ = phantom_labels
    # Same anatomy stored right-anterior-superior: array columns now run the other way.
    flipped = sitk.DICOMOrient(phantom.ct_aligned, "RAS")
    labels_flipped, _ = threshold_bones(flipped)
    back = sitk.DICOMOrient(labels_flipped, sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(labels.GetDirection()))
    agreement = np.mean(sitk.GetArrayFromImage(back) == sitk.GetArrayFromImage(labels))
    assert agreement > 0.999
    # Patient left is +x (LPS): the left hip and femur lie at larger x than the right ones.
    assert _centroid_mm(labels_flipped, label_of("hip_left"))[0] > _centroid_mm(labels_flipped, label_of("hip_right"))[0]
    assert _centroid_mm(labels_flipped, label_of("femur_left"))[0] > _centroid_mm(labels_flipped, label_of("femur_right"))[0]


def test_threshold_bones_take_the_callers_body_mask_in_its_orientation(phantom, phantom_labels):
    # A run computes the pseudo-CT's body mask once for the bones and the report; given on
    # the CT's own (here non-canonical) grid, it gives the labels computed without it.
    flipped = sitk.DICOMOrient(phantom.ct_aligned, "RAS")
    given, _ = threshold_bones(flipped, body=body_mask(flipped, modality="ct"))
    assert np.array_equal(sitk.GetArrayFromImage(given), sitk.GetArrayFromImage(threshold_bones(flipped)[0]))
    with pytest.raises(ValueError, match="body must be on ct's grid"):
        threshold_bones(flipped, body=body_mask(flipped[:, :, 1:], modality="ct"))


def test_threshold_bones_real_ct_gives_plausible_labels(real_ct):
    result = segment_bones(real_ct, "threshold")
    volumes = result.volumes_ml()
    print("threshold bones on the real CT (ml):", volumes, result.details)
    for side in ("left", "right"):
        assert volumes[f"hip_{side}"] > 150, volumes
        assert volumes[f"femur_{side}"] > 20, volumes
    assert volumes["sacrum"] > 50 and volumes["vertebrae_L5"] > 20, volumes
    centre = {name: _centroid_mm(result.labels, value) for value, name in PELVIC_LABELS.items()}
    midline = result.details["midline_x_mm"]
    assert centre["hip_left"][0] > midline > centre["hip_right"][0]
    assert centre["femur_left"][0] > midline > centre["femur_right"][0]
    assert abs(centre["sacrum"][0] - midline) < 20 and abs(centre["vertebrae_L5"][0] - midline) < 20
    # Superior-inferior order: femurs below the hip bones' centres, L5 above the sacrum.
    assert max(centre["femur_left"][2], centre["femur_right"][2]) < min(centre["hip_left"][2], centre["hip_right"][2])
    assert centre["vertebrae_L5"][2] > centre["sacrum"][2]


def test_threshold_bones_name_no_pelvic_bone_above_the_pelvis(real_ct):
    # The real CT's abdominal slices: the top 40 % of its 336 mm, above the iliac crest.
    full = segment_bones(real_ct, "threshold")
    axial = sitk.DICOMOrient(full.labels, "LPS")
    z_mm = np.array([axial.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(axial.GetSize()[2])])
    above = z_mm > full.details["iliac_crest_z_mm"] + 40.0
    labels = sitk.GetArrayFromImage(axial)[above]
    assert not np.isin(labels, [label_of(n) for n in ("hip_left", "hip_right", "femur_left", "femur_right")]).any()
    assert (labels == GENERIC_BONE).sum() * np.prod(axial.GetSpacing()) / 1000 > 20  # lumbar spine and ribs: generic bone
    # An abdomen alone (no femoral head in view): every bone voxel is generic, no pelvic name invented.
    abdomen_only = sitk.DICOMOrient(real_ct, "LPS")[:, :, int(np.argmax(above)) :]
    result = segment_bones(abdomen_only, "threshold")
    values = set(np.unique(sitk.GetArrayFromImage(result.labels)).tolist())
    assert values == {0, GENERIC_BONE}, values
    assert result.details["missing"] == list(PELVIC_LABELS.values()) and result.details["generic_bone_ml"] > 20


def test_threshold_bones_without_bone_labels_nothing():
    image = sitk.Image([24, 20, 10], sitk.sitkFloat32) + 40.0  # soft tissue only
    labels, info = threshold_bones(image)
    assert not sitk.GetArrayViewFromImage(labels).any()
    assert info["missing"] == list(PELVIC_LABELS.values())


# --- method choice ------------------------------------------------------------------


def test_segment_bones_rejects_unknown_method():
    with pytest.raises(ValueError, match="method must be one of"):
        segment_bones(sitk.Image([8, 8, 8], sitk.sitkFloat32), "deep")


def test_auto_falls_back_to_threshold_and_says_why(monkeypatch):
    monkeypatch.setattr(ts, "_package_installed", lambda: False)
    result = segment_bones(sitk.Image([24, 20, 10], sitk.sitkFloat32) + 40.0, "auto")
    assert isinstance(result, BoneResult)
    assert result.method == "threshold"
    assert f"pip install TotalSegmentator=={ts.TOTALSEGMENTATOR_VERSION}" in result.note
    assert result.summary()["note"] == result.note


# --- TotalSegmentator up to the boundary ---------------------------------------------


def test_totalsegmentator_kwargs(tmp_path):
    kwargs = ts.totalsegmentator_kwargs(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz", device="cuda:1", fast=True)
    assert kwargs["task"] == "total" and kwargs["ml"] is True and kwargs["fast"] is True and kwargs["quiet"] is True
    assert kwargs["roi_subset"] == ["hip_left", "hip_right", "femur_left", "femur_right", "sacrum", "vertebrae_L5"]
    assert kwargs["device"] == "gpu:1"
    assert kwargs["input"] == tmp_path / "ct.nii.gz" and kwargs["output"] == tmp_path / "seg.nii.gz"
    assert ts.totalsegmentator_kwargs("a.nii.gz", "b.nii.gz", device="cpu", fast=False)["fast"] is False


@pytest.mark.parametrize(("device", "expected"), [("cpu", "cpu"), ("cuda", "gpu"), ("cuda:0", "gpu:0"), ("mps", "mps")])
def test_totalsegmentator_device_names(device, expected):
    assert ts.totalsegmentator_device(device) == expected


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_totalsegmentator_device_rejects_unknown(device):
    with pytest.raises(ValueError, match="device must be"):
        ts.totalsegmentator_device(device)


def test_totalsegmentator_label_map_uses_total_task_ids():
    # total task (v2): 25 sacrum, 27 L5, 75/76 femur l/r, 77/78 hip l/r; 1 spleen, 28 L4 are not ours.
    ts_ids = np.array([0, 25, 27, 75, 76, 77, 78, 1, 28, 117])
    expected = [0, label_of("sacrum"), label_of("vertebrae_L5"), label_of("femur_left"), label_of("femur_right"), label_of("hip_left"), label_of("hip_right"), 0, 0, 0]
    assert ts.map_totalsegmentator_labels(ts_ids).tolist() == expected
    assert set(ts.TOTAL_TASK_CLASS_IDS) == set(PELVIC_LABELS.values()) == set(ts.ROI_SUBSET)


def test_weights_dir_follows_totalsegmentator_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    assert ts.totalsegmentator_weights_dir() == tmp_path / "home" / "nnunet" / "results"
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "weights"))
    assert ts.totalsegmentator_weights_dir() == tmp_path / "weights"


def test_package_missing_gives_install_and_weights_commands(monkeypatch):
    monkeypatch.setattr(ts, "_package_installed", lambda: False)
    usable, reason = ts.totalsegmentator_status(fast=True)
    assert not usable
    assert "pip install TotalSegmentator==2.18.0" in reason and "totalseg_download_weights -t total_fast" in reason
    with pytest.raises(ModelError, match="not installed"):
        segment_bones(sitk.Image([8, 8, 8], sitk.sitkFloat32), "totalsegmentator")


def test_weights_missing_fails_fast_without_running(monkeypatch, tmp_path):
    monkeypatch.setattr(ts, "_package_installed", lambda: True)  # as if pip-installed
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path))
    results = tmp_path / "nnunet" / "results"
    # A half-copied folder (no checkpoint) counts as missing.
    (results / "Dataset297_TotalSegmentator_total_3mm_1559subj").mkdir(parents=True)
    usable, reason = ts.totalsegmentator_status(fast=True)
    assert not usable
    assert "Dataset297_TotalSegmentator_total_3mm_1559subj" in reason and "Dataset298_TotalSegmentator_total_6mm_1559subj" in reason
    assert str(results) in reason and "totalseg_download_weights -t total_fast" in reason
    # The package is not really installed here: reaching its import would raise
    # ModuleNotFoundError, so a ModelError proves the check came first.
    with pytest.raises(ModelError, match="weights missing"):
        segment_bones(sitk.Image([8, 8, 8], sitk.sitkFloat32), "totalsegmentator")
    # The full-resolution models need other folders.
    assert "Dataset291_TotalSegmentator_part1_organs_1559subj" in ts.totalsegmentator_status(fast=False)[1]


def test_weights_present_makes_totalsegmentator_usable(monkeypatch, tmp_path):
    monkeypatch.setattr(ts, "_package_installed", lambda: True)
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path))
    for name in ts.required_weight_folders(fast=True):
        fold = tmp_path / name / "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres" / "fold_0"
        fold.mkdir(parents=True)
        (fold / "checkpoint_final.pth").write_bytes(b"")
    assert ts.totalsegmentator_status(fast=True) == (True, "")
    assert not ts.totalsegmentator_status(fast=False)[0]


# --- output files ---------------------------------------------------------------------


def _small_labels() -> sitk.Image:
    array = np.zeros((6, 7, 8), dtype=np.uint8)
    array[1:3, 2:4, 1:3] = label_of("hip_left")
    array[3:5, 1:3, 5:7] = label_of("femur_right")
    array[5, 6, 7] = label_of("vertebrae_L5")
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.1, 2.5))
    image.SetOrigin((-12.0, 30.5, 101.0))
    image.SetDirection((0, -1, 0, 1, 0, 0, 0, 0, 1))  # permuted, flipped axes
    return image


def test_bone_outputs_read_back_with_slicerio(tmp_path):
    labels = _small_labels()
    paths = write_bone_outputs(labels, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bones.nii.gz", "bones.seg.nrrd"]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(paths["labelmap"]))), sitk.GetArrayFromImage(labels))

    segmentation = slicerio.read_segmentation(str(paths["segmentation"]))
    assert slicerio.segment_names(segmentation) == list(BONE_LABELS.values())
    expected_types = {
        "hip_left": ("29836001", "7771000"),
        "hip_right": ("29836001", "24028007"),
        "femur_left": ("71341001", "7771000"),
        "femur_right": ("71341001", "24028007"),
        "sacrum": ("54735007", None),
        "vertebrae_L5": ("49668003", None),
        "bone": ("272673000", None),
    }
    for value, name in BONE_LABELS.items():
        segment = slicerio.segment_from_name(segmentation, name)
        assert segment["labelValue"] == value
        assert np.allclose(segment["color"], BONE_COLORS[value], atol=1e-6)
        terminology = segment["terminology"]
        assert terminology["category"] == ["SCT", "123037004", "Anatomical Structure"]
        type_code, modifier = expected_types[name]
        assert terminology["type"][:2] == ["SCT", type_code]
        assert (terminology.get("typeModifier", [None, None])[1]) == modifier
    # Voxels and geometry round-trip ([i, j, k] voxels, LPS ijkToLPS).
    voxels = segmentation["voxels"]
    assert np.array_equal(voxels, sitk.GetArrayFromImage(labels).transpose(2, 1, 0))
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"])
    assert np.allclose(ijk_to_lps[:3, 3], labels.GetOrigin())
    assert np.allclose(ijk_to_lps[:3, :3], np.reshape(labels.GetDirection(), (3, 3)) * np.asarray(labels.GetSpacing()))
    # Empty segments are present with an empty extent.
    assert slicerio.segment_from_name(segmentation, "sacrum")["extent"] == [0, -1, 0, -1, 0, -1]
    # SimpleITK reads the same file as a label volume on the same grid.
    reread = sitk.ReadImage(str(paths["segmentation"]))
    assert np.allclose(reread.GetOrigin(), labels.GetOrigin()) and np.allclose(reread.GetDirection(), labels.GetDirection())


def test_bone_outputs_reject_foreign_labels_before_writing(tmp_path):
    labels = _small_labels()
    labels[0, 0, 0] = 9
    with pytest.raises(ValueError, match="not bone labels"):
        write_bone_outputs(labels, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["inside", "touching the grid's faces", "empty"])
def test_distance_to_background_on_the_bounding_box_is_scipys_on_the_whole_grid(where):
    from scipy import ndimage

    from RegisterByGenerationLib.bones.threshold import _distance_to_background

    rng = np.random.default_rng(5)
    mask = np.zeros((20, 30, 40), dtype=bool)
    if where == "inside":
        mask[5:12, 8:20, 10:31] = rng.random((7, 12, 21)) > 0.2
    elif where != "empty":
        mask[:9, 20:, :7] = rng.random((9, 10, 7)) > 0.2
    expected = ndimage.distance_transform_edt(mask, sampling=(3.0, 0.8, 0.9)).astype(np.float32)
    assert np.array_equal(_distance_to_background(mask, (3.0, 0.8, 0.9)), expected)
