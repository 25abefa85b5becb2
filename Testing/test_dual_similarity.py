"""Method dual-similarity: the network, its loss, its field on the canvas, training, export,
the pipeline (with the field's folds in the report) and the benchmark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RegisterByGenerationLib.errors import InputError, InputMismatchError, ModelError
from RegisterByGenerationLib.methods.dual_similarity import DualSimilarityConfig, DualSimilarityNet
from RegisterByGenerationLib.methods.dual_similarity.field import canvas_displacement, to_coarse
from RegisterByGenerationLib.methods.dual_similarity.network import coarse_factors, mind_descriptors
from RegisterByGenerationLib.methods.dual_similarity.training import (
    DualSimilarityLoss,
    DualSimilarityTrainingConfig,
    export_dual_similarity,
    PairedPatchDataset,
    load_paired_case,
    synthetic_pair,
    teacher_field,
    train_dual_similarity,
)
from RegisterByGenerationLib.phantoms import write_phantom_dataset
from RegisterByGenerationLib.pipeline import Pipeline
from RegisterByGenerationLib.report import build_report
from RegisterByGenerationLib.training.data import find_cases

TINY = DualSimilarityConfig(channels=(4, 8, 8), coarse_spacing_mm=6.0, patch=(8, 16, 16))


def _tiny_training(**overrides) -> DualSimilarityTrainingConfig:
    settings = dict(architecture=TINY, epochs=2, steps_per_epoch=3, batch_size=1, pixel_spacing_mm=(3.0, 3.0), val_cases=("1PS0532",), ncc_kernel=5)
    return DualSimilarityTrainingConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def mr_pairs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mrpairs")
    write_phantom_dataset(folder, cases=3, seed=530, modality="mr", size=(64, 48, 24), reference_mr=True)
    return folder


@pytest.fixture(scope="module")
def dual_run(mr_pairs, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("dual") / "run"
    train_dual_similarity(_tiny_training(), mr_pairs, run, device="cpu")
    return run


# --------------------------------------------------------------------------- network, loss, field


def test_an_untrained_network_is_the_identity_and_refuses_bad_shapes():
    net = DualSimilarityNet(TINY).eval()
    x = torch.randn(1, 1, 8, 16, 12)
    out = net(x, torch.randn_like(x))
    assert out["ddf"].shape == (1, 3, 8, 16, 12) and torch.count_nonzero(out["ddf"]) == 0
    with pytest.raises(InputError, match=r"^dual_similarity: the coarse volume \(8, 16, 10\) must be a multiple of 4"):
        net(x[..., :10], x[..., :10])
    with pytest.raises(InputError, match="^dual_similarity patch must be three multiples of 4"):
        DualSimilarityConfig(patch=(8, 16, 18))
    with pytest.raises(InputError, match="^dual_similarity architecture: unknown keys depth$"):
        DualSimilarityConfig.from_dict({"depth": 3})
    with pytest.raises(InputError, match="trains on MR inputs"):
        DualSimilarityTrainingConfig(modality="cbct")
    with pytest.raises(InputError, match=r"^teacher_fraction must lie in \[0, 1\]"):
        DualSimilarityTrainingConfig(teacher_fraction=1.5)


def test_mind_descriptors_are_the_naive_formula_and_ignore_contrast():
    rng = np.random.default_rng(4)
    volume = rng.normal(size=(6, 7, 8))
    got = mind_descriptors(torch.from_numpy(volume)[None, None])[0].numpy()
    padded = np.pad(volume, 1, mode="edge")
    distances = []
    for axis in range(3):
        for step in (-1, 1):
            shifted = np.roll(padded, -step, axis=axis)[1:-1, 1:-1, 1:-1]  # the neighbour at +step, edge-replicated
            squared = np.pad((volume - shifted) ** 2, 1, mode="edge")
            box = sum(squared[a : a + 6, b : b + 7, c : c + 8] for a in range(3) for b in range(3) for c in range(3)) / 27
            distances.append(box)
    distance = np.stack(distances)
    variance = distance.mean(axis=0)
    variance = np.maximum(variance, 1e-3 * variance.mean() + 1e-12)
    expected = np.exp(-distance / variance)
    np.testing.assert_allclose(got, expected / expected.max(axis=0), rtol=1e-10, atol=1e-12)
    # An MR and a CT of one structure differ by their contrast; MIND does not see it.
    again = mind_descriptors(torch.from_numpy(-3.0 * volume + 40.0)[None, None])[0].numpy()
    np.testing.assert_allclose(again, got, rtol=1e-9, atol=1e-12)


def test_a_mind_network_reads_twelve_channels_and_starts_as_the_identity():
    net = DualSimilarityNet(DualSimilarityConfig(channels=(4, 8, 8), input_features="mind")).eval()
    assert net.encode0[0].in_channels == 12
    x = torch.randn(1, 1, 8, 16, 12)
    assert torch.count_nonzero(net(x, torch.randn_like(x))["ddf"]) == 0
    assert DualSimilarityConfig.from_dict(net.config.to_dict()).input_features == "mind"
    with pytest.raises(InputError, match="^dual_similarity input_features must be one of intensity, mind, got 'edges'$"):
        DualSimilarityConfig(input_features="edges")


def test_the_field_is_diffeomorphic_when_integrated():
    """A large random velocity integrated by scaling and squaring folds far less than the
    same field used as a displacement (what the paper's network predicts)."""
    from RegisterByGenerationLib.methods.dual_similarity.training import coarse_field_image
    from RegisterByGenerationLib.metrics import deformation_statistics

    torch.manual_seed(0)
    velocity = torch.nn.functional.interpolate(torch.randn(1, 3, 4, 6, 6) * 3.0, size=(16, 24, 24), mode="trilinear")
    net = DualSimilarityNet(TINY)
    ddf = net.integrate(velocity)[0].numpy()
    integrated = deformation_statistics(coarse_field_image(ddf, (1.0, 1.0, 1.0), (1, 1, 1)))["fold_fraction"]
    direct = deformation_statistics(coarse_field_image(velocity[0].numpy(), (1.0, 1.0, 1.0), (1, 1, 1)))["fold_fraction"]
    assert direct > 0.02 and integrated < direct / 5


def test_the_loss_is_zero_for_the_right_field_and_learns_a_shift():
    """The intra-modality terms: with the pairs equal to the images and no motion, both NCC
    terms vanish; a network overfits a known shift, and its loss falls."""
    config = _tiny_training(bending_weight=0.01, magnitude_weight=0.0)
    loss_fn = DualSimilarityLoss(config)
    rng = np.random.default_rng(0)
    from scipy import ndimage

    volume = ndimage.gaussian_filter(rng.standard_normal((16, 24, 24)), 2.0).astype(np.float32)
    volume /= np.abs(volume).max()
    fixed = torch.from_numpy(volume)[None, None]
    net = DualSimilarityNet(TINY)
    same = loss_fn(net, {"fixed": fixed, "moving": fixed, "paired_ct": fixed, "paired_mr": fixed})
    assert float(same["ct"]) < 1e-4 and float(same["mr"]) < 1e-4 and float(same["bending"]) == 0.0
    moving = torch.roll(fixed, shifts=2, dims=-1)  # the paired CT is the fixed image: moving must go back by 2 voxels
    batch = {"fixed": fixed, "moving": moving, "paired_ct": fixed, "paired_mr": moving}
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    with torch.no_grad():
        first = float(loss_fn(net, batch)["total"])
    for _ in range(100):
        terms = loss_fn(net, batch)
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
    net.eval()
    ddf = net(fixed, moving)["ddf"][0, 2, 4:-4, 6:-6, 6:-6]
    with torch.no_grad():
        assert float(loss_fn(net, batch)["total"]) < 0.5 * first
    assert 1.0 < float(ddf.mean()) < 3.0  # out(i) = moving(i + ddf): +2 voxels along x


def test_the_teacher_field_follows_the_networks_convention():
    """Demons from a CT onto the same CT shifted by 2 voxels along x: the field is +2 voxels
    along x (component 2) inside, and the network's warp with it gives back the fixed CT."""
    from scipy import ndimage

    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in (16, 32, 32)), indexing="ij")
    fixed = np.where((z - 8) ** 2 / 25 + (y - 16) ** 2 / 64 + (x - 15) ** 2 / 49 < 1, 1000.0, -100.0)
    fixed = ndimage.gaussian_filter(fixed, 1.0).astype(np.float32)
    moving = np.roll(fixed, 2, axis=-1)  # moving(i + 2) = fixed(i)
    teacher = teacher_field(moving, fixed, (3.0, 3.0, 3.0), 4.5)
    assert teacher.shape == (3, 16, 32, 32)
    edge = np.abs(ndimage.sobel(fixed, axis=-1)) > 100  # where the forces act
    assert 1.5 < float(np.median(teacher[2][edge])) < 2.5 and float(np.median(np.abs(teacher[:2][:, edge]))) < 0.2
    warped = DualSimilarityNet(TINY).warp(torch.from_numpy(moving)[None, None], torch.from_numpy(teacher)[None])[0, 0].numpy()
    assert np.abs(warped - fixed)[edge].mean() < 0.3 * np.abs(moving - fixed)[edge].mean()


def test_the_teacher_term_flips_with_the_patch_and_stops_after_its_epochs(mr_pairs):
    config = _tiny_training(teacher_weight=2.0, teacher_fraction=0.5, epochs=2)
    _, files = find_cases(mr_pairs, "mr")
    case = load_paired_case(files[0], config)
    assert case.coarse["teacher"].shape == (3, *case.coarse["x"].shape)
    dataset = PairedPatchDataset([case], config, 16)
    flipped = plain = 0
    for index in range(16):
        sample = dataset[index]
        straight = PairedPatchDataset([case], DualSimilarityTrainingConfig(**{**config.to_dict(), "flip": False}), 16)[index]
        if torch.equal(sample["fixed"], straight["fixed"]):
            plain += 1
            assert torch.equal(sample["teacher"], straight["teacher"])
        else:
            flipped += 1
            expected = straight["teacher"].flip(-1) * torch.tensor([1.0, 1.0, -1.0])[:, None, None, None]
            assert torch.equal(sample["fixed"], straight["fixed"].flip(-1)) and torch.equal(sample["teacher"], expected)
    assert flipped and plain
    loss_fn, net = DualSimilarityLoss(config), DualSimilarityNet(TINY)
    batch = {k: v[None] for k, v in dataset[0].items()}
    taught, untaught = loss_fn(net, batch, teaching=True), loss_fn(net, batch, teaching=False)
    assert float(taught["teacher"]) > 0  # the untrained network is the identity, the teacher is not
    assert float(taught["total"] - untaught["total"]) == pytest.approx(2.0 * float(taught["teacher"]), rel=1e-5)


def test_a_synthetic_pair_comes_back_under_its_target_field():
    """exp(v) undoes the exp(−v) that made the moving CT: warping it back gives the fixed CT
    (up to interpolation); the paired MR moved with it; the RMS displacement is at most
    the bound; the same generator state gives the same pair."""
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in (16, 32, 40)), indexing="ij")
    ct = (np.sin(9 * x) * np.cos(7 * y) * np.cos(4 * z)).astype(np.float32)
    mr = (2.0 - 3.0 * ct).astype(np.float32)
    moving, paired_mr, target = synthetic_pair(mr, ct, (6.0, 4.0, 4.0), np.random.default_rng(3), 10.0, 24.0)
    assert moving.shape == paired_mr.shape == ct.shape and target.shape == (3, *ct.shape) and target.dtype == np.float32
    np.testing.assert_allclose(paired_mr, 2.0 - 3.0 * moving, atol=1e-5)
    back = DualSimilarityNet(TINY).warp(torch.from_numpy(moving)[None, None], torch.from_numpy(target)[None])[0, 0].numpy()
    inner = (slice(3, -3), slice(4, -4), slice(4, -4))
    wrong = DualSimilarityNet(TINY).warp(torch.from_numpy(moving)[None, None], torch.from_numpy(-target)[None])[0, 0].numpy()
    before = np.abs(moving - ct)[inner].mean()
    assert np.abs(back - ct)[inner].mean() < 0.3 * before < np.abs(wrong - ct)[inner].mean()  # the sign convention matters
    rms_mm = np.sqrt(np.mean(np.sum((target * np.array([6.0, 4.0, 4.0])[:, None, None, None]) ** 2, axis=0)))
    assert 0.5 < rms_mm < 10.0 * 1.1  # integration changes the RMS a little
    again = synthetic_pair(mr, ct, (6.0, 4.0, 4.0), np.random.default_rng(3), 10.0, 24.0)
    assert all(np.array_equal(a, b) for a, b in zip(again, (moving, paired_mr, target)))


def test_synthetic_items_carry_their_exact_field_and_need_the_teacher_term(mr_pairs):
    config = _tiny_training(teacher_weight=1.0, synthetic_fraction=1.0, synthetic_displacement_mm=12.0)
    _, files = find_cases(mr_pairs, "mr")
    case = load_paired_case(files[0], config)
    dataset = PairedPatchDataset([case], DualSimilarityTrainingConfig(**{**config.to_dict(), "flip": False}), 4)
    for index in range(4):
        sample = dataset[index]
        warp = DualSimilarityNet(TINY).warp
        back, wrong = (warp(sample["moving"][None], sign * sample["teacher"][None])[0] for sign in (1, -1))
        error = [torch.abs(v - sample["paired_ct"])[:, 1:-1, 2:-2, 2:-2].mean() for v in (back, sample["moving"], wrong)]  # away from the faces
        assert error[0] < error[1] < error[2]
    real = PairedPatchDataset([case], _tiny_training(teacher_weight=1.0), 1)[0]
    assert torch.equal(real["fixed"], PairedPatchDataset([case], _tiny_training(teacher_weight=1.0, synthetic_fraction=0.0), 1)[0]["fixed"])
    with pytest.raises(InputError, match="^synthetic_fraction needs teacher_weight > 0"):
        _tiny_training(synthetic_fraction=0.5)
    with pytest.raises(InputError, match=r"^synthetic_fraction must lie in \[0, 1\]"):
        _tiny_training(teacher_weight=1.0, synthetic_fraction=1.5)


def test_instance_normalisation_keeps_no_running_statistics_and_starts_at_the_identity():
    config = DualSimilarityConfig.from_dict({**TINY.to_dict(), "norm": "instance"})
    net = DualSimilarityNet(config)
    assert not any("running_mean" in key for key in net.state_dict()) and DualSimilarityConfig.from_dict(config.to_dict()).norm == "instance"
    x = torch.randn(2, 1, 8, 16, 16)
    assert torch.count_nonzero(net(x, torch.randn_like(x))["ddf"]) == 0
    with pytest.raises(InputError, match="^dual_similarity norm must be one of batch, instance, got 'group'$"):
        DualSimilarityConfig(norm="group")


def test_monai_bending_energy_is_the_naive_formula():
    """MONAI's bending energy indexes tensors with lists, which torch deprecates with a change
    of meaning: this pins its value to the mean over channels of the summed squared second
    derivatives (central differences of central differences), away from the edges."""
    from monai.losses import BendingEnergyLoss

    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in (10, 12, 14)), indexing="ij")
    field = np.stack([0.01 * x**2 + 0.02 * x * y, 0.03 * z * y, 0.005 * z**2])
    naive = sum(np.gradient(np.gradient(field[c], axis=i), axis=j)[2:-2, 2:-2, 2:-2] ** 2 for c in range(3) for i in range(3) for j in range(3))
    assert float(BendingEnergyLoss()(torch.from_numpy(field)[None])) == pytest.approx(naive.mean() / 3, rel=1e-9)


def test_the_canvas_displacement_is_the_coarse_one_upsampled_in_canvas_voxels():
    # No integration: MONAI's DVF2DDF pads with zeros, so an integrated constant field
    # shrinks near the edges; the scaling to canvas voxels is what this test checks.
    net = DualSimilarityNet(DualSimilarityConfig(channels=(4, 8, 8), coarse_spacing_mm=6.0, patch=(8, 16, 16), integration_steps=0)).eval()
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.0, 0.5, -0.25]))  # a constant velocity: a constant displacement
    spacing = (3.0, 1.5, 1.0)
    factors = coarse_factors(spacing, TINY.coarse_spacing_mm)
    assert factors == (2, 4, 6)
    x = np.zeros((10, 30, 40), np.float32)
    ddf, used = canvas_displacement(net, x, x, spacing, device=torch.device("cpu"))
    assert used == factors and ddf.shape == (3, 10, 30, 40)
    np.testing.assert_allclose(ddf[:, 2, 10, 10], [0.0, 0.5 * 4, -0.25 * 6], rtol=1e-4)
    coarse = to_coarse(np.ones((10, 30, 40), np.float32), factors, net.size_multiple)
    assert coarse.shape == (1, 1, 8, 8, 8) and torch.all(coarse == 1)  # edge padding keeps the mean


# --------------------------------------------------------------------------- training, export, pipeline


def test_paired_cases_are_prepared_as_inference_does(mr_pairs):
    _, files = find_cases(mr_pairs, "mr")
    case = load_paired_case(files[0], _tiny_training())
    assert case.x.shape == case.y.shape == case.paired_ct.shape == case.paired_mr.shape == case.truth_hu.shape
    # the paired CT is the truth in the reference's normalisation
    np.testing.assert_allclose(case.to_hu(case.paired_ct)[case.mask], case.truth_hu[case.mask], atol=1.0)
    assert case.paired_mr.min() >= -1.0 and np.corrcoef(case.paired_mr.ravel(), case.x.ravel())[0, 1] > 0.5  # an MR of nearly the same anatomy
    assert set(case.coarse) == {"x", "y", "paired_ct", "paired_mr", "mask"}


def test_training_resumes_exactly_and_exports_a_model_whose_field_is_reported(dual_run, mr_pairs, tmp_path):
    straight = torch.load(dual_run / "last.pt", weights_only=True)
    assert straight["epoch"] == 2 and {"val_mae", "val_rigid_mae", "val_fold_fraction"} <= set(straight["history"][-1])
    interrupted = tmp_path / "interrupted"
    shutil.copytree(dual_run / "cache", interrupted / "cache")
    train_dual_similarity(_tiny_training(), mr_pairs, interrupted, device="cpu", stop_after=1)
    train_dual_similarity(_tiny_training(), mr_pairs, interrupted, device="cpu", resume=True)
    resumed = torch.load(interrupted / "last.pt", weights_only=True)
    assert resumed["history"][1]["train_total"] == pytest.approx(straight["history"][1]["train_total"], rel=1e-5)
    with pytest.raises(InputError, match="already has a checkpoint; pass --resume"):
        train_dual_similarity(_tiny_training(), mr_pairs, interrupted, device="cpu")
    with pytest.raises(InputError, match="another configuration"):
        train_dual_similarity(_tiny_training(lr=1e-2), mr_pairs, interrupted, device="cpu", resume=True)

    info = export_dual_similarity(dual_run, tmp_path / "model", name="tiny-dual")
    assert info.method == "dual-similarity" and info.modality == "mr"
    assert any("scaling-and-squaring" in d for d in info.metadata["training"]["departures_from_the_paper"])
    case = sorted(p for p in mr_pairs.iterdir() if p.is_dir())[1]
    mr, ct = sitk.ReadImage(str(case / "mr.nii.gz")), sitk.ReadImage(str(case / "ct.nii.gz"))
    result = Pipeline(info.path, modality="mr", device="cpu").run(mr, ct, keep_intermediate=True)
    assert result.method == "dual-similarity" and result.pseudo_ct.GetSize() == mr.GetSize()
    assert result.pseudo_ct.GetOrigin() == mr.GetOrigin() and result.pseudo_ct.GetDirection() == mr.GetDirection()
    assert set(result.deformation) >= {"fold_fraction", "jacobian_min"} and result.deformation["fold_fraction"] < 0.001
    assert result.flow_magnitude is not None and result.stage1 is None
    report = build_report(mr, ct, result, model=info, input_path="mr.nii.gz", reference_path="ct.nii.gz")
    assert report["deformation"]["fold_fraction"] == result.deformation["fold_fraction"]
    with pytest.raises(ModelError, match="is a dual-similarity model, not a rbg one"):
        Pipeline(info.path, method="rbg", modality="mr", device="cpu")
    with pytest.raises(InputError, match="not a training run of method dual-similarity"):
        export_dual_similarity(tmp_path, tmp_path / "other", name="x")
    thin = mr[:, :, :2]
    with pytest.raises(InputMismatchError, match=r"^thin.nii.gz: 2 slice\(s\) of .* method dual-similarity needs at least 8$"):
        Pipeline(info.path, modality="mr", device="cpu").run(thin, ct, input_name="thin.nii.gz")


def test_training_refuses_cases_without_their_pairs_and_writes_nothing(mr_pairs, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(mr_pairs, data)
    for path in data.glob("*/mr_reference.nii.gz"):
        path.unlink()
    with pytest.raises(InputError, match=r"1PS0530: case 1PS0530 has no mr_reference.nii.gz .*rbg phantom --reference-mr"):
        train_dual_similarity(_tiny_training(), data, tmp_path / "run", device="cpu")
    for path in data.glob("*/ct_aligned.nii.gz"):
        path.unlink()
    with pytest.raises(InputError, match=r"1PS0530: case 1PS0530 has no ct_aligned.nii.gz"):
        train_dual_similarity(_tiny_training(), data, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()


def test_rbg_train_dual_similarity_and_export_from_the_command_line(mr_pairs, tmp_path):
    from RegisterByGenerationLib.cli import main

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**_tiny_training().to_dict(), "epochs": 1}))
    run = tmp_path / "run"
    assert main(["train", "dual-similarity", "--data", str(mr_pairs), "--out", str(run), "--config", str(config), "--threads", "1"]) == 0
    assert json.loads((run / "run.json").read_text())["method"] == "dual-similarity" and (run / "best.pt").is_file()
    assert main(["train", "export", str(run), "-o", str(tmp_path / "model"), "--name", "cli-dual"]) == 0
    assert json.loads((tmp_path / "model" / "model.json").read_text())["method"] == "dual-similarity"


def test_benchmark_reports_the_folded_fraction_of_dual_similarity(dual_run, mr_pairs, tmp_path):
    from RegisterByGenerationLib.benchmark import read_results, run_benchmark

    info = export_dual_similarity(dual_run, tmp_path / "model", name="tiny-dual")
    data = tmp_path / "data"
    shutil.copytree(sorted(p for p in mr_pairs.iterdir() if p.is_dir())[2], data / "case")
    rows = run_benchmark(data, tmp_path / "out", methods=("rigid", "dual-similarity"), threads=1,
                         method_models={"dual-similarity": str(info.path)}, progress=lambda line: None)  # fmt: skip
    by_method = {row["method"]: row for row in rows}
    assert 0 <= by_method["dual-similarity"]["fold_fraction"] < 0.001 and np.isnan(by_method["rigid"]["fold_fraction"])
    assert by_method["dual-similarity"]["mae"] > 0
    assert "folded fraction" in (tmp_path / "out" / "results.md").read_text()
    again = read_results([tmp_path / "out" / "results.csv"])
    assert again[1]["fold_fraction"] == pytest.approx(by_method["dual-similarity"]["fold_fraction"], abs=1e-6)
    skipped = run_benchmark(data, tmp_path / "out2", methods=("dual-similarity",), threads=1, progress=lambda line: None)
    assert skipped[0]["note"].startswith("skipped: no mr dual-similarity model installed (--dual-similarity-model)")


def test_the_reference_is_resampled_once_through_the_prealignment_and_the_field(dual_run, mr_pairs, tmp_path, monkeypatch):
    # Pre-alignment half a voxel along x, field half a voxel back: one resampling through
    # both gives the reference's own voxels; resampling the pre-aligned copy again would
    # average neighbours twice.
    from RegisterByGenerationLib.methods import dual_similarity as package
    from RegisterByGenerationLib.methods.base import MethodInputs
    from RegisterByGenerationLib.methods.dual_similarity import method as method_module

    info = export_dual_similarity(dual_run, tmp_path / "model", name="tiny-dual")
    case = sorted(p for p in mr_pairs.iterdir() if p.is_dir())[0]
    mr, ct = sitk.ReadImage(str(case / "mr.nii.gz")), sitk.ReadImage(str(case / "ct.nii.gz"))
    reference = sitk.Resample(ct, mr, sitk.Transform(), sitk.sitkNearestNeighbor, -1024.0, sitk.sitkFloat32)  # on the MR's grid
    half = 0.5 * mr.GetSpacing()[0]
    prealign = sitk.Euler3DTransform()
    prealign.SetTranslation((half, 0.0, 0.0))
    on_input = sitk.Resample(reference, mr, prealign, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)

    def half_voxel_back(net, x, y, spacing_zyx, **_):
        ddf = np.zeros((3, *x.shape), np.float32)
        ddf[2] = -half / spacing_zyx[2]  # canvas voxels along x
        return ddf, (1, 1, 1)

    monkeypatch.setattr(method_module, "canvas_displacement", half_voxel_back)
    method = package.DualSimilarityMethod(info, device=torch.device("cpu"), autocast_dtype=None, batch_size=None, threads=1)
    inputs = MethodInputs(mr, reference, on_input, "mr", 0, False, lambda *a: None, lambda what: None, prealign)
    warped = sitk.GetArrayFromImage(method.generate(inputs).image)
    truth = sitk.GetArrayFromImage(reference)
    inner = (slice(None), slice(None), slice(2, -2))  # away from the x faces, where the shift leaves the grid
    np.testing.assert_allclose(warped[inner], truth[inner], atol=1e-2)
