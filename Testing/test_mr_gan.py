"""MR-GAN: the networks, the paired/unpaired split and crops, the three variants' losses,
the adversary's separate optimiser, resume, export, and the two methods through the pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RegisterByGenerationLib.errors import InputError, ModelError, TensorError
from RegisterByGenerationLib.methods import resolve
from RegisterByGenerationLib.methods.mr_gan.method import MR_DEMONS
from RegisterByGenerationLib.methods.mr_gan.network import MRGAN, MRGANConfig, PairedUnpairedDiscriminator, ResnetGenerator
from RegisterByGenerationLib.methods.mr_gan.training import (
    MRGANLoss,
    MRGANTrainingConfig,
    SliceDataset,
    export_mr_gan,
    split_paired,
    train_mr_gan,
)
from RegisterByGenerationLib.phantoms import write_phantom_dataset
from RegisterByGenerationLib.pipeline import Pipeline
from RegisterByGenerationLib.refine import demons_field
from RegisterByGenerationLib.training.data import CachedCase
from RegisterByGenerationLib.training.volume_runs import train_epochs

TINY = MRGANConfig(channels=4, residual_blocks=1, discriminator_channels=4)


def _tiny_training(**overrides) -> MRGANTrainingConfig:
    settings = dict(architecture=TINY, epochs=2, steps_per_epoch=3, batch_size=2, crop_size=64, pixel_spacing_mm=(3.0, 3.0),
                    val_cases=("1PS0553",), paired_fraction=0.4, val_slices_per_case=3)  # fmt: skip
    return MRGANTrainingConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def mr_cases(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mrgan")
    write_phantom_dataset(folder, cases=4, seed=550, modality="mr", size=(64, 48, 16))
    return folder


@pytest.fixture(scope="module")
def gan_run(mr_cases, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gan") / "run"
    train_mr_gan(_tiny_training(), mr_cases, run, device="cpu")
    return run


def _cached(case_id: str, value: float, target: bool = True) -> CachedCase:
    x = np.full((4, 32, 32), -1.0, np.float32)  # air around a body of one value
    x[:, 4:28, 4:28] = value
    mask = np.zeros(x.shape, bool)
    mask[:, 8:24, 8:24] = True
    lut = np.stack([np.linspace(-1, 1, 5, dtype=np.float32), np.linspace(-1024, 3000, 5, dtype=np.float32)])
    return CachedCase(case_id, x, x + 0.25, mask, None, lut, x - 0.5 if target else None)


# --------------------------------------------------------------------------- networks


def test_the_generator_keeps_the_grid_and_range_and_refuses_other_sizes():
    generator = ResnetGenerator(channels=4, residual_blocks=2).eval()
    out = generator(torch.randn(2, 1, 24, 36) * 3)
    assert out.shape == (2, 1, 24, 36) and out.dtype == torch.float32 and out.abs().max() <= 1
    with pytest.raises(TensorError, match=r"^image: H and W must be multiples of 4, got \(26, 36\)$"):
        generator(torch.zeros(1, 1, 26, 36))
    with pytest.raises(TensorError, match="must have shape"):
        generator(torch.zeros(1, 2, 24, 36))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert generator(torch.zeros(1, 1, 24, 36)).dtype == torch.float32  # the output layer stays float32


def test_the_discriminator_has_a_head_per_input_and_a_tail_per_loss():
    d = PairedUnpairedDiscriminator(TINY)
    image = torch.zeros(2, 1, 64, 64)
    assert d.ct.single(image).shape == d.mr.pair(image, image).shape == (2, 1, 3, 3)
    body = {name for name, _ in d.ct.body.named_parameters()}
    assert body and d.ct.single_head[0].in_channels == 1 and d.ct.pair_head[0].in_channels == 2
    assert sum(p.numel() for p in MRGAN(TINY).parameters()) == 2 * sum(p.numel() for p in ResnetGenerator(4, 1).parameters())


# --------------------------------------------------------------------------- data


def test_the_paired_split_is_seeded_disjoint_and_leaves_both_kinds():
    ids = [f"c{i}" for i in range(8)]
    paired, unpaired = split_paired(ids, 0.25, seed=3)
    assert len(paired) == 2 and len(unpaired) == 6 and not set(paired) & set(unpaired) and sorted(paired + unpaired) == ids
    assert split_paired(ids, 0.25, seed=3) == (paired, unpaired) and split_paired(ids, 0.25, seed=4) != (paired, unpaired)
    assert [len(part) for part in split_paired(ids[:2], 0.9, seed=0)] == [1, 1]
    with pytest.raises(InputError, match="at least two training cases"):
        split_paired(ids[:1], 0.5, seed=0)


@pytest.mark.parametrize("variant, keys", [("paired", {"paired_mr", "paired_ct"}), ("unpaired", {"unpaired_mr", "unpaired_ct"}),
                                           ("combined", {"paired_mr", "paired_ct", "unpaired_mr", "unpaired_ct"})])  # fmt: skip
def test_crops_pair_one_place_of_one_case_and_unpair_two_cases(variant, keys):
    config = _tiny_training(variant=variant, flip=False)
    paired, unpaired = [_cached("p", 0.1)], [_cached("a", 0.3, target=False), _cached("b", 0.6, target=False)]
    dataset = SliceDataset(paired, unpaired, config, 12)
    for index in range(12):
        sample = dataset[index]
        assert set(sample) == keys and all(v.shape == (1, 64, 64) for v in sample.values())
        if "paired_mr" in sample:  # the CT of the MR's own place: the target crop at the same corner
            inside = sample["paired_mr"] == 0.1
            assert inside.any() and np.allclose(sample["paired_ct"][inside].numpy(), -0.4)
        if "unpaired_mr" in sample:  # the MR of one case, the reference CT of the other
            mr_value = float(sample["unpaired_mr"].max())
            ct_value = float(sample["unpaired_ct"].max()) - 0.25
            assert {round(mr_value, 3), round(ct_value, 3)} == {0.3, 0.6}
    assert all(torch.equal(dataset[3][k], dataset[3][k]) for k in keys)
    dataset.set_epoch(1)
    assert any(not torch.equal(dataset[i][k], SliceDataset(paired, unpaired, config, 12)[i][k]) for i in range(12) for k in keys)
    with pytest.raises(InputError, match="needs unpaired cases"):
        SliceDataset(paired, [], _tiny_training(variant="combined"), 4)


def test_configs_refuse_what_cannot_train():
    for overrides, message in [({"variant": "both"}, "variant must be one of paired, unpaired, combined"),
                               ({"crop_size": 48}, "crop_size must be a multiple of 16 of at least 64"),
                               ({"paired_fraction": 1.0}, r"paired_fraction must be in \(0, 1\)"),
                               ({"modality": "cbct"}, "translates between MR and CT"),
                               ({"pixel_target": "reference"}, "pixel_target must be 'aligned' or 'registered'")]:  # fmt: skip
        with pytest.raises(InputError, match=message):
            _tiny_training(**overrides)


# --------------------------------------------------------------------------- losses


@pytest.mark.parametrize("variant", ["paired", "unpaired", "combined"])
def test_each_variant_has_the_papers_terms_and_their_weighted_sum(variant):
    torch.manual_seed(0)
    config = _tiny_training(variant=variant)
    net, d = MRGAN(TINY), PairedUnpairedDiscriminator(TINY)
    loss = MRGANLoss(net, d, config)
    images = {k: torch.rand(2, 1, 64, 64) * 2 - 1 for k in ("paired_mr", "paired_ct", "unpaired_mr", "unpaired_ct")}
    batch = {k: v for k, v in images.items() if variant == "combined" or k.startswith(variant)}
    terms = loss.generator_terms(batch)
    expected = {"paired": {"gan_paired", "l1"}, "unpaired": {"gan_unpaired", "cycle_unpaired"},
                "combined": {"gan_paired", "l1", "cycle_paired", "gan_unpaired", "cycle_unpaired"}}[variant]  # fmt: skip
    assert set(terms) == expected | {"total"}
    weights = {"gan_paired": 1, "gan_unpaired": 1, "l1": config.l1_weight, "cycle_paired": config.cycle_weight, "cycle_unpaired": config.cycle_weight}
    assert float(terms["total"].detach()) == pytest.approx(sum(weights[k] * float(terms[k].detach()) for k in expected), rel=1e-6)
    with torch.no_grad():  # the naive formulas of Eq. 2-4
        if "l1" in terms:
            mr, ct = batch["paired_mr"], batch["paired_ct"]
            assert float(terms["l1"]) == pytest.approx(float((net.syn_ct(mr) - ct).abs().mean() + (net.syn_mr(ct) - mr).abs().mean()), rel=1e-5)
            logits = d.ct.pair(mr, net.syn_ct(mr))
            naive = -torch.log(torch.sigmoid(logits)).mean() - torch.log(torch.sigmoid(d.mr.pair(ct, net.syn_mr(ct)))).mean()
            assert float(terms["gan_paired"]) == pytest.approx(float(naive), rel=1e-4)
        if "cycle_unpaired" in terms:
            mr, ct = batch["unpaired_mr"], batch["unpaired_ct"]
            naive = (net.syn_mr(net.syn_ct(mr)) - mr).abs().mean() + (net.syn_ct(net.syn_mr(ct)) - ct).abs().mean()
            assert float(terms["cycle_unpaired"]) == pytest.approx(float(naive), rel=1e-5)
            assert float(terms["gan_unpaired"]) == pytest.approx(float(((d.ct.single(net.syn_ct(mr)) - 1) ** 2).mean() + ((d.mr.single(net.syn_mr(ct)) - 1) ** 2).mean()), rel=1e-5)
    d_terms = loss.discriminator_terms(batch)
    assert set(d_terms) == {"paired", "unpaired", "total"} & ({"total"} | {k.split("_")[0] for k in batch})
    d_terms["total"].backward()
    assert all(p.grad is None for p in net.parameters())  # the discriminators judge detached fakes


def test_the_generator_step_leaves_the_adversary_and_the_adversary_step_the_generator(tmp_path):
    class Data(torch.utils.data.Dataset):
        def set_epoch(self, epoch):
            pass

        def __len__(self):
            return 4

        def __getitem__(self, index):
            return {"x": torch.full((3,), float(index))}

    config = SimpleNamespace(lr=0.1, lr_milestones=(), lr_gamma=0.5, epochs=1, batch_size=2, betas=(0.5, 0.999), to_dict=lambda: {})
    for generator_moves in (True, False):
        net, adversary = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
        before = [p.detach().clone() for p in (*net.parameters(), *adversary.parameters())]
        both = lambda batch: {"total": (net(batch["x"]) + adversary(batch["x"])).sum()}  # noqa: E731
        nothing = lambda batch: {"total": 0.0 * (net(batch["x"]) + adversary(batch["x"])).sum()}  # noqa: E731
        run = tmp_path / str(generator_moves)
        run.mkdir()
        train_epochs("test", net, config, Data(), run, device=torch.device("cpu"), resume=False, stop_after=None, terms_of=both if generator_moves else nothing,
                     validate=dict, adversary=adversary, adversary_terms_of=nothing if generator_moves else both)  # fmt: skip
        after = list((*net.parameters(), *adversary.parameters()))
        moved = [not torch.equal(a, b) for a, b in zip(before, after)]
        assert moved == [generator_moves] * 2 + [not generator_moves] * 2
        saved = torch.load(run / "last.pt", weights_only=True)
        assert {"model", "optimizer", "adversary_model", "adversary_optimizer", "adversary_scheduler"} <= set(saved)


# --------------------------------------------------------------------------- training, export, methods


def test_training_resumes_exactly_with_the_discriminators(gan_run, mr_cases, tmp_path):
    straight = torch.load(gan_run / "last.pt", weights_only=True)
    assert straight["epoch"] == 2 and {"val_mae", "val_mr_l1", "val_rigid_mae", "train_adversary_total"} <= set(straight["history"][-1])
    interrupted = tmp_path / "interrupted"
    shutil.copytree(gan_run / "cache", interrupted / "cache")
    train_mr_gan(_tiny_training(), mr_cases, interrupted, device="cpu", stop_after=1)
    train_mr_gan(_tiny_training(), mr_cases, interrupted, device="cpu", resume=True)
    resumed = torch.load(interrupted / "last.pt", weights_only=True)
    for key in ("model", "adversary_model"):
        assert all(torch.allclose(resumed[key][k], straight[key][k], atol=1e-6) for k in straight[key])
    run = json.loads((gan_run / "run.json").read_text())
    assert run["method"] == "mr-gan" and len(run["data"]["paired"]) == 1 and len(run["data"]["unpaired"]) == 2
    with pytest.raises(InputError, match="already has a checkpoint; pass --resume"):
        train_mr_gan(_tiny_training(), mr_cases, interrupted, device="cpu")


def test_paired_cases_need_their_ct_and_nothing_is_written(mr_cases, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(mr_cases, data)
    for path in data.glob("*/ct_aligned.nii.gz"):
        path.unlink()
    with pytest.raises(InputError, match=r"paired case 1PS055\d has no ct_aligned.nii.gz"):
        train_mr_gan(_tiny_training(), data, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()
    train_mr_gan(_tiny_training(variant="unpaired", epochs=1, val_cases=()), data, tmp_path / "unpaired", device="cpu")  # no pairs needed


def test_the_exported_model_runs_both_methods_on_the_input_grid(gan_run, mr_cases, tmp_path):
    info = export_mr_gan(gan_run, tmp_path / "model", name="tiny-gan")
    card = info.metadata["training"]
    assert info.method == "mr-gan" and card["variant"] == "combined" and len(card["paired_cases"]) == 1
    assert any("64 and 9" in d for d in card["departures_from_the_paper"])
    from safetensors.torch import load_file

    assert {key.split(".")[0] for key in load_file(info.path / "weights.safetensors")} == {"syn_ct", "syn_mr"}  # no discriminator
    case = sorted(p for p in mr_cases.iterdir() if p.is_dir())[0]
    mr, ct = sitk.ReadImage(str(case / "mr.nii.gz")), sitk.ReadImage(str(case / "ct.nii.gz"))
    synthesis = Pipeline(info.path, modality="mr", device="cpu").run(mr, ct)
    assert synthesis.method == "mr-gan" and synthesis.pseudo_ct.GetSize() == mr.GetSize() and not synthesis.deformation
    registered = Pipeline(info.path, method="registration-by-synthesis", modality="mr", device="cpu").run(mr, ct, keep_intermediate=True)
    assert registered.method == "registration-by-synthesis" and registered.pseudo_ct.GetOrigin() == mr.GetOrigin()
    assert set(registered.deformation) >= {"fold_fraction", "jacobian_min"} and registered.flow_magnitude is not None
    assert resolve("registration-by-synthesis", info.path, "mr")[1].name == "tiny-gan"
    with pytest.raises(ModelError, match="is a mr-gan model, not a rbg one"):
        Pipeline(info.path, method="rbg", modality="mr", device="cpu")
    with pytest.raises(InputError, match="not a training run of method mr-gan"):
        export_mr_gan(tmp_path, tmp_path / "other", name="x")


def test_registration_by_synthesis_resamples_the_reference_once(gan_run, mr_cases, tmp_path, monkeypatch):
    # Pre-alignment half a voxel along x, demons' field half a voxel back: the reference CT
    # as given comes back voxel for voxel only if it is read once through both.
    from RegisterByGenerationLib.methods.base import MethodInputs
    from RegisterByGenerationLib.methods.mr_gan import method as method_module

    info = export_mr_gan(gan_run, tmp_path / "model", name="tiny-gan")
    case = sorted(p for p in mr_cases.iterdir() if p.is_dir())[0]
    mr, ct = sitk.ReadImage(str(case / "mr.nii.gz")), sitk.ReadImage(str(case / "ct.nii.gz"))
    reference = sitk.Resample(ct, mr, sitk.Transform(), sitk.sitkNearestNeighbor, -1024.0, sitk.sitkFloat32)  # on the MR's grid
    half = 0.5 * mr.GetSpacing()[0]
    prealign = sitk.Euler3DTransform()
    prealign.SetTranslation((half, 0.0, 0.0))
    on_input = sitk.Resample(reference, mr, prealign, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)

    def half_voxel_back(fixed, moving, settings):
        vectors = np.zeros((*mr.GetSize()[::-1], 3))
        vectors[..., 0] = -half
        field = sitk.GetImageFromArray(vectors, isVector=True)
        field.CopyInformation(mr)
        return field

    monkeypatch.setattr(method_module, "demons_field", half_voxel_back)
    method = method_module.RegistrationBySynthesisMethod(info, device=torch.device("cpu"), autocast_dtype=None, batch_size=None, threads=1)
    inputs = MethodInputs(mr, reference, on_input, "mr", 0, False, lambda *a: None, lambda what: None, prealign)
    warped = sitk.GetArrayFromImage(method.generate(inputs).image)
    np.testing.assert_allclose(warped, sitk.GetArrayFromImage(reference), atol=1e-2)


def test_demons_between_two_mrs_recovers_a_shift():
    rng = np.random.default_rng(0)
    volume = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(rng.normal(size=(24, 64, 64)).astype(np.float32)), 3.0)
    volume = sitk.RescaleIntensity(volume, -1000.0, 1000.0)
    volume.SetSpacing((1.0, 1.0, 2.0))
    shifted = sitk.Resample(volume, volume, sitk.TranslationTransform(3, (2.0, 0.0, 0.0)), sitk.sitkLinear, -1000.0)
    field = sitk.GetArrayFromImage(demons_field(shifted, volume, MR_DEMONS))  # shifted(p) = volume(p + 2 mm x)
    assert np.median(field[6:-6, 16:-16, 16:-16, 0]) == pytest.approx(2.0, abs=0.4)
    assert np.abs(np.median(field[6:-6, 16:-16, 16:-16, 1:])) < 0.3


def test_rbg_train_mr_gan_variant_and_export_from_the_command_line(mr_cases, tmp_path):
    from RegisterByGenerationLib.cli import main

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**_tiny_training().to_dict(), "epochs": 1}))
    run = tmp_path / "run"
    assert main(["train", "mr-gan", "--data", str(mr_cases), "--out", str(run), "--config", str(config), "--variant", "paired", "--threads", "1"]) == 0
    assert json.loads((run / "run.json").read_text())["config"]["variant"] == "paired"
    assert main(["train", "export", str(run), "-o", str(tmp_path / "model"), "--name", "cli-gan"]) == 0
    assert json.loads((tmp_path / "model" / "model.json").read_text())["training"]["variant"] == "paired"


def test_benchmark_runs_both_methods_on_one_mr_gan_model(gan_run, mr_cases, tmp_path):
    from RegisterByGenerationLib.benchmark import read_results
    from RegisterByGenerationLib.cli import main

    export_mr_gan(gan_run, tmp_path / "model", name="tiny-gan")
    data = tmp_path / "data"
    shutil.copytree(sorted(p for p in mr_cases.iterdir() if p.is_dir())[1], data / "case")
    assert main(["benchmark", "--data", str(data), "-o", str(tmp_path / "out"), "--methods", "mr-gan", "registration-by-synthesis",
                 "--threads", "1", "--mr-gan-model", str(tmp_path / "model")]) == 0  # fmt: skip
    by_method = {row["method"]: row for row in read_results([tmp_path / "out" / "results.csv"])}
    assert by_method["mr-gan"]["mae"] > 0 and np.isnan(by_method["mr-gan"]["fold_fraction"])
    assert 0 <= by_method["registration-by-synthesis"]["fold_fraction"] <= 1 and "model model" in by_method["registration-by-synthesis"]["note"]
    assert main(["benchmark", "--data", str(data), "-o", str(tmp_path / "out2"), "--methods", "registration-by-synthesis", "--threads", "1"]) == 0
    skipped = read_results([tmp_path / "out2" / "results.csv"])[0]
    assert skipped["note"].startswith("skipped: no mr mr-gan model installed (--mr-gan-model)")
