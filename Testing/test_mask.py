"""Body masks on the real CT and on synthetic CT/MR volumes with known anatomy."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from RegisterByGenerationLib import mask as mask_module
from RegisterByGenerationLib.mask import body_mask


def enclosed(candidates: np.ndarray) -> np.ndarray:
    """Candidate voxels whose 3D connected component does not touch the volume's faces."""
    labels, _ = ndimage.label(candidates)
    faces = np.zeros(candidates.shape, bool)
    for axis in range(3):
        faces[(slice(None),) * axis + (0,)] = faces[(slice(None),) * axis + (-1,)] = True
    return candidates & ~np.isin(labels, np.unique(labels[faces & candidates]))


def phantom(modality: str, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), seed: int = 0) -> tuple[sitk.Image, dict]:
    """An elliptic body with enclosed gas, gas open at the top slice, and a couch below.

    Array axes [z, y, x]; returns the image and boolean truth arrays.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(24), np.arange(64), np.arange(80), indexing="ij")
    body = ((x - 40) / 32) ** 2 + ((y - 30) / 22) ** 2 < 1
    enclosed_gas = ((x - 30) ** 2 + (y - 28) ** 2 + (z - 12) ** 2) < 16
    open_gas = ((x - 52) ** 2 + (y - 32) ** 2 < 12) & (z >= 16)  # reaches the last slice
    couch = (y >= 56) & (y <= 59)  # separated from the body by air at y = 52..55
    if modality == "mr":
        values = {"air": 0.0, "tissue": 400.0, "couch": 0.0, "noise": 12.0}
    else:
        values = {"air": -1000.0, "tissue": 40.0, "couch": -100.0, "noise": 15.0}
    array = np.full(body.shape, values["air"])
    array[body] = values["tissue"]
    array[couch] = values["couch"] if modality != "mr" else values["air"]
    array[enclosed_gas | open_gas] = values["air"]
    array += rng.normal(0.0, values["noise"], array.shape)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((1.5, 1.5, 3.0))
    image.SetDirection(direction)
    return image, {"body": body, "couch": couch & ~body, "enclosed_gas": enclosed_gas, "open_gas": open_gas}


@pytest.mark.parametrize("modality", ["ct", "cbct", "mr"])
def test_synthetic_body_includes_gas_and_excludes_couch(modality):
    image, truth = phantom(modality)
    mask = body_mask(image, modality=modality)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == image.GetSize() and mask.GetDirection() == image.GetDirection()
    array = sitk.GetArrayFromImage(mask).astype(bool)
    dice = 2 * (array & truth["body"]).sum() / (array.sum() + truth["body"].sum())
    assert dice > 0.98
    assert not array[truth["couch"]].any()
    # Gas inside the body is inside, also where it is open at the top (slice-wise filling).
    assert array[truth["enclosed_gas"]].all()
    assert array[truth["open_gas"]].all()
    assert array[truth["body"]].mean() > 0.995


def test_slice_filling_follows_the_patient_axis():
    """Gas open at both ends of the S-I axis is filled although S-I is the image's x axis."""
    image, truth = phantom("ct")
    array = sitk.GetArrayFromImage(image)
    tube = np.zeros(array.shape, bool)
    tube[:, 28:33, 38:43] = True  # gas tube along z through the whole volume
    array[tube] = -1000.0
    # Store z as the image's x axis: image axes (x, y, z) point along physical (S, P, L).
    permuted = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    permuted.SetDirection((0, 0, 1, 0, 1, 0, 1, 0, 0))
    permuted.SetSpacing((3.0, 1.5, 1.5))
    mask = sitk.GetArrayFromImage(body_mask(permuted, modality="ct")).astype(bool)
    assert mask[np.transpose(tube, (2, 1, 0))].all()


def test_real_ct_mask(real_ct):
    mask = body_mask(real_ct, modality="ct")
    array = sitk.GetArrayFromImage(real_ct)
    inside = sitk.GetArrayFromImage(mask).astype(bool)
    # The patient: all dense voxels, nearly all soft tissue.
    assert inside[array > 100].mean() > 0.999
    assert inside[array > -200].mean() > 0.99
    # One piece, no air outside: the corners of every slice are outside.
    assert ndimage.label(inside)[1] == 1
    assert not inside[:, [0, 0, -1, -1], [0, -1, 0, -1]].any()
    # Gas pockets enclosed in 3D (bowel, rectum) are inside.
    internal_gas = enclosed(array < -500)
    assert internal_gas.sum() > 500
    assert inside[internal_gas].mean() > 0.98
    # The couch (posterior rows 0-2, patient never there in this scan) is outside.
    assert (array[:, :3] > -500).sum() > 1000
    assert not inside[:, :3].any()


def test_invalid_modality_and_dimension():
    image, _ = phantom("ct")
    with pytest.raises(ValueError, match="modality"):
        body_mask(image, modality="pet")
    with pytest.raises(ValueError, match="3D"):
        body_mask(image[:, :, 0], modality="ct")


def _whole_grid_body(image: sitk.Image, modality: str) -> np.ndarray:
    """The body steps run on the whole grid, as before the bounding-box crop."""
    foreground = mask_module._threshold(sitk.Cast(image, sitk.sitkFloat32), modality)
    radius = mask_module._radius_voxels(image, mask_module._MORPHOLOGY_RADIUS_MM)
    return mask_module._body_in(foreground, radius, mask_module.axial_axis(image))


@pytest.mark.parametrize("modality", ["ct", "mr"])
@pytest.mark.parametrize("crop", ["none", "touching the grid's faces"])
def test_the_bounding_box_crop_gives_the_whole_grid_mask_exactly(modality, crop):
    image, _ = phantom(modality, seed=3)
    if crop != "none":  # the body cut by the grid on both sides in x and at the top slice
        image = image[12:68, :, 2:]
    assert np.array_equal(sitk.GetArrayFromImage(body_mask(image, modality=modality)), _whole_grid_body(image, modality))


def test_the_bounding_box_crop_is_exact_on_the_real_ct(real_ct):
    assert np.array_equal(sitk.GetArrayFromImage(body_mask(real_ct, modality="ct")), _whole_grid_body(real_ct, "ct"))


def test_an_image_without_foreground_gives_an_empty_mask_on_its_grid():
    image = sitk.GetImageFromArray(np.full((8, 16, 16), -1000.0, dtype=np.float32))
    image.SetOrigin((1.0, 2.0, 3.0))
    mask = body_mask(image, modality="ct")
    assert not sitk.GetArrayViewFromImage(mask).any() and mask.GetOrigin() == image.GetOrigin() and mask.GetSize() == image.GetSize()
