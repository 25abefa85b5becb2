"""Training of MR-GAN (``rbg train mr-gan``): paired, unpaired or both, as in the paper's ablation.

Cases are the training pipeline's (:func:`~RegisterByGenerationLib.training.data.load_case`:
the 1 mm canvas, the normalisations, the cache). The training cases are split once, by
the run's seed, into *paired* cases (``paired_fraction`` of them: the MR with the CT of its
own anatomy, the case's pixel target — ``ct_aligned`` for phantoms, or the reference
registered onto the MR by a classical method for real data) and *unpaired* cases (MR
slices of one case, reference-CT slices of another, at independent places). ``variant``
picks the paper's systems (Eq. 1-5, λ = ``cycle_weight``, γ = ``l1_weight``):

- ``paired`` (pix2pix, each direction): cross-entropy pair discriminators + γ·L1, paired
  cases only;
- ``unpaired`` (CycleGAN): least-squares discriminators + λ·cycle, unpaired cases only;
- ``combined`` (MR-GAN): both, with the cycle on the paired cases too (the dual cycle).

Each step updates both synthesis networks, then both discriminators (Adam, the paper's
2e-4 and β₁ = 0.5). Validation scores ``syn_ct`` on whole canvas slices of the validation
cases (MAE in HU in the body against the aligned CT), and ``syn_mr`` on their aligned CT
(L1 of the normalised MR in the body); ``best.pt`` is the lowest MAE.
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
from ...losses.adversarial import LSGANLoss
from ...metrics import mae
from ...modelstore import ModelInfo, save_model
from ...training.config import TrainingConfig, default_normalization
from ...training.data import CachedCase, load_case
from ...training.volume_runs import crop3d, load_config_file, model_card, read_run_for_export, run_method, split_run_cases, train_epochs
from .inference import translate
from .network import MRGAN, MRGANConfig, PairedUnpairedDiscriminator

__all__ = ["MRGANTrainingConfig", "VARIANTS", "split_paired", "SliceDataset", "MRGANLoss", "train_mr_gan", "export_mr_gan",
           "load_training_config", "is_mr_gan_run"]  # fmt: skip

#: The paper's three systems (Table 1).
VARIANTS = ("paired", "unpaired", "combined")


@dataclass
class MRGANTrainingConfig:
    """Everything an MR-GAN training run depends on (saved in ``RUN/run.json``)."""

    modality: str = "mr"
    variant: str = "combined"
    architecture: MRGANConfig = field(default_factory=MRGANConfig)
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)
    normalization: dict | None = None
    prealign: bool = True
    pixel_target: str = "aligned"
    seed: int = 0
    val_cases: tuple[str, ...] = ()
    val_fraction: float = 0.15
    paired_fraction: float = 0.25
    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 4
    crop_size: int = 128
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lr_milestones: tuple[float, ...] = (0.7, 0.9)
    lr_gamma: float = 0.3
    cycle_weight: float = 10.0
    l1_weight: float = 100.0
    val_slices_per_case: int = 8
    flip: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.architecture, dict):
            self.architecture = MRGANConfig.from_dict(self.architecture)
        if self.modality != "mr":
            raise InputError(f"mr-gan translates between MR and CT; got modality {self.modality!r}")
        if self.variant not in VARIANTS:
            raise InputError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.pixel_target not in ("aligned", "registered"):
            raise InputError(f"pixel_target must be 'aligned' or 'registered' (the CT paired with each MR), got {self.pixel_target!r}")
        if self.normalization is None:
            self.normalization = default_normalization(self.modality)
        self.pixel_spacing_mm = tuple(float(s) for s in self.pixel_spacing_mm)
        self.betas = tuple(float(b) for b in self.betas)
        self.val_cases, self.lr_milestones = tuple(self.val_cases), tuple(float(m) for m in self.lr_milestones)
        for name in ("epochs", "steps_per_epoch", "batch_size", "crop_size", "val_slices_per_case"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.crop_size % 16 or self.crop_size < 64:
            raise InputError(f"crop_size must be a multiple of 16 of at least 64 (the discriminators' strides), got {self.crop_size}")
        if not 0 < self.paired_fraction < 1:
            raise InputError(f"paired_fraction must be in (0, 1): some cases paired, the others unpaired; got {self.paired_fraction!r}")
        if min(self.cycle_weight, self.l1_weight) < 0:
            raise InputError("cycle_weight and l1_weight must be non-negative")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["architecture"] = self.architecture.to_dict()
        return json.loads(json.dumps(data))

    def canvas_config(self) -> TrainingConfig:
        """The 2-D training config whose preprocessing (and cache) the cases share."""
        return TrainingConfig.lite(modality=self.modality, pixel_spacing_mm=self.pixel_spacing_mm, normalization=self.normalization,
                                   prealign=self.prealign, seed=self.seed, val_cases=self.val_cases, val_fraction=self.val_fraction,
                                   pixel_target=self.pixel_target)  # fmt: skip


def load_training_config(path: str | os.PathLike | None, **overrides: Any) -> MRGANTrainingConfig:
    """Defaults, then the JSON file at ``path`` (unknown keys refused), then ``overrides``."""
    return load_config_file(MRGANTrainingConfig, path, **overrides)


def split_paired(case_ids: list[str], paired_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(paired, unpaired)``: a seeded shuffle of ``case_ids``, the first
    ``round(paired_fraction · n)`` of them (at least one, and one left) paired.

    Raises:
        InputError: fewer than two cases.
    """
    if len(case_ids) < 2:
        raise InputError(f"mr-gan needs at least two training cases (some paired, some unpaired), got {len(case_ids)}")
    order = [case_ids[i] for i in np.random.default_rng(seed).permutation(len(case_ids))]
    count = min(max(1, round(paired_fraction * len(order))), len(order) - 1)
    return sorted(order[:count]), sorted(order[count:])


class SliceDataset(torch.utils.data.Dataset):
    """Random 2-D crops ``[1, S, S]`` around body pixels: ``paired_mr``/``paired_ct`` (one
    place of one paired case) and ``unpaired_mr``/``unpaired_ct`` (an MR of one unpaired
    case, a reference CT of another, independent places), as ``variant`` needs; item ``i``
    of epoch ``e`` from ``default_rng([seed, e, i])``."""

    def __init__(self, paired: list[CachedCase], unpaired: list[CachedCase], config: MRGANTrainingConfig, length: int) -> None:
        self.config, self.length, self.epoch = config, int(length), 0
        self.paired = paired if config.variant != "unpaired" else []
        self.unpaired = unpaired if config.variant != "paired" else []
        if config.variant != "unpaired" and not self.paired or config.variant != "paired" and not self.unpaired:
            raise InputError(f"variant {config.variant} needs {'paired' if not self.paired else 'unpaired'} cases")
        if any(case.y_target is None for case in self.paired):
            raise InputError("a paired case has no pixel target (the CT of the MR's anatomy)")
        self.body = {id(case): np.argwhere(case.mask) for case in [*self.paired, *self.unpaired]}
        if any(len(b) == 0 for b in self.body.values()):
            raise InputError("a training case has an empty body mask")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _corner(self, case: CachedCase, rng: np.random.Generator) -> tuple[int, int, int]:
        body = self.body[id(case)]
        z, y, x = body[rng.integers(len(body))]
        size = self.config.crop_size
        return int(z), int(y) - size // 2, int(x) - size // 2

    def _crop(self, volume: np.ndarray, corner: tuple[int, int, int], pad: float, flip: bool) -> torch.Tensor:
        crop = crop3d(volume, corner, (1, self.config.crop_size, self.config.crop_size), pad)
        return torch.from_numpy(np.ascontiguousarray(crop[..., ::-1] if flip else crop))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.config.seed, self.epoch, int(index)])
        flip = lambda: self.config.flip and bool(rng.random() < 0.5)  # noqa: E731
        sample = {}
        if self.paired:
            case = self.paired[int(rng.integers(len(self.paired)))]
            corner, mirrored = self._corner(case, rng), flip()
            sample["paired_mr"] = self._crop(case.x, corner, float(case.x.min()), mirrored)
            sample["paired_ct"] = self._crop(case.y_target, corner, -1.0, mirrored)
        if self.unpaired:
            a = int(rng.integers(len(self.unpaired)))
            b = int(rng.integers(len(self.unpaired) - 1)) if len(self.unpaired) > 1 else 0
            b += int(len(self.unpaired) > 1 and b >= a)  # another case than a's when there is one
            mr_case, ct_case = self.unpaired[a], self.unpaired[b]
            sample["unpaired_mr"] = self._crop(mr_case.x, self._corner(mr_case, rng), float(mr_case.x.min()), flip())
            sample["unpaired_ct"] = self._crop(ct_case.y, self._corner(ct_case, rng), -1.0, flip())
        return sample


class MRGANLoss:
    """The generators' and the discriminators' objectives of one batch (Eq. 2-5).

    :meth:`generator_terms` runs both synthesis networks and keeps their outputs, which
    :meth:`discriminator_terms` then judges (detached) against the real images.
    """

    def __init__(self, net: MRGAN, discriminator: PairedUnpairedDiscriminator, config: MRGANTrainingConfig) -> None:
        self.net, self.discriminator, self.config = net, discriminator, config
        self.least_squares = LSGANLoss()
        self._fakes: dict[str, torch.Tensor] = {}

    @staticmethod
    def _cross_entropy(logits: torch.Tensor, real: bool) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits, float(real), dtype=torch.float32))

    def generator_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        net, d, config = self.net, self.discriminator, self.config
        terms: dict[str, torch.Tensor] = {}
        self._fakes = {}
        if "unpaired_mr" in batch:
            mr, ct = batch["unpaired_mr"], batch["unpaired_ct"]
            fake_ct, fake_mr = net.syn_ct(mr), net.syn_mr(ct)
            self._fakes.update(unpaired_ct=fake_ct, unpaired_mr=fake_mr)
            terms["gan_unpaired"] = self.least_squares.generator_loss(d.ct.single(fake_ct)) + self.least_squares.generator_loss(d.mr.single(fake_mr))
            terms["cycle_unpaired"] = F.l1_loss(net.syn_mr(fake_ct), mr) + F.l1_loss(net.syn_ct(fake_mr), ct)
        if "paired_mr" in batch:
            mr, ct = batch["paired_mr"], batch["paired_ct"]
            fake_ct, fake_mr = net.syn_ct(mr), net.syn_mr(ct)
            self._fakes.update(paired_ct=fake_ct, paired_mr=fake_mr)
            terms["gan_paired"] = self._cross_entropy(d.ct.pair(mr, fake_ct), True) + self._cross_entropy(d.mr.pair(ct, fake_mr), True)
            terms["l1"] = F.l1_loss(fake_ct, ct) + F.l1_loss(fake_mr, mr)
            if config.variant == "combined":
                terms["cycle_paired"] = F.l1_loss(net.syn_mr(fake_ct), mr) + F.l1_loss(net.syn_ct(fake_mr), ct)
        weights = {"gan_unpaired": 1.0, "gan_paired": 1.0, "cycle_unpaired": config.cycle_weight, "cycle_paired": config.cycle_weight,
                   "l1": config.l1_weight}  # fmt: skip
        terms["total"] = sum(weights[k] * v for k, v in terms.items())
        return terms

    def discriminator_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        d, fakes, terms = self.discriminator, {k: v.detach() for k, v in self._fakes.items()}, {}
        if "unpaired_ct" in fakes:
            terms["unpaired"] = (self.least_squares.discriminator_loss(d.ct.single(batch["unpaired_ct"]), d.ct.single(fakes["unpaired_ct"]))
                                   + self.least_squares.discriminator_loss(d.mr.single(batch["unpaired_mr"]), d.mr.single(fakes["unpaired_mr"])))  # fmt: skip
        if "paired_ct" in fakes:
            mr, ct = batch["paired_mr"], batch["paired_ct"]
            terms["paired"] = 0.5 * (self._cross_entropy(d.ct.pair(mr, ct), True) + self._cross_entropy(d.ct.pair(mr, fakes["paired_ct"]), False)
                                       + self._cross_entropy(d.mr.pair(ct, mr), True) + self._cross_entropy(d.mr.pair(ct, fakes["paired_mr"]), False))  # fmt: skip
        terms["total"] = sum(terms.values())
        return terms


def _validation_slices(case: CachedCase, count: int) -> np.ndarray:
    slices = case.body_slices(0.05)
    return slices[np.unique(np.linspace(0, len(slices) - 1, count).round().astype(int))] if len(slices) else slices


def validate(net: MRGAN, cases: list[CachedCase], config: MRGANTrainingConfig, device: torch.device) -> dict[str, float]:
    """``val_mae`` (HU) of ``syn_ct`` and ``val_mr_l1`` of ``syn_mr``, in the body of whole slices."""
    net.eval()
    scores = []
    for case in cases:
        z = _validation_slices(case, config.val_slices_per_case)
        truth = case.truth_hu[z]
        ct = translate(net.syn_ct, case.x[z], device=device)
        mr = translate(net.syn_mr, np.interp(truth, case.lut[1], case.lut[0]).astype(np.float32), device=device)  # HU → normalised
        mask = case.mask[z]
        scores.append((mae(case.to_hu(ct), truth, mask), float(np.abs(mr - case.x[z])[mask].mean()), mae(case.to_hu(case.y[z]), truth, mask)))
    net.train()
    mean = np.mean(scores, axis=0) if scores else [math.nan] * 3
    return {"val_mae": float(mean[0]), "val_mr_l1": float(mean[1]), "val_rigid_mae": float(mean[2])}


def train_mr_gan(config: MRGANTrainingConfig, data_dir: str | os.PathLike, run_dir: str | os.PathLike, *,
                 device: str = "cpu", resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Train (or ``resume``) a run in ``run_dir``; returns the final checkpoint's summary.

    Raises:
        InputError: too few cases, no pixel target for a paired case, or a checkpoint
            exists without ``resume``.
    """
    from ...pipeline import select_device

    torch_device = select_device(device)
    canvas = config.canvas_config()
    train_files, val_files = split_run_cases(config, data_dir, run_dir, resume)  # bad data: refused before the run folder exists
    paired_ids, unpaired_ids = split_paired([f.case_id for f in train_files], config.paired_fraction, config.seed)
    needed = {f.case_id for f in train_files if f.case_id in paired_ids and config.variant != "unpaired"}
    missing = next((f for f in train_files if f.case_id in needed and f.truth is None and config.pixel_target == "aligned"), None)
    if missing is not None:
        raise InputError(f"{missing.folder}: paired case {missing.case_id} has no ct_aligned.nii.gz (pixel_target 'aligned')")
    run = check_writable_dir(run_dir)
    cases = {f.case_id: load_case(f, canvas, run / "cache", pixel_target=f.case_id in needed) for f in train_files}
    val_cases = [case for case in (load_case(f, canvas, run / "cache", pixel_target=False) for f in val_files) if case.truth_hu is not None]
    data = {"dir": str(Path(data_dir).resolve()), "modality": config.modality, "train": [f.case_id for f in train_files],
            "paired": paired_ids, "unpaired": unpaired_ids, "val": [f.case_id for f in val_files]}  # fmt: skip
    (run / "run.json").write_text(json.dumps({"library_version": __version__, "method": "mr-gan", "config": config.to_dict(), "data": data}, indent=2) + "\n")

    torch.manual_seed(config.seed)
    net = MRGAN(config.architecture).to(torch_device)
    discriminator = PairedUnpairedDiscriminator(config.architecture).to(torch_device)
    loss = MRGANLoss(net, discriminator, config)
    dataset = SliceDataset([cases[c] for c in paired_ids], [cases[c] for c in unpaired_ids], config, config.steps_per_epoch * config.batch_size)
    return train_epochs("mr-gan", net, config, dataset, run, device=torch_device, resume=resume, stop_after=stop_after,
                        terms_of=loss.generator_terms, validate=lambda: validate(net, val_cases, config, torch_device) if val_cases else {},
                        adversary=discriminator, adversary_terms_of=loss.discriminator_terms)  # fmt: skip


def is_mr_gan_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` is a run of :func:`train_mr_gan` (its ``run.json`` says so)."""
    return run_method(run_dir) == "mr-gan"


def export_mr_gan(run_dir: str | os.PathLike, model_dir: str | os.PathLike, *, name: str, checkpoint: str = "best",
                  description: str | None = None) -> ModelInfo:  # fmt: skip
    """Write the run's ``best`` (or ``last``) synthesis networks as a model directory whose
    card names the method ``mr-gan``, the variant, the data and the departures.

    Raises:
        InputError: not an MR-GAN run, no such checkpoint, or a bad name.
    """
    exported = read_run_for_export(run_dir, "mr-gan", checkpoint, name)
    run, state, _ = exported
    config = MRGANTrainingConfig(**run["config"])
    net = MRGAN(config.architecture)
    net.load_state_dict(state["model"], strict=True)
    width = config.architecture
    departures = [
        f"lite widths for the CPU: {width.channels} generator channels and {width.residual_blocks} residual blocks (the paper: 64 and 9)",
        "2-D slices of a 1 mm canvas after our rigid pre-alignment, random crops instead of whole 256x256 slices",
        "Adam learning rate stepped down at the config's milestones instead of the paper's linear decay; batch "
        f"{config.batch_size} instead of 1",
    ]
    if config.pixel_target == "aligned":
        departures.append("paired data: each phantom MR with the CT of its own anatomy (ct_aligned.nii.gz, exact), not rigidly registered scans")
    supervision = {"paired": "L1 against the paired CT/MR + pair discriminators", "unpaired": "cycle consistency + discriminators",
                   "combined": "both, with the cycle on the paired cases too"}[config.variant]  # fmt: skip
    metadata = model_card("mr-gan", name, description or f"MR-GAN ({config.variant}) MR<->CT synthesis", config, exported, checkpoint, departures,
                          variant=config.variant, paired_cases=run["data"]["paired"], unpaired_cases=run["data"]["unpaired"],
                          supervision=supervision)  # fmt: skip
    return save_model(net, model_dir, metadata)
