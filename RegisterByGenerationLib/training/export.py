"""Export a trained run as a model directory (``model.json`` + ``weights.safetensors``).

The Stage 2 checkpoint holds the whole model (Stage 1 and the registration network
were frozen inside it), so it is what is exported; a model whose pseudo-CT is Stage 1's
is exported from Stage 1's checkpoint. ``model.json`` carries what inference
needs (architecture, pixel spacing, normalisation) and the model card under
``"training"``: data and split, seeds, configuration, epochs, wall time, hardware, the
feature networks of the losses, and the validation metrics of every phase.

Example::

    >>> info = export_run("runs/mr", "models/my-mr", name="my-mr")
    >>> Pipeline(info.path, modality="mr")  # ready for inference
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from .. import __version__
from ..errors import InputError
from ..geometry import CanvasGrid
from ..modelstore import ModelInfo, save_model
from ..networks import build_model
from .config import PHASES, TrainingConfig
from .trainer import load_checkpoint, read_run

__all__ = ["INTENDED_USE", "REAL_DATA_NOTE", "data_description", "export_run", "model_card"]

INTENDED_USE = "Research and demonstration only. Not a medical device; not for clinical use."
REAL_DATA_NOTE = (
    "To train on real data: arrange paired scans in the SynthRAD2023 layout (<ID>/mr.nii.gz or "
    "cbct.nii.gz, ct.nii.gz, mask.nii.gz; the SynthRAD2023 Task 1/Task 2 data can be used as "
    "distributed), run `rbg train all --data DIR --out RUN --preset full --modality mr|cbct "
    "[--vgg-weights vgg19.pth]` on a GPU (torchrun for several), then `rbg train export RUN -o "
    "MODEL_DIR --name NAME`; see docs/training.md."
)


def data_description(run: dict[str, Any]) -> dict[str, Any]:
    """Training data facts; for phantom sets also the generator seeds of every case."""
    data = run["data"]
    folder = Path(data["dir"])
    seeds: dict[str, int] = {}
    versions: set[str] = set()
    for case in data["train"] + data["val"]:
        card = folder / case / "phantom.json"
        if card.is_file():
            try:
                truth = json.loads(card.read_text(encoding="utf-8"))
                seeds[case] = int(truth["seed"])
                versions.add(str(truth.get("generator_version", "")))
            except (OSError, ValueError, KeyError, json.JSONDecodeError):
                pass
    phantom = len(seeds) == len(data["train"]) + len(data["val"]) and bool(seeds)
    description = {
        "kind": "synthetic pelvis phantoms (RegisterByGenerationLib.phantoms)" if phantom else "user data (SynthRAD2023 layout)",
        "dir": data["dir"],
        "modality": data["modality"],
        "train_cases": data["train"],
        "val_cases": data["val"],
    }
    if phantom:
        description["phantom_seeds"] = {
            "train": sorted(seeds[c] for c in data["train"]),
            "val": sorted(seeds[c] for c in data["val"]),
        }
        description["phantom_generator_version"] = ", ".join(sorted(versions))
    headers = [_input_header(folder / case, data["modality"]) for case in data["train"]]
    if phantom and headers and headers[0] is not None:
        description["phantom_input_size"] = list(headers[0].GetSize())
    if headers and all(h is not None for h in headers):
        # Axial in-plane spacings, what a native-spacing model runs at (its inference
        # warns outside this range).
        spacings = [s for h in headers for s in CanvasGrid.for_image(h, None).pixel_spacing]
        description["input_pixel_spacing_mm"] = [round(min(spacings), 4), round(max(spacings), 4)]
    return description


def _input_header(case_dir: Path, modality: str) -> sitk.Image | None:
    """A 1-byte placeholder with the geometry of the case's input, from its header
    alone; None when the file is missing or unreadable."""
    path = next(iter(sorted(case_dir.glob(f"{modality}.*"))), None)
    if path is None:
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    if reader.GetDimension() != 3:
        return None
    placeholder = sitk.Image(reader.GetSize(), sitk.sitkUInt8)
    placeholder.SetSpacing(reader.GetSpacing())
    placeholder.SetOrigin(reader.GetOrigin())
    placeholder.SetDirection(reader.GetDirection())
    return placeholder


def model_card(run_dir: str | os.PathLike, checkpoint: str = "best", trained: tuple[str, ...] = PHASES) -> dict[str, Any]:
    """The ``"training"`` section of ``model.json`` for a run whose phases ``trained``
    ran (all three, or ``("stage1",)`` for a model whose pseudo-CT is Stage 1's).

    Raises:
        InputError: not a run, or a phase has no checkpoint.
    """
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    phases: dict[str, Any] = {}
    last_checkpoint: dict[str, Any] = {}
    for phase in trained:
        state = load_checkpoint(run_dir / phase / "last.pt")
        best_row = next((row for row in state["history"] if row["epoch"] == state["best_epoch"]), {})
        phases[phase] = {
            "epochs": state["epoch"],
            "best_epoch": state["best_epoch"],
            "wall_time_s": round(float(state["wall_time_s"]), 1),
            "validation_at_best_epoch": {k: v for k, v in best_row.items() if k.startswith("val_")},
            "final_training_losses": {k: v for k, v in (state["history"][-1] if state["history"] else {}).items() if k.startswith("train_")},
        }
        last_checkpoint = state
    config = run["config"]
    data = data_description(run)
    synthetic = data["kind"].startswith("synthetic")
    return {
        "data": data,
        "seeds": {"training": config["seed"], "validation_split": config["seed"], "prealignment": config["seed"]},
        "config": config,
        "epochs": {phase: phases[phase]["epochs"] for phase in trained},
        "wall_time_s": {**{phase: phases[phase]["wall_time_s"] for phase in trained},
                        "total": round(sum(phases[p]["wall_time_s"] for p in trained), 1)},  # fmt: skip
        "hardware": last_checkpoint["hardware"],
        "processes": last_checkpoint["world_size"],
        "feature_networks": last_checkpoint["feature_networks"],
        "phases": phases,
        "exported_checkpoint": f"{trained[-1]}/{checkpoint}.pt",  # the last phase holds every network
        "library_version": __version__,
        "note": (
            ("Trained on synthetic phantoms only. " if synthetic else "")
            + _supervision_note(config) + INTENDED_USE + " " + REAL_DATA_NOTE
        ),
    }


def export_run(
    run_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    *,
    name: str,
    checkpoint: str = "best",
    description: str | None = None,
    version: str | None = None,
    evaluation: dict[str, Any] | None = None,
    pseudo_ct_output: str = "stage2",
    valid_input_spacing_mm: dict[str, list[float]] | None = None,
    test_time_flip: bool = False,
) -> ModelInfo:
    """Write the run's Stage 2 checkpoint (Stage 1's for ``pseudo_ct_output="stage1"``)
    as a model directory.

    Args:
        run_dir: the training run (all three phases trained, or Stage 1 alone for
            ``pseudo_ct_output="stage1"``: the registration and Stage 2 networks are then
            stored untrained and never run).
        model_dir: the model directory to write (replaced if it exists).
        name: the model's name (``rbg run --model NAME`` once installed).
        checkpoint: ``"best"`` or ``"last"`` Stage 2 checkpoint.
        description: one line for ``rbg models list``.
        version: the model's version (default: the library's).
        evaluation: an evaluation table to record in the card (e.g. held-out cases).
        pseudo_ct_output: ``"stage2"`` (RbG's output) or ``"stage1"`` when validation
            showed Stage 1 alone is better (Stage 2 is then not run; the card says so).
        valid_input_spacing_mm: ``{"in_plane": [lo, hi], "slice": [lo, hi]}`` (mm) the
            model was validated on; the pipeline warns outside it.
        test_time_flip: the card asks the pipeline to average Stage 1 with its
            left-right mirror (``pseudo_ct_output="stage1"`` only; the training's flip
            augmentation makes the mirror a case like the others).

    Returns:
        The written model's :class:`~RegisterByGenerationLib.modelstore.ModelInfo`.

    Raises:
        InputError: not a run, a phase missing, or a bad ``checkpoint`` or ``name``; a
            native-spacing run whose training inputs cannot be read.
    """
    if pseudo_ct_output not in ("stage1", "stage2"):
        raise InputError(f"pseudo_ct_output must be 'stage1' or 'stage2', got {pseudo_ct_output!r}")
    if test_time_flip and pseudo_ct_output != "stage1":
        raise InputError("test_time_flip averages Stage 1 only; export with pseudo_ct_output 'stage1'")
    if checkpoint not in ("best", "last"):
        raise InputError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise InputError(f"name must be a plain, non-empty model name, got {name!r}")
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    config = TrainingConfig.from_dict(run["config"])
    trained = PHASES if pseudo_ct_output == "stage2" else ("stage1",)
    path = run_dir / trained[-1] / f"{checkpoint}.pt"
    state = load_checkpoint(path)
    model = build_model(config.model)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as error:
        raise InputError(f"{path}: does not match the run's architecture ({str(error).splitlines()[0]})") from error
    card = model_card(run_dir, checkpoint, trained)
    metadata: dict[str, Any] = {
        "name": name,
        "method": "registformer" if config.model.stage1.kind == "adain" else "rbg",
        "modality": config.modality,
        "pixel_spacing_mm": config.to_dict()["pixel_spacing_mm"],
        "normalization": config.normalization,
        "canvas": None,
        "description": description or f"RbG {config.preset} {config.modality.upper()} model ({card['data']['kind']}, {len(card['data']['train_cases'])} training cases)",
        "version": version or __version__,
        "intended_use": INTENDED_USE,
        "pseudo_ct_output": pseudo_ct_output,
        "training": card,
    }
    if valid_input_spacing_mm is not None:
        metadata["valid_input_spacing_mm"] = valid_input_spacing_mm
    if test_time_flip:
        metadata["test_time_flip"] = True
    if config.pixel_spacing_mm is None:
        trained = card["data"].get("input_pixel_spacing_mm")
        if trained is None:
            raise InputError(f"{card['data']['dir']}: cannot read the training inputs' spacings, which a model "
                             "trained at each case's own spacing (pixel_spacing_mm null) records; export it where its data is")  # fmt: skip
        metadata["native_pixel_spacing_range_mm"] = trained
    if evaluation is not None:
        metadata["evaluation"] = evaluation
    return save_model(model, model_dir, metadata)


def _supervision_note(config: dict) -> str:
    """What the losses saw, in the card's words (``pixel_target``)."""
    if config.get("pixel_target") == "aligned":
        return ("Supervised: the pixel terms compare with each training case's aligned CT (ct_aligned, known for "
                "synthetic phantoms only); aligned CTs also scored validation slices (and picked each phase's best epoch). ")
    registered = (f" (the pixel terms compare with that reference registered onto the input by {config['target_registration']}, "
                  "computed by the training pipeline, as a user without aligned data can)") if config.get("pixel_target") == "registered" else ""
    return ("Self-supervised: the losses use the input and the misaligned reference CT only" + registered
            + "; aligned CTs, where present, only scored validation slices (and picked each phase's best epoch). ")
