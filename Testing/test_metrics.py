"""Metrics (DESIGN §6) on hand-computable cases, against scikit-image and MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from skimage.metrics import structural_similarity

from RegisterByGenerationLib.errors import InputError
from RegisterByGenerationLib.metrics import (
    bone_dice_by_threshold,
    dice,
    evaluate_images,
    gradient_correlation,
    hd95,
    mae,
    normalized_mutual_information,
    psnr,
    sharpness,
    ssim,
    tv_z,
    unit_of,
)

SHAPE = (16, 40, 40)  # [z, y, x]


def smooth_ct(seed: int = 0, shape=SHAPE) -> np.ndarray:
    """A smooth random volume spanning roughly -1500..3500 HU (so clipping matters)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=2.0)
    return (field / np.abs(field).max() * 2500 + 1000).astype(np.float64)


def labels_phantom(shift_x: int = 0, shape=SHAPE) -> np.ndarray:
    """Label map: 0 air, 1 body (ellipse), 2 bone (disc), 3 organ (box); shifted along x."""
    _, y, x = np.indices(shape)
    x = x - shift_x
    labels = np.zeros(shape, dtype=np.uint8)
    labels[((y - 20) / 16) ** 2 + ((x - 20) / 17) ** 2 <= 1] = 1
    labels[(y - 24) ** 2 + (x - 14) ** 2 <= 16] = 2
    labels[:, 10:17, 20:30] = 3
    return labels


CT_OF_LABEL = np.array([-1000.0, 40.0, 700.0, 300.0])
MR_OF_LABEL = np.array([0.0, 300.0, 60.0, 700.0])


def box_mask(shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[3:13, 8:32, 8:32] = True
    return mask


# ---------------------------------------------------------------- with ground truth


def test_identical_images_score_perfectly():
    ct = smooth_ct()
    mask = box_mask()
    assert mae(ct, ct, mask) == 0.0
    assert psnr(ct, ct, mask) == math.inf
    assert ssim(ct, ct, mask) == pytest.approx(1.0, abs=1e-6)
    assert ssim(ct, ct) == pytest.approx(1.0, abs=1e-6)


def test_constant_offset_gives_known_mae_and_psnr():
    truth = np.clip(smooth_ct(), -1000, 2900)  # stays inside [-1024, 3000] after +10
    pred = truth + 10.0
    assert mae(pred, truth) == pytest.approx(10.0)
    assert mae(truth, pred, box_mask()) == pytest.approx(10.0)
    assert psnr(pred, truth) == pytest.approx(20 * math.log10(4024 / 10))
    assert psnr(pred, truth, data_range=1000.0) == pytest.approx(20 * math.log10(1000 / 10))


def test_mae_uses_raw_hu_but_psnr_clips():
    # SynthRAD2023 clips for PSNR/SSIM only: 3500 vs 3000 HU is a 500 HU error for MAE,
    # but both clip to 3000 for PSNR.
    truth = np.full(SHAPE, 3000.0)
    pred = np.full(SHAPE, 3500.0)
    assert mae(pred, truth) == 500.0
    assert psnr(pred, truth) == math.inf


def test_ssim_without_mask_equals_scikit_image():
    truth = smooth_ct(0)
    pred = truth + np.random.default_rng(1).normal(0, 300, SHAPE)
    shifted = [np.clip(v, -1024, 3000) + 1024 for v in (truth, pred)]
    expected = structural_similarity(shifted[0], shifted[1], win_size=7, data_range=4024.0)
    assert 0.2 < expected < 0.99
    assert ssim(pred, truth) == pytest.approx(expected, abs=1e-6)
    # An all-ones mask is the same as no mask (the 3-voxel border is left out in both).
    assert ssim(pred, truth, np.ones(SHAPE)) == pytest.approx(expected, abs=1e-6)


def test_masked_ssim_matches_hand_computation():
    # Written from the definition: clip, -1024 outside the mask, +1024, 7^3 uniform window,
    # sample (co)variances, C1 = (0.01 * 4024)^2, C2 = (0.03 * 4024)^2, mean over the mask.
    shape = (15, 15, 15)
    truth = smooth_ct(2, shape)
    pred = truth + np.random.default_rng(3).normal(0, 200, shape)
    mask = np.zeros(shape, dtype=bool)
    mask[4:10, 5:11, 3:9] = True
    prepared = [np.where(mask, np.clip(v, -1024, 3000), -1024) + 1024 for v in (pred, truth)]
    c1, c2 = (0.01 * 4024) ** 2, (0.03 * 4024) ** 2
    values = []
    for z, y, x in np.argwhere(mask):
        a, b = (v[z - 3 : z + 4, y - 3 : y + 4, x - 3 : x + 4].ravel() for v in prepared)
        cov = np.cov(a, b, ddof=1)
        mu_a, mu_b = a.mean(), b.mean()
        values.append(
            (2 * mu_a * mu_b + c1) * (2 * cov[0, 1] + c2) / ((mu_a**2 + mu_b**2 + c1) * (cov[0, 0] + cov[1, 1] + c2))
        )
    assert ssim(pred, truth, mask) == pytest.approx(np.mean(values), abs=1e-5)


def test_ssim_rejects_volumes_thinner_than_the_window():
    with pytest.raises(ValueError, match="at least 7"):
        ssim(np.zeros((6, 20, 20)), np.zeros((6, 20, 20)))


@pytest.mark.parametrize(
    "metric",
    [
        lambda p, t, m: mae(p, t, m),
        lambda p, t, m: psnr(p, t, m),
        lambda p, t, m: ssim(p, t, m),
        lambda p, t, m: bone_dice_by_threshold(p, t, m),
        lambda p, t, m: gradient_correlation(t, p, m),
        lambda p, t, m: normalized_mutual_information(t, p, m),
        lambda p, t, m: sharpness(p, m),
        lambda p, t, m: tv_z(p, m),
    ],
    ids=["mae", "psnr", "ssim", "bone_dice", "gc", "nmi", "sharpness", "tv_z"],
)
def test_changes_outside_the_mask_do_not_matter(metric):
    truth = smooth_ct(0)
    pred = truth + np.random.default_rng(4).normal(0, 50, SHAPE)
    mask = box_mask()
    changed = pred.copy()
    changed[~mask] += np.random.default_rng(5).normal(0, 800, int((~mask).sum()))
    before, after = metric(pred, truth, mask), metric(changed, truth, mask)
    assert math.isfinite(before)
    assert after == pytest.approx(before, rel=1e-12, abs=1e-12)


def test_argument_errors_name_the_problem():
    a = np.zeros(SHAPE)
    with pytest.raises(ValueError, match="same shape"):
        mae(a, np.zeros((16, 40, 41)))
    with pytest.raises(ValueError, match="3D"):
        mae(np.zeros((40, 40)), np.zeros((40, 40)))
    with pytest.raises(ValueError, match="mask is empty"):
        psnr(a, a, np.zeros(SHAPE))
    with pytest.raises(ValueError, match="data_range"):
        psnr(a, a, data_range=0)
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a, spacing=(1, 1))


# ---------------------------------------------------------------- overlap


def test_dice_binary_per_label_and_empty_rules():
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[2:6, 10:20, 10:20] = 1  # 400 voxels
    truth[8:12, 10:20, 10:20] = 2
    pred = truth.copy()
    assert dice(pred, truth) == 1.0
    pred[2:6, 10:20, 15:25] = np.where(pred[2:6, 10:20, 15:25] == 0, 1, pred[2:6, 10:20, 15:25])
    pred[2:6, 10:20, 10:15] = 0  # label 1 shifted by 5 columns: overlap 200 of 400 + 400
    assert dice(pred, truth, label=1) == pytest.approx(2 * 200 / 800)
    assert dice(pred, truth, label=2) == 1.0
    assert dice(pred, truth) == pytest.approx(2 * 600 / 1600)
    assert math.isnan(dice(pred, truth, label=7))
    assert dice(np.zeros(SHAPE), truth) == 0.0


def sphere(center, radius, shape=(30, 40, 40)) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius**2


def test_hd95_identical_shifted_and_empty():
    spacing = (2.0, 1.0, 1.5)  # (z, y, x) mm
    truth = sphere((15, 20, 18), 8)
    assert hd95(truth, truth, spacing) == 0.0
    shifted = sphere((15, 20, 21), 8)  # 3 columns = 4.5 mm along x
    value = hd95(shifted, truth, spacing)
    assert 4.5 - 1.5 <= value <= 4.5
    assert hd95(truth, shifted, spacing) == value  # symmetric
    assert hd95(np.zeros_like(truth), truth, spacing) == math.inf
    assert math.isnan(hd95(np.zeros_like(truth), np.zeros_like(truth), spacing))


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
def test_hd95_agrees_with_monai():
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(6)
    spacing = (3.0, 0.8, 1.1)
    shape = (20, 36, 30)
    blobs = [ndimage.gaussian_filter(rng.normal(size=shape), 2.5) > 0.02 for _ in range(2)]
    # Touch the array border too, where the surface definition matters.
    blobs[0][:, :, 0] |= blobs[1][:, :, 1]
    ours = hd95(blobs[0], blobs[1], spacing)
    pred, truth = (torch.from_numpy(b[None, None].astype(np.float32)) for b in blobs)
    theirs = compute_hausdorff_distance(pred, truth, include_background=True, percentile=95, spacing=spacing)
    assert ours == pytest.approx(float(theirs), rel=1e-5)


def test_bone_dice_by_threshold():
    truth = np.full(SHAPE, 40.0)
    truth[4:10, 10:20, 10:20] = 900.0
    mask = box_mask()
    assert bone_dice_by_threshold(truth, truth, mask) == 1.0
    pred = truth.copy()
    pred[4:10, 10:20, 10:15] = 150.0  # half of the bone falls below 200 HU
    assert bone_dice_by_threshold(pred, truth, mask) == pytest.approx(2 * 300 / 900)
    assert bone_dice_by_threshold(pred, truth, mask, threshold=100.0) == 1.0


# ---------------------------------------------------------------- without ground truth


def test_gradient_correlation_prefers_aligned_edges():
    mr = MR_OF_LABEL[labels_phantom()]
    aligned_ct = CT_OF_LABEL[labels_phantom()]
    shifted_ct = CT_OF_LABEL[labels_phantom(shift_x=4)]
    aligned = gradient_correlation(mr, aligned_ct)
    shifted = gradient_correlation(mr, shifted_ct)
    assert aligned > 0.7
    assert shifted < aligned - 0.3
    assert gradient_correlation(mr, mr) == pytest.approx(1.0)
    assert math.isnan(gradient_correlation(mr, np.zeros(SHAPE)))  # no edges: undefined


def test_nmi_identical_independent_and_aligned():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=SHAPE), rng.normal(size=SHAPE)
    assert normalized_mutual_information(a, a) == pytest.approx(2.0)
    assert 1.0 <= normalized_mutual_information(a, b) < 1.05
    mr = MR_OF_LABEL[labels_phantom()] + rng.normal(0, 5, SHAPE)
    aligned = normalized_mutual_information(mr, CT_OF_LABEL[labels_phantom()])
    shifted = normalized_mutual_information(mr, CT_OF_LABEL[labels_phantom(shift_x=4)])
    assert aligned > shifted + 0.05


def test_sharpness_drops_after_blur():
    ct = CT_OF_LABEL[labels_phantom()] + np.random.default_rng(8).normal(0, 10, SHAPE)
    blurred = ndimage.gaussian_filter(ct, sigma=(0, 1.5, 1.5))
    mask = box_mask()
    assert sharpness(blurred) < 0.5 * sharpness(ct)
    assert sharpness(blurred, mask) < 0.5 * sharpness(ct, mask)
    assert sharpness(np.full(SHAPE, 5.0)) == 0.0


def test_tv_z_constant_staircase_and_mask_pairs():
    constant = np.broadcast_to(smooth_ct()[:1], SHAPE)
    assert tv_z(constant) == 0.0
    staircase = np.broadcast_to(np.arange(SHAPE[0], dtype=float)[:, None, None] * 25.0, SHAPE)
    assert tv_z(staircase) == pytest.approx(25.0)
    assert tv_z(-staircase, box_mask()) == pytest.approx(25.0)
    lone_slices = np.zeros(SHAPE, dtype=bool)
    lone_slices[::2] = True  # no two z-neighbours both inside
    with pytest.raises(ValueError, match="neighbours along z"):
        tv_z(staircase, lone_slices)


# ---------------------------------------------------------------- evaluate_images


def to_image(array: np.ndarray, spacing=(1.0, 1.2, 2.5), origin=(-20.0, 10.0, 5.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def test_evaluate_images_with_truth_input_and_mask():
    labels = labels_phantom()
    truth = CT_OF_LABEL[labels].astype(np.float32)
    pred = truth + np.random.default_rng(9).normal(0, 20, SHAPE).astype(np.float32)
    mr = MR_OF_LABEL[labels].astype(np.float32)
    body = (labels > 0).astype(np.uint8)
    results = evaluate_images(to_image(pred), truth=to_image(truth), input_image=to_image(mr), mask=to_image(body))
    assert list(results) == ["mae", "psnr", "ssim", "bone_dice", "bone_hd95", "gradient_correlation", "nmi", "sharpness", "tv_z"]
    assert results["mae"] == pytest.approx(mae(pred, truth, body))
    assert results["ssim"] == pytest.approx(ssim(pred, truth, body))
    assert results["bone_dice"] == pytest.approx(bone_dice_by_threshold(pred, truth, body))
    assert results["tv_z"] == pytest.approx(tv_z(pred, body))
    assert all(isinstance(v, float) for v in results.values())
    assert unit_of("mae") == "HU" and unit_of("bone_hd95") == "mm" and unit_of("ssim") == ""


def test_evaluate_images_with_bone_labels_and_automatic_body_mask():
    labels = labels_phantom()
    ct = to_image(CT_OF_LABEL[labels].astype(np.float32))
    truth_bones = to_image((labels == 2).astype(np.uint8) * 5)
    pred_labels = (labels_phantom(shift_x=1) == 2).astype(np.uint8) * 5
    pred_labels[0, 0, 0] = 7  # a label only in the prediction
    results = evaluate_images(ct, truth_bones=truth_bones, pred_bones=to_image(pred_labels))
    assert set(results) == {"bone_dice", "bone_hd95", "bone_dice_label_5", "bone_dice_label_7", "sharpness", "tv_z"}
    assert 0.5 < results["bone_dice_label_5"] < 1.0
    assert results["bone_dice_label_7"] == 0.0
    assert unit_of("bone_dice_label_5") == ""
    # The automatic body mask is the body ellipse: TV-z is 0 for this z-constant phantom.
    assert results["tv_z"] == 0.0


@pytest.mark.parametrize(
    ("change", "word"),
    [
        (lambda im: im.SetSpacing((1.0, 1.2, 3.0)), "spacing"),
        (lambda im: im.SetOrigin((0.0, 0.0, 0.0)), "origin"),
        (lambda im: im.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1)), "direction"),
        (None, "size"),
    ],
)
def test_evaluate_images_rejects_other_grids(change, word):
    pred = to_image(smooth_ct().astype(np.float32))
    if change is None:
        other = to_image(smooth_ct(shape=(16, 40, 41)).astype(np.float32))
    else:
        other = to_image(smooth_ct().astype(np.float32))
        change(other)
    with pytest.raises(InputError, match=rf"^truth: grid differs from the pseudo-CT: {word} "):
        evaluate_images(pred, truth=other, mask=to_image(box_mask().astype(np.uint8)))


def test_evaluate_images_rejects_half_bone_pairs_and_empty_mask():
    pred = to_image(smooth_ct().astype(np.float32))
    with pytest.raises(InputError, match="give both"):
        evaluate_images(pred, truth_bones=to_image(np.zeros(SHAPE, np.uint8)))
    with pytest.raises(InputError, match="mask: is empty"):
        evaluate_images(pred, mask=to_image(np.zeros(SHAPE, np.uint8)))
