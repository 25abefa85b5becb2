"""The method interface: registry, resolution of --method/--model, classical methods
through the pipeline, and the STN + early-fusion network (identity start, training,
resume, export, sliding-window inference, its error paths)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import make_tiny_model
from RegisterByGenerationLib import runner
from RegisterByGenerationLib.errors import Cancelled, InputError, InputMismatchError, ModelError
from RegisterByGenerationLib.methods import METHODS, get_method, resolve
from RegisterByGenerationLib.methods.stn_fusion.inference import predict_volume, window_count
from RegisterByGenerationLib.methods.stn_fusion.network import STNFusionConfig, STNFusionNet
from RegisterByGenerationLib.methods.stn_fusion.training import (
    STNFusionLoss,
    STNFusionTrainingConfig,
    export_stn_fusion,
    train_stn_fusion,
)
from RegisterByGenerationLib.modelstore import ModelInfo
from RegisterByGenerationLib.phantoms import write_phantom_dataset
from RegisterByGenerationLib.pipeline import Pipeline

METHODS_DIR = Path(__file__).resolve().parents[1] / "RegisterByGenerationLib" / "methods"
TINY = STNFusionConfig(features=(4, 4, 8, 8, 8, 4), patch=(16, 32, 32), localisation_channels=4)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- registry


def test_registry_names_every_method_once_in_its_family_folder():
    assert tuple(METHODS) == runner.METHODS  # the torch-free copy the CLI and Slicer use
    assert tuple(n for n, cls in METHODS.items() if not cls.needs_model) == runner.METHODS_WITHOUT_MODEL
    assert {n: cls.model_kind() for n, cls in METHODS.items() if cls.needs_model and cls.model_kind() != n} == runner.MODELS_OF_OTHER_METHODS
    for name, cls in METHODS.items():
        assert cls.name == name and cls.summary and (METHODS_DIR / cls.family / "__init__.py").is_file()
    with pytest.raises(InputError, match="^method must be one of rbg, registformer, stn-fusion, dual-similarity, mr-gan, registration-by-synthesis, rigid, syn, elastix, got 'cyclegan'$"):
        get_method("cyclegan")


def test_resolve_takes_the_models_own_method_and_checks_the_pair(tmp_path):
    cls, info = resolve(None, None, "mr")
    assert cls.name == "rbg" and info.name == "phantom-mr-lite"
    registformer = make_tiny_model(tmp_path / "old-adain", config=_adain_config(), name="old-adain")
    assert "method" not in json.loads((registformer.path / "model.json").read_text())  # a card from before the field
    assert ModelInfo.from_directory(registformer.path).method == "registformer"
    assert resolve(None, registformer.path, "mr")[0].name == "registformer"
    with pytest.raises(InputError, match="^method syn uses no model; leave out --model$"):
        resolve("syn", "phantom-mr-lite", "mr")
    assert resolve("rigid", None, "mr") == (METHODS["rigid"], None)
    with pytest.raises(ModelError, match="is a rbg model, not a stn-fusion one"):
        resolve("stn-fusion", "phantom-cbct-lite", "cbct")
    with pytest.raises(ModelError, match="^method registformer has no default MR model; pass --model"):
        resolve("registformer", None, "mr")
    with pytest.raises(ModelError, match="is for MR input, not CBCT"):
        resolve("rbg", "phantom-mr-lite", "cbct")
    card = json.loads((registformer.path / "model.json").read_text())
    (registformer.path / "model.json").write_text(json.dumps({**card, "method": "cyclegan"}))
    with pytest.raises(ModelError, match="method must be one of"):
        resolve(None, registformer.path, "mr")


def _adain_config():
    from RegisterByGenerationLib.networks import ModelConfig

    return ModelConfig.tiny("adain")


@pytest.fixture(scope="module")
def cbct_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cbct")
    write_phantom_dataset(folder, cases=3, seed=510, modality="cbct", size=(64, 48, 16))
    return folder


def _case(folder: Path, index: int = 0):
    case = sorted(p for p in folder.iterdir() if p.is_dir())[index]
    return case, sitk.ReadImage(str(case / "cbct.nii.gz")), sitk.ReadImage(str(case / "ct.nii.gz"))


def test_rigid_method_is_the_prealigned_reference_on_the_whole_grid(cbct_data):
    _, cbct, ct = _case(cbct_data)
    pipeline = Pipeline(method="rigid", modality="cbct", device="cpu")
    assert pipeline.info is None and pipeline.name == "rigid"
    result = pipeline.run(cbct, ct)
    expected = np.clip(np.rint(sitk.GetArrayFromImage(result.reference_prealigned)), -32768, 32767)
    assert np.array_equal(sitk.GetArrayFromImage(result.pseudo_ct), expected)  # no field-of-view fill: a registered CT
    assert result.method == "rigid" and result.field_of_view["outside"].startswith("none: method rigid")
    assert result.pseudo_ct.GetOrigin() == cbct.GetOrigin() and result.pseudo_ct.GetSpacing() == cbct.GetSpacing()
    with pytest.raises(InputError, match="^--refine demons refines a generated pseudo-CT; method rigid registers"):
        Pipeline(method="rigid", modality="cbct", device="cpu", refine="demons")


def test_a_registration_method_s_field_is_reported_with_its_folds(cbct_data, monkeypatch):
    """The classical registrations return their field; the pipeline reports its folds (here a
    stand-in registration whose field folds one voxel in eight: ANTs and elastix themselves
    are checked in test_benchmark.py)."""
    from RegisterByGenerationLib.methods import classical

    _, cbct, ct = _case(cbct_data)
    arrays = np.zeros((*cbct.GetSize()[::-1], 3))
    arrays[..., 0] = np.where(np.arange(cbct.GetSize()[0]) % 8 == 4, -3.0, 0.0) * cbct.GetSpacing()[0]  # x + u(x) runs backwards there

    def fake_registration(input_image, reference_ct, seed):
        field = sitk.GetImageFromArray(arrays, isVector=True)
        field.CopyInformation(input_image)
        return sitk.Resample(reference_ct, input_image, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32), field

    monkeypatch.setattr(classical.ElastixMethod, "register", staticmethod(fake_registration))
    monkeypatch.setattr(classical.method, "missing_extra", lambda name: None)
    result = Pipeline(method="elastix", modality="cbct", device="cpu").run(cbct, ct)
    assert 0.1 < result.deformation["fold_fraction"] < 0.4 and result.deformation["jacobian_min"] < 0


def test_rbg_run_method_rigid_writes_a_report_naming_the_method(cbct_data, tmp_path, capsys):
    from RegisterByGenerationLib.cli import main

    case, _, _ = _case(cbct_data)
    out = tmp_path / "out"
    assert main(["run", str(case / "cbct.nii.gz"), str(case / "ct.nii.gz"), "-o", str(out), "--modality", "cbct", "--method", "rigid",
                 "--bones", "none", "--device", "cpu", "--progress", "none"]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "rigid" and report["model"] is None
    assert main(["run", str(case / "cbct.nii.gz"), str(case / "ct.nii.gz"), "-o", str(tmp_path / "kept"), "--modality", "cbct", "--method", "rigid",
                 "--bones", "none", "--device", "cpu", "--progress", "none", "--save-intermediate"]) == 0  # fmt: skip
    assert (tmp_path / "kept" / "reference_prealigned.nii.gz").is_file() and not (tmp_path / "kept" / "stage1.nii.gz").exists()
    assert main(["run", str(case / "cbct.nii.gz"), str(case / "ct.nii.gz"), "-o", str(tmp_path / "no"), "--modality", "cbct",
                 "--method", "syn", "--model", "phantom-cbct-lite"]) == 3  # fmt: skip
    assert "method syn uses no model" in capsys.readouterr().err and not (tmp_path / "no").exists()
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in METHODS) and "mr: phantom-mr-lite" in listed


# --------------------------------------------------------------------------- STN fusion network


def test_stn_starts_as_the_identity_and_the_residual_net_as_the_reference():
    torch.manual_seed(0)
    net = STNFusionNet(TINY).eval()
    x, y = torch.randn(2, 1, 16, 32, 32), torch.randn(2, 1, 16, 32, 32)
    with torch.no_grad():
        out = net(x, y)
    identity = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]).expand(2, -1, -1)
    torch.testing.assert_close(out["theta"], identity)
    torch.testing.assert_close(out["warped"], y, rtol=0, atol=1e-5)  # the identity grid hits voxel centres (to float rounding)
    torch.testing.assert_close(out["output"], y, rtol=0, atol=1e-5)  # zero-initialised last layer
    # A pure translation of one voxel in x moves the CT by one voxel (affine_grid's [-1, 1] units).
    theta = identity.clone()
    theta[:, 0, 3] = 2.0 / 32
    shifted = net.warp(y, theta)
    torch.testing.assert_close(shifted[..., :-1], y[..., 1:], rtol=0, atol=1e-5)


def test_stn_fusion_refuses_bad_shapes_and_configs_in_one_line():
    net = STNFusionNet(TINY)
    with pytest.raises(InputError, match=r"^stn_fusion: every axis must be a multiple of 16, got \(16, 32, 40\)$"):
        net(torch.zeros(1, 1, 16, 32, 40), torch.zeros(1, 1, 16, 32, 40))
    with pytest.raises(InputError, match="^stn_fusion: input and reference must both be"):
        net(torch.zeros(1, 1, 16, 32, 32), torch.zeros(1, 2, 16, 32, 32))
    with pytest.raises(InputError, match="patch must be three multiples of 16"):
        STNFusionConfig(patch=(8, 32, 32))
    assert STNFusionConfig.from_dict(TINY.to_dict()) == TINY


def test_loss_is_the_papers_weighted_sum():
    config = STNFusionTrainingConfig(mae_weight=0.2, ssim_weight=1.0, perceptual_weight=0.7, warp_weight=1e-3)
    loss = STNFusionLoss(config)
    torch.manual_seed(1)
    target = torch.rand(1, 1, 16, 32, 32) * 2 - 1
    produced = {"output": target + 0.1 * torch.randn_like(target), "warped": target + 0.3 * torch.randn_like(target)}
    terms = loss(produced, target)
    torch.testing.assert_close(terms["mae"], (produced["output"] - target).abs().mean())
    torch.testing.assert_close(terms["warp"], ((produced["warped"] - target) ** 2).mean())
    expected = 0.2 * terms["mae"] + terms["ssim"] + 0.7 * terms["perceptual"] + 1e-3 * terms["warp"]
    torch.testing.assert_close(terms["total"], expected)
    assert 0 < terms["ssim"] < 1 and loss(dict(produced, output=target), target)["ssim"] < 1e-4


def test_sliding_windows_cover_the_volume_and_are_counted_and_cancellable():
    net = STNFusionNet(TINY).eval()
    x = np.random.default_rng(0).uniform(-1, 1, (20, 40, 52)).astype(np.float32)
    calls = []
    out = predict_volume(net, x, x.copy(), device=torch.device("cpu"), progress=lambda f, m: calls.append(f))
    assert out.shape == x.shape and len(calls) == window_count(x.shape, TINY.patch) == 2 * 2 * 2
    np.testing.assert_allclose(out, x, atol=1e-5)  # untrained residual net: the reference itself, seams included

    def stop(what):
        raise Cancelled(f"stopped before {what}")

    with pytest.raises(Cancelled, match="the next window"):
        predict_volume(net, x, x, device=torch.device("cpu"), checkpoint=stop)


# --------------------------------------------------------------------------- training, export, pipeline


def _tiny_training(**overrides) -> STNFusionTrainingConfig:
    settings = dict(architecture=TINY, epochs=2, steps_per_epoch=2, pixel_spacing_mm=(4.0, 4.0), val_cases=("2PS0512",), perceptual_weight=0.7)
    return STNFusionTrainingConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def stn_run(cbct_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("stn") / "run"
    train_stn_fusion(_tiny_training(), cbct_data, run, device="cpu")
    return run


def test_training_resumes_exactly_and_exports_a_model_the_pipeline_runs(stn_run, cbct_data, tmp_path):
    straight = torch.load(stn_run / "last.pt", weights_only=True)
    assert straight["epoch"] == 2 and {"val_mae", "val_bone_dice", "val_rigid_mae"} <= set(straight["history"][-1])
    interrupted = tmp_path / "interrupted"
    shutil.copytree(stn_run / "cache", interrupted / "cache")
    train_stn_fusion(_tiny_training(), cbct_data, interrupted, device="cpu", stop_after=1)
    torch.manual_seed(123)
    train_stn_fusion(_tiny_training(), cbct_data, interrupted, device="cpu", resume=True)
    resumed = torch.load(interrupted / "last.pt", weights_only=True)
    assert resumed["history"][1]["train_total"] == pytest.approx(straight["history"][1]["train_total"], rel=1e-6)
    for key, value in straight["model"].items():
        # Float-level noise of the 3-D convolutions: Adam turns it into updates of up to
        # ~lr on the biases before instance norm, whose true gradient is zero.
        tolerance = 1e-3 if key.endswith("bias") else 2e-5
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=tolerance, msg=key)
    with pytest.raises(InputError, match="already has a checkpoint; pass --resume"):
        train_stn_fusion(_tiny_training(), cbct_data, interrupted, device="cpu")
    with pytest.raises(InputError, match="another configuration"):
        train_stn_fusion(_tiny_training(lr=1e-3), cbct_data, interrupted, device="cpu", resume=True)

    info = export_stn_fusion(stn_run, tmp_path / "model", name="tiny-stn")
    assert info.method == "stn-fusion" and info.metadata["training"]["data"]["kind"].startswith("synthetic")
    assert "aligned CT" in info.metadata["training"]["target"]
    _, cbct, ct = _case(cbct_data, 1)
    events = []
    result = Pipeline(info.path, modality="cbct", device="cpu").run(cbct, ct, progress=lambda f, s, m="": events.append(s))
    assert result.method == "stn-fusion" and "generate" in events
    assert result.pseudo_ct.GetSize() == cbct.GetSize() and result.pseudo_ct.GetDirection() == cbct.GetDirection()
    assert result.field_of_view["blend_mm"] > 0  # a generated image: the reference fills outside the field of view
    with pytest.raises(ModelError, match="is a stn-fusion model, not a rbg one"):
        Pipeline(info.path, method="rbg", modality="cbct", device="cpu")
    with pytest.raises(InputError, match="not a training run of method stn-fusion"):
        export_stn_fusion(tmp_path, tmp_path / "other", name="x")


def test_stn_fusion_refuses_a_volume_too_thin_for_its_windows(stn_run, cbct_data, tmp_path):
    info = export_stn_fusion(stn_run, tmp_path / "model", name="tiny-stn")
    _, cbct, ct = _case(cbct_data)
    thin = cbct[:, :, :4]
    with pytest.raises(InputMismatchError, match=r"^thin.nii.gz: 4 slice\(s\); method stn-fusion needs at least 8"):
        Pipeline(info.path, modality="cbct", device="cpu").run(thin, ct, input_name="thin.nii.gz")


def test_training_needs_aligned_cts(cbct_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cbct_data, data)
    for aligned in data.glob("*/ct_aligned.nii.gz"):
        aligned.unlink()
    with pytest.raises(InputError, match=r"2PS0510: case 2PS0510 has no ct_aligned.nii.gz, the target stn-fusion training needs"):
        train_stn_fusion(_tiny_training(), data, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()
    with pytest.raises(InputError, match="dataset folder not found"):
        train_stn_fusion(_tiny_training(), tmp_path / "missing", tmp_path / "run2", device="cpu")
    assert not (tmp_path / "run2").exists()  # nothing written for bad data


def test_benchmark_runs_stn_fusion_and_notes_when_there_is_no_model(stn_run, cbct_data, tmp_path):
    from RegisterByGenerationLib.benchmark import run_benchmark

    info = export_stn_fusion(stn_run, tmp_path / "model", name="tiny-stn")
    data = tmp_path / "data"
    shutil.copytree(sorted(p for p in cbct_data.iterdir() if p.is_dir())[2], data / "case")
    rows = run_benchmark(data, tmp_path / "out", methods=("rigid", "stn-fusion"), threads=1, method_models={"stn-fusion": str(info.path)}, progress=lambda line: None)
    row = next(r for r in rows if r["method"] == "stn-fusion")
    assert row["mae"] > 0 and row["note"] == "model model" and row["wall_s"] > 0
    mr = tmp_path / "mr"
    write_phantom_dataset(mr, cases=1, seed=520, modality="mr", size=(64, 48, 16))  # stn-fusion has no MR model
    skipped = run_benchmark(mr, tmp_path / "out2", methods=("stn-fusion",), threads=1, progress=lambda line: None)
    assert skipped[0]["note"].startswith("skipped: no mr stn-fusion model installed")
    with pytest.raises(ModelError, match="is a rbg model, not a stn-fusion one"):
        run_benchmark(data, tmp_path / "out3", methods=("stn-fusion",), method_models={"stn-fusion": "phantom-cbct-lite"}, progress=lambda line: None)
