"""The real-anatomy benchmark case: CBCT-like simulation and smooth deformation of one CT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from RegisterByGenerationLib.errors import InputError
from RegisterByGenerationLib.simulate import MR_ANCHORS, deform_smoothly, make_real_case, simulate_cbct, simulate_mr, write_real_case


def body_ct(size=(40, 36, 20), spacing=(2.0, 2.0, 3.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    """An elliptic body (40 HU) with a bone rod (900 HU) in air, int16 HU."""
    z, y, x = np.indices(size[::-1])
    body = ((y - size[1] / 2) / (0.4 * size[1])) ** 2 + ((x - size[0] / 2) / (0.42 * size[0])) ** 2 <= 1
    bone = (y - size[1] / 2) ** 2 + (x - size[0] / 3) ** 2 <= 9
    hu = np.where(body, 40, -1024) + np.where(bone & body, 860, 0)
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin((-40.0, 20.0, 100.0))
    image.SetDirection(direction)
    return image


def test_cbct_keeps_the_grid_changes_hu_and_limits_the_field_of_view():
    ct = body_ct()
    cbct = simulate_cbct(ct, seed=3)
    assert cbct.GetSize() == ct.GetSize() and cbct.GetSpacing() == ct.GetSpacing() and cbct.GetOrigin() == ct.GetOrigin()
    hu, out = sitk.GetArrayFromImage(ct).astype(float), sitk.GetArrayFromImage(cbct)
    corner = (slice(None), 0, 0)
    assert np.all(out[corner] == -1024.0)  # outside the cylindrical field of view
    inside = (hu > 0) & (out > -1000)
    assert inside.any()
    difference = out[inside] - hu[inside]
    assert abs(difference.mean()) > 20  # HU scale error and shading
    assert difference.std() > 15  # noise and shading
    # the body edge is still clearly visible: soft tissue far above air inside the field of view
    assert out[inside].mean() > -200
    np.testing.assert_array_equal(out, sitk.GetArrayFromImage(simulate_cbct(ct, seed=3)))
    assert not np.array_equal(out, sitk.GetArrayFromImage(simulate_cbct(ct, seed=4)))


def test_cbct_rejects_bad_parameters():
    with pytest.raises(InputError, match="gain"):
        simulate_cbct(body_ct(), gain=0)
    with pytest.raises(InputError, match="no body"):
        simulate_cbct(sitk.Image(8, 8, 8, sitk.sitkInt16) - 1024)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1)])
def test_deformation_reaches_the_requested_mean_and_moves_the_anatomy(direction):
    ct = body_ct(direction=direction)
    warped, transform, achieved = deform_smoothly(ct, seed=1, mean_displacement_mm=6.0)
    assert achieved == pytest.approx(6.0, rel=1e-3)
    assert warped.GetSize() == ct.GetSize() and warped.GetDirection() == ct.GetDirection()
    # the transform is what was applied: resampling with it again gives the same image
    again = sitk.Resample(ct, ct, transform, sitk.sitkLinear, -1024.0, ct.GetPixelID())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(warped))
    a, b = sitk.GetArrayFromImage(ct).astype(float), sitk.GetArrayFromImage(warped).astype(float)
    assert np.abs(a - b).mean() > 10
    with pytest.raises(InputError, match="rigid part"):
        deform_smoothly(ct, seed=1, mean_displacement_mm=0.01, rotation_deg=10)


def test_real_case_files_in_synthrad_layout(tmp_path):
    case = make_real_case(body_ct(), seed=2, mean_displacement_mm=5.0)
    folder = write_real_case(case, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["case.json", "cbct.nii.gz", "ct.nii.gz", "ct_aligned.nii.gz", "mask.nii.gz"]
    truth = sitk.ReadImage(str(folder / "ct_aligned.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(truth), sitk.GetArrayFromImage(body_ct()))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "mask.nii.gz")))
    cbct = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "cbct.nii.gz")))
    assert mask.any() and np.all(cbct[mask > 0] > -1024)  # truth is judged inside the field of view only
    assert json.loads((folder / "case.json").read_text())["deformation"]["mean_displacement_mm"] == pytest.approx(5.0, rel=1e-3)


def test_real_ct_case_has_the_design_misalignment(real_ct):
    case = make_real_case(real_ct, seed=0)
    truth = sitk.GetArrayFromImage(case.ct_aligned).astype(float)
    reference = sitk.GetArrayFromImage(case.reference_ct).astype(float)
    mask = sitk.GetArrayFromImage(case.mask) > 0
    identity = np.abs(truth - reference)[mask].mean()
    assert 40 < identity < 150  # DESIGN §9 measured ~95 HU for an 8 mm warp of this CT


@pytest.mark.parametrize("sequence", list(MR_ANCHORS))
def test_mr_keeps_the_grid_and_gives_tissues_their_sequence_signals(sequence):
    """Air dark, bone (cortical) dark, soft tissue at the anchor's signal; deterministic per seed."""
    ct = body_ct(direction=(0, 1, 0, 1, 0, 0, 0, 0, -1))
    mr = simulate_mr(ct, seed=5, sequence=sequence, smoothing_mm=0.0)
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(mr, attribute)() == getattr(ct, attribute)()
    out, hu = sitk.GetArrayFromImage(mr), sitk.GetArrayFromImage(ct)
    assert out.dtype == np.float32 and out.min() >= 0
    levels, signals = np.array(MR_ANCHORS[sequence]).T
    soft = np.interp(40.0, levels, signals)
    assert np.median(out[hu == 40]) == pytest.approx(soft, rel=0.4)  # the bias field spans up to ±35 %
    assert np.median(out[hu == -1024]) < 0.1 * soft
    np.testing.assert_array_equal(out, sitk.GetArrayFromImage(simulate_mr(ct, seed=5, sequence=sequence, smoothing_mm=0.0)))
    assert not np.array_equal(out, sitk.GetArrayFromImage(simulate_mr(ct, seed=6, sequence=sequence, smoothing_mm=0.0)))
    with pytest.raises(InputError, match="sequence must be one of t1, t2, got 'flair'"):
        simulate_mr(ct, sequence="flair")


def test_t1_and_t2_differ_where_the_sequences_do():
    """Fat is brighter than muscle in both; water (urine) is dark in T1 and bright in T2."""
    t1, t2 = (dict(MR_ANCHORS[s]) for s in ("t1", "t2"))
    assert t1[-100.0] > t1[40.0] and t2[-100.0] > t2[40.0]
    assert t1[5.0] < t1[40.0] and t2[5.0] > t2[40.0]


def test_real_mr_case_is_written_as_an_mr_case(tmp_path):
    from RegisterByGenerationLib.benchmark import find_cases

    case = make_real_case(body_ct(), seed=2, mean_displacement_mm=5.0, modality="mr")
    folder = write_real_case(case, tmp_path)
    assert folder.name == "1RC0002" and (folder / "mr.nii.gz").is_file() and not (folder / "cbct.nii.gz").exists()
    assert json.loads((folder / "case.json").read_text())["mr"]["sequence"] == "t2"
    found = find_cases(tmp_path)
    assert [(c.case_id, c.modality, c.kind) for c in found] == [("1RC0002", "mr", "real")]
    with pytest.raises(InputError, match="modality must be cbct or mr"):
        make_real_case(body_ct(), modality="ct")
