"""Self-supervised training: `rbg train all` on a 2-case phantom set, overfitting a fixed
batch, exact resume, malformed datasets, configs, crops and export."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RegisterByGenerationLib.cli import main
from RegisterByGenerationLib.errors import InputError
from RegisterByGenerationLib.modelstore import ModelInfo, load_model
from RegisterByGenerationLib.networks import build_model
from RegisterByGenerationLib.phantoms import write_phantom_dataset
from RegisterByGenerationLib.training import (
    SliceCropDataset,
    Trainer,
    TrainingConfig,
    find_cases,
    load_case,
    load_checkpoint,
    load_config,
    split_cases,
)
from RegisterByGenerationLib.training.distributed import DistributedContext
from RegisterByGenerationLib.training.phases import build_phase

SIZE = (64, 48, 16)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the CI machine has 2 shared cores, and oversubscribed threads
    are much slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(folder, cases=2, seed=500, modality="mr", size=SIZE)
    return folder


@pytest.fixture(scope="module")
def trained_run(phantom_data, tmp_path_factory) -> tuple[Path, Path, int]:
    """`rbg train all` with the tiny preset, exporting the model at the end."""
    root = tmp_path_factory.mktemp("run")
    run, model = root / "run", root / "model"
    torch.set_num_threads(1)
    code = main(["train", "all", "--data", str(phantom_data), "--out", str(run), "--preset", "tiny", "--device", "cpu",
                 "--no-progress", "--export", str(model), "--name", "tiny-trained"])  # fmt: skip
    return run, model, code


@pytest.fixture(scope="module")
def cases(phantom_data, trained_run):
    run, _, _ = trained_run
    config = TrainingConfig.tiny()
    _, files = find_cases(phantom_data)
    return [load_case(f, config, run / "cache") for f in files]  # cache hits: the run preprocessed them


def _batch(cases, config, size=2, seed=0):
    dataset = SliceCropDataset(cases, config.crop_size, seed=seed, augment=None, reference_shift=2)
    items = [dataset[i] for i in range(size)]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


# --------------------------------------------------------------------------- end to end


def test_train_all_writes_checkpoints_logs_and_a_loadable_model(trained_run, phantom_data):
    run, model_dir, code = trained_run
    assert code == 0
    info = json.loads((run / "run.json").read_text())
    assert sorted(info["data"]["train"] + info["data"]["val"]) == ["1PS0500", "1PS0501"]
    assert len(info["data"]["val"]) == 1  # split by patient
    for phase in ("stage1", "registration", "stage2"):
        assert (run / phase / "best.pt").is_file() and (run / phase / "last.pt").is_file()
        rows = list(csv.DictReader(open(run / phase / "log.csv")))
        assert len(rows) == 1 and np.isfinite(float(rows[0]["train_total"]))
        state = load_checkpoint(run / phase / "last.pt")
        assert state["epoch"] == 1 and state["phase"] == phase
    stage1_log = list(csv.DictReader(open(run / "stage1" / "log.csv")))[0]
    assert 0 < float(stage1_log["val_mae"]) < 3000  # MAE in HU vs ct_aligned on validation slices
    registration_log = list(csv.DictReader(open(run / "registration" / "log.csv")))[0]
    assert {"val_mse", "val_warped_mae", "val_rigid_mae"} <= set(registration_log)

    # the exported model: loadable, and the pipeline runs it
    model_info = ModelInfo.from_directory(model_dir)
    card = model_info.metadata["training"]
    assert card["data"]["kind"].startswith("synthetic pelvis phantoms")
    seed_of = {"1PS0500": 500, "1PS0501": 501}
    assert card["data"]["phantom_seeds"] == {"train": [seed_of[c] for c in info["data"]["train"]], "val": [seed_of[c] for c in info["data"]["val"]]}
    assert card["feature_networks"]["contextual"].startswith("vgg19-random (He init, random biases, seed 0)")
    assert "not for clinical use" in card["note"] and "To train on real data" in card["note"]
    assert set(card["epochs"]) == {"stage1", "registration", "stage2"} and card["hardware"]
    load_model(model_info)

    from RegisterByGenerationLib.io import read_image
    from RegisterByGenerationLib.pipeline import Pipeline

    case = phantom_data / info["data"]["val"][0]
    pipeline = Pipeline(model_dir, modality="mr", device="cpu", prealign=False)
    result = pipeline.run(read_image(case / "mr.nii.gz"), read_image(case / "ct.nii.gz"))
    assert result.pseudo_ct.GetSize() == SIZE


def test_stage2_is_trained_with_stage1_and_registration_frozen(trained_run):
    run, _, _ = trained_run
    models = {phase: load_checkpoint(run / phase / "best.pt")["model"] for phase in ("stage1", "registration", "stage2")}
    for key, value in models["stage1"].items():
        if key.startswith("stage1."):
            assert torch.equal(value, models["registration"][key]) and torch.equal(value, models["stage2"][key]), key
    changed = [k for k, v in models["registration"].items() if k.startswith("registration.") and not torch.equal(v, models["stage1"][k])]
    assert changed  # the registration phase did train R
    for key, value in models["registration"].items():
        if key.startswith("registration."):
            assert torch.equal(value, models["stage2"][key]), key


def test_a_phase_needs_the_previous_one_and_refuses_to_overwrite(trained_run, phantom_data, tmp_path, capsys):
    run, _, _ = trained_run
    fresh = tmp_path / "fresh"
    shutil.copytree(run / "cache", fresh / "cache")
    args = ["--data", str(phantom_data), "--preset", "tiny", "--device", "cpu", "--no-progress"]
    assert main(["train", "stage2", "--out", str(fresh), *args]) == InputError.exit_code
    assert "registration has not been trained; run `rbg train registration` first" in capsys.readouterr().err
    assert main(["train", "stage1", "--out", str(run), "--device", "cpu", "--data", str(phantom_data)]) == InputError.exit_code
    assert "already has a checkpoint; pass --resume" in capsys.readouterr().err


# --------------------------------------------------------------------------- optimisation


class _ShiftedReference(torch.nn.Module):
    """A stand-in Stage 1 whose output is the reference moved by (2, -1) pixels: the
    registration network has a known displacement to find."""

    def forward(self, x, y, generator=None):
        return torch.roll(y, shifts=(2, -1), dims=(2, 3))


@pytest.mark.parametrize("phase", ["stage1", "registration", "stage2"])
def test_each_phase_overfits_a_fixed_batch(cases, phase):
    """Real optimisation steps: the non-adversarial part of the loss falls on a fixed batch."""
    torch.manual_seed(0)
    config = TrainingConfig.tiny()
    config.phase(phase).lr = 3e-3
    model = build_model(config.model)
    if phase == "registration":
        model.stage1 = _ShiftedReference()
    step = build_phase(phase, model, config, DistributedContext(), torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    step.train_mode()
    batch = _batch(cases, config)
    history = []
    for _ in range(20):
        losses = step.train_step(batch)
        if phase == "registration":
            history.append(losses["total"])  # MSE + 0.5 smoothness: nothing adversarial
        else:
            history.append(step.weights.nce * losses["nce"] + step.weights.cx * losses["cx"])
    assert np.mean(history[-4:]) < 0.85 * np.mean(history[:4]), [round(h, 2) for h in history]


@pytest.mark.parametrize("phase", ["stage1", "stage2"])
def test_identity_term_is_off_in_the_presets_and_optional(cases, phase):
    """The CycleGAN identity loss L1(net(y as input), y) is not part of the published
    recipe: 0 in every preset, added to the total only when its weight is positive."""
    assert all(getattr(TrainingConfig.preset_named(p), f"{phase}_identity_weight") == 0 for p in ("tiny", "lite", "full"))
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        config = TrainingConfig.tiny(**{f"{phase}_identity_weight": weight})
        step = build_phase(phase, build_model(config.model), config, DistributedContext(), torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
        step.train_mode()
        losses = step.train_step(_batch(cases, config))
        expected = step.weights.nce * losses["nce"] + step.weights.cx * losses["cx"] + step.weights.gan * losses["gan"] + weight * losses["identity"]
        assert losses["total"] == pytest.approx(expected, rel=1e-5)
        assert (losses["identity"] > 0) == (weight > 0)


@pytest.mark.parametrize("phase", ["stage1", "stage2"])
def test_pixel_term_is_l1_against_a_reference_the_network_was_not_fed(cases, phase):
    """The optional pixel term: L1(ŷ, y) in Stage 1; in Stage 2 the networks are fed the
    displaced crop y_s and its flow, and L1 compares with the crop in place y. 0 in every
    preset, in the total only with a positive weight."""
    assert all(getattr(TrainingConfig.preset_named(p), f"{phase}_pixel_weight") == 0 for p in ("tiny", "lite", "full"))
    for weight in (0.0, 3.0):
        torch.manual_seed(0)
        config = TrainingConfig.tiny(**{f"{phase}_pixel_weight": weight})
        model = build_model(config.model)
        step = build_phase(phase, model, config, DistributedContext(), torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
        step.train_mode()
        batch = _batch(cases, config)
        x, y, y_shifted = batch["x"], batch["y"], batch["y_shifted"]
        assert not torch.equal(y, y_shifted)
        with torch.no_grad():
            if phase == "stage1":
                expected_pixel = torch.nn.functional.l1_loss(model.stage1(x, y, generator=torch.Generator().manual_seed(2)), y)
            else:
                y_hat = model.stage1(x, y_shifted)
                expected_pixel = torch.nn.functional.l1_loss(model.stage2(x, y_hat, y_shifted, model.registration(fixed=y_hat, moving=y_shifted)), y)
        losses = step.train_step(batch)
        expected = step.weights.nce * losses["nce"] + step.weights.cx * losses["cx"] + step.weights.gan * losses["gan"] + weight * losses["pixel"]
        assert losses["total"] == pytest.approx(expected, rel=1e-5)
        if weight > 0:
            assert losses["pixel"] == pytest.approx(float(expected_pixel), rel=1e-5)
        else:
            assert losses["pixel"] == 0


@pytest.mark.parametrize("phase", ["stage1", "stage2"])
def test_bone_term_is_soft_dice_at_the_benchmark_threshold_against_the_pixel_target(cases, phase):
    """The optional bone term: :class:`SoftBoneDiceLoss` at ``bone_threshold_hu`` mapped
    through the reference's HU window, against what the pixel term compares with; 0 in
    every preset, in the total with its weight."""
    from RegisterByGenerationLib.losses import SoftBoneDiceLoss

    assert all(getattr(TrainingConfig.preset_named(p), f"{phase}_bone_weight") == 0 for p in ("tiny", "lite", "full"))
    torch.manual_seed(0)
    config = TrainingConfig.tiny(**{f"{phase}_bone_weight": 2.0}, stage2_pixel_weight=1.0)
    model = build_model(config.model)
    step = build_phase(phase, model, config, DistributedContext(), torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    step.train_mode()
    batch = _batch(cases, config)
    x, y, y_shifted = batch["x"], batch["y"], batch["y_shifted"]
    loss = SoftBoneDiceLoss(*config.bone_threshold())
    with torch.no_grad():
        if phase == "stage1":
            expected_bone = loss(model.stage1(x, y, generator=torch.Generator().manual_seed(2)), y)
        else:
            y_hat = model.stage1(x, y_shifted)
            expected_bone = loss(model.stage2(x, y_hat, y_shifted, model.registration(fixed=y_hat, moving=y_shifted)), y)
    losses = step.train_step(batch)
    assert losses["bone"] == pytest.approx(float(expected_bone), rel=1e-5) and losses["bone"] > 0
    w = step.weights
    pixel_weight = 1.0 if phase == "stage2" else 0.0
    expected = w.nce * losses["nce"] + w.cx * losses["cx"] + w.gan * losses["gan"] + pixel_weight * losses["pixel"] + 2.0 * losses["bone"]
    assert losses["total"] == pytest.approx(expected, rel=1e-5)


def test_bone_threshold_is_in_the_reference_window_and_needs_one():
    threshold, softness = TrainingConfig.tiny(stage1_bone_weight=1.0).bone_threshold()
    assert threshold == pytest.approx(-1 + 2 * (200 + 1024) / 4024) and softness == pytest.approx(2 * 50 / 4024)
    percentile = {"input": {"kind": "percentile", "lower": 0.5, "upper": 99.5}, "reference": {"kind": "percentile", "lower": 0.5, "upper": 99.5}}
    with pytest.raises(InputError, match="bone weights need the reference's ct_window"):
        TrainingConfig.tiny(stage1_bone_weight=1.0, normalization=percentile)
    for bad in ({"stage2_bone_weight": -1.0}, {"stage1_bone_weight": 1.0, "bone_softness_hu": 0.0}):
        with pytest.raises(InputError):
            TrainingConfig.tiny(**bad)


def test_random_contrast_keeps_air_and_reorders_tissues_reproducibly():
    """Domain randomisation of the MR input: with probability p a random piecewise-linear
    curve, -1 (air) fixed, values in [-1, 1], the same for the same seed; some seed
    swaps the order of two intensities (not monotone); p = 0 is the identity."""
    from RegisterByGenerationLib.training.data import random_contrast

    x = np.linspace(-1, 1, 101, dtype=np.float32)
    assert random_contrast(x, np.random.default_rng(0), 0.0) is x
    curves = [random_contrast(x, np.random.default_rng(seed), 1.0) for seed in range(5)]
    assert all(c.dtype == np.float32 and c[0] == -1 and c.min() >= -1 and c.max() <= 1 for c in curves)
    assert np.array_equal(curves[0], random_contrast(x, np.random.default_rng(0), 1.0))
    assert any((np.diff(c[1:]) < 0).any() for c in curves)
    applied = sum(random_contrast(x, np.random.default_rng(seed), 0.3) is not x for seed in range(200))
    assert 40 < applied < 80
    with pytest.raises(InputError, match="input_random_contrast must be a probability"):
        TrainingConfig.from_dict({"preset": "tiny", "augment": {"input_random_contrast": 1.5}})


@pytest.fixture(scope="module")
def registered_cases(phantom_data, tmp_path_factory):
    """The two phantoms with the registered pixel target (ANTs SyN: fast on 64x48x16)."""
    config = TrainingConfig.tiny(pixel_target="registered", target_registration="syn", stage1_pixel_weight=1.0, stage2_pixel_weight=1.0)
    _, files = find_cases(phantom_data)
    cache = tmp_path_factory.mktemp("cache")
    return config, files, cache, [load_case(f, config, cache) for f in files]


def test_registered_target_is_the_classical_registration_on_the_canvas(registered_cases, tmp_path, monkeypatch):
    from RegisterByGenerationLib.methods.classical import registration as classical_registration
    from RegisterByGenerationLib.preprocess import prepare_case

    config, files, _, loaded = registered_cases
    assert loaded[0].y_target is not None and not np.array_equal(loaded[0].y_target, loaded[0].y)  # ANTs SyN moved it
    # The plumbing, exactly: a known "registration" (the reference shifted 5 mm) becomes the target on the canvas.
    calls = []

    def shifted(method, input_image, reference, *, modality, seed):
        calls.append(method)
        return sitk.Resample(reference, input_image, sitk.TranslationTransform(3, (5.0, 0.0, 0.0)), sitk.sitkLinear, -1024.0)

    monkeypatch.setattr(classical_registration, "run_baseline", shifted)
    cache = tmp_path / "cache"
    case = load_case(files[0], config, cache)
    input_image, reference = sitk.ReadImage(str(files[0].input)), sitk.ReadImage(str(files[0].reference))
    prepared = prepare_case(input_image, reference, modality="mr", pixel_spacing=config.pixel_spacing_mm, canvas=None, normalization=config.normalization)
    expected = prepared.ct_map.forward(prepared.grid.to_canvas(shifted("syn", input_image, reference, modality="mr", seed=0), default_value=-1024.0))
    assert np.array_equal(case.y_target, expected) and calls[0] == "syn"
    # Cached: a second load reads the same target without registering again; validation cases get none.
    calls.clear()
    assert np.array_equal(load_case(files[0], config, cache).y_target, case.y_target) and calls == []
    assert load_case(files[0], config, cache, pixel_target=False).y_target is None and calls == []
    assert len(list(cache.iterdir())) == 2


@pytest.mark.parametrize("phase", ["stage1", "stage2"])
def test_registered_pixel_target_feeds_the_reference_and_compares_with_the_registration(registered_cases, phase):
    config, _, _, loaded = registered_cases
    config = TrainingConfig.from_dict({**config.to_dict(), f"{phase}_weights": {"nce": 0.0, "cx": 0.0, "gan": 0.0}})
    torch.manual_seed(0)
    model = build_model(config.model)
    step = build_phase(phase, model, config, DistributedContext(), torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    step.train_mode()
    batch = _batch(loaded, config)
    x, y, target = batch["x"], batch["y"], batch["y_target"]
    with torch.no_grad():
        y_hat = model.stage1(x, y, generator=torch.Generator().manual_seed(2))
        if phase == "stage2":
            y_hat = model.stage1(x, y)
            y_hat = model.stage2(x, y_hat, y, model.registration(fixed=y_hat, moving=y))
        expected = torch.nn.functional.l1_loss(y_hat, target)
    losses = step.train_step(batch)
    assert losses["pixel"] == pytest.approx(float(expected), rel=1e-5)
    # Terms of weight 0 are not computed at all (no discriminator step, no VGG, no NCE).
    assert losses["nce"] == losses["cx"] == losses["gan"] == losses["discriminator"] == 0
    assert losses["total"] == pytest.approx(losses["pixel"], rel=1e-6)


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_resume_continues_exactly(phantom_data, trained_run, tmp_path, decay):
    """Stopping after epoch 1 and resuming gives the same epoch 2 as an uninterrupted run,
    with and without a weight average."""
    run, _, _ = trained_run
    config = TrainingConfig.tiny(weight_average_decay=decay)
    config.stage1.epochs = 2
    config.stage1.samples_per_epoch = 8
    config.augment.enabled = True
    results = {}
    for name in ("straight", "interrupted"):
        folder = tmp_path / name
        shutil.copytree(run / "cache", folder / "cache")
        trainer = Trainer(config, phantom_data, folder, device="cpu", progress=False)
        if name == "straight":
            trainer.train("stage1")
        else:
            trainer.train("stage1", stop_after=1)
            assert load_checkpoint(folder / "stage1" / "last.pt")["epoch"] == 1
            torch.manual_seed(12345)  # a new process would start from another random state
            Trainer(config, phantom_data, folder, device="cpu", progress=False).train("stage1", resume=True)
        results[name] = load_checkpoint(folder / "stage1" / "last.pt")
    straight, resumed = results["straight"], results["interrupted"]
    assert resumed["epoch"] == 2
    for key in ("train_total", "train_nce", "train_cx", "train_gan", "train_discriminator", "val_mae"):
        assert resumed["history"][1][key] == pytest.approx(straight["history"][1][key], rel=1e-6, abs=1e-7), key
    for weights in ("model", "live_model") if decay else ("model",):
        for key, value in straight[weights].items():
            torch.testing.assert_close(resumed[weights][key], value, rtol=1e-6, atol=1e-7, msg=key)
    if decay:  # the checkpoint's model is the average, not the last step's weights
        assert any(not torch.equal(straight["model"][k], v) for k, v in straight["live_model"].items())


def test_selection_with_the_bone_dice_picks_the_epoch_of_the_combined_number(phantom_data, trained_run, tmp_path):
    """``selection_dice_weight_hu``: every epoch logs val_mae + w (1 - val_bone_dice) and
    best.pt is the epoch where it is lowest, not where the MAE is; negative weights refused."""
    run, _, _ = trained_run
    config = TrainingConfig.tiny(selection_dice_weight_hu=200.0)
    config.stage1.epochs = 3
    config.stage1.samples_per_epoch = 8
    shutil.copytree(run / "cache", tmp_path / "cache")
    result = Trainer(config, phantom_data, tmp_path, device="cpu", progress=False).train("stage1")
    rows = result.history
    for row in rows:
        assert row["val_selection"] == pytest.approx(row["val_mae"] + 200.0 * (1 - row["val_bone_dice"]))
    best = min(rows, key=lambda row: row["val_selection"])
    assert result.best_metric == "val_selection" and result.best_epoch == best["epoch"]
    assert load_checkpoint(tmp_path / "stage1" / "best.pt")["epoch"] == best["epoch"]
    with pytest.raises(InputError, match="selection_dice_weight_hu must be non-negative"):
        TrainingConfig.tiny(selection_dice_weight_hu=-1.0)


def test_weight_average_is_the_exponential_moving_average_and_swaps_in_and_out():
    """After steps with weights w1, w2, w3 the average is d²·w1 + d(1−d)·w2 + (1−d)·w3 (the
    first step copies); inside ``swapped_into`` the network holds it, after it the live
    weights again."""
    from RegisterByGenerationLib.training.averaging import WeightAverage

    net = torch.nn.Linear(3, 2)
    decay, steps = 0.8, [torch.randn(2, 3) for _ in range(3)]
    average = None
    for weight in steps:
        with torch.no_grad():
            net.weight.copy_(weight)
        average = average or WeightAverage(net, decay)
        average.update(net)
    expected = decay**2 * steps[0] + decay * (1 - decay) * steps[1] + (1 - decay) * steps[2]
    torch.testing.assert_close(average.weights()["weight"], expected)
    with average.swapped_into(net):
        torch.testing.assert_close(net.weight.detach(), expected)
    torch.testing.assert_close(net.weight.detach(), steps[2])
    with pytest.raises(InputError, match="weight_average_decay"):
        TrainingConfig.tiny(weight_average_decay=1.0)


# --------------------------------------------------------------------------- data


def _copy_case(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_malformed_dataset_errors_name_the_case_and_file(phantom_data, tmp_path, capsys):
    source = sorted(p for p in phantom_data.iterdir() if p.is_dir())[0]
    data = tmp_path / "data"
    data.mkdir()
    case = _copy_case(source, data / "1PA042")
    (case / "ct.nii.gz").unlink()
    with pytest.raises(InputError, match=r"1PA042: case 1PA042 is missing ct\.nii\.gz"):
        find_cases(data)
    assert main(["train", "stage1", "--data", str(data), "--out", str(tmp_path / "r"), "--preset", "tiny", "--device", "cpu"]) == InputError.exit_code
    assert "case 1PA042 is missing ct.nii.gz" in capsys.readouterr().err

    shutil.copy(source / "ct.nii.gz", case / "ct.nii.gz")
    shifted = sitk.ReadImage(str(case / "mask.nii.gz"))
    shifted.SetOrigin([o + 5.0 for o in shifted.GetOrigin()])
    sitk.WriteImage(shifted, str(case / "mask.nii.gz"))
    modality, files = find_cases(data)
    with pytest.raises(InputError, match=r"mask\.nii\.gz: case 1PA042: the mask is not on the input's grid"):
        load_case(files[0], TrainingConfig.tiny(modality=modality))

    (case / "mr.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"1PA042/mr\.nii\.gz"):
        load_case(find_cases(data)[1][0], TrainingConfig.tiny())

    other = _copy_case(source, data / "2PA001")
    (other / "mr.nii.gz").rename(other / "cbct.nii.gz")
    with pytest.raises(InputError, match="2PA001 is CBCT but 1PA042 is MR"):
        find_cases(data)
    with pytest.raises(InputError, match=r"2PA001: case 2PA001 is missing mr\.nii\.gz"):
        find_cases(data, "mr")
    shutil.rmtree(other)
    (data / "overview").mkdir()  # SynthRAD2023's spreadsheet folder is not a case
    (data / "overview" / "1_pelvis_train.xlsx").write_bytes(b"")
    assert [c.case_id for c in find_cases(data)[1]] == ["1PA042"]


def test_split_is_by_patient_and_reproducible(phantom_data):
    _, files = find_cases(phantom_data)
    many = files * 5
    many = [type(f)(f"P{i:02d}", f.folder, f.input, f.reference, f.mask, f.truth) for i, f in enumerate(many)]
    train, val = split_cases(many, val_fraction=0.2, seed=3)
    assert len(val) == 2 and not {c.case_id for c in train} & {c.case_id for c in val}
    assert [c.case_id for c in split_cases(many, val_fraction=0.2, seed=3)[1]] == [c.case_id for c in val]
    assert [c.case_id for c in split_cases(many, val_fraction=0.2, seed=0, val_cases=["P07"])[1]] == ["P07"]
    with pytest.raises(InputError, match="P99"):
        split_cases(many, val_fraction=0.2, seed=0, val_cases=["P99"])


def test_crops_are_reproducible_and_inside_the_body(cases):
    config = TrainingConfig.tiny()
    dataset = SliceCropDataset(cases, 32, seed=7, augment=config.augment, reference_shift=2)
    first = dataset[3]
    assert set(first) == {"x", "y", "y_shifted"} and first["x"].shape == (1, 32, 32)
    assert all(torch.equal(first[k], dataset[3][k]) for k in first)
    dataset.set_epoch(1)
    assert not torch.equal(first["x"], dataset[3]["x"])  # another epoch, another crop
    assert float(first["y"].max()) > -0.9  # the crop holds body, not only air


# --------------------------------------------------------------------------- config


def test_config_file_overrides_a_preset_and_round_trips(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"preset": "tiny", "modality": "cbct", "stage1": {"epochs": 3}, "crop_size": 48}))
    config = load_config(path)
    assert (config.preset, config.modality, config.stage1.epochs, config.crop_size) == ("tiny", "cbct", 3, 48)
    assert config.stage1.batch_size == TrainingConfig.tiny().stage1.batch_size
    assert config.normalization["input"]["kind"] == "ct_window"  # follows the modality
    assert TrainingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TrainingConfig.full().milestones(100) == [20, 30]
    assert TrainingConfig.full().milestones(10) == [2, 3]
    path.write_text(json.dumps({"stage1": {"epoch": 3}}))
    with pytest.raises(InputError, match=r"config\.json: config\.stage1: unknown key 'epoch'"):
        load_config(path)
    with pytest.raises(InputError, match="crop_size must be a positive multiple of 16"):
        TrainingConfig.tiny(crop_size=40)
    native = TrainingConfig.tiny(pixel_spacing_mm=None)  # every case at its own spacing
    assert TrainingConfig.from_dict(json.loads(json.dumps(native.to_dict()))).pixel_spacing_mm is None
    for bad in ({"pixel_spacing_mm": [1.0, 0.0]}, {"stage1_pixel_weight": -1.0}, {"stage2_pixel_weight": -0.5}):
        with pytest.raises(InputError):
            TrainingConfig.tiny(**bad)


def test_a_native_spacing_export_records_the_training_spacings(trained_run, phantom_data, tmp_path):
    """A model trained at each case's own spacing (pixel_spacing_mm null) records the
    in-plane spacings of its training inputs, which inference warns outside of."""
    from RegisterByGenerationLib.training import export_run

    run, _, _ = trained_run
    native_run = tmp_path / "run"
    shutil.copytree(run, native_run, ignore=shutil.ignore_patterns("cache"))
    record = json.loads((native_run / "run.json").read_text())
    record["config"]["pixel_spacing_mm"] = None  # same networks; only the export reads it here
    (native_run / "run.json").write_text(json.dumps(record))
    info = export_run(native_run, tmp_path / "model", name="native")
    spacings = [sitk.ReadImage(str(phantom_data / case / "mr.nii.gz")).GetSpacing()[0] for case in record["data"]["train"]]
    assert info.pixel_spacing is None
    assert info.native_pixel_spacing_range == pytest.approx((min(spacings), max(spacings)), abs=1e-4)
    record["data"]["dir"] = str(tmp_path / "moved")  # the training data is gone: refuse, do not guess
    (native_run / "run.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="cannot read the training inputs' spacings"):
        export_run(native_run, tmp_path / "model2", name="native")


def test_held_out_evaluation_scores_rigid_stage1_and_pseudo_ct(trained_run):
    from RegisterByGenerationLib.training.evaluate import evaluate_phantoms, markdown_table

    _, model_dir, _ = trained_run
    with pytest.raises(InputError, match=r"seeds \[500\] were used to train or validate"):
        evaluate_phantoms(str(model_dir), modality="mr", seeds=[500], size=SIZE)
    evaluation = evaluate_phantoms(str(model_dir), modality="mr", seeds=[600], size=SIZE)
    row = evaluation["cases"][0]
    assert row["case"] == "1PS0600" and 0 < row["mae_rigid"] < 500
    assert row["mae_pseudo_ct"] > row["mae_rigid"]  # a 3-step tiny model is no better than rigid
    assert set(evaluation["floors"]) == {"mae_at_most_0.6_x_rigid", "mae_below_stage1", "bone_dice_at_least_0.85"}
    assert evaluation["floors"]["mae_at_most_0.6_x_rigid"] is False
    assert "| **mean** |" in markdown_table(evaluation)


def test_export_records_the_output_stage_and_the_validated_spacings(trained_run, tmp_path, capsys):
    run, _, _ = trained_run
    out = tmp_path / "model"
    argv = ["train", "export", str(run), "-o", str(out), "--name", "s1", "--pseudo-ct-output", "stage1", "--valid-input-spacing", "0.5", "3", "1", "5"]
    assert main(argv) == 0
    info = ModelInfo.from_directory(out)
    assert info.pseudo_ct_output == "stage1" and info.summary()["pseudo_ct_output"] == "stage1"
    assert info.valid_input_spacing == {"in_plane": (0.5, 3.0), "slice": (1.0, 5.0)}
    with pytest.raises(InputError, match="pseudo_ct_output must be"):
        from RegisterByGenerationLib.training import export_run

        export_run(run, tmp_path / "bad", name="bad", pseudo_ct_output="stage3")


def test_aligned_pixel_target_is_the_aligned_ct_on_the_canvas(phantom_data, tmp_path):
    """``pixel_target = "aligned"`` (supervised phantom training): the target is the
    case's ct_aligned on the canvas, in the CT normalisation, exactly; validation loads
    and cases without ct_aligned get none or a one-line error."""
    config = TrainingConfig.tiny(pixel_target="aligned", stage1_pixel_weight=1.0)
    _, files = find_cases(phantom_data)
    case = load_case(files[0], config, tmp_path / "cache")
    ct_map_inverse = case.to_hu(case.y_target)
    inside = (case.truth_hu > -1000) & (case.truth_hu < 2900)  # where the window does not clip
    assert np.abs(ct_map_inverse - case.truth_hu)[inside].max() < 1.5  # HU, the LUT's sampling
    assert load_case(files[0], config, tmp_path / "cache", pixel_target=False).y_target is None
    stripped = tmp_path / "noaligned"
    shutil.copytree(files[0].folder, stripped / files[0].case_id)
    (stripped / files[0].case_id / "ct_aligned.nii.gz").unlink()
    _, bare = find_cases(stripped)
    with pytest.raises(InputError, match="has no ct_aligned.nii.gz, which pixel_target 'aligned' needs"):
        load_case(bare[0], config)


def test_a_stage1_only_run_exports_a_stage1_model(trained_run, tmp_path):
    """A model whose pseudo-CT is Stage 1's needs Stage 1 trained only: its card lists
    that phase alone and the weights are Stage 1's best checkpoint."""
    from RegisterByGenerationLib.training import export_run

    run, _, _ = trained_run
    stage1_run = tmp_path / "run"
    shutil.copytree(run, stage1_run, ignore=shutil.ignore_patterns("cache", "registration", "stage2"))
    info = export_run(stage1_run, tmp_path / "model", name="s1", pseudo_ct_output="stage1")
    card = json.loads((tmp_path / "model" / "model.json").read_text())["training"]
    assert list(card["epochs"]) == ["stage1"] and info.pseudo_ct_output == "stage1"
    assert card["exported_checkpoint"] == "stage1/best.pt"
    model = load_model(info)
    expected = load_checkpoint(stage1_run / "stage1" / "best.pt")["model"]
    for key, value in model.stage1.state_dict().items():
        assert torch.equal(value, expected[f"stage1.{key}"])
    with pytest.raises(InputError):
        export_run(stage1_run, tmp_path / "model2", name="s2")  # Stage 2 was never trained
    assert not info.test_time_flip
    flipped = export_run(stage1_run, tmp_path / "model3", name="s1f", pseudo_ct_output="stage1", test_time_flip=True)
    assert flipped.test_time_flip and json.loads((tmp_path / "model3" / "model.json").read_text())["test_time_flip"] is True
    with pytest.raises(InputError, match="test_time_flip averages Stage 1 only"):
        export_run(run, tmp_path / "model4", name="s2f", test_time_flip=True)
