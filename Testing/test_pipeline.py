"""The inference engine end to end with a tiny random-weight model on small phantoms."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TEST_NORMALIZATION, make_tiny_model

from RegisterByGenerationLib.errors import Cancelled, InputError, ModelError
from RegisterByGenerationLib.io import same_geometry
from RegisterByGenerationLib.phantoms import generate_case
from RegisterByGenerationLib.pipeline import Pipeline, select_device

SIZE = (64, 48, 16)


@pytest.fixture(scope="module")
def case():
    return generate_case(seed=11, modality="mr", size=SIZE)


@pytest.fixture(scope="module")
def oblique_case():
    return generate_case(seed=12, modality="mr", size=SIZE, oblique=True)


@pytest.fixture(scope="module")
def pipeline(tiny_mr_model):
    return Pipeline(tiny_mr_model, modality="mr", device="cpu", prealign=False)


@pytest.mark.parametrize("fixture", ["case", "oblique_case"])
def test_output_has_exactly_the_input_geometry(pipeline, fixture, request):
    case = request.getfixturevalue(fixture)
    result = pipeline.run(case.input, case.reference_ct, keep_intermediate=True)
    for image in (result.pseudo_ct, result.stage1, result.flow_magnitude, result.reference_prealigned):
        assert same_geometry(image, case.input, tolerance=0.0)
    assert result.pseudo_ct.GetPixelID() == sitk.sitkInt16
    hu = sitk.GetArrayViewFromImage(result.pseudo_ct)
    assert -1024 <= hu.min() and hu.max() <= 3000  # tanh output inside the CT window
    assert set(result.timings) == {"prealign_s", "generate_s", "postprocess_s"}  # generate_s includes the canvas preprocessing


def test_runs_are_deterministic(pipeline, case):
    first = pipeline.run(case.input, case.reference_ct)
    second = pipeline.run(case.input, case.reference_ct)
    assert np.array_equal(sitk.GetArrayViewFromImage(first.pseudo_ct), sitk.GetArrayViewFromImage(second.pseudo_ct))


def test_batch_size_does_not_change_the_result(tiny_mr_model, case):
    one = Pipeline(tiny_mr_model, device="cpu", prealign=False, batch_size=1).run(case.input, case.reference_ct)
    many = Pipeline(tiny_mr_model, device="cpu", prealign=False, batch_size=7).run(case.input, case.reference_ct)
    difference = np.abs(sitk.GetArrayFromImage(one.pseudo_ct).astype(int) - sitk.GetArrayFromImage(many.pseudo_ct))
    assert difference.max() <= 1  # float summation order only


def test_cancel_between_batches_stops_promptly_and_writes_nothing(tiny_mr_model, case, tmp_path):
    pipeline = Pipeline(tiny_mr_model, device="cpu", prealign=False, batch_size=2)
    cancel = threading.Event()
    stages = []

    def progress(fraction, stage, message=""):
        stages.append(stage)
        if stage == "generate" and stages.count("generate") == 2:
            cancel.set()

    with pytest.raises(Cancelled, match="stopped before the next slice batch"):
        pipeline.run(case.input, case.reference_ct, progress=progress, cancel=cancel)
    assert stages.count("generate") == 2 and "postprocess" not in stages
    assert list(tmp_path.iterdir()) == []


def test_progress_is_monotonic_and_complete(pipeline, case):
    seen = []
    pipeline.run(case.input, case.reference_ct, progress=lambda f, s, m="": seen.append((f, s)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and seen[-1][1] == "done"


def test_device_selection():
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    assert select_device("cpu").type == "cpu"
    with pytest.raises(InputError, match="device must be"):
        select_device("tpu")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU is usable"):
            select_device("cuda")


def test_model_for_another_modality_is_refused(tiny_mr_model):
    with pytest.raises(ModelError, match="is for MR input, not CBCT"):
        Pipeline(tiny_mr_model, modality="cbct")


def test_prealignment_runs_inside_the_pipeline(tiny_mr_model, case):
    result = Pipeline(tiny_mr_model, device="cpu", prealign=True).run(case.input, case.reference_ct)
    assert isinstance(result.transform, sitk.Euler3DTransform)
    assert np.linalg.norm(result.transform.GetTranslation()) > 0.1  # the phantom's reference is really moved


def test_a_native_spacing_model_runs_at_each_inputs_own_spacing_and_warns_far_from_training(tmp_path, caplog):
    """``pixel_spacing_mm: null`` in model.json: no in-plane resampling, whatever the
    input's spacing (the phantom demo models; their cases differ in spacing). Such a
    model sees anatomy at the input's scale, so an input far outside the spacings it was
    trained at gets a warning."""
    spacing = generate_case(seed=21, modality="mr", size=SIZE).input.GetSpacing()[0]
    model = make_tiny_model(tmp_path / "native", pixel_spacing=None, native_range=(0.9 * spacing, 1.1 * spacing))
    assert model.pixel_spacing is None
    pipeline = Pipeline(model.path, modality="mr", device="cpu", prealign=False)
    for seed, size in ((21, SIZE), (22, (2 * SIZE[0], 2 * SIZE[1], SIZE[2]))):  # about half the spacing
        case = generate_case(seed=seed, modality="mr", size=size)
        caplog.clear()
        result = pipeline.run(case.input, case.reference_ct)
        assert result.canvas["pixel_spacing_mm"] == [case.input.GetSpacing()[1], case.input.GetSpacing()[0]]
        assert same_geometry(result.pseudo_ct, case.input, tolerance=0.0)
        warned = [r.getMessage() for r in caplog.records if "trained at" in r.getMessage()]
        assert bool(warned) == (size != SIZE), warned


def test_a_stage1_output_model_returns_stage1_and_never_runs_stage2(tmp_path, case, monkeypatch):
    model = make_tiny_model(tmp_path / "s1", pseudo_ct_output="stage1").path
    pipeline = Pipeline(model, device="cpu", prealign=False)

    def refuse(*args, **kwargs):
        raise AssertionError("Stage 2 ran")

    monkeypatch.setattr(pipeline.method.network.stage2, "forward", refuse)
    result = pipeline.run(case.input, case.reference_ct, keep_intermediate=True)
    stage1 = np.clip(np.rint(sitk.GetArrayFromImage(result.stage1)), -32768, 32767)
    assert np.array_equal(sitk.GetArrayFromImage(result.pseudo_ct), stage1)  # an MR phantom: no fill, all field of view
    assert result.flow_magnitude is not None


def test_test_time_flip_averages_stage1_with_its_mirror(tmp_path):
    import torch

    model = make_tiny_model(tmp_path / "flip", pseudo_ct_output="stage1", test_time_flip=True).path
    pipeline = Pipeline(model, device="cpu", prealign=False, precision="float32")
    assert pipeline.info.test_time_flip and pipeline.info.summary()["test_time_flip"] is True
    rng = np.random.default_rng(0)
    x, y = (rng.normal(size=(2, 32, 48)).astype(np.float32) for _ in range(2))
    out = pipeline.method._forward(x, y, need_flow=False)["output"]
    with torch.inference_mode():
        tx, ty = torch.from_numpy(x[:, None]), torch.from_numpy(y[:, None])
        plain = pipeline.method.network.stage1(tx, ty)[:, 0].numpy()
        mirrored = pipeline.method.network.stage1(tx.flip(-1), ty.flip(-1)).flip(-1)[:, 0].numpy()
    np.testing.assert_allclose(out, 0.5 * (plain + mirrored), rtol=0, atol=1e-6)
    assert np.abs(out - plain).max() > 1e-3  # the mirror did change something
    with pytest.raises(ModelError, match="test_time_flip averages Stage 1 only"):
        Pipeline(make_tiny_model(tmp_path / "s2", test_time_flip=True).path, device="cpu")
    with pytest.raises(ModelError, match="test_time_flip must be true or false"):
        Pipeline(make_tiny_model(tmp_path / "bad", pseudo_ct_output="stage1", test_time_flip="yes").path, device="cpu")


def test_spacing_outside_the_cards_range_is_a_warning_of_the_result(tmp_path, case):
    model = make_tiny_model(tmp_path / "ranged", valid_input_spacing_mm={"in_plane": [0.5, 1.0], "slice": [0.5, 50.0]}).path
    result = Pipeline(model, device="cpu", prealign=False).run(case.input, case.reference_ct)
    (warning,) = result.warnings
    assert "in-plane spacing" in warning and "outside 0.5-1 mm" in warning
    inside = make_tiny_model(tmp_path / "wide", valid_input_spacing_mm={"in_plane": [0.5, 20.0], "slice": [0.5, 50.0]}).path
    assert Pipeline(inside, device="cpu", prealign=False).run(case.input, case.reference_ct).warnings == []


def test_a_card_naming_an_unknown_output_is_refused(tmp_path):
    with pytest.raises(ModelError, match="pseudo_ct_output must be 'stage1' or 'stage2'"):
        Pipeline(make_tiny_model(tmp_path / "bad", pseudo_ct_output="stage3").path, device="cpu")


def test_demons_refinement_outputs_the_reference_registered_onto_the_generated_ct(tiny_mr_model, case, tmp_path):
    from RegisterByGenerationLib.refine import register_onto_generated

    model = make_tiny_model(tmp_path / "s1", pseudo_ct_output="stage1").path  # generated CT = Stage 1, kept
    result = Pipeline(model, device="cpu", prealign=False, refine="demons").run(case.input, case.reference_ct, keep_intermediate=True)
    assert "refine_s" in result.timings
    warped, field = register_onto_generated(result.stage1, result.reference_prealigned, case.reference_ct, result.transform)
    assert np.array_equal(sitk.GetArrayFromImage(result.pseudo_ct), np.rint(sitk.GetArrayFromImage(warped)).astype(np.int16))
    assert same_geometry(field, case.input, tolerance=1e-6)
    with pytest.raises(InputError, match="refine must be one of none, demons"):
        Pipeline(tiny_mr_model, device="cpu", refine="syn")


def test_demons_moves_a_shifted_ct_back_onto_its_original():
    from RegisterByGenerationLib.refine import register_onto_generated

    ct = generate_case(seed=13, modality="cbct", size=(128, 96, 32)).ct_aligned
    shifted = sitk.Resample(ct, ct, sitk.TranslationTransform(3, (4.0, -3.0, 0.0)), sitk.sitkLinear, -1024.0)
    warped, _ = register_onto_generated(ct, shifted, shifted, sitk.Euler3DTransform())
    truth, before, after = (sitk.GetArrayFromImage(i).astype(float) for i in (ct, shifted, warped))
    body = truth > -500
    assert np.abs(after - truth)[body].mean() < 0.6 * np.abs(before - truth)[body].mean()


def test_auto_device_never_picks_mps(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device("auto").type == "cpu"


def test_the_canvas_is_a_multiple_of_the_models_own_size_divisor(tmp_path):
    """A registration net with five levels needs H, W multiples of 32, not the default 16:
    a 48-pixel-wide input must get a 64-wide canvas, at inference and in training."""
    import dataclasses

    from RegisterByGenerationLib.networks import ModelConfig
    from RegisterByGenerationLib.preprocess import prepare_case

    tiny = ModelConfig.tiny()
    config = dataclasses.replace(tiny, registration=dataclasses.replace(tiny.registration, encoder=(4, 4, 4, 4, 4), decoder=(4, 4, 4, 4, 4, 4)))
    assert config.size_multiple == 32
    info = make_tiny_model(tmp_path / "m32", config=config, pixel_spacing=None)
    case = generate_case(seed=3, modality="mr", size=(48, 40, 16))
    result = Pipeline(info.path, modality="mr", device="cpu", prealign=False).run(case.input, case.reference_ct)
    assert same_geometry(result.pseudo_ct, case.input)
    prepared = prepare_case(case.input, case.reference_ct, modality="mr", pixel_spacing=None, canvas=None,
                            normalization={"input": TEST_NORMALIZATION["mr"], "reference": TEST_NORMALIZATION["cbct"]}, prealign=False, multiple=32)  # fmt: skip
    assert prepared.x.shape[1:] == (64, 64)
