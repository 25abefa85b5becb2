"""Reading with validation (every error path), atomic writing and geometry round trips."""

from __future__ import annotations

import locale
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_volume

from RegisterByGenerationLib.errors import InputError, OutputError
from RegisterByGenerationLib.io import (
    atomic_path,
    check_writable_dir,
    read_image,
    same_geometry,
    validate_image,
    write_image,
)

OBLIQUE = (0.9848077530, -0.1736481777, 0.0, 0.1736481777, 0.9848077530, 0.0, 0.0, 0.0, 1.0)


def write_mha(path: Path, spacing: str, size=(3, 4, 5)) -> Path:
    """A hand-written uncompressed MetaImage, so any spacing can be stored."""
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 10 20 30\n"
        f"ElementSpacing = {spacing}\nDimSize = {' '.join(map(str, size))}\n"
        "ElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode() + np.arange(np.prod(size), dtype="<i2").tobytes())
    return path


def test_not_found(tmp_path):
    with pytest.raises(InputError, match=r"missing\.nii\.gz: file not found$"):
        read_image(tmp_path / "missing.nii.gz")


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("garbage.nii.gz", b"not an image", "Not a gzipped file"),
        ("garbage.nii", b"not an image", 'Unable to determine ImageIO reader for "'),
        ("broken.nrrd", b"NRRD0004\ntype: garbage\n", "couldn't parse type"),
    ],
)
def test_unreadable_file_names_the_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as raised:
        read_image(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: cannot be read as an image (")
    assert reason in message
    assert "\n" not in message and ".cxx" not in message and "0x" not in message


def test_truncated_file(tmp_path):
    path = tmp_path / "truncated.mha"
    write_mha(path, "1 1 1")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(InputError, match="cannot be read as an image"):
        read_image(path)


def test_two_dimensional(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(20, dtype=np.int16).reshape(4, 5)), str(path))
    with pytest.raises(InputError, match="image is 2D, a 3D volume is required"):
        read_image(path)


def test_single_slice(tmp_path):
    path = tmp_path / "one_slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(20, dtype=np.int16).reshape(1, 4, 5)), str(path))
    with pytest.raises(InputError, match=r"size \(5, 4, 1\) has a single slice"):
        read_image(path)


def test_constant_image(tmp_path):
    path = tmp_path / "empty.nii.gz"
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkInt16), str(path))
    with pytest.raises(InputError, match=r"image is empty \(every voxel equals 0\)"):
        read_image(path)
    assert read_image(path, validate=False).GetSize() == (4, 4, 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path, bad):
    array = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    array[1, 2, 3] = bad
    array[2, 2, 2] = bad
    path = tmp_path / "nonfinite.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputError, match=r"image has 2 non-finite \(NaN or Inf\) voxels"):
        read_image(path)


@pytest.mark.parametrize("spacing", ["0 1 1", "1 1 0", "nan 1 1"])
def test_zero_spacing(tmp_path, spacing):
    path = write_mha(tmp_path / "zero.mha", spacing)
    with pytest.raises(InputError) as raised:
        read_image(path)
    assert str(raised.value) == f"{path}: cannot be read as an image (Zero-valued spacing is not supported and may result in undefined behavior.)"


def test_negative_spacing_becomes_a_flipped_axis(tmp_path):
    """ITK reads a negative spacing as a positive one along a flipped axis: same physical points."""
    image = read_image(write_mha(tmp_path / "negative.mha", "-2 1 1"))
    assert image.GetSpacing() == (2.0, 1.0, 1.0)
    assert image.TransformIndexToPhysicalPoint((1, 0, 0)) == (8.0, 20.0, 30.0)


def test_multi_component(tmp_path):
    scalar = make_volume(size=(5, 4, 3))
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Compose(scalar, scalar, scalar), str(path))
    with pytest.raises(InputError, match="3 components per voxel"):
        read_image(path)


def test_validate_image_default_name():
    with pytest.raises(InputError, match=r"^<image>: image is 2D"):
        validate_image(sitk.Image([4, 4], sitk.sitkFloat32))


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="folder holds no DICOM series"):
        read_image(tmp_path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_keeps_geometry_and_values(tmp_path, suffix):
    image = make_volume(
        size=(12, 10, 6), spacing=(0.7, 1.3, 2.5), origin=(-101.25, 33.5, 7.125), direction=OBLIQUE, dtype=np.int16
    )
    path = write_image(image, tmp_path / f"volume{suffix}")
    back = read_image(path)
    # NIfTI stores the direction as float32 quaternions: ~1e-7.
    assert same_geometry(back, image, tolerance=1e-5 if suffix == ".nii.gz" else 1e-9)
    assert back.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_real_ct_round_trip(real_ct, tmp_path):
    back = read_image(write_image(real_ct, tmp_path / "ct.nrrd"))
    assert same_geometry(back, real_ct, tolerance=0.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(real_ct))


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str) -> None:
    """One file per slice, with the position/orientation tags a scanner writes.

    GDCM's writer resets the C library's LC_CTYPE to "C", which makes Python's default
    text encoding ASCII for the rest of the process; the locale is restored after it.
    """
    kept = locale.setlocale(locale.LC_CTYPE)
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.10f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))
    for z in range(image.GetDepth()):
        slice_image = image[:, :, z]
        tags = {
            "0008|0060": "CT",
            "0010|0010": "Test^Patient",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{z + 1}",
            "0020|0013": str(z + 1),
            "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, z))),
            "0018|0050": str(image.GetSpacing()[2]),
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid}_{z:03d}.dcm"))
        writer.Execute(slice_image)
    locale.setlocale(locale.LC_CTYPE, kept)


def test_dicom_series_folder(tmp_path, caplog):
    image = make_volume(
        size=(16, 12, 7), spacing=(0.8, 0.8, 2.5), origin=(120.0, -40.5, 12.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1), dtype=np.int16
    )
    folder = tmp_path / "dicom"
    write_dicom_series(image, folder, "1.2.826.0.1.3680043.2.1125.10")
    write_dicom_series(make_volume(size=(16, 12, 3), dtype=np.int16), folder, "1.2.826.0.1.3680043.2.1125.20")
    kept = locale.setlocale(locale.LC_CTYPE)
    with caplog.at_level(logging.WARNING, logger="RegisterByGenerationLib.io"):
        back = read_image(folder)
    assert "1.2.826.0.1.3680043.2.1125.10" in caplog.text and "1.2.826.0.1.3680043.2.1125.20" in caplog.text
    assert back.GetSize() == image.GetSize()
    assert locale.setlocale(locale.LC_CTYPE) == kept  # reading DICOM leaves the locale alone
    assert same_geometry(back, image, tolerance=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_write_rejects_bad_targets(tmp_path):
    image = make_volume()
    with pytest.raises(OutputError, match="unsupported output format"):
        write_image(image, tmp_path / "out.png")
    with pytest.raises(OutputError, match="two files; use .mha"):
        write_image(image, tmp_path / "out.mhd")
    with pytest.raises(OutputError, match="does not exist"):
        write_image(image, tmp_path / "missing" / "out.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    image = make_volume()
    target = tmp_path / "out.nii.gz"

    def crash_half_way(image, filename, compress):
        Path(filename).write_bytes(b"half a file")
        raise RuntimeError("Exception thrown in SimpleITK WriteImage: /src/x.cxx:1:\nsitk::ERROR: disk full")

    monkeypatch.setattr(sitk, "WriteImage", crash_half_way)
    with pytest.raises(OutputError, match=r"out\.nii\.gz: cannot be written \(disk full\)"):
        write_image(image, target)
    assert list(tmp_path.iterdir()) == []
    # An existing file is left as it was.
    target.write_bytes(b"previous result")
    with pytest.raises(OutputError):
        write_image(image, target)
    assert target.read_bytes() == b"previous result"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_path_renames_on_success_and_cleans_on_error(tmp_path):
    target = tmp_path / "labels.seg.nrrd"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".seg.nrrd") and tmp != target
        tmp.write_text("done")
    assert target.read_text() == "done"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "other.nrrd") as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.seg.nrrd"]


def test_check_writable_dir(tmp_path):
    created = check_writable_dir(tmp_path / "a" / "b")
    assert created.is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="output folder is not writable"):
        check_writable_dir(blocker / "sub")


def test_same_geometry():
    image = make_volume()
    moved = make_volume(origin=(-20.0, 35.5, 102.0 + 1e-3))
    assert same_geometry(image, make_volume(seed=5))
    assert not same_geometry(image, moved)
    assert same_geometry(image, moved, tolerance=1e-2)
    assert not same_geometry(image, make_volume(size=(40, 32, 11)))


def test_atomic_writes_get_plain_file_permissions(tmp_path):
    import os
    import stat

    from RegisterByGenerationLib.io import atomic_path

    previous = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_atomic_writes_flush_before_the_rename_and_never_touch_the_umask(tmp_path, monkeypatch):
    """Setting the umask to read it races with other threads (Slicer's); a rename before
    the data is on disk can leave an empty file after a crash."""
    import os

    from RegisterByGenerationLib.io import atomic_path

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "umask", lambda *args: pytest.fail("the process umask was changed"))
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    with atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("{}")
    assert events[:2] == ["fsync", "replace"] and (tmp_path / "a.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
