"""Synthetic pelvis phantoms: determinism, geometry, truth consistency, files and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from RegisterByGenerationLib.bone_labels import BONE_COLORS, BONE_LABELS, GENERIC_BONE, PELVIC_LABELS, label_of
from RegisterByGenerationLib.cli import main
from RegisterByGenerationLib.errors import InputError
from RegisterByGenerationLib.io import read_image, same_geometry
from RegisterByGenerationLib.phantoms import PHANTOM_VERSION, case_id, generate_case, write_phantom_dataset
from RegisterByGenerationLib.phantoms import anatomy, dataset, shapes
from RegisterByGenerationLib.phantoms.contrast import sample_mr_contrast, sample_tissues
from RegisterByGenerationLib.phantoms.deformation import Misalignment, sample_misalignment
from RegisterByGenerationLib.phantoms.render import NoiseField, render, tile_order

SIZE = (96, 72, 20)


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


@pytest.fixture(scope="module")
def mr_case():
    return generate_case(3, "mr", size=SIZE)


@pytest.fixture(scope="module")
def cbct_case():
    return generate_case(3, "cbct", size=SIZE)


@pytest.fixture(scope="module")
def oblique_case():
    return generate_case(4, "mr", size=(64, 48, 16), oblique=True)


# ------------------------------------------------------------------------ bone labels


def test_bone_label_table_follows_totalsegmentator_names():
    names = ("hip_left", "hip_right", "femur_left", "femur_right", "sacrum", "vertebrae_L5")
    assert PELVIC_LABELS == dict(enumerate(names, start=1))
    assert BONE_LABELS == {**PELVIC_LABELS, GENERIC_BONE: "bone"}  # the threshold method's unnamed bone
    assert set(BONE_COLORS) == set(BONE_LABELS)
    assert all(len(c) == 3 and all(0 <= v <= 1 for v in c) for c in BONE_COLORS.values())
    assert len(set(BONE_COLORS.values())) == len(BONE_COLORS)
    assert label_of("sacrum") == 5
    with pytest.raises(ValueError, match="unknown bone"):
        label_of("skull")


# ------------------------------------------------------------------------ determinism


def test_same_seed_gives_same_bytes(mr_case):
    again = generate_case(3, "mr", size=SIZE)
    for name in ("input", "reference_ct", "ct_aligned", "mask", "bones"):
        a, b = getattr(mr_case, name), getattr(again, name)
        assert same_geometry(a, b, tolerance=0)
        assert array(a).tobytes() == array(b).tobytes(), name
    assert json.dumps(mr_case.truth) == json.dumps(again.truth)


def test_different_seeds_differ(mr_case):
    other = generate_case(5, "mr", size=SIZE)
    assert not np.array_equal(array(other.ct_aligned), array(mr_case.ct_aligned))
    assert other.input.GetSpacing() != mr_case.input.GetSpacing()  # the body size differs
    assert other.truth["misalignment"] != mr_case.truth["misalignment"]


def test_mr_and_cbct_cases_of_a_seed_share_patient_and_truth(mr_case, cbct_case):
    assert mr_case.case_id == "1PS0003" and cbct_case.case_id == "2PS0003"
    assert np.array_equal(array(mr_case.ct_aligned), array(cbct_case.ct_aligned))
    assert np.array_equal(array(mr_case.reference_ct), array(cbct_case.reference_ct))
    assert np.array_equal(array(mr_case.bones), array(cbct_case.bones))


# --------------------------------------------------------------------------- geometry


def test_truth_shares_the_input_grid_and_reference_has_its_own(mr_case):
    for name in ("ct_aligned", "mask", "bones"):
        assert same_geometry(getattr(mr_case, name), mr_case.input, tolerance=0), name
    assert mr_case.input.GetSize() == SIZE
    ref = mr_case.reference_ct
    assert ref.GetSize() != SIZE
    assert ref.GetSpacing() != mr_case.input.GetSpacing()
    assert ref.GetOrigin() != mr_case.input.GetOrigin()
    assert np.linalg.norm(mr_case.input.GetOrigin()) > 1  # not the identity origin
    assert mr_case.input.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert (mr_case.input.GetPixelID(), ref.GetPixelID()) == (sitk.sitkFloat32, sitk.sitkInt16)
    assert (mr_case.mask.GetPixelID(), mr_case.bones.GetPixelID()) == (sitk.sitkUInt8, sitk.sitkUInt8)


def test_oblique_grids_are_rotated_a_few_degrees(oblique_case):
    for image in (oblique_case.input, oblique_case.reference_ct):
        d = np.asarray(image.GetDirection()).reshape(3, 3)
        assert np.allclose(d @ d.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(d), 1)
        angle = np.degrees(np.arccos((np.trace(d) - 1) / 2))
        assert 2 - 1e-6 <= angle <= 5 + 1e-6
    assert same_geometry(oblique_case.bones, oblique_case.input, tolerance=0)


def test_default_grid_is_realistic_and_holds_the_body():
    rng = np.random.default_rng(0)
    patient = anatomy.sample_patient(rng)
    grid_in, grid_ref = dataset._sample_grids(rng, patient, (256, 192, 48), False, np.zeros(3))
    sx, sy, sz = grid_in.spacing
    assert 1.0 <= sx == sy <= 1.7 and 2.5 <= sz <= 3.1
    assert grid_ref.spacing[2] > sz and grid_ref.spacing[0] < sx
    body, _ = anatomy.body_outline(patient)
    lo = np.asarray(grid_in.origin)
    hi = lo + np.asarray(grid_in.spacing) * (np.asarray(grid_in.size) - 1)
    assert np.all(lo[:2] < body.lo[:2]) and np.all(hi[:2] > body.hi[:2])


@pytest.mark.parametrize(("seed", "oblique"), [(0, False), (11, True), (23, True)])
def test_body_fits_in_both_fields_of_view(seed, oblique):
    case = generate_case(seed, "mr", size=(48, 40, 16), oblique=oblique)
    for body in (array(case.mask) > 0, array(case.reference_ct) > -500):
        assert body.any()
        assert not body[:, [0, -1], :].any() and not body[:, :, [0, -1]].any()


# ---------------------------------------------------------------- truth consistency


def test_bone_labels_sit_on_bone_and_mask_covers_body(mr_case):
    ct, bones, mask = array(mr_case.ct_aligned).astype(float), array(mr_case.bones), array(mr_case.mask)
    assert set(np.unique(bones)) == {0, *PELVIC_LABELS}  # phantoms name every bone they draw
    labelled = bones > 0
    assert np.mean(ct[labelled] > 100) > 0.97
    assert np.mean(labelled[ct > 1000]) > 0.97  # dense bone is labelled
    body = ct > -500
    assert np.mean(mask[body] == 1) > 0.99 and np.mean(body[mask == 1]) > 0.99
    assert np.all(mask[labelled] == 1)
    # Patient left is +x (LPS): the left hip's centre has the larger x.
    points = {v: np.mean(np.argwhere(bones == v), axis=0)[::-1] for v in (1, 2, 3, 4)}
    phys = {v: np.asarray(mr_case.bones.TransformContinuousIndexToPhysicalPoint(p.tolist())) for v, p in points.items()}
    assert phys[label_of("hip_left")][0] > phys[label_of("hip_right")][0]
    assert phys[label_of("femur_left")][0] > phys[label_of("femur_right")][0]


@pytest.mark.parametrize("sequence", ["t1", "t2", "random"])
def test_mr_contrast_follows_its_sequence(sequence):
    seed = next(s for s in range(100) if sample_mr_contrast(sample_tissues(np.random.default_rng(0)), np.random.default_rng([s, 4]))[0] == sequence)
    case = generate_case(seed, "mr", size=(64, 48, 16))
    assert case.truth["acquisition"]["mr"]["sequence"] == sequence
    mr, ct, mask = array(case.input), array(case.ct_aligned).astype(float), array(case.mask) > 0
    assert mr.dtype == np.float32 and np.all(np.isfinite(mr)) and mr.min() >= 0 and mr.max() < 2000
    fat = np.median(mr[mask & (ct > -130) & (ct < -70)])
    muscle = np.median(mr[mask & (ct > 35) & (ct < 65)])
    urine = np.median(mr[mask & (ct > 0) & (ct < 15)])  # urine and CSF
    air = np.median(mr[~mask])
    assert air < 0.2 * min(fat, muscle)
    if sequence == "t1":
        assert fat > 1.8 * muscle
    elif sequence == "t2":
        assert fat > 1.8 * muscle and urine > 1.5 * muscle  # fluid bright
    # In every sequence, within bone the densest voxels are the darkest.
    bone = array(case.bones) > 0
    assert np.corrcoef(mr[bone], ct[bone])[0, 1] < -0.3


def test_mr_contrast_draw_leaves_the_cbct_case_alone(mr_case, cbct_case):
    assert cbct_case.truth["acquisition"]["cbct"]["offset"] != 0
    assert np.array_equal(array(mr_case.ct_aligned), array(cbct_case.ct_aligned))


def test_cortical_bone_is_dark_and_marrow_bright_in_mr_at_one_millimetre():
    rng = np.random.default_rng(2)
    patient = anatomy.sample_patient(rng)
    layers = anatomy.build_layers(patient, anatomy.sample_state(rng))
    y, x = np.mgrid[-60:60:1.0, 20:180:1.0].astype(np.float32)  # the left hip at the femoral heads
    fields = [NoiseField(rng, (-200, -170, -70), (200, 180, 140), cell) for cell in (6.0, 2.0)]
    seen = render(layers, x.ravel(), y.ravel(), np.zeros(x.size, np.float32), tissues=sample_tissues(rng),
                  coarse=fields[0], fine=fields[1], blur_mm=1.0)
    muscle = np.median(seen.mr[(seen.ct > 35) & (seen.ct < 65)])
    assert np.median(seen.mr[seen.ct > 1200]) < 0.4 * muscle
    assert np.median(seen.mr[(seen.labels > 0) & (seen.ct > 150) & (seen.ct < 450)]) > 1.5 * muscle


def test_cbct_has_cylindrical_field_of_view_and_hu_errors(cbct_case):
    cbct, ct = array(cbct_case.input).astype(float), array(cbct_case.ct_aligned).astype(float)
    mask = array(cbct_case.mask)
    acq = cbct_case.truth["acquisition"]["cbct"]
    spacing = cbct_case.input.GetSpacing()
    ny, nx = cbct.shape[1:]
    gy, gx = np.meshgrid(np.arange(ny) * spacing[1], np.arange(nx) * spacing[0], indexing="ij")
    outside = (gx - acq["fov_center"][0]) ** 2 + (gy - acq["fov_center"][1]) ** 2 > acq["fov_radius"] ** 2
    assert outside.any()
    assert np.all(cbct[:, outside] == -1000) and np.all(mask[:, outside] == 0)
    inside = mask > 0
    assert np.corrcoef(cbct[inside], ct[inside])[0, 1] > 0.9
    assert np.std(cbct[inside] - ct[inside]) > 20  # noise, shading, streaks, scale error


def test_reference_is_misaligned_by_the_recorded_transform(mr_case):
    """Identity resampling leaves large errors; the transform in the truth explains them."""
    truth, ref, aligned = mr_case.truth, mr_case.reference_ct, mr_case.ct_aligned
    ct, mask = array(aligned).astype(np.float32), array(mr_case.mask) > 0
    identity = array(sitk.Resample(ref, aligned, sitk.Transform(), sitk.sitkLinear, -1000.0)).astype(float)
    identity_mae = np.mean(np.abs(identity[mask] - ct[mask]))
    assert identity_mae > 40

    rigid, deformation = truth["misalignment"]["rigid"], truth["misalignment"]["deformation"]
    assert 2 <= rigid["rotation_total_deg"] <= 5.5 and 3 <= np.linalg.norm(rigid["translation_mm"]) <= 10
    assert 0 < deformation["max_mm"] <= 10
    m = Misalignment(
        tuple(rigid["center_mm"]), tuple(rigid["rotation_deg"]), tuple(rigid["translation_mm"]),
        tuple((*b["center_mm"], *b["amplitude_mm"], b["sigma_mm"]) for b in deformation["bumps"]),
        deformation["max_mm"],
    )
    # Map every reference voxel into the input frame and read the truth there.
    ref_array = array(ref).astype(float)
    index = np.stack(np.meshgrid(*(np.arange(n) for n in ref.GetSize()[::-1]), indexing="ij"), -1)
    index = index.reshape(-1, 3)[:, ::-1]  # (x, y, z) per voxel, image order
    d = np.asarray(ref.GetDirection()).reshape(3, 3)
    points = (np.asarray(ref.GetOrigin()) + (index * ref.GetSpacing()) @ d.T).astype(np.float32)
    q = np.stack(m(points[:, 0], points[:, 1], points[:, 2]), -1)
    da = np.asarray(aligned.GetDirection()).reshape(3, 3)
    continuous = ((q - aligned.GetOrigin()) @ da) / aligned.GetSpacing()
    sampled = ndimage.map_coordinates(ct, continuous[:, ::-1].T, order=1, mode="constant", cval=np.nan)
    valid = np.isfinite(sampled) & (sampled > -500) & (np.abs(sampled) < 2000)
    aligned_mae = np.mean(np.abs(sampled[valid] - ref_array.ravel()[valid]))
    # What remains: CT noise, the changed bladder and gas, interpolation at 4 mm voxels.
    assert aligned_mae < 0.65 * identity_mae, (aligned_mae, identity_mae)
    # The recorded parameters reproduce the generator's mapping exactly.
    generated = dataset._plan(3, SIZE, False).misalignment
    for ours, theirs in zip(m(*points[:5000].T), generated(*points[:5000].T), strict=True):
        assert np.array_equal(ours, theirs)


def test_reference_mr_is_the_reference_anatomy_in_the_input_sequence_and_changes_nothing_else(mr_case, tmp_path):
    """``reference_mr``: an MR on the reference CT's grid, of its anatomy (the body and the
    bones of the reference CT, not of the input), and every other image byte-identical."""
    paired = generate_case(3, "mr", size=SIZE, reference_mr=True)
    assert mr_case.reference_mr is None
    for name in ("input", "reference_ct", "ct_aligned", "mask", "bones"):
        assert np.array_equal(array(getattr(paired, name)), array(getattr(mr_case, name))), name
    assert same_geometry(paired.reference_mr, paired.reference_ct)
    ref_ct, ref_mr = array(paired.reference_ct), array(paired.reference_mr)
    body_ct = ref_ct > -500
    body_mr = ndimage.binary_fill_holes(ndimage.gaussian_filter(ref_mr, 1.5) > 0.1 * np.percentile(ref_mr, 99))
    dice = 2 * np.sum(body_ct & body_mr) / (body_ct.sum() + body_mr.sum())
    assert dice > 0.9, dice
    # Against the input's anatomy resampled there, the reference MR's body fits worse.
    moved = array(sitk.Resample(paired.ct_aligned, paired.reference_ct, sitk.Transform(), sitk.sitkLinear, -1000.0)) > -500
    assert 2 * np.sum(moved & body_mr) / (moved.sum() + body_mr.sum()) < dice
    folder = dataset.write_case(paired, tmp_path)
    assert same_geometry(read_image(folder / "mr_reference.nii.gz"), read_image(folder / "ct.nii.gz"))
    with pytest.raises(InputError, match="only MR cases have one"):
        generate_case(3, "cbct", size=SIZE, reference_mr=True)


def test_truth_records_organ_changes_and_version(mr_case):
    truth = mr_case.truth
    assert truth["seed"] == 3 and truth["modality"] == "mr" and truth["generator_version"] == PHANTOM_VERSION
    bladder = truth["bladder"]
    assert bladder["volume_ml_input"] > 0 and bladder["volume_ml_reference"] > 0
    assert bladder["change_ml"] == pytest.approx(bladder["volume_ml_input"] - bladder["volume_ml_reference"])
    assert {"pockets_input", "pockets_reference", "change_ml"} <= set(truth["rectal_gas"])
    json.dumps(truth)  # JSON-ready


# ------------------------------------------------------------------- shapes, deformation


def _random_points(rng, lo, hi, n=20000):
    return (rng.uniform(lo, hi, (n, 3)).astype(np.float32)).T


def test_sphere_and_capsule_distances_are_exact():
    rng = np.random.default_rng(0)
    x, y, z = _random_points(rng, -40, 40)
    sphere = shapes.Ellipsoid((1, 2, 3), (10, 10, 10))
    exact = np.sqrt((x - 1) ** 2 + (y - 2) ** 2 + (z - 3) ** 2) - 10
    assert np.allclose(sphere(x, y, z), exact, atol=1e-3)
    capsule = shapes.Capsule((0, 0, -10), (0, 0, 10), 5)
    exact = np.sqrt(x**2 + y**2 + np.maximum(np.abs(z) - 10, 0) ** 2) - 5
    assert np.allclose(capsule(x, y, z), exact, atol=1e-3)
    # A first-order ellipsoid distance outside never exceeds the true distance (convex
    # norm), and it is close to it near the surface.
    radii = np.array([30.0, 10, 20])
    ellipsoid = shapes.Ellipsoid((0, 0, 0), radii)
    theta, phi = np.meshgrid(np.linspace(0, np.pi, 400), np.linspace(0, 2 * np.pi, 800), indexing="ij")
    surface = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)
    surface = surface.reshape(-1, 3) * radii
    probes = np.stack([x, y, z], 1)[:2000]
    true = cKDTree(surface).query(probes)[0]
    estimate = ellipsoid(*probes.T)
    outside = estimate > 0
    assert np.all(estimate[outside] <= true[outside] + 0.2)
    near = np.abs(estimate) < 2
    assert np.allclose(np.abs(estimate[near]), true[near], atol=0.3)


def test_shape_boxes_hold_every_inside_point():
    rng = np.random.default_rng(1)
    layers = anatomy.build_layers(anatomy.sample_patient(rng), anatomy.sample_state(rng))
    points = np.stack(_random_points(rng, (-200, -160, -90), (200, 170, 150), 60000), 1)
    for layer in layers:
        inside = points[layer.shape(*points.T) < 0]
        boxes = layer.shape.boxes
        in_box = (inside[:, None] >= boxes[None, :, 0]) & (inside[:, None] <= boxes[None, :, 1])
        covered = np.all(in_box, axis=2).any(axis=1)
        assert covered.all(), layer.name


def test_mirror_and_joint_gap():
    ball = shapes.Ellipsoid((30, 0, 0), (10, 10, 10))
    mirrored = shapes.Mirror(ball)
    assert mirrored(np.float32([-30]), np.float32([0]), np.float32([0]))[0] == pytest.approx(-10)
    block = shapes.Ellipsoid((30, 0, 0), (20, 20, 20))
    socket = shapes.Subtract(block, ball, gap=2.5)
    # Points in the joint space (within 2.5 mm of the ball) are outside the block.
    assert socket(np.float32([41.0]), np.float32([0]), np.float32([0]))[0] > 0
    assert socket(np.float32([44.0]), np.float32([0]), np.float32([0]))[0] < 0


def test_misalignment_sizes_and_invertibility():
    rng = np.random.default_rng(9)
    m = sample_misalignment(rng, np.zeros(3), np.array([-100, -80, -40]), np.array([100, 90, 100]))
    assert 2 <= m.rotation_angle_deg() <= 5 + 1e-6 and 3 <= np.linalg.norm(m.translation) <= 10
    x, y, z = _random_points(rng, (-100, -80, -40), (100, 90, 100), 5000)
    d = np.sqrt(sum(c.astype(float) ** 2 for c in m.displacement(x, y, z)))
    assert d.max() <= m.max_deformation_mm + 1e-3 and m.max_deformation_mm <= 10
    # D = identity + displacement has a positive Jacobian determinant everywhere (no folding).
    h = np.float32(0.5)
    columns = []
    for axis in range(3):
        step = [np.zeros_like(x) for _ in range(3)]
        step[axis] += h
        plus = m.displacement(x + step[0], y + step[1], z + step[2])
        minus = m.displacement(x - step[0], y - step[1], z - step[2])
        columns.append(np.stack([(p - q) / (2 * h) for p, q in zip(plus, minus, strict=True)], -1))
    jacobian = np.eye(3) + np.stack(columns, -1)
    assert np.linalg.det(jacobian).min() > 0.1


# ------------------------------------------------------------------------- rendering


def test_culling_gives_the_same_rendering_as_brute_force():
    rng = np.random.default_rng(11)
    patient = anatomy.sample_patient(rng)
    layers = anatomy.build_layers(patient, anatomy.sample_state(rng))
    tissues = sample_tissues(rng)
    coarse = NoiseField(rng, (-200, -170, -70), (200, 180, 140), 6.0)
    fine = NoiseField(rng, (-200, -170, -70), (200, 180, 140), 3.0)
    direction = tuple(dataset._rotation(rng, 5, 10).ravel())
    grid = dataset.Grid((72, 56, 24), (5.0, 5.0, 6.0), (-180.0, -140.0, -50.0), direction)
    order = tile_order((24, 56, 72))
    x, y, z = (p[order] for p in grid.points())
    kwargs = dict(tissues=tissues, coarse=coarse, fine=fine, blur_mm=5.0)
    fast, slow = render(layers, x, y, z, **kwargs), render(layers, x, y, z, cull=False, **kwargs)
    assert np.array_equal(fast.ct, slow.ct) and np.array_equal(fast.mr, slow.mr)
    assert np.array_equal(fast.labels, slow.labels) and fast.counts == slow.counts
    assert len(set(fast.labels.tolist())) == 7


def test_tile_order_is_a_permutation():
    order = tile_order((3, 20, 35), tile=16)
    assert np.array_equal(np.sort(order), np.arange(3 * 20 * 35))
    assert np.array_equal(order[:16], np.arange(16))  # first row of the first tile


# ------------------------------------------------------------------ arguments, files, CLI


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(modality="ct"), "modality"),
        (dict(size=(15, 64, 64)), "size"),
        (dict(size=(64, 64)), "size"),
        (dict(size="64"), "size"),
        (dict(oblique="yes"), "oblique"),
    ],
)
def test_generate_case_rejects_bad_arguments(kwargs, name):
    arguments = dict(seed=1, modality="mr", size=(32, 32, 16)) | kwargs
    with pytest.raises(InputError, match=f"^{name}:"):
        generate_case(**arguments)


def test_write_dataset_rejects_bad_case_count_before_writing(tmp_path):
    with pytest.raises(InputError, match="^cases:"):
        write_phantom_dataset(tmp_path / "out", 0, 1, "mr")
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_synthrad_layout(tmp_path, capsys):
    out = tmp_path / "phantoms"
    arguments = ["--cases", "2", "--seed", "7", "--modality", "cbct", "--size", "48", "40", "16"]
    assert main(["phantom", "-o", str(out), *arguments]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["2PS0007", "2PS0008"]
    printed = capsys.readouterr().out
    assert str(out / "2PS0007") in printed and "wrote 2 cbct case(s)" in printed
    folder = out / "2PS0007"
    names = {"cbct.nii.gz", "ct.nii.gz", "mask.nii.gz", "ct_aligned.nii.gz", "bones.nii.gz", "phantom.json"}
    assert {p.name for p in folder.iterdir()} == names
    cbct = read_image(folder / "cbct.nii.gz")
    assert cbct.GetSize() == (48, 40, 16)
    for name, pixel in (("mask", sitk.sitkUInt8), ("bones", sitk.sitkUInt8), ("ct_aligned", sitk.sitkInt16)):
        image = read_image(folder / f"{name}.nii.gz")
        assert same_geometry(image, cbct, tolerance=1e-4) and image.GetPixelID() == pixel, name
    assert not same_geometry(read_image(folder / "ct.nii.gz"), cbct)
    truth = json.loads((folder / "phantom.json").read_text())
    assert truth["case_id"] == "2PS0007" and truth["seed"] == 7 and truth["modality"] == "cbct"
    # Overwriting is allowed and reproduces the same voxels.
    before = array(read_image(folder / "ct.nii.gz"))
    assert main(["phantom", "-o", str(out), "--seed", "7", "--modality", "cbct", "--size", "48", "40", "16"]) == 0
    assert np.array_equal(array(read_image(folder / "ct.nii.gz")), before)
    assert not any(p.name.startswith(".") for p in folder.iterdir())  # no temporary files left


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--modality", "mr", "--cases", "0"], "cases:"),
        (["--modality", "mr", "--seed", "-3"], "seed:"),
        (["--modality", "mr", "--size", "8", "64", "64"], "size:"),
    ],
)
def test_cli_rejects_bad_values(tmp_path, capsys, arguments, message):
    assert main(["phantom", "-o", str(tmp_path / "out"), *arguments]) == InputError.exit_code
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arguments", [["--modality", "xray"], ["--modality", "mr", "--size", "64", "64"], []])
def test_cli_rejects_bad_usage(tmp_path, arguments):
    with pytest.raises(SystemExit) as exit_info:
        main(["phantom", "-o", str(tmp_path), *arguments])
    assert exit_info.value.code != 0


def test_case_id_format():
    assert case_id(12, "mr") == "1PS0012" and case_id(12345, "cbct") == "2PS12345"
