"""Mixed precision (the CUDA path, run here under CPU bfloat16 autocast) and CPU threads."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_tiny_model

from RegisterByGenerationLib.cli import main
from RegisterByGenerationLib.errors import InputError, ModelError, TensorError
from RegisterByGenerationLib.modelstore import bundled_models_dir, find_model
from RegisterByGenerationLib.networks import ModelConfig, build_model
from RegisterByGenerationLib.phantoms import generate_case
from RegisterByGenerationLib.pipeline import Pipeline, cpu_has_native_bfloat16, select_precision
from RegisterByGenerationLib.threads import default_threads, set_threads

BUNDLED = sorted(folder.name for folder in bundled_models_dir().iterdir() if (folder / "model.json").is_file())


@pytest.fixture(scope="module")
def case():
    return generate_case(seed=21, modality="mr", size=(64, 48, 16))


def _hu(pipeline: Pipeline, image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(pipeline.run(image, reference).pseudo_ct).astype(np.float64)


def _central_field(image: sitk.Image, extent_mm: tuple[float, float] = (128.0, 96.0)) -> sitk.Image:
    """``image``'s central ``extent_mm`` in-plane, every slice. The bundled models run on a
    1 mm canvas, and a CPU without native bfloat16 (AVX2 only) emulates autocast: on the
    whole 64 x 48 phantom (~6 mm voxels, a 400 x 300 canvas) the two 1 mm models took
    1331 s of the suite's 2492 s there; on this crop, 180 s."""
    size = [min(n, max(16, round(mm / s))) for n, s, mm in zip(image.GetSize()[:2], image.GetSpacing()[:2], extent_mm)]
    start = [(n - m) // 2 for n, m in zip(image.GetSize()[:2], size)]
    return sitk.RegionOfInterest(image, [*size, image.GetSize()[2]], [*start, 0])


@pytest.mark.parametrize("model", ["tiny", *BUNDLED])
def test_bfloat16_autocast_runs_the_whole_model_within_two_hu_of_float32(model, case, tmp_path):
    if model == "tiny":
        model = str(make_tiny_model(tmp_path / "tiny").path)
    modality = find_model(model).modality
    if modality != "mr":
        case = generate_case(seed=21, modality=modality, size=(64, 48, 16))
    image = _central_field(case.input)
    exact = _hu(Pipeline(model, modality=modality, device="cpu", precision="float32", prealign=False), image, case.reference_ct)
    mixed_pipeline = Pipeline(model, modality=modality, device="cpu", precision="bfloat16", prealign=False)
    assert mixed_pipeline.autocast_dtype is torch.bfloat16
    # Not the crop's outermost rows and columns: there tissue meets the canvas padding,
    # which no model saw in training, and the 3-D model's edge amplifies any rounding
    # (stn-fusion: 13-39 HU there, 0.8 HU inside).
    difference = np.abs(_hu(mixed_pipeline, image, case.reference_ct) - exact)[:, 1:-1, 1:-1]
    assert difference.mean() <= 2.0
    assert np.mean(difference > 10) <= 0.01


@pytest.mark.parametrize("kind", ["padain", "adain", "fusion"])
def test_full_size_networks_keep_float32_between_stages_under_autocast(kind):
    model = build_model(ModelConfig.full(kind)).eval()
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        produced = model(x, x.flip(-1))
    assert {key: value.dtype for key, value in produced.items()} == dict.fromkeys(("stage1", "flow", "output"), torch.float32)


def test_mismatched_tensors_raise_a_one_line_library_error():
    model = build_model(ModelConfig.tiny()).eval()
    x = torch.zeros(1, 1, 32, 32)
    cases = [
        lambda: model(x, x.double()),  # dtype
        lambda: model(x, torch.zeros(1, 1, 32, 48)),  # grid
        lambda: model(x, torch.zeros(2, 1, 32, 32)),  # batch
        lambda: model(torch.zeros(1, 1, 40, 40), torch.zeros(1, 1, 40, 40)),  # not a multiple of 16
        lambda: model.registration(fixed=x.to(torch.bfloat16), moving=x),
        lambda: model.stage2(x, x, x, torch.zeros(1, 2, 32, 32, dtype=torch.float64)),
        lambda: model.stage1(torch.zeros(1, 2, 32, 32), x),
    ]
    for call in cases:
        with pytest.raises(TensorError) as raised:
            call()
        assert "\n" not in str(raised.value) and isinstance(raised.value, ValueError)


def test_pipeline_turns_a_network_error_into_a_model_error(tiny_mr_model, case, monkeypatch):
    pipeline = Pipeline(tiny_mr_model, device="cpu", prealign=False)
    monkeypatch.setattr(pipeline.method.network, "forward", lambda x, y: pipeline.method.network.stage1(x, y.double()))
    with pytest.raises(ModelError, match=r"^tiny-mr: y must be on the device and of the dtype of x"):
        pipeline.run(case.input, case.reference_ct)


def test_precision_choices():
    cpu = torch.device("cpu")
    assert select_precision("float32", cpu) is None
    assert select_precision("bfloat16", cpu) is torch.bfloat16
    with pytest.raises(InputError, match="float16 needs a GPU"):
        select_precision("float16", cpu)
    with pytest.raises(InputError, match="precision must be one of"):
        select_precision("double", cpu)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_the_cpu_is_bfloat16_only_where_the_cpu_computes_it(native, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert cpu_has_native_bfloat16() is native
    assert select_precision("auto", torch.device("cpu")) is (torch.bfloat16 if native else None)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_result_names_the_precision_that_ran(precision, case, tmp_path):
    pipeline = Pipeline(str(make_tiny_model(tmp_path / "tiny").path), device="cpu", precision=precision, prealign=False)
    assert pipeline.run(case.input, case.reference_ct).precision == precision


def test_a_torch_without_the_cpu_probes_reports_no_native_bfloat16(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert not cpu_has_native_bfloat16()
    assert select_precision("auto", torch.device("cpu")) is None


def test_threads_default_honours_omp_num_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert default_threads() == 1
        assert set_threads(None) == 1 and torch.get_num_threads() == 1
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert default_threads() >= 1
        with pytest.raises(InputError, match="threads must be a positive integer"):
            set_threads(0)
    finally:
        set_threads(before)


@pytest.mark.parametrize("command", ["run", "demo", "batch"])
def test_threads_option_rejects_zero(command, capsys):
    argv = {"run": ["run", "a", "b", "-o", "c"], "demo": ["demo"], "batch": ["batch", "d", "-o", "e"]}[command]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--threads", "0"])
    assert exited.value.code == 2 and "must be a positive integer" in capsys.readouterr().err
