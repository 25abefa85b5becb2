"""Jacobian determinant and fold fraction of displacement fields, against exact formulas."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from RegisterByGenerationLib.errors import InputError
from RegisterByGenerationLib.metrics.deformation import deformation_statistics, jacobian_determinant


def _field(array: np.ndarray, spacing=(1.0, 1.0, 1.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array, isVector=True)
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _points(shape, spacing, direction=np.eye(3)):
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    index = np.stack([x, y, z], axis=-1) * np.asarray(spacing)  # physical = D · (S · i)
    return index @ np.asarray(direction).reshape(3, 3).T


@pytest.mark.parametrize("direction", [None, (0, 1, 0, -1, 0, 0, 0, 0, 1)])
def test_an_affine_field_has_the_determinant_of_its_matrix_everywhere(direction):
    spacing, shape = (0.9, 1.3, 2.5), (9, 10, 11)
    A = np.array([[0.10, 0.05, 0.0], [-0.02, -0.2, 0.03], [0.0, 0.04, 0.3]])  # u(p) = A p
    points = _points(shape, spacing, np.eye(3) if direction is None else direction)
    field = _field((points @ A.T).astype(np.float64), spacing, direction)
    det = sitk.GetArrayFromImage(jacobian_determinant(field))
    np.testing.assert_allclose(det[1:-1, 1:-1, 1:-1], np.linalg.det(np.eye(3) + A), rtol=1e-10)


def test_a_fold_is_counted_and_a_smooth_field_has_none():
    shape, spacing = (8, 16, 16), (1.0, 1.0, 1.0)
    points = _points(shape, spacing)
    smooth = np.zeros(shape + (3,))
    smooth[..., 0] = 0.5 * np.sin(points[..., 1] / 4)  # |∂u_x/∂y| < 1, ∂u_x/∂x = 0: det = 1
    assert deformation_statistics(_field(smooth))["fold_fraction"] == 0
    folded = np.zeros(shape + (3,))
    folded[..., 0] = -2.0 * points[..., 0] * (points[..., 0] < 8)  # det = 1 - 2 < 0 left of x = 8
    stats = deformation_statistics(_field(folded))
    det = 1 - 2.0  # inside the folding half, away from the seam
    assert stats["jacobian_min"] == pytest.approx(det) and 0.4 < stats["fold_fraction"] < 0.6
    mask = sitk.GetImageFromArray((points[..., 0] > 10).astype(np.uint8))
    assert deformation_statistics(_field(folded), mask)["fold_fraction"] == 0
    with pytest.raises(InputError, match="needs 3 components per voxel, got 1"):
        jacobian_determinant(sitk.GetImageFromArray(np.zeros(shape)))


def test_rbg_evaluate_reports_the_folds_of_a_field(tmp_path, capsys):
    from RegisterByGenerationLib.cli import main

    shape = (8, 16, 16)
    points = _points(shape, (1.0, 1.0, 1.0))
    folded = np.zeros(shape + (3,))
    folded[..., 0] = -2.0 * points[..., 0] * (points[..., 0] < 8)
    ct = sitk.GetImageFromArray(np.where(points[..., 1] > 3, 40.0, -1000.0).astype(np.float32))
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(_field(folded), str(tmp_path / "field.nii.gz"))
    assert main(["evaluate", str(tmp_path / "ct.nii.gz"), "--field", str(tmp_path / "field.nii.gz"), "--json", str(tmp_path / "m.json")]) == 0
    import json

    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert 0.4 < metrics["fold_fraction"] < 0.6 and metrics["jacobian_min"] == pytest.approx(-1.0)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 16, 17, 3)), isVector=True), str(tmp_path / "off.nii.gz"))
    assert main(["evaluate", str(tmp_path / "ct.nii.gz"), "--field", str(tmp_path / "off.nii.gz")]) != 0
    assert "off.nii.gz: grid differs from the pseudo-CT" in capsys.readouterr().err
