"""Training of the STN + early-fusion network (``rbg train stn-fusion``).

Cases are the training pipeline's: the same folders, the same preprocessing and cache as
the 2-D models (:func:`~RegisterByGenerationLib.training.data.load_case`: rigid
pre-alignment, the slice canvas, the normalisations), so a 3-D patch is a stack of canvas
slices. The target is the case's aligned CT (``ct_aligned``: phantoms; for real data a
deformably registered CT, e.g. SynthRAD's), so training is supervised; the card says so.

Loss (the paper's weights): ``w_mae·L1 + w_ssim·(1 − SSIM) + w_perceptual·P +
w_warp·MSE(warped CT, target)``, SSIM 3-D (MONAI), P the L1 distance of VGG-19
features of the axial slices (:class:`~...losses.vgg.VGG19Features`: ImageNet weights
from a local file when given, else fixed random weights, which is what we have offline).

Each epoch is ``steps_per_epoch`` batches of random patches, then whole-volume
sliding-window validation (MAE and bone Dice in HU on the validation cases);
``RUN/best.pt`` is the lowest validation MAE, ``RUN/last.pt`` the latest epoch, and
``--resume`` continues from it exactly.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ... import __version__
from ...errors import InputError
from ...io import check_writable_dir
from ...modelstore import ModelInfo, save_model
from ...metrics import bone_dice_by_threshold, mae
from ...training.config import TrainingConfig, default_normalization
from ...training.data import CachedCase, load_case
from ...training.volume_runs import crop3d, load_config_file, model_card, read_run_for_export, run_method, split_run_cases, train_epochs
from .inference import predict_volume
from .network import STNFusionConfig, STNFusionNet

__all__ = ["STNFusionTrainingConfig", "PatchDataset", "STNFusionLoss", "train_stn_fusion", "export_stn_fusion", "load_training_config", "is_stn_fusion_run"]


@dataclass
class STNFusionTrainingConfig:
    """Everything an STN-fusion training run depends on (saved in ``RUN/run.json``)."""

    modality: str = "cbct"
    architecture: STNFusionConfig = field(default_factory=STNFusionConfig)
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)
    normalization: dict | None = None
    prealign: bool = True
    seed: int = 0
    val_cases: tuple[str, ...] = ()
    val_fraction: float = 0.15
    epochs: int = 10
    steps_per_epoch: int = 200
    batch_size: int = 2
    lr: float = 5e-4
    lr_milestones: tuple[float, ...] = (0.7, 0.9)
    lr_gamma: float = 0.3
    mae_weight: float = 0.2
    ssim_weight: float = 1.0
    perceptual_weight: float = 0.7
    warp_weight: float = 1e-3
    perceptual_layers: tuple[str, ...] = ("conv1_2", "conv2_2", "conv3_2")
    vgg_weights: str | None = None
    vgg_seed: int = 0
    reference_shift_px: int = 8
    reference_shift_probability: float = 0.5
    flip: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.architecture, dict):
            self.architecture = STNFusionConfig.from_dict(self.architecture)
        if self.normalization is None:
            self.normalization = default_normalization(self.modality)
        self.pixel_spacing_mm = tuple(float(s) for s in self.pixel_spacing_mm)
        self.val_cases, self.lr_milestones = tuple(self.val_cases), tuple(float(m) for m in self.lr_milestones)
        self.perceptual_layers = tuple(self.perceptual_layers)
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if min(self.mae_weight, self.ssim_weight, self.perceptual_weight, self.warp_weight, self.reference_shift_px) < 0:
            raise InputError("the loss weights and reference_shift_px must be non-negative")
        if not 0 <= self.reference_shift_probability <= 1:
            raise InputError(f"reference_shift_probability must be in [0, 1], got {self.reference_shift_probability!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["architecture"] = self.architecture.to_dict()
        return json.loads(json.dumps(data))

    def canvas_config(self) -> TrainingConfig:
        """The 2-D training config whose preprocessing (and cache) the cases share."""
        return TrainingConfig.lite(modality=self.modality, pixel_spacing_mm=self.pixel_spacing_mm, normalization=self.normalization,
                                   prealign=self.prealign, seed=self.seed, val_cases=self.val_cases, val_fraction=self.val_fraction,
                                   pixel_target="aligned")  # fmt: skip


def load_training_config(path: str | os.PathLike | None, **overrides: Any) -> STNFusionTrainingConfig:
    """Defaults, then the JSON file at ``path`` (unknown keys refused), then ``overrides``."""
    return load_config_file(STNFusionTrainingConfig, path, **overrides)


class PatchDataset(torch.utils.data.Dataset):
    """Random 3-D patches centred on body voxels: ``x``, ``y`` (the reference, shifted by
    up to ``reference_shift_px`` in-plane and one slice with probability
    ``reference_shift_probability``: residual misalignment for the STN to undo) and the
    target, all ``[1, Z, Y, X]``; item ``i`` of epoch ``e`` from ``default_rng([seed, e, i])``."""

    def __init__(self, cases: list[CachedCase], config: STNFusionTrainingConfig, length: int) -> None:
        self.cases, self.config, self.length, self.epoch = cases, config, int(length), 0
        self.body = [np.argwhere(case.mask) for case in cases]
        if any(len(b) == 0 for b in self.body):
            raise InputError("a training case has an empty body mask")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        config, patch = self.config, self.config.architecture.patch
        rng = np.random.default_rng([config.seed, self.epoch, int(index)])
        c = int(rng.integers(len(self.cases)))
        case = self.cases[c]
        centre = self.body[c][rng.integers(len(self.body[c]))]
        corner = tuple(int(p) - s // 2 for p, s in zip(centre, patch))
        shift = (0, 0, 0)
        if config.reference_shift_px and rng.random() < config.reference_shift_probability:
            s = config.reference_shift_px
            shift = (int(rng.integers(-1, 2)), int(rng.integers(-s, s + 1)), int(rng.integers(-s, s + 1)))
        sample = {
            "x": crop3d(case.x, corner, patch, float(case.x.min())),
            "y": crop3d(case.y, tuple(a + b for a, b in zip(corner, shift)), patch, -1.0),
            "target": crop3d(case.y_target, corner, patch, -1.0),
        }
        if config.flip and rng.random() < 0.5:
            sample = {k: v[..., ::-1] for k, v in sample.items()}
        return {k: torch.from_numpy(np.ascontiguousarray(v[None])) for k, v in sample.items()}


class STNFusionLoss(torch.nn.Module):
    """``w_mae·L1 + w_ssim·(1 − SSIM₃D) + w_perceptual·P + w_warp·MSE(warped, target)``."""

    def __init__(self, config: STNFusionTrainingConfig) -> None:
        super().__init__()
        from monai.losses import SSIMLoss

        self.config = config
        self.ssim = SSIMLoss(spatial_dims=3, data_range=2.0, win_size=7)  # images in [-1, 1]
        self.vgg = None
        if config.perceptual_weight > 0:
            from ...losses.vgg import VGG19Features

            self.vgg = VGG19Features(config.perceptual_layers, weights=config.vgg_weights, seed=config.vgg_seed)

    def forward(self, produced: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
        config, out = self.config, produced["output"]
        terms = {"mae": F.l1_loss(out, target), "ssim": self.ssim(out.clamp(-1, 1), target), "warp": F.mse_loss(produced["warped"], target)}
        if self.vgg is not None:
            axial = lambda v: v.permute(0, 2, 1, 3, 4).reshape(-1, 1, *v.shape[-2:])  # noqa: E731 - [B·Z, 1, Y, X]
            features = zip(self.vgg(axial(out.clamp(-1, 1))), self.vgg(axial(target)))
            terms["perceptual"] = sum(F.l1_loss(a, b) for a, b in features)
        weights = {"mae": config.mae_weight, "ssim": config.ssim_weight, "warp": config.warp_weight, "perceptual": config.perceptual_weight}
        terms["total"] = sum(weights[k] * v for k, v in terms.items())
        return terms


def validate(net: STNFusionNet, cases: list[CachedCase], device: torch.device) -> dict[str, float]:
    """Whole-volume sliding-window MAE and bone Dice (HU, in the body) of ``cases``."""
    net.eval()
    scores = []
    for case in cases:
        pred = case.to_hu(np.clip(predict_volume(net, case.x, case.y, device=device), -1, 1))
        scores.append((mae(pred, case.truth_hu, case.mask), bone_dice_by_threshold(pred, case.truth_hu, case.mask),
                       mae(case.to_hu(case.y), case.truth_hu, case.mask)))  # fmt: skip
    net.train()
    mean = np.mean(scores, axis=0) if scores else [math.nan] * 3
    return {"val_mae": float(mean[0]), "val_bone_dice": float(mean[1]), "val_rigid_mae": float(mean[2])}


def train_stn_fusion(config: STNFusionTrainingConfig, data_dir: str | os.PathLike, run_dir: str | os.PathLike, *,
                     device: str = "cpu", resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Train (or ``resume``) a run in ``run_dir``; returns the final checkpoint's summary.

    Raises:
        InputError: no cases, no aligned CTs, or a checkpoint exists without ``resume``.
    """
    from ...pipeline import select_device

    torch_device = select_device(device)
    canvas = config.canvas_config()
    train_files, val_files = split_run_cases(config, data_dir, run_dir, resume)  # bad data: refused before the run folder exists
    unaligned = next((f for f in train_files if f.truth is None), None)
    if unaligned is not None:
        raise InputError(f"{unaligned.folder}: case {unaligned.case_id} has no ct_aligned.nii.gz, the target stn-fusion training needs")
    run = check_writable_dir(run_dir)
    train_cases = [load_case(f, canvas, run / "cache") for f in train_files]
    val_cases = [load_case(f, canvas, run / "cache", pixel_target=False) for f in val_files]
    val_cases = [case for case in val_cases if case.truth_hu is not None]
    data = {"dir": str(Path(data_dir).resolve()), "modality": config.modality, "train": [f.case_id for f in train_files], "val": [f.case_id for f in val_files]}
    (run / "run.json").write_text(json.dumps({"library_version": __version__, "method": "stn-fusion", "config": config.to_dict(), "data": data}, indent=2) + "\n")

    torch.manual_seed(config.seed)
    net = STNFusionNet(config.architecture).to(torch_device)
    loss_fn = STNFusionLoss(config).to(torch_device)
    dataset = PatchDataset(train_cases, config, config.steps_per_epoch * config.batch_size)
    return train_epochs("stn-fusion", net, config, dataset, run, device=torch_device, resume=resume, stop_after=stop_after,
                        terms_of=lambda batch: loss_fn(net(batch["x"], batch["y"]), batch["target"]), validate=lambda: validate(net, val_cases, torch_device) if val_cases else {})  # fmt: skip


def is_stn_fusion_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` is a run of :func:`train_stn_fusion` (its ``run.json`` says so)."""
    return run_method(run_dir) == "stn-fusion"


def export_stn_fusion(run_dir: str | os.PathLike, model_dir: str | os.PathLike, *, name: str, checkpoint: str = "best",
                      description: str | None = None, valid_input_spacing_mm: dict[str, list[float]] | None = None) -> ModelInfo:  # fmt: skip
    """Write the run's ``best`` (or ``last``) checkpoint as a model directory whose card
    names the method ``stn-fusion``, the supervision (aligned CTs) and the departures.

    Raises:
        InputError: not an STN-fusion run, no such checkpoint, or a bad name.
    """
    exported = read_run_for_export(run_dir, "stn-fusion", checkpoint, name)
    run, state, _ = exported
    config = STNFusionTrainingConfig(**{**run["config"], "architecture": STNFusionConfig.from_dict(run["config"]["architecture"])})
    net = STNFusionNet(config.architecture)
    net.load_state_dict(state["model"], strict=True)
    departures = ["residual: the U-Net's output is added to the warped CT (the paper's U-Net outputs the sCT)"] if config.architecture.residual else []
    if config.perceptual_weight == 0:
        departures.append("no perceptual term: no ImageNet VGG is available offline, and a random VGG is no perceptual metric")
    elif config.vgg_weights is None:
        departures.append("the perceptual term uses a fixed random VGG-19 (no ImageNet weights offline)")
    departures.append("2-D canvas slices stacked as the volume: the input's own slice spacing, 1 mm in-plane by default, after our rigid pre-alignment")
    description = description or f"STN + early fusion ({'with' if config.architecture.stn else 'without'} STN) {config.modality.upper()} model"
    metadata = model_card("stn-fusion", name, description, config, exported, checkpoint, departures,
                          target="each training case's aligned CT (ct_aligned.nii.gz: known for synthetic phantoms; for real data a deformably registered CT)",
                          supervision="supervised on aligned CTs; aligned CTs also scored the validation cases and picked the best epoch")  # fmt: skip
    if valid_input_spacing_mm is not None:
        metadata["valid_input_spacing_mm"] = valid_input_spacing_mm
    return save_model(net, model_dir, metadata)
