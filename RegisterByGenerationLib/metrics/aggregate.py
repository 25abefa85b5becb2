"""All metrics available for a pseudo-CT, from SimpleITK images on one grid."""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, InputMismatchError
from ..io import same_geometry
from .image_similarity import SSIM_WINDOW, mae, psnr, ssim
from .no_reference import gradient_correlation, normalized_mutual_information, sharpness, tv_z
from .segmentation import BONE_THRESHOLD_HU, bone_mask, dice, hd95

__all__ = ["UNITS", "unit_of", "check_same_grid", "evaluate_images"]

logger = logging.getLogger(__name__)

#: Unit of each metric returned by :func:`evaluate_images` ("" = dimensionless).
UNITS = {
    "mae": "HU",
    "psnr": "dB",
    "ssim": "",
    "bone_dice": "",
    "bone_hd95": "mm",
    "gradient_correlation": "",
    "nmi": "",
    "sharpness": "HU²",
    "tv_z": "HU",
    "fold_fraction": "",
    "jacobian_min": "",
    "jacobian_p01": "",
    "jacobian_std": "",
}
_PER_LABEL_DICE = "bone_dice_label_"


def unit_of(metric: str) -> str:
    """Unit of a metric name returned by :func:`evaluate_images` ("" when dimensionless).

    Raises:
        KeyError: unknown metric name.
    """
    if metric.startswith(_PER_LABEL_DICE):
        return ""
    return UNITS[metric]


def check_same_grid(reference: sitk.Image, image: sitk.Image, name: str, reference_name: str = "pseudo-CT") -> None:
    """Raise :class:`InputError` unless ``image`` lies on ``reference``'s voxel grid.

    The message names ``image`` and each property that differs (size, spacing, origin,
    direction) with both values, e.g. ``"truth.nii.gz: grid differs from the pseudo-CT:
    spacing (1, 1, 3) vs (1, 1, 2.5)"``.
    """
    if same_geometry(reference, image):
        return
    if image.GetDimension() != reference.GetDimension():
        raise InputMismatchError(
            f"{name}: image is {image.GetDimension()}D, the {reference_name} is {reference.GetDimension()}D"
        )
    differences = []
    for prop, getter in (
        ("size", sitk.Image.GetSize),
        ("spacing", sitk.Image.GetSpacing),
        ("origin", sitk.Image.GetOrigin),
        ("direction", sitk.Image.GetDirection),
    ):
        ours, theirs = getter(image), getter(reference)
        if prop == "size":
            differs = ours != theirs
        else:
            differs = not np.allclose(ours, theirs, rtol=0, atol=1e-6)
        if differs:
            differences.append(f"{prop} {_fmt(ours)} vs {_fmt(theirs)}")
    raise InputMismatchError(
        f"{name}: grid differs from the {reference_name}: {'; '.join(differences)} "
        f"(resample it onto the {reference_name} first)"
    )


def evaluate_images(
    pseudo_ct: sitk.Image,
    *,
    truth: sitk.Image | None = None,
    input_image: sitk.Image | None = None,
    mask: sitk.Image | None = None,
    truth_bones: sitk.Image | None = None,
    pred_bones: sitk.Image | None = None,
) -> dict[str, float]:
    """Compute every metric the given images allow (DESIGN §6).

    - Always, on the pseudo-CT alone: ``sharpness`` (HU²) and ``tv_z`` (HU).
    - With ``truth`` (an aligned CT): ``mae`` (HU), ``psnr`` (dB), ``ssim`` (omitted, with
      a warning, when a side is shorter than 7 voxels), and — unless bone label maps are
      given — ``bone_dice`` and ``bone_hd95`` (mm) of the masks ``HU > 200`` in the body.
    - With ``truth_bones`` and ``pred_bones`` (label maps, 0 = background): ``bone_dice``
      and ``bone_hd95`` of all bone (any label) and ``bone_dice_label_<k>`` for each label
      present in either map.
    - With ``input_image`` (the MR/CBCT): ``gradient_correlation`` and ``nmi``.

    All metrics are computed inside the body mask: ``mask`` (voxels > 0) when given, else
    :func:`RegisterByGenerationLib.mask.body_mask` of the pseudo-CT. Units are in
    :data:`UNITS` / :func:`unit_of`.

    Args:
        pseudo_ct: the generated CT in HU; its grid is the reference.
        truth: the ground-truth CT in HU, aligned with the input.
        input_image: the MR or CBCT the pseudo-CT was generated for.
        mask: body mask.
        truth_bones: ground-truth bone label map.
        pred_bones: bone label map of the pseudo-CT.

    Returns:
        Metric name → value (``nan``/``inf`` follow each metric's documented rule).

    Raises:
        InputError: an image is not on the pseudo-CT's grid (the message names it and what
            differs), only one of ``truth_bones``/``pred_bones`` is given, or the mask is
            empty.
    """
    others = {"truth": truth, "input_image": input_image, "mask": mask,
              "truth_bones": truth_bones, "pred_bones": pred_bones}
    for name, image in others.items():
        if image is not None:
            check_same_grid(pseudo_ct, image, name)
    if (truth_bones is None) != (pred_bones is None):
        raise InputError("truth_bones and pred_bones: give both bone label maps or neither")

    inside = _body_mask_array(pseudo_ct, mask)
    pred = sitk.GetArrayFromImage(pseudo_ct).astype(np.float32)
    spacing_zyx = pseudo_ct.GetSpacing()[::-1]
    results: dict[str, float] = {}

    if truth is not None:
        truth_hu = sitk.GetArrayFromImage(truth).astype(np.float32)
        results["mae"] = mae(pred, truth_hu, inside)
        results["psnr"] = psnr(pred, truth_hu, inside)
        if min(pred.shape) >= SSIM_WINDOW:
            results["ssim"] = ssim(pred, truth_hu, inside)
        else:
            logger.warning("SSIM skipped: volume shape %s has a side shorter than %d voxels", pred.shape, SSIM_WINDOW)
        if truth_bones is None:
            pred_bone, truth_bone = bone_mask(pred, inside), bone_mask(truth_hu, inside)
            results["bone_dice"] = dice(pred_bone, truth_bone)
            results["bone_hd95"] = hd95(pred_bone, truth_bone, spacing_zyx)
            logger.info("bone = HU > %g inside the body mask (no bone label maps given)", BONE_THRESHOLD_HU)

    if truth_bones is not None:
        truth_labels = sitk.GetArrayFromImage(truth_bones)
        pred_labels = sitk.GetArrayFromImage(pred_bones)
        results["bone_dice"] = dice(pred_labels, truth_labels)
        results["bone_hd95"] = hd95(pred_labels != 0, truth_labels != 0, spacing_zyx)
        for label in np.union1d(np.unique(truth_labels), np.unique(pred_labels)):
            if label != 0:
                results[f"{_PER_LABEL_DICE}{label:g}"] = dice(pred_labels, truth_labels, label=label)

    if input_image is not None:
        moving = sitk.GetArrayFromImage(input_image).astype(np.float32)
        results["gradient_correlation"] = gradient_correlation(moving, pred, inside)
        results["nmi"] = normalized_mutual_information(moving, pred, inside)

    results["sharpness"] = sharpness(pred, inside)
    results["tv_z"] = tv_z(pred, inside)
    return results


def _body_mask_array(pseudo_ct: sitk.Image, mask: sitk.Image | None) -> np.ndarray:
    if mask is None:
        # Imported here so that evaluating with an explicit mask never needs the mask module.
        from ..mask import body_mask

        computed = body_mask(pseudo_ct, modality="ct")
        inside = (sitk.GetArrayFromImage(computed) if isinstance(computed, sitk.Image) else np.asarray(computed)) > 0
        if not inside.any():
            raise InputError("pseudo-CT: no body found (the automatic body mask is empty); pass a mask")
        return inside
    inside = sitk.GetArrayFromImage(mask) > 0
    if not inside.any():
        raise InputError("mask: is empty (no voxel > 0)")
    return inside


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
