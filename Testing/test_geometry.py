"""Reorientation, resampling and the slice canvas: exact inverses and physical correctness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_volume
from scipy.spatial.transform import Rotation

from RegisterByGenerationLib.geometry import CanvasGrid, from_axial, resample_onto, to_axial, warp_once

FLIPPED = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
PERMUTED = (0, 0, 1, 1, 0, 0, 0, 1, 0)  # image z runs along physical x
OBLIQUE = tuple((np.diag([-1.0, -1.0, 1.0]) @ Rotation.from_euler("xyz", [4, -3, 10], degrees=True).as_matrix()).ravel())

DIRECTIONS = {"identity": (1, 0, 0, 0, 1, 0, 0, 0, 1), "flipped": FLIPPED, "permuted": PERMUTED, "oblique": OBLIQUE}


def smooth_volume(**geometry) -> sitk.Image:
    """A noise-free smooth volume (periods ~ 20 voxels) with make_volume's geometry."""
    image = make_volume(**geometry)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in image.GetSize()[::-1]), indexing="ij")
    array = 500 * np.sin(0.3 * x + 0.3) * np.cos(0.25 * y) + 40 * z
    smooth = sitk.GetImageFromArray(array.astype(np.float32))
    smooth.CopyInformation(image)
    return smooth


def assert_same_metadata(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert a.GetSpacing() == b.GetSpacing()
    assert a.GetOrigin() == b.GetOrigin()
    assert a.GetDirection() == b.GetDirection()


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_to_axial_keeps_physical_positions(name):
    image = make_volume(direction=DIRECTIONS[name])
    axial = to_axial(image)
    direction = np.reshape(axial.GetDirection(), (3, 3))
    # Canonical: the direction is as close to the identity as a permutation can make it.
    assert np.all(np.diag(direction) > 0.9) if name == "oblique" else np.allclose(direction, np.eye(3))
    rng = np.random.default_rng(1)
    for index in rng.integers(0, image.GetSize(), size=(20, 3)):
        point = image.TransformIndexToPhysicalPoint([int(i) for i in index])
        axial_index = axial.TransformPhysicalPointToIndex(point)
        assert axial[axial_index] == image[[int(i) for i in index]]


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_from_axial_is_exact_inverse(name):
    image = make_volume(direction=DIRECTIONS[name], size=(21, 17, 9))
    back = from_axial(to_axial(image), image)
    assert_same_metadata(back, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_from_axial_real_ct(real_ct):
    back = from_axial(to_axial(real_ct), real_ct)
    assert_same_metadata(back, real_ct)
    assert back.GetPixelID() == real_ct.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(real_ct))


def test_from_axial_rejects_other_grid():
    image = make_volume(direction=FLIPPED)
    shifted = to_axial(image)
    shifted.SetOrigin(np.add(shifted.GetOrigin(), (0.5, 0.0, 0.0)).tolist())
    with pytest.raises(ValueError, match="grid of to_axial"):
        from_axial(shifted, image)


def test_resample_onto_identity_and_shift():
    image = make_volume(spacing=(1.0, 1.0, 2.0))
    same = resample_onto(image, image)
    assert same.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(same), sitk.GetArrayFromImage(image), atol=1e-3)
    # transform maps fixed points to moving points: +3 mm in x reads 3 voxels further on.
    shift = sitk.TranslationTransform(3, (3.0, 0.0, 0.0))
    shifted = sitk.GetArrayFromImage(resample_onto(image, image, shift, default_value=-7.0))
    np.testing.assert_allclose(shifted[:, :, :-3], sitk.GetArrayFromImage(image)[:, :, 3:], atol=1e-3)
    assert np.all(shifted[:, :, -3:] == -7.0)


def _uniform_field(like: sitk.Image, vector_mm) -> sitk.Image:
    field = sitk.GetImageFromArray(np.broadcast_to(np.asarray(vector_mm, float), (*like.GetSize()[::-1], 3)).copy(), isVector=True)
    field.CopyInformation(like)
    return field


def test_warp_once_composes_the_prealignment_and_the_field():
    # Pre-alignment a third of a voxel along a rotated x, the field the same back: read once
    # through both, the image comes back voxel for voxel; resampling the pre-aligned copy
    # again (what warp_once replaces) interpolates twice and does not.
    image = make_volume(size=(30, 24, 10), spacing=(1.5, 1.0, 2.5), direction=tuple(Rotation.from_euler("z", 20, degrees=True).as_matrix().ravel()))
    step = np.asarray(image.GetDirection()).reshape(3, 3)[:, 0] * image.GetSpacing()[0] / 3
    prealign = sitk.TranslationTransform(3, tuple(step))
    back = _uniform_field(image, -step)
    once = sitk.GetArrayFromImage(warp_once(image, image, prealign, back, default_value=-1.0))
    truth = sitk.GetArrayFromImage(image)
    inner = (slice(None), slice(None), slice(1, -1))
    np.testing.assert_allclose(once, truth, atol=1e-3)
    copy = resample_onto(image, image, prealign, default_value=-1.0)
    twice = sitk.GetArrayFromImage(sitk.Resample(copy, image, sitk.DisplacementFieldTransform(sitk.Image(back)), sitk.sitkLinear, -1.0))
    assert np.abs(twice[inner] - truth[inner]).max() > 1.0
    away = warp_once(image, image, prealign, _uniform_field(image, (500.0, 0.0, 0.0)), default_value=-1.0)
    assert np.all(sitk.GetArrayFromImage(away) == -1.0)
    assert sitk.GetArrayFromImage(back).shape[-1] == 3 and back.GetPixelID() == sitk.sitkVectorFloat64  # the field is not consumed


def test_resample_onto_other_grid_is_physical():
    """Resampling onto a flipped, coarser grid puts each value at its physical point."""
    moving = smooth_volume(direction=OBLIQUE)
    fixed = make_volume(size=(20, 18, 10), spacing=(2.0, 1.5, 3.0), direction=FLIPPED, origin=(0.0, 55.0, 105.0))
    result = resample_onto(moving, fixed, interpolator=sitk.sitkNearestNeighbor, default_value=-1.0)
    checked = 0
    for index in np.ndindex(*fixed.GetSize()):
        point = fixed.TransformIndexToPhysicalPoint(index)
        source = moving.TransformPhysicalPointToIndex(point)
        if all(0 <= s < n for s, n in zip(source, moving.GetSize())):
            assert result[index] == moving[source]
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("name", list(DIRECTIONS))
@pytest.mark.parametrize("size", [(48, 32, 7), (41, 29, 6)])
def test_canvas_round_trip_exact_at_native_spacing(name, size):
    image = make_volume(size=size, spacing=(1.2, 0.9, 3.0), direction=DIRECTIONS[name])
    axial = to_axial(image)
    grid = CanvasGrid.for_image(image, pixel_spacing=axial.GetSpacing()[1::-1])
    # pixel_spacing=None (models that run at each input's own spacing) is the same grid.
    assert CanvasGrid.for_image(image, pixel_spacing=None).to_dict() == grid.to_dict()
    canvas = grid.to_canvas(image, default_value=-1024.0)
    assert canvas.dtype == np.float32 and canvas.shape == grid.shape
    assert all(n % 16 == 0 for n in grid.shape[1:])
    back = grid.from_canvas(canvas, default_value=-1024.0)
    assert_same_metadata(back, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    # The canvas holds the axial array unchanged, its first voxel on a canvas pixel.
    description = grid.to_dict()
    direction = np.reshape(description["canvas_direction"], (3, 3))
    spacing = np.array([*description["pixel_spacing_mm"][::-1], description["slice_spacing_mm"]])
    start = direction.T @ np.subtract(axial.GetOrigin(), description["canvas_origin_mm"]) / spacing
    np.testing.assert_allclose(start, np.round(start), atol=1e-9)
    x0, y0, z0 = np.round(start).astype(int)
    array = sitk.GetArrayFromImage(axial)
    inner = canvas[:, y0 : y0 + array.shape[1], x0 : x0 + array.shape[2]]
    np.testing.assert_array_equal(inner, array)
    assert z0 == 0 and 0 <= y0 <= canvas.shape[1] - array.shape[1] and 0 <= x0 <= canvas.shape[2] - array.shape[2]
    # One pixel beyond the edge repeats it; further out is padding.
    if x0 >= 2:
        np.testing.assert_array_equal(canvas[:, y0 : y0 + array.shape[1], x0 - 1], array[:, :, 0])
        assert np.all(canvas[:, :, : x0 - 1] == -1024.0)


@pytest.mark.parametrize("name", list(DIRECTIONS))
@pytest.mark.parametrize("pixel_spacing", [0.5, (0.7, 1.1)])
def test_canvas_round_trip_with_resampling(name, pixel_spacing):
    image = smooth_volume(size=(40, 32, 6), spacing=(1.2, 0.9, 3.0), direction=DIRECTIONS[name])
    grid = CanvasGrid.for_image(image, pixel_spacing)
    back = grid.from_canvas(grid.to_canvas(image, default_value=-1024.0), default_value=-1024.0)
    assert_same_metadata(back, image)
    error = np.abs(sitk.GetArrayFromImage(back) - sitk.GetArrayFromImage(image))
    scale = np.ptp(sitk.GetArrayFromImage(image))
    # Two linear interpolations of a smooth field: small everywhere, edges included.
    assert error.mean() < 0.01 * scale
    assert error.max() < 0.05 * scale


def test_canvas_round_trip_real_ct(real_ct):
    native = CanvasGrid.for_image(real_ct, 3.0)
    assert native.shape == (112, 112, 128)
    back = native.from_canvas(native.to_canvas(real_ct, default_value=-1024.0), default_value=-1024.0)
    assert_same_metadata(back, real_ct)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(real_ct))

    fine = CanvasGrid.for_image(real_ct, 1.0, canvas=(304, 368))
    back = fine.from_canvas(fine.to_canvas(real_ct, default_value=-1024.0), default_value=-1024.0)
    assert_same_metadata(back, real_ct)
    error = np.abs(sitk.GetArrayFromImage(back) - sitk.GetArrayFromImage(real_ct))
    assert error.mean() < 10.0  # HU, interpolation of a 3 mm CT through a 1 mm canvas


def test_canvas_is_axial_and_physical():
    """A bright dot lands on the canvas pixel at its physical position, rows = posterior."""
    image = make_volume(size=(30, 26, 8), spacing=(1.5, 1.1, 2.5), direction=OBLIQUE)
    array = np.zeros(image.GetSize()[::-1], np.float32)
    array[4, 7, 21] = 1000.0
    dot = sitk.GetImageFromArray(array)
    dot.CopyInformation(image)
    grid = CanvasGrid.for_image(dot, 0.5)
    canvas = grid.to_canvas(dot, interpolator=sitk.sitkNearestNeighbor, default_value=0.0)
    z, y, x = np.unravel_index(np.argmax(canvas), canvas.shape)
    description = grid.to_dict()
    direction = np.reshape(description["canvas_direction"], (3, 3))
    spacing = np.array([description["pixel_spacing_mm"][1], description["pixel_spacing_mm"][0], description["slice_spacing_mm"]])
    found = np.array(description["canvas_origin_mm"]) + direction @ (spacing * (x, y, z))
    expected = dot.TransformIndexToPhysicalPoint((21, 7, 4))
    assert np.linalg.norm(found - expected) <= 0.5 * np.linalg.norm(dot.GetSpacing())
    # Canonical axial: canvas columns run to patient left (+x), rows to posterior (+y).
    assert direction[0, 0] > 0.9 and direction[1, 1] > 0.9 and direction[2, 2] > 0.9


def test_canvas_crop_and_pad_are_centred():
    image = make_volume(size=(64, 40, 5), spacing=(1.0, 1.0, 2.0))
    grid = CanvasGrid.for_image(image, 1.0, canvas=(48, 32))
    canvas = grid.to_canvas(image, default_value=-5000.0)
    array = sitk.GetArrayFromImage(image)
    assert canvas.shape == (5, 48, 32)
    # Columns 16..47 of 64 kept (crop); rows padded by 4 on each side.
    np.testing.assert_array_equal(canvas[:, 4:44, :], array[:, :, 16:48])
    # The pixel beside the image repeats its edge; further out is padding.
    np.testing.assert_array_equal(canvas[:, 3], canvas[:, 4])
    np.testing.assert_array_equal(canvas[:, 44], canvas[:, 43])
    assert np.all(canvas[:, :3] == -5000.0) and np.all(canvas[:, 45:] == -5000.0)
    back = sitk.GetArrayFromImage(grid.from_canvas(canvas, default_value=-1.0))
    np.testing.assert_array_equal(back[:, :, 16:48], array[:, :, 16:48])
    assert np.all(back[:, :, :16] == -1.0) and np.all(back[:, :, 48:] == -1.0)


def test_canvas_default_size_covers_extent():
    image = make_volume(size=(101, 70, 4), spacing=(0.8, 1.3, 2.0))
    grid = CanvasGrid.for_image(image, (0.5, 0.5))
    # Extent 91 mm (rows) and 80.8 mm (columns) at 0.5 mm: 182 -> 192 and 162 -> 176.
    assert grid.shape == (4, 192, 176)
    assert CanvasGrid.for_image(image, (0.5, 0.5), multiple=32).shape == (4, 192, 192)
    json.dumps(grid.to_dict())
    assert "CanvasGrid(shape=(4, 192, 176)" in repr(grid)


def test_canvas_validation():
    image = make_volume()
    with pytest.raises(ValueError, match="canvas"):
        CanvasGrid.for_image(image, 1.0, canvas=(100, 96))
    with pytest.raises(ValueError, match="canvas"):
        CanvasGrid.for_image(image, 1.0, canvas=(0, 96))
    with pytest.raises(ValueError, match="pixel_spacing"):
        CanvasGrid.for_image(image, (1.0, -1.0))
    with pytest.raises(ValueError, match="multiple"):
        CanvasGrid.for_image(image, 1.0, multiple=0)
    grid = CanvasGrid.for_image(image, 1.0)
    with pytest.raises(ValueError, match="canvas shape"):
        grid.from_canvas(np.zeros((1, 16, 16), np.float32), default_value=0.0)
    other = make_volume(origin=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="grid the canvas was built for"):
        grid.to_canvas(other, default_value=0.0)


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_canvas_displacement_is_physical_and_warps_as_monai_does(name):
    """A canvas displacement in voxels (MONAI's Warp convention) becomes a physical field on
    the image grid: sitk resampling with it gives what MONAI's Warp gives on the canvas."""
    import torch
    from monai.networks.blocks import Warp

    image = smooth_volume(size=(36, 30, 14), spacing=(1.0, 1.0, 2.0), direction=DIRECTIONS[name])
    grid = CanvasGrid.for_image(image, None, multiple=1)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in grid.shape), indexing="ij")
    ddf = np.stack([0.4 + 0 * z, 1.5 * np.sin(x / 9.0), -2.0 + 0.05 * y])  # voxels along (Z, H, W)
    field = grid.displacement_from_canvas(ddf)
    assert field.GetSize() == image.GetSize() and field.GetDirection() == image.GetDirection()
    # At a voxel where the canvas and the image coincide, the vector is D (spacing · ddf).
    description = grid.to_dict()
    direction = np.reshape(description["canvas_direction"], (3, 3))
    spacing = np.array([description["pixel_spacing_mm"][1], description["pixel_spacing_mm"][0], description["slice_spacing_mm"]])
    index = (grid.shape[0] // 2, grid.shape[1] // 2 - 1, grid.shape[2] // 2 + 1)  # canvas (z, y, x)
    point = np.array(description["canvas_origin_mm"]) + direction @ (spacing * np.array(index[::-1]))
    image_index = image.TransformPhysicalPointToIndex(tuple(point))
    expected = direction @ (spacing * ddf[::-1, index[0], index[1], index[2]])
    assert np.allclose(field[image_index], expected, atol=1e-6)

    canvas = grid.to_canvas(image, default_value=0.0)
    monai = Warp(mode="bilinear", padding_mode="border")(torch.from_numpy(canvas)[None, None], torch.from_numpy(ddf).float()[None])
    warped = sitk.Resample(image, image, sitk.DisplacementFieldTransform(sitk.Image(field)), sitk.sitkLinear, 0.0)
    ours = grid.to_canvas(warped, default_value=0.0)
    inner = (slice(3, -3), slice(4, -4), slice(4, -4))
    assert np.abs(ours[inner] - monai[0, 0].numpy()[inner]).max() < 1e-2 * np.abs(canvas).max()
    with pytest.raises(ValueError, match="ddf must have shape"):
        grid.displacement_from_canvas(ddf[:, :-1])
