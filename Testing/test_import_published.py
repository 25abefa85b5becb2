"""``rbg models import-published``: checkpoints in the authors' key layout, built from our own
published-layout modules (none of the authors' code), imported exactly and strictly, with
nothing from the file ever executed."""

from __future__ import annotations

import builtins
import functools
import json
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from RegisterByGenerationLib.cli import main
from RegisterByGenerationLib.errors import ModelError
from RegisterByGenerationLib.modelstore import find_model, load_model
from RegisterByGenerationLib.networks.published import (
    DACAStage2Config,
    MUNITConfig,
    PAdaINConfig,
    PublishedConfig,
    PublishedRbgModel,
    VoxelMorphConfig,
    keys,
)
from RegisterByGenerationLib.phantoms import generate_case
from RegisterByGenerationLib.pipeline import Pipeline
from RegisterByGenerationLib.published import import_published, read_checkpoint

#: The published canvas (H, W) of the tiny test models: not square, so a transposition shows.
CANVAS = (48, 32)
REGISTRATION = VoxelMorphConfig((4, 8, 8, 8), (8, 8, 8, 8, 8, 4, 4), 7, CANVAS)


def _config(kind: str = "padain", transpose: bool = True, stage2: bool = True) -> PublishedConfig:
    stage1 = PAdaINConfig(8, 8) if kind == "padain" else MUNITConfig(4, 1, 8, 8)
    return PublishedConfig("RbG" if kind == "padain" else "RegistFormer", transpose, stage1, REGISTRATION,
                           DACAStage2Config(4, 2, 3, 8) if stage2 else None)  # fmt: skip


def _random_model(config: PublishedConfig, seed: int = 0) -> PublishedRbgModel:
    """Weights far from any initialisation: gains away from 1, flows of a few pixels."""
    torch.manual_seed(seed)
    model = PublishedRbgModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm.gamma"):
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(0.0, 0.3)
        model.registration.net.flow_head.weight.mul_(10.0)
    return model


def _grids(prefix: str) -> dict[str, torch.Tensor]:
    height, width = CANVAS
    def grid(h, w):  # noqa: E306
        rows, columns = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        return torch.stack([rows, columns]).unsqueeze(0).float()
    return {prefix + "transformer.grid": grid(height, width), prefix + "integrate.transformer.grid": grid(height // 2, width // 2)}


def _stage1_layout(model: PublishedRbgModel, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Stage 1 in the published layout under ``prefixes`` (one generator, or MUNIT's two),
    with the parameters and buffers the published forward pass never reads."""
    state = model.stage1.net.state_dict()
    if isinstance(model.config.stage1, PAdaINConfig):
        (prefix,) = prefixes
        layout = keys.to_published(state, keys.padain_pairs(), prefix)
        layout[prefix + "guide_net.0.weight"] = torch.randn(1, 1, 3, 3)
        layout[prefix + "conv11.blur.kernel"] = torch.ones(4, 4) / 16
        return layout
    content, style = prefixes
    blocks = model.config.stage1.blocks
    layout = keys.to_published(state, keys.munit_content_pairs(blocks), content)
    layout.update(keys.to_published(state, keys.munit_style_pairs(blocks), style))
    layout[content + "enc_style.model.0.conv.weight"] = torch.randn(4, 1, 7, 7)  # A's style encoder: unused
    layout[style + "enc_content.model.0.conv.weight"] = torch.randn(4, 1, 7, 7)  # B's content encoder: unused
    layout[style + "dec.model.0.model.0.model.0.norm.running_mean"] = torch.zeros(16)
    return layout


def _lightning(state: dict[str, torch.Tensor], module: torch.nn.Module, **extra) -> dict:
    """A Lightning-shaped checkpoint: pickled module and functools.partial in hyper_parameters."""
    state = OrderedDict(state)
    state["netD_A.model.0.weight"] = torch.randn(2, 1, 4, 4)  # a discriminator: training only
    return {
        "epoch": 97,
        "global_step": 1234,
        "pytorch-lightning_version": "2.1.2",
        "state_dict": state,
        "hyper_parameters": {"netF_A": module, "optimizer": functools.partial(torch.optim.Adam, lr=1e-4), "params": {"lambda_nce": 5}},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}}],
        **extra,
    }


def _save(path: Path, content: dict) -> Path:
    torch.save(content, path)
    return path


def write_published(directory: Path, model: PublishedRbgModel, embedded_stage1: PublishedRbgModel | None = None) -> dict[str, Path]:
    """The published files of ``model``: Stage 1, registration and (if any) Stage 2, whose
    embedded copies come from ``embedded_stage1`` (default ``model`` itself)."""
    embedded_stage1 = embedded_stage1 or model
    munit = isinstance(model.config.stage1, MUNITConfig)
    registration = keys.voxelmorph_pairs(4, 3)
    files = {
        "stage1": _save(directory / "stage1.ckpt", _lightning(_stage1_layout(model, ("netG_A.", "netG_B.") if munit else ("netG_A.",)), model.stage1.net)),
        "registration": _save(directory / "registration.ckpt", _lightning(
            {**keys.to_published(model.registration.net.state_dict(), registration, "netR_A."), **_grids("netR_A.")}, model.registration.net)),
    }  # fmt: skip
    if model.stage2 is not None:
        fe_names = ("net1", "net2") if munit else ("FE1", "FE2")
        embedded = ("netG_A.synth_net_mr.", "netG_A.synth_net_ct.") if munit else ("netG_A.synth_net.",)
        state = keys.to_published(model.stage2.net.state_dict(), keys.stage2_pairs(fe_names), "netG_A.")
        state.update(_stage1_layout(embedded_stage1, embedded))
        state.update(keys.to_published(embedded_stage1.registration.net.state_dict(), registration, "netG_A.regist_net."))
        state.update(_grids("netG_A.regist_net."))
        files["stage2"] = _save(directory / "stage2.ckpt", _lightning(state, model.stage2.net))
    return files


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (2, 1, CANVAS[1], CANVAS[0])  # our orientation: the published canvas transposed
    return torch.rand(shape, generator=generator) * 2 - 1, torch.rand(shape, generator=generator) * 2 - 1


@pytest.fixture(scope="module")
def rbg(tmp_path_factory):
    directory = tmp_path_factory.mktemp("published")
    model = _random_model(_config("padain"))
    return model, write_published(directory, model)


@pytest.mark.parametrize("kind", ["padain", "adain"])
def test_import_reproduces_the_source_model_exactly(tmp_path, kind):
    model = _random_model(_config(kind), seed=3)
    files = write_published(tmp_path, model)
    info = import_published(list(files.values()), output=tmp_path / "model", heads=2, window=3, pixel_spacing=2.0)
    loaded = load_model(info)
    source = model.state_dict()
    assert loaded.state_dict().keys() == source.keys()
    assert all(torch.equal(loaded.state_dict()[key], source[key]) for key in source)
    x, y = _inputs()
    with torch.no_grad():
        expected, actual = model(x, y), loaded(x, y)
    for key in ("stage1", "flow", "output"):
        assert torch.equal(actual[key], expected[key]), key
    assert expected["flow"].abs().max() > 1.0  # the test exercises real deformations
    card = info.metadata
    assert card["architecture"]["layout"] == "published" and card["canvas"] == [CANVAS[1], CANVAS[0]]
    assert card["normalization"]["reference"] == {"kind": "ct_percentile", "lower": 5.0, "upper": 95.0}
    assert card["pseudo_ct_output"] == "stage2" and card["provenance"]["redistributable"] is False
    sources = {s["file"]: s for s in card["provenance"]["sources"]}
    assert sources["stage2.ckpt"]["sha256"] == __import__("hashlib").sha256(files["stage2"].read_bytes()).hexdigest()
    assert "functools.partial" in sources["stage1.ckpt"]["objects_not_constructed"]
    assert sources["stage1.ckpt"]["ignored_keys"]["netD_A"] == 1
    assert card["provenance"]["embedded_copies_checked_against"] == ["Stage 1: stage1.ckpt", "registration: registration.ckpt"]


def test_the_published_files_are_refused_by_weights_only_loading(rbg):
    _, files = rbg
    with pytest.raises(pickle.UnpicklingError):
        torch.load(files["stage1"], weights_only=True)


def test_widths_and_canvas_come_from_the_files(rbg, tmp_path):
    _, files = rbg
    info = import_published([files["stage2"], files["registration"], files["stage1"]], output=tmp_path / "m", window=3)
    architecture = info.metadata["architecture"]
    assert architecture["stage1"] == {"kind": "padain", "channels": 8, "style_hidden": 8, "guide_downsample": 16, "noise": False}
    assert architecture["registration"]["canvas"] == list(CANVAS) and architecture["registration"]["decoder"] == [8, 8, 8, 8, 8, 4, 4]
    assert architecture["stage2"] == {"feature_channels": 4, "heads": 2, "window": 3, "mlp_hidden": 8}
    assert len(info.metadata["published_layout"]["noise_strengths"]) == 12


def test_a_stage2_file_alone_runs_its_embedded_copies(rbg, tmp_path):
    model, files = rbg
    info = import_published([files["stage2"]], output=tmp_path / "m", window=3)
    assert info.metadata["provenance"]["stage1_weights_from"] == "stage2.ckpt"
    loaded = load_model(info).state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())


def test_stage1_and_registration_alone_give_a_stage1_model(rbg, tmp_path):
    _, files = rbg
    info = import_published([files["stage1"], files["registration"]], output=tmp_path / "m")
    assert info.name == "published-rbg-stage1" and info.pseudo_ct_output == "stage1"
    assert load_model(info).stage2 is None


def test_embedded_copies_that_differ_from_the_separate_files_are_refused_unless_asked(tmp_path):
    model = _random_model(_config("padain"), seed=4)
    files = write_published(tmp_path, model, embedded_stage1=_random_model(_config("padain"), seed=5))
    with pytest.raises(ModelError, match=r"stage2\.ckpt: Stage 1: blocks\.0\.conv\.weight differs between stage1\.ckpt and the copy in stage2\.ckpt"):
        import_published(list(files.values()), output=tmp_path / "m", window=3)
    info = import_published(list(files.values()), output=tmp_path / "m", window=3, use_separate_on_mismatch=True)
    assert len(info.metadata["provenance"]["embedded_copy_mismatches"]) == 2
    assert torch.equal(load_model(info).stage1.net.head.weight, model.stage1.net.head.weight)  # the separate file runs


def _edited(rbg, tmp_path, edit) -> Path:
    """The Stage 1 file of ``rbg`` with ``edit(state_dict)`` applied."""
    _, files = rbg
    content = torch.load(files["stage1"], weights_only=False)
    edit(content["state_dict"])
    return _save(tmp_path / "edited.ckpt", content)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("netG_A.conv42.mlp_beta.bias"), r"edited\.ckpt: missing key netG_A\.conv42\.mlp_beta\.bias of the published PAdaIN Stage 1 layout"),
        (lambda s: s.__setitem__("netG_A.conv6.conv.weight", torch.zeros(8, 8, 1, 1)), r"edited\.ckpt: netG_A\.conv6\.conv\.weight has shape \[8, 8, 1, 1\], expected \[8, 8, 3, 3\]"),
        (lambda s: s.__setitem__("netG_A.conv13.conv.weight", torch.zeros(1)), r"edited\.ckpt: unexpected key netG_A\.conv13\.conv\.weight"),
        (lambda s: s["netG_A.conv_final.bias"].fill_(float("nan")), r"edited\.ckpt: netG_A\.conv_final\.bias holds NaN"),
        (lambda s: s.__setitem__("netG_A.conv0.noise_strength", "text"), r"edited\.ckpt: netG_A\.conv0\.noise_strength is not a tensor"),
    ],
    ids=["missing", "shape", "unexpected", "nan", "not-a-tensor"],
)
def test_strict_loading_names_the_file_and_the_first_problem(rbg, tmp_path, edit, message):
    _, files = rbg
    edited = _edited(rbg, tmp_path, edit)
    with pytest.raises(ModelError, match=message) as raised:
        import_published([edited, files["registration"]], output=tmp_path / "m")
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "m").exists()


def test_files_that_are_no_published_checkpoint_are_refused(rbg, tmp_path):
    _, files = rbg
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(ModelError, match="notes.ckpt: not a zip-format PyTorch checkpoint"):
        import_published([text])
    other = _save(tmp_path / "other.ckpt", {"state_dict": {"encoder.weight": torch.zeros(2)}})
    with pytest.raises(ModelError, match="other.ckpt: not a published RbG/RegistFormer checkpoint"):
        import_published([other])
    with pytest.raises(ModelError, match="stage1.ckpt: no registration given"):
        import_published([files["stage1"]])
    with pytest.raises(ModelError, match="a second PAdaIN Stage 1 checkpoint"):
        import_published([files["stage1"], files["stage1"]])


class _Payload:
    """Pickles as ``exec(code)``: a plain ``torch.load`` would run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('executed')",)


def test_a_reduce_payload_in_the_checkpoint_is_never_executed(rbg, tmp_path):
    _, files = rbg
    marker = tmp_path / "payload-ran"
    content = torch.load(files["stage1"], weights_only=False)
    content["hyper_parameters"]["callback"] = _Payload(marker)
    armed = _save(tmp_path / "armed.ckpt", content)
    torch.load(armed, weights_only=False)
    assert marker.exists(), "the payload must be live for this test to mean anything"
    marker.unlink()

    checkpoint = read_checkpoint(armed)
    assert "builtins.exec" in checkpoint.inert and not marker.exists()
    import_published([armed, files["registration"]], output=tmp_path / "m")
    assert not marker.exists()


def test_cli_imports_into_the_user_model_folder_and_the_pipeline_runs_it(rbg, tmp_path, monkeypatch, capsys):
    _, files = rbg
    monkeypatch.setenv("RBG_MODELS_DIR", str(tmp_path / "models"))
    argv = ["models", "import-published", *map(str, files.values()), "--window", "3", "--pixel-spacing", "0"]
    assert main(argv) == 0
    assert "imported published-rbg (RbG, pseudo-CT from stage2)" in capsys.readouterr().out
    assert main(argv) == 8 and "already exists; pass --force" in capsys.readouterr().err
    info = find_model("published-rbg")
    assert json.loads((info.path / "model.json").read_text())["pixel_spacing_mm"] is None

    case = generate_case(seed=3, modality="mr", size=(40, 28, 16))
    result = Pipeline("published-rbg", modality="mr", device="cpu", prealign=False).run(case.input, case.reference_ct, keep_intermediate=True)
    assert result.pseudo_ct.GetSize() == case.input.GetSize()
    pseudo = np.asarray(__import__("SimpleITK").GetArrayViewFromImage(result.pseudo_ct))
    assert pseudo.min() >= -1100 and pseudo.std() > 0


def test_the_slicer_module_imports_checkpoints_in_a_child_process(rbg, tmp_path):
    """What the module's "Import model..." runs for .ckpt files: the conversion in a
    child process (torch stays out of Slicer), the installed model returned, a failure
    as the command's one-line message."""
    import os
    import sys

    from RegisterByGenerationLib.errors import ModelError
    from RegisterByGenerationLib.install import import_published_checkpoints
    from RegisterByGenerationLib.runner import library_environment

    _, files = rbg
    env = library_environment({**os.environ, "RBG_MODELS_DIR": str(tmp_path / "models"), "OMP_NUM_THREADS": "1"})
    info = import_published_checkpoints(list(files.values()), sys.executable, env=env)
    assert info.name == "published-rbg" and info.path == tmp_path / "models" / "published-rbg"
    with pytest.raises(ModelError, match=r"^\S+published-rbg: already exists; pass --force to replace it$"):
        import_published_checkpoints(list(files.values()), sys.executable, env=env)

