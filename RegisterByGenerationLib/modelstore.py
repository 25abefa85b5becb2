"""Model directories, their checksums, and the registry of installed models.

A model is a directory holding ``model.json`` (everything inference needs: architecture
config, pixel spacing, canvas, intensity normalisation of each modality, training
description and model card, version, sha256 of the weights) and ``weights.safetensors``.
Loading verifies the checksum first and never executes code (safetensors, strict
``load_state_dict``).

Installed models are looked up, in this order, in the user folder
(``$RBG_MODELS_DIR``, default ``~/.RegisterByGeneration/models``) and in the models
bundled with the repository (``Resources/Models``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError, ModelError
from .atomic import fsync_file, new_sibling_dir

__all__ = [
    "FORMAT_VERSION",
    "MODEL_FILE",
    "WEIGHTS_FILE",
    "ModelInfo",
    "bundled_models_dir",
    "user_models_dir",
    "list_models",
    "find_model",
    "default_model_name",
    "load_model",
    "save_model",
    "file_sha256",
]

FORMAT_VERSION = 1
MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
MODALITIES = ("mr", "cbct")
_REQUIRED_KEYS = ("format_version", "name", "modality", "architecture", "pixel_spacing_mm", "normalization", "weights")


@dataclass(frozen=True)
class ModelInfo:
    """A model directory and its parsed, checked ``model.json``."""

    path: Path
    metadata: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def modality(self) -> str:
        return self.metadata["modality"]

    @property
    def method(self) -> str:
        """The method the model is for (:mod:`~RegisterByGenerationLib.methods`): the card's
        ``method``; cards written before it say ``registformer`` by an AdaIN/MUNIT Stage 1."""
        if "method" in self.metadata:
            return self.metadata["method"]
        stage1 = self.metadata["architecture"].get("stage1", {}) if isinstance(self.metadata["architecture"], dict) else {}
        return "registformer" if stage1.get("kind") in ("adain", "munit") else "rbg"

    @property
    def sha256(self) -> str:
        return self.metadata["weights"]["sha256"]

    @property
    def pixel_spacing(self) -> tuple[float, float] | None:
        """The canvas's in-plane spacing (mm); None: each input's own (native) spacing."""
        spacing = self.metadata["pixel_spacing_mm"]
        return None if spacing is None else tuple(float(s) for s in spacing)

    @property
    def native_pixel_spacing_range(self) -> tuple[float, float] | None:
        """For a native-spacing model, the in-plane spacings (mm) it was trained at."""
        trained = self.metadata.get("native_pixel_spacing_range_mm")
        return None if trained is None else (float(trained[0]), float(trained[1]))

    @property
    def pseudo_ct_output(self) -> str:
        """Which network output is the pseudo-CT: ``"stage2"`` (RbG's refined output, the
        default) or ``"stage1"`` (the card says why; Stage 2 is then not run)."""
        return self.metadata.get("pseudo_ct_output", "stage2")

    @property
    def test_time_flip(self) -> bool:
        """Average Stage 1 with its left-right mirror (``ŷ = ½(S(x, y) + M S(Mx, My))``):
        a card option for Stage-1-output models trained with left-right flips."""
        return bool(self.metadata.get("test_time_flip", False))

    @property
    def valid_input_spacing(self) -> dict[str, tuple[float, float]]:
        """Input spacings (mm) the model was validated on: ``{"in_plane": (lo, hi),
        "slice": (lo, hi)}``, either absent when the card does not say."""
        ranges = self.metadata.get("valid_input_spacing_mm", {})
        return {key: (float(ranges[key][0]), float(ranges[key][1])) for key in ("in_plane", "slice") if key in ranges}

    @property
    def canvas(self) -> tuple[int, int] | None:
        canvas = self.metadata.get("canvas")
        return None if canvas is None else tuple(int(c) for c in canvas)

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> ModelInfo:
        """Parse and check ``path/model.json``.

        Raises:
            ModelError: missing folder or file, invalid JSON, missing keys, unknown modality
                or format version.
        """
        path = Path(path)
        card = path / MODEL_FILE
        if not card.is_file():
            raise ModelError(f"{path}: not a model directory (no {MODEL_FILE})")
        try:
            metadata = json.loads(card.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelError(f"{card}: cannot be parsed ({error})") from error
        missing = [key for key in _REQUIRED_KEYS if key not in metadata]
        if missing:
            raise ModelError(f"{card}: missing keys {', '.join(missing)}")
        if metadata["format_version"] != FORMAT_VERSION:
            raise ModelError(f"{card}: format_version {metadata['format_version']} is not supported (expected {FORMAT_VERSION})")
        if not isinstance(metadata.get("method", ""), str):
            raise ModelError(f"{card}: method must be a method name, got {metadata['method']!r}")
        if metadata["modality"] not in MODALITIES:
            raise ModelError(f"{card}: modality {metadata['modality']!r} is not one of {MODALITIES}")
        if metadata.get("pseudo_ct_output", "stage2") not in ("stage1", "stage2"):
            raise ModelError(f"{card}: pseudo_ct_output must be 'stage1' or 'stage2', got {metadata['pseudo_ct_output']!r}")
        if metadata.get("test_time_flip", False) not in (True, False):
            raise ModelError(f"{card}: test_time_flip must be true or false, got {metadata['test_time_flip']!r}")
        if metadata.get("test_time_flip") and metadata.get("pseudo_ct_output", "stage2") != "stage1":
            raise ModelError(f"{card}: test_time_flip averages Stage 1 only; it needs pseudo_ct_output 'stage1'")
        return cls(path=path, metadata=metadata)

    def summary(self) -> dict[str, Any]:
        """The facts ``rbg models list`` shows and reports record."""
        return {
            "name": self.name,
            "method": self.method,
            "modality": self.modality,
            "path": str(self.path),
            "version": self.metadata.get("version", ""),
            "stage1": self.metadata["architecture"].get("stage1", {}).get("kind", ""),
            "pseudo_ct_output": self.pseudo_ct_output,
            "test_time_flip": self.test_time_flip,
            "sha256": self.sha256,
            "description": self.metadata.get("description", ""),
        }


def bundled_models_dir() -> Path:
    """``Resources/Models`` of the repository (also where the Slicer extension ships them)."""
    return Path(__file__).resolve().parents[1] / "Resources" / "Models"


def user_models_dir() -> Path:
    """``$RBG_MODELS_DIR`` if set, else ``~/.RegisterByGeneration/models``."""
    configured = os.environ.get("RBG_MODELS_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".RegisterByGeneration" / "models"


def list_models() -> list[ModelInfo]:
    """Installed models: the user folder first, then the bundled ones (a user model
    shadows a bundled one of the same name). Malformed folders are skipped here; naming
    one explicitly with :func:`find_model` reports why."""
    found: dict[str, ModelInfo] = {}
    for root in (user_models_dir(), bundled_models_dir()):
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if (p / MODEL_FILE).is_file()):
            try:
                info = ModelInfo.from_directory(folder)
            except ModelError:
                continue
            found.setdefault(info.name, info)
    return list(found.values())


def default_model_name(modality: str) -> str:
    """Name of the model used for ``modality`` when none is given."""
    if modality not in MODALITIES:
        raise ModelError(f"modality {modality!r} is not one of {MODALITIES}")
    return f"phantom-{modality}-lite"


def find_model(name_or_path: str | os.PathLike) -> ModelInfo:
    """Resolve a model directory path or the name of an installed model.

    Raises:
        ModelError: no such directory or installed model (the message lists the installed ones).
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return ModelInfo.from_directory(candidate)
    installed = list_models()
    for info in installed:
        if info.name == str(name_or_path):
            return info
    names = ", ".join(info.name for info in installed) or "none"
    raise ModelError(
        f"model {str(name_or_path)!r} not found: not a model directory and not an installed model "
        f"(installed: {names}; user folder {user_models_dir()})"
    )


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(info: ModelInfo, device: Any = "cpu"):
    """Build the network from ``info``'s config and load its checked weights strictly.

    Returns:
        The network (an ``RbgModel`` for the slice methods) in eval mode on ``device``.

    Raises:
        ModelError: weights missing, checksum mismatch, or weights not matching the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .methods import get_method

    weights = info.path / info.metadata["weights"].get("file", WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelError(f"{weights}: weights file missing; reinstall the model folder")
    actual = file_sha256(weights)
    if actual != info.sha256:
        raise ModelError(f"{weights}: sha256 {actual[:12]}… does not match model.json ({info.sha256[:12]}…); the file is corrupt or replaced")
    try:
        model = get_method(info.method).build_network(info.metadata["architecture"])
        state = load_file(str(weights), device="cpu")
        model.load_state_dict(state, strict=True)
    except InputError as error:
        raise ModelError(f"{info.path}: {error}") from None
    except (ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as error:
        message = str(error).strip().splitlines()[0]
        raise ModelError(f"{info.path}: weights do not match the architecture in {MODEL_FILE} ({message})") from error
    return model.to(device).eval()


def save_model(model, directory: str | os.PathLike, metadata: dict[str, Any]) -> ModelInfo:
    """Write ``model`` (an ``RbgModel``) and its card as a model directory, atomically.

    Args:
        model: the network; its config is taken from ``model.config``.
        directory: the model directory to create (replaced if it exists).
        metadata: ``name``, ``modality``, ``pixel_spacing_mm``, ``normalization`` and any
            of ``canvas``, ``description``, ``version``, ``training``, ``intended_use``.

    Returns:
        The :class:`ModelInfo` of the written directory.
    """
    from safetensors.torch import save

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = new_sibling_dir(directory)
    try:
        state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
        # save_file creates the file owner-only; written by Python it gets the plain permissions.
        (staging / WEIGHTS_FILE).write_bytes(save(state))
        card = {
            "format_version": FORMAT_VERSION,
            "canvas": None,
            **metadata,
            "architecture": model.config.to_dict(),
            "weights": {"file": WEIGHTS_FILE, "sha256": file_sha256(staging / WEIGHTS_FILE)},
        }
        (staging / MODEL_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        ModelInfo.from_directory(staging)  # refuse to install a card we could not read back
        for item in staging.iterdir():
            fsync_file(item)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ModelInfo.from_directory(directory)
