"""Training configuration: one dataclass, three presets, strict JSON round trip.

- :meth:`TrainingConfig.full`: the published recipe (RbG §IV-B): the full networks,
  100 epochs per phase, batch 8 / 10 / 4, LR ×0.1 at epochs 20 and 30, loss weights
  NCE 5, CX 5, GAN 1 (Stage 1) and NCE 1, CX 10, GAN 1 (Stage 2). Meant for a GPU.
- :meth:`TrainingConfig.lite`: the lite networks and a short schedule that trains on a
  CPU in tens of minutes (the bundled demo models).
- :meth:`TrainingConfig.tiny`: the tiny networks on 32×32 crops, for tests (seconds).

A JSON file given to ``rbg train --config`` holds any subset of the fields, plus an
optional ``"preset"``; the rest comes from that preset (default ``lite``)::

    {"preset": "full", "modality": "cbct", "stage1": {"epochs": 50}}
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..networks import ModelConfig

__all__ = ["PHASES", "PRESETS", "PIXEL_TARGETS", "TARGET_REGISTRATIONS", "PhaseSettings", "LossWeights", "AugmentSettings", "TrainingConfig", "default_normalization", "load_config", "read_config_file"]

#: Training phases in the order ``rbg train all`` runs them.
PHASES = ("stage1", "registration", "stage2")
PRESETS = ("tiny", "lite", "full")
#: What the optional pixel terms compare with (see :class:`TrainingConfig`).
PIXEL_TARGETS = ("reference", "registered", "aligned")
#: Classical registrations that can make the ``registered`` target (``rbg benchmark``'s baselines).
TARGET_REGISTRATIONS = ("syn", "elastix")


def default_normalization(modality: str) -> dict[str, dict[str, Any]]:
    """The developer guide's intensity conventions: CT/CBCT HU window [-1024, 3000], MR
    body-masked percentiles (0.5 %, 99.5 %) without N4."""
    window = {"kind": "ct_window", "low": -1024.0, "high": 3000.0}
    if modality == "mr":
        return {"input": {"kind": "percentile", "lower": 0.5, "upper": 99.5, "n4": False}, "reference": dict(window)}
    elif modality == "cbct":
        return {"input": dict(window), "reference": dict(window)}
    else:
        raise InputError(f"modality: must be 'mr' or 'cbct', got {modality!r}")


@dataclass
class PhaseSettings:
    """Optimisation of one phase.

    Attributes:
        epochs: passes over ``samples_per_epoch`` random crops.
        batch_size: crops per step (per process under torchrun).
        lr: Adam learning rate (also the discriminator's).
        betas: Adam betas.
        weight_decay: Adam (L2) weight decay.
        samples_per_epoch: crops per epoch; None = one per usable training slice.
    """

    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    samples_per_epoch: int | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if not _positive_int(self.epochs) or not _positive_int(self.batch_size):
            raise InputError(f"epochs and batch_size must be positive integers, got {self.epochs!r}, {self.batch_size!r}")
        if not self.lr > 0 or self.weight_decay < 0 or len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise InputError(f"lr must be > 0, weight_decay >= 0 and betas in [0, 1), got {self.lr}, {self.weight_decay}, {self.betas}")
        if self.samples_per_epoch is not None and not _positive_int(self.samples_per_epoch):
            raise InputError(f"samples_per_epoch must be a positive integer or null, got {self.samples_per_epoch!r}")


@dataclass
class LossWeights:
    """λ of the PatchNCE, contextual and adversarial terms of a generator loss."""

    nce: float = 1.0
    cx: float = 1.0
    gan: float = 1.0

    def __post_init__(self) -> None:
        if min(self.nce, self.cx, self.gan) < 0:
            raise InputError(f"loss weights must be non-negative, got {self}")


@dataclass
class AugmentSettings:
    """TorchIO augmentation of training crops (all off with ``enabled = false``).

    Attributes:
        enabled: apply any augmentation.
        flip_lr: flip input and reference together left-right with probability ½.
        reference_degrees: extra in-plane rotation of the reference only, ± degrees
            (more residual misalignment than the data has, so Stage 1 and the
            registration learn to cope with it; RbG §IV-A used TorchIO the same way).
        reference_translation_px: extra in-plane translation of the reference only, ± pixels.
        input_gamma: random gamma of the input, ± log-gamma (scanner contrast).
        input_bias_field: random MR bias field coefficient (MR input only; 0 = off).
        input_random_contrast: probability of replacing the input's intensities by a
            random, non-monotone curve of them (domain randomisation, as SynthSeg does
            per tissue: a model must not depend on one MR sequence's contrast).
    """

    enabled: bool = True
    flip_lr: bool = True
    reference_degrees: float = 3.0
    reference_translation_px: float = 3.0
    input_gamma: float = 0.2
    input_bias_field: float = 0.3
    input_random_contrast: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.input_random_contrast <= 1:
            raise InputError(f"augment.input_random_contrast must be a probability in [0, 1], got {self.input_random_contrast!r}")


@dataclass
class TrainingConfig:
    """Everything a training run depends on (saved in ``RUN/run.json``).

    Most fields are described in ``docs/training.md``. Four are not part of the
    published recipe and are 0 (off) in every preset:

    - ``stage1_identity_weight`` and ``stage2_identity_weight`` add CycleGAN's identity
      loss, ``L1(G(y, y), y)`` for Stage 1 and ``L1(F(y, y, y, 0), y)`` for Stage 2: the
      network fed the reference CT as its input must return it.
    - ``stage1_pixel_weight`` and ``stage2_pixel_weight`` add an L1 term against the
      misaligned reference. Stage 1: ``L1(ŷ, y)``; it sees y only at 1/16 scale, cannot
      know where the residual misalignment moves an edge, and so learns the CT value the
      input's own anatomy most likely has. Stage 2: ``L1(F(x, ŷ, y_s, φ_s), y)``, fed
      the displaced reference crop ``y_s`` and its flow, compared with the crop in place
      (fed ``y`` itself it could copy it); it must carry the reference into the input's
      frame, like RegGAN's registration-corrected L1 (Kong et al., NeurIPS 2021).

    All four use no CT but the misaligned reference, so training stays self-supervised;
    on a short CPU schedule they teach the CT intensities far sooner than the
    adversarial and contextual terms alone.

    ``stage1_bone_weight`` and ``stage2_bone_weight`` add a soft bone Dice term
    (:class:`~..losses.SoftBoneDiceLoss`) against the pixel term's target: the output's
    bone mask ``HU > bone_threshold_hu``, softened by a sigmoid ``bone_softness_hu``
    wide, against the target's. L1 alone spends little on the voxels that cross the
    threshold, which is what bone Dice (and a bone segmentation of the pseudo-CT) counts.
    It needs a fixed HU scale of the reference (``ct_window`` normalisation).

    ``weight_average_decay`` > 0 keeps an exponential moving average of the weights
    (:class:`~.averaging.WeightAverage`, updated after every step); validation scores it
    and the checkpoints' ``model`` is it, so ``best.pt``, the next phase and the export
    use the average instead of the last step's noisy weights. 0 (off) in every preset.

    ``selection_dice_weight_hu`` > 0 picks Stage 1's and Stage 2's ``best.pt`` by
    ``val_selection = val_mae + selection_dice_weight_hu * (1 - val_bone_dice)`` instead of
    the MAE alone (needs aligned CTs for validation): on CBCT the bone Dice peaks early and
    then falls while the MAE stays flat, so the MAE alone picks a lower Dice than the run
    had. The weight says how many HU of MAE one unit of Dice is worth (200: 0.01 Dice = 2 HU).

    ``pixel_target = "registered"`` compares both pixel terms instead with the reference
    registered onto the input by a classical method (``target_registration``: elastix
    rigid + B-spline on a 40 mm grid, or ANTs SyN, as ``rbg benchmark`` runs them;
    computed by the training pipeline itself, once per case, and cached): what a user
    without aligned data can compute too, and a far better target than the rigidly
    aligned reference. Stage 2 is then fed the reference in place.
    ``pixel_target = "aligned"`` compares them with the case's aligned CT
    (``ct_aligned.nii.gz``, which phantom sets have): supervised training on synthetic
    pairs, no longer self-supervised; the model card says so.
    """

    preset: str = "lite"
    model: ModelConfig = field(default_factory=ModelConfig.lite)
    modality: str = "mr"
    pixel_spacing_mm: tuple[float, float] | None = (1.0, 1.0)
    normalization: dict | None = None
    prealign: bool = True
    seed: int = 0
    val_fraction: float = 0.15
    val_cases: tuple[str, ...] = ()
    crop_size: int = 96
    min_body_fraction: float = 0.05
    val_slices_per_case: int | None = 16
    stage1: PhaseSettings = field(default_factory=lambda: PhaseSettings(epochs=10, batch_size=4, lr=2e-4, weight_decay=1e-4))
    registration: PhaseSettings = field(default_factory=lambda: PhaseSettings(epochs=5, batch_size=8, lr=1e-3, betas=(0.9, 0.999)))
    stage2: PhaseSettings = field(default_factory=lambda: PhaseSettings(epochs=10, batch_size=4, lr=2e-4))
    lr_milestones: tuple[float, ...] = (0.2, 0.3)
    lr_gamma: float = 0.1
    stage1_weights: LossWeights = field(default_factory=lambda: LossWeights(nce=5.0, cx=5.0, gan=1.0))
    stage2_weights: LossWeights = field(default_factory=lambda: LossWeights(nce=1.0, cx=10.0, gan=1.0))
    smooth_weight: float = 0.5
    stage1_identity_weight: float = 0.0
    stage2_identity_weight: float = 0.0
    stage1_pixel_weight: float = 0.0
    stage2_pixel_weight: float = 0.0
    stage1_bone_weight: float = 0.0
    stage2_bone_weight: float = 0.0
    bone_threshold_hu: float = 200.0
    bone_softness_hu: float = 50.0
    pixel_target: str = "reference"
    target_registration: str = "elastix"
    nce_patches: int = 256
    nce_temperature: float = 0.07
    nce_projection: int = 256
    cx_band_width: float = 0.5
    cx_max_positions: int | None = 1024
    cx_layers: tuple[str, ...] = ("conv1_2", "conv2_2", "conv3_2")
    stage2_nce_vgg_layers: tuple[str, ...] = ("conv4_2", "conv5_4")
    vgg_weights: str | None = None
    vgg_seed: int = 0
    discriminator_channels: int = 64
    discriminator_layers: int = 3
    stage2_reference_shift_px: int = 10
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    weight_average_decay: float = 0.0
    selection_dice_weight_hu: float = 0.0
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.modality not in ("mr", "cbct"):
            raise InputError(f"modality: must be 'mr' or 'cbct', got {self.modality!r}")
        if self.normalization is None:
            self.normalization = default_normalization(self.modality)
        if set(self.normalization) != {"input", "reference"}:
            raise InputError(f"normalization must have the keys 'input' and 'reference', got {sorted(self.normalization)}")
        if self.pixel_spacing_mm is not None:  # None: every case at its own in-plane spacing
            self.pixel_spacing_mm = tuple(float(s) for s in self.pixel_spacing_mm)
            if len(self.pixel_spacing_mm) != 2 or min(self.pixel_spacing_mm) <= 0:
                raise InputError(f"pixel_spacing_mm must be two positive numbers (mm) or null, got {self.pixel_spacing_mm}")
        multiple = self.model.size_multiple
        if not _positive_int(self.crop_size) or self.crop_size % multiple:
            raise InputError(f"crop_size must be a positive multiple of {multiple}, got {self.crop_size!r}")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.min_body_fraction < 1:
            raise InputError(f"min_body_fraction must be in [0, 1), got {self.min_body_fraction}")
        if self.val_slices_per_case is not None and not _positive_int(self.val_slices_per_case):
            raise InputError(f"val_slices_per_case must be a positive integer or null, got {self.val_slices_per_case!r}")
        if not all(0 < m <= 1 for m in self.lr_milestones) or not 0 < self.lr_gamma <= 1:
            raise InputError(f"lr_milestones must be fractions of the epochs in (0, 1] and lr_gamma in (0, 1], got {self.lr_milestones}, {self.lr_gamma}")
        for name in ("nce_patches", "nce_projection", "discriminator_channels", "discriminator_layers"):
            if not _positive_int(getattr(self, name)):
                raise InputError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        extra_weights = (self.stage1_identity_weight, self.stage2_identity_weight, self.stage1_pixel_weight, self.stage2_pixel_weight,
                         self.stage1_bone_weight, self.stage2_bone_weight)  # fmt: skip
        if min(self.stage2_reference_shift_px, self.smooth_weight, *extra_weights) < 0:
            raise InputError("stage2_reference_shift_px, smooth_weight and the identity, pixel and bone weights must be non-negative")
        if max(self.stage1_bone_weight, self.stage2_bone_weight) > 0:
            if self.normalization["reference"].get("kind") != "ct_window":
                raise InputError(f"the bone weights need the reference's ct_window normalisation (a fixed HU scale), got {self.normalization['reference']}")
            if not self.bone_softness_hu > 0:
                raise InputError(f"bone_softness_hu must be positive, got {self.bone_softness_hu!r}")
        if not 0 <= self.weight_average_decay < 1:
            raise InputError(f"weight_average_decay must be in [0, 1) (0: off), got {self.weight_average_decay!r}")
        if not self.selection_dice_weight_hu >= 0:
            raise InputError(f"selection_dice_weight_hu must be non-negative (0: select by the MAE alone), got {self.selection_dice_weight_hu!r}")
        if self.pixel_target not in PIXEL_TARGETS:
            raise InputError(f"pixel_target must be one of {', '.join(PIXEL_TARGETS)}, got {self.pixel_target!r}")
        if self.target_registration not in TARGET_REGISTRATIONS:
            raise InputError(f"target_registration must be one of {', '.join(TARGET_REGISTRATIONS)}, got {self.target_registration!r}")
        self.val_cases = tuple(self.val_cases)
        self.cx_layers = tuple(self.cx_layers)
        self.stage2_nce_vgg_layers = tuple(self.stage2_nce_vgg_layers)
        self.lr_milestones = tuple(float(m) for m in self.lr_milestones)

    def phase(self, name: str) -> PhaseSettings:
        """The :class:`PhaseSettings` of ``name`` (one of :data:`PHASES`)."""
        if name not in PHASES:
            raise InputError(f"phase must be one of {', '.join(PHASES)}, got {name!r}")
        return getattr(self, name)

    def bone_threshold(self) -> tuple[float, float]:
        """``(threshold, softness)`` of the bone term in the reference's normalised units."""
        window = self.normalization["reference"]
        scale = 2.0 / (float(window["high"]) - float(window["low"]))
        return -1.0 + (self.bone_threshold_hu - float(window["low"])) * scale, self.bone_softness_hu * scale

    def milestones(self, epochs: int) -> list[int]:
        """Epochs after which the LR is multiplied by ``lr_gamma`` (the paper's 20 and 30 of
        100, scaled to ``epochs``)."""
        return sorted({max(1, round(fraction * epochs)) for fraction in self.lr_milestones})

    # ------------------------------------------------------------------ presets

    @classmethod
    def full(cls, **overrides: Any) -> TrainingConfig:
        """The published recipe (RbG §IV-B) for a GPU."""
        settings = dict(
            preset="full",
            model=ModelConfig.full(),
            stage1=PhaseSettings(epochs=100, batch_size=8, lr=1e-4, betas=(0.5, 0.999), weight_decay=1e-4),
            registration=PhaseSettings(epochs=100, batch_size=10, lr=1e-4, betas=(0.9, 0.999)),
            stage2=PhaseSettings(epochs=100, batch_size=4, lr=1e-4, betas=(0.5, 0.999)),
            val_slices_per_case=32,
        )
        return cls(**{**settings, **overrides})

    @classmethod
    def lite(cls, **overrides: Any) -> TrainingConfig:
        """The lite networks on a short CPU schedule (the defaults of the dataclass)."""
        return cls(**{"preset": "lite", **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> TrainingConfig:
        """Tiny networks, 32×32 crops, one short epoch per phase: a test run in seconds."""
        settings = dict(
            preset="tiny",
            model=ModelConfig.tiny(),
            pixel_spacing_mm=(8.0, 8.0),
            crop_size=32,
            val_slices_per_case=2,
            stage1=PhaseSettings(epochs=1, batch_size=2, lr=1e-3, samples_per_epoch=4),
            registration=PhaseSettings(epochs=1, batch_size=2, lr=1e-3, betas=(0.9, 0.999), samples_per_epoch=4),
            stage2=PhaseSettings(epochs=1, batch_size=2, lr=1e-3, samples_per_epoch=4),
            nce_patches=32,
            nce_projection=16,
            cx_max_positions=128,
            discriminator_channels=8,
            discriminator_layers=2,
            stage2_reference_shift_px=2,
        )
        return cls(**{**settings, **overrides})

    @classmethod
    def preset_named(cls, name: str, **overrides: Any) -> TrainingConfig:
        if name == "tiny":
            return cls.tiny(**overrides)
        elif name == "lite":
            return cls.lite(**overrides)
        elif name == "full":
            return cls.full(**overrides)
        else:
            raise InputError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); :meth:`from_dict` inverts it exactly."""
        result: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, ModelConfig):
                value = value.to_dict()
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            result[item.name] = _jsonable(value)
        return result

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """A config from a (partial) dict over the preset it names (default ``lite``).

        Raises:
            InputError: unknown keys at any level, or invalid values.
        """
        if not isinstance(data, dict):
            raise InputError(f"training config must be a JSON object, got {type(data).__name__}")
        base = cls.preset_named(data.get("preset", "lite")).to_dict()
        merged = _merge(base, data, "config")
        if data.get("modality") and "normalization" not in data:
            merged["normalization"] = None  # follow the modality, not the preset's default
        kwargs: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            value = merged[item.name]
            if item.name == "model":
                try:
                    value = ModelConfig.from_dict(value)
                except ValueError as error:
                    raise InputError(f"model: {error}") from error
            elif item.name in PHASES:
                value = PhaseSettings(**value)
            elif item.name in ("stage1_weights", "stage2_weights"):
                value = LossWeights(**value)
            elif item.name == "augment":
                value = AugmentSettings(**value)
            kwargs[item.name] = value
        return cls(**kwargs)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in a training config file.

    Raises:
        InputError: unreadable file, invalid JSON, or not an object.
    """
    path = Path(path)
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read the training config ({error})") from error
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: the training config must be a JSON object")
    return loaded


def load_config(path: str | os.PathLike | None, *, preset: str | None = None, **overrides: Any) -> TrainingConfig:
    """A training config from a JSON file (any subset of the fields) over a preset.

    Args:
        path: the JSON file, or None for the preset alone.
        preset: the base preset; None takes the file's ``"preset"``, else ``lite``.
        overrides: top-level fields that win over the file (None values are ignored).

    Raises:
        InputError: unreadable file, invalid JSON, unknown keys or invalid values (the
            message names the file).
    """
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    if preset is not None:
        data["preset"] = preset
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainingConfig.from_dict(data)
    except (InputError, TypeError) as error:
        where = f"{path}: " if path is not None else ""
        raise InputError(f"{where}{error}") from error


def _merge(base: dict[str, Any], update: dict[str, Any], where: str) -> dict[str, Any]:
    result = dict(base)
    for key, value in update.items():
        if key not in base:
            raise InputError(f"{where}: unknown key {key!r}; expected one of {', '.join(sorted(base))}")
        if isinstance(base[key], dict) and isinstance(value, dict) and key not in ("normalization",):
            result[key] = _merge(base[key], value, f"{where}.{key}")
        else:
            result[key] = value
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
