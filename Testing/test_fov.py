"""The input's field of view is computed from its fill value; outside it the pseudo-CT is the reference."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from conftest import make_tiny_model

from RegisterByGenerationLib.fov import blend_outside, field_of_view
from RegisterByGenerationLib.phantoms import generate_case
from RegisterByGenerationLib.pipeline import FOV_BLEND_MM, Pipeline


def _image(array, spacing=(1.0, 1.0, 2.0)):
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((3.0, -4.0, 5.0))
    return image


def test_a_cylinder_with_a_constant_fill_is_the_field_of_view_and_constant_pockets_inside_stay_in():
    z, y, x = np.mgrid[0:6, 0:40, 0:40]
    array = np.random.default_rng(0).normal(0, 20, (6, 40, 40))
    outside = (y - 20) ** 2 + (x - 20) ** 2 > 15**2
    array[outside] = -1000
    array[:, 18:21, 18:21] = -1000  # clipped gas inside: not outside the field of view
    fov, fill = field_of_view(_image(array))
    assert fill == -1000
    inside = sitk.GetArrayFromImage(fov).astype(bool)
    assert np.array_equal(inside, ~outside)
    assert fov.GetOrigin() == (3.0, -4.0, 5.0) and fov.GetSpacing() == (1.0, 1.0, 2.0)


def test_an_image_without_a_fill_value_is_all_field_of_view():
    fov, fill = field_of_view(_image(np.random.default_rng(1).normal(100, 10, (4, 16, 16))))
    assert fill is None and sitk.GetArrayViewFromImage(fov).all()


def test_missing_slices_of_a_partial_mr_are_outside():
    array = np.random.default_rng(2).uniform(1, 100, (10, 16, 16))
    array[7:] = 0
    fov, fill = field_of_view(_image(array))
    assert fill == 0 and sitk.GetArrayViewFromImage(fov)[:7].all() and not sitk.GetArrayViewFromImage(fov)[7:].any()


def test_blend_is_the_image_inside_the_fill_far_outside_and_linear_on_the_seam():
    inside = np.zeros((1, 1, 30), np.uint8)
    inside[..., 10:] = 1
    fov = _image(inside)
    a, b = _image(np.full((1, 1, 30), 100.0)), _image(np.full((1, 1, 30), 0.0))
    out = sitk.GetArrayFromImage(blend_outside(a, b, fov, blend_mm=4.0))[0, 0]
    assert np.all(out[10:] == 100) and np.all(out[:6] == 0)
    assert np.allclose(out[6:10], [0, 25, 50, 75])


def test_pipeline_fills_a_truncated_cbct_from_the_reference_and_reports_it(tmp_path):
    case = generate_case(seed=31, modality="cbct", size=(64, 48, 16))
    model = make_tiny_model(tmp_path / "tiny-cbct", "cbct").path
    result = Pipeline(model, modality="cbct", device="cpu", prealign=False).run(case.input, case.reference_ct)
    fov, fill = field_of_view(case.input)
    outside = sitk.GetArrayViewFromImage(fov) == 0
    assert outside.any() and fill == -1000
    # Beyond the seam (FOV_BLEND_MM outside the boundary) the reference, inside the model.
    from scipy import ndimage

    outside = ndimage.distance_transform_edt(outside, sampling=case.input.GetSpacing()[::-1]) >= FOV_BLEND_MM
    pseudo = sitk.GetArrayViewFromImage(result.pseudo_ct).astype(float)
    reference = np.rint(sitk.GetArrayViewFromImage(result.reference_prealigned))
    assert np.array_equal(pseudo[outside], reference[outside])
    assert result.field_of_view["fraction_of_grid"] == np.mean(sitk.GetArrayViewFromImage(fov))
    assert result.field_of_view["blend_mm"] == FOV_BLEND_MM and result.field_of_view["fill_value"] == -1000
