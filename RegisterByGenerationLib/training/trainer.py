"""The training loop: data, phases in order, validation, checkpoints, logs, exact resume.

A run directory holds everything a run produced::

    RUN/run.json                  configuration, data folder, train/validation split, seeds
    RUN/cache/<ID>-<key>.npz      preprocessed cases (the inference preprocessing)
    RUN/<phase>/last.pt           checkpoint after the latest epoch (exact resume)
    RUN/<phase>/best.pt           checkpoint of the best validation epoch
    RUN/<phase>/log.csv           one row per epoch: LR, mean training losses, validation metrics

Phases run in the order stage1 → registration → stage2; each starts from the previous
phase's ``best.pt`` and freezes what the paper freezes (see :mod:`.phases`).

Checkpoints hold the whole model, the phase's extra modules (discriminator, projection
heads), optimizers, LR schedulers, every random state (torch's, the sampling and noise
generators) and the epoch; crops depend only on (seed, epoch, index). So resuming from
``last.pt`` continues exactly as if the run had not stopped. Checkpoints are read with
``torch.load(weights_only=True)`` (no code execution).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from .. import __version__
from ..errors import InputError, RbgError
from ..io import atomic_path, check_writable_dir
from ..metrics import bone_dice_by_threshold, gradient_correlation, mae, psnr
from ..networks import build_model
from ..pipeline import select_device
from .config import PHASES, TrainingConfig
from .averaging import WeightAverage
from .data import CachedCase, SliceCropDataset, find_cases, load_case, split_cases, validation_slices
from .distributed import DistributedContext, all_reduce_mean, barrier, broadcast_flag, init_distributed
from .phases import Phase, build_phase, feature_network_description

__all__ = ["RUN_FILE", "CHECKPOINT_FORMAT", "PhaseResult", "Trainer", "read_run", "load_checkpoint", "hardware_description"]

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
CHECKPOINT_FORMAT = 1
_VAL_BATCH = 4


@dataclass
class PhaseResult:
    """What a phase ended with."""

    phase: str
    epochs: int
    best_metric: str
    best_value: float | None
    best_epoch: int
    wall_time_s: float
    history: list[dict[str, Any]] = field(default_factory=list)


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN/run.json`` as a dict.

    Raises:
        InputError: not a run directory.
    """
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise InputError(f"{run_dir}: not a training run (no {RUN_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot be parsed ({error})") from error


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint without executing code.

    Raises:
        InputError: missing, unreadable, or not one of our checkpoints.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise InputError(f"{path}: cannot be read as a checkpoint ({str(error).strip().splitlines()[0]})") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a training checkpoint of this version (format {CHECKPOINT_FORMAT})")
    return state


def hardware_description(device: torch.device) -> str:
    """A one-line description of where training ran (for the model card)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"


class Trainer:
    """Train the phases of one run.

    Args:
        config: the training configuration.
        data_dir: the dataset folder (SynthRAD2023 layout).
        run_dir: where the run lives (created).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; under torchrun each
            process takes ``cuda:LOCAL_RANK``.
        progress: show tqdm progress bars (rank 0 only).

    Raises:
        InputError: a bad dataset, a run directory made with another configuration or
            dataset, or a missing earlier phase.
    """

    def __init__(self, config: TrainingConfig, data_dir: str | os.PathLike, run_dir: str | os.PathLike,
                 *, device: str = "auto", progress: bool = True) -> None:  # fmt: skip
        self.config = config
        self.data_dir = Path(data_dir)
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.context: DistributedContext = init_distributed(select_device(device))
        self.train_cases, self.val_cases = self._prepare_data()

    # ------------------------------------------------------------------ data

    def _load(self, train_files, val_files) -> dict[str, CachedCase]:
        """Every case, preprocessed; only training cases get a registered pixel target."""
        cache = self.run_dir / "cache"
        cases = {f.case_id: load_case(f, self.config, cache) for f in train_files}
        cases.update({f.case_id: load_case(f, self.config, cache, pixel_target=False) for f in val_files})
        return cases

    def _prepare_data(self) -> tuple[list[CachedCase], list[CachedCase]]:
        """Rank 0 checks the data, preprocesses (cache) and writes ``run.json``; then all load."""
        failed = False
        if self.context.is_main:
            try:
                check_writable_dir(self.run_dir)
                train_files, val_files = self._split()
                cases = self._load(train_files, val_files)
            except BaseException:
                failed = True
                broadcast_flag(True, self.context)
                raise
        if broadcast_flag(failed, self.context):
            raise RbgError("rank 0 failed while preparing the data (see its error)")
        if not self.context.is_main:
            train_files, val_files = self._split()
            cases = self._load(train_files, val_files)
        barrier(self.context)
        return [cases[f.case_id] for f in train_files], [cases[f.case_id] for f in val_files]

    def _split(self):
        modality, cases = find_cases(self.data_dir, self.config.modality)
        if modality != self.config.modality:  # pragma: no cover - find_cases honours the modality
            raise InputError(f"{self.data_dir}: holds {modality.upper()} cases, the config trains {self.config.modality.upper()}")
        run_file = self.run_dir / RUN_FILE
        if run_file.is_file():
            run = read_run(self.run_dir)
            if run["config"] != self.config.to_dict():
                changed = sorted(k for k, v in self.config.to_dict().items() if run["config"].get(k) != v)
                raise InputError(f"{run_file}: this run was started with another configuration (differs in {', '.join(changed)}); use a new --out")
            by_id = {case.case_id: case for case in cases}
            missing = [c for c in run["data"]["train"] + run["data"]["val"] if c not in by_id]
            if missing:
                raise InputError(f"{self.data_dir}: cases {', '.join(missing)} of this run's split are missing")
            return [by_id[c] for c in run["data"]["train"]], [by_id[c] for c in run["data"]["val"]]
        train, val = split_cases(cases, val_fraction=self.config.val_fraction, seed=self.config.seed, val_cases=self.config.val_cases)
        if self.context.is_main:
            run = {
                "library_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "config": self.config.to_dict(),
                "data": {"dir": str(self.data_dir.resolve()), "modality": modality,
                         "train": [c.case_id for c in train], "val": [c.case_id for c in val]},  # fmt: skip
            }
            with atomic_path(run_file) as tmp:
                tmp.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
        return train, val

    # ------------------------------------------------------------------ phases

    def train_all(self, *, resume: bool = False) -> list[PhaseResult]:
        """Run stage1, registration and stage2 in order."""
        return [self.train(phase, resume=resume) for phase in PHASES]

    def train(self, phase: str, *, resume: bool = False, stop_after: int | None = None) -> PhaseResult:
        """Train one phase (from the previous phase's best checkpoint).

        Args:
            phase: ``stage1``, ``registration`` or ``stage2``.
            resume: continue from ``RUN/<phase>/last.pt`` if it exists.
            stop_after: stop once this epoch is done (and checkpointed), as a job with a
                wall-time limit would; ``resume`` continues from there exactly.

        Raises:
            InputError: the previous phase has not been trained, or the phase already has
                a checkpoint and ``resume`` is false.
        """
        config, context = self.config, self.context
        settings = config.phase(phase)
        folder = self.run_dir / phase
        last, best_path = folder / "last.pt", folder / "best.pt"
        if last.is_file() and not resume:
            raise InputError(f"{folder}: already has a checkpoint; pass --resume to continue it, or use a new --out")
        index = PHASES.index(phase)
        torch.manual_seed(config.seed)
        model = build_model(config.model).to(context.device)
        if index > 0:
            before = self.run_dir / PHASES[index - 1]
            if not (before / "last.pt").is_file():
                raise InputError(f"{before}: {PHASES[index - 1]} has not been trained; run `rbg train {PHASES[index - 1]}` first")
            done = load_checkpoint(before / "last.pt")["epoch"]
            if done < config.phase(PHASES[index - 1]).epochs:
                raise InputError(f"{before}: {PHASES[index - 1]} stopped after epoch {done} of {config.phase(PHASES[index - 1]).epochs}; finish it with --resume first")
            previous = load_checkpoint(before / "best.pt")
            model.load_state_dict(previous["model"], strict=True)
        sample_generator = torch.Generator().manual_seed(_seed(config.seed, index, context.rank, 1))
        noise_generator = torch.Generator(device=context.device).manual_seed(_seed(config.seed, index, context.rank, 2))
        step = build_phase(phase, model, config, context, sample_generator, noise_generator)
        average = WeightAverage(model, config.weight_average_decay) if config.weight_average_decay > 0 else None
        schedulers = {
            name: torch.optim.lr_scheduler.MultiStepLR(optimizer, config.milestones(settings.epochs), config.lr_gamma)
            for name, optimizer in step.optimizers.items()
        }
        metric, mode = self._best_metric(phase)
        state = {"epoch": 0, "best_value": None, "best_epoch": 0, "history": [], "wall_time_s": 0.0}
        if resume and last.is_file():
            state = self._restore(load_checkpoint(last), model, step, schedulers, sample_generator, noise_generator, average)
            logger.info("%s: resumed after epoch %d", phase, state["epoch"])
        if context.is_main:
            folder.mkdir(parents=True, exist_ok=True)

        dataset = SliceCropDataset(
            self.train_cases, config.crop_size, seed=_seed(config.seed, index, 0, 3), length=settings.samples_per_epoch,
            min_body_fraction=config.min_body_fraction, augment=config.augment, modality=config.modality,
            reference_shift=config.stage2_reference_shift_px if phase == "stage2" else 0,
        )  # fmt: skip
        if len(dataset) < settings.batch_size * context.world_size:
            raise InputError(
                f"{phase}: {len(dataset)} crops per epoch cannot fill one batch of {settings.batch_size} on "
                f"{context.world_size} process(es); raise samples_per_epoch or lower batch_size"
            )
        sampler = DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True,
                                     seed=config.seed, drop_last=True)  # fmt: skip
        loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, drop_last=True,
                            num_workers=config.num_workers, pin_memory=context.device.type == "cuda")  # fmt: skip

        final_epoch = settings.epochs if stop_after is None else min(settings.epochs, int(stop_after))
        for epoch in range(state["epoch"], final_epoch):
            start = time.perf_counter()
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            step.train_mode()
            sums: dict[str, float] = {}
            batches = _progress(loader, self.progress and context.is_main, f"{phase} {epoch + 1}/{settings.epochs}")
            for batch in batches:
                for name, value in step.train_step(batch).items():
                    sums[name] = sums.get(name, 0.0) + value
                if average is not None:
                    average.update(model)
                if hasattr(batches, "set_postfix"):
                    batches.set_postfix(loss=f"{sums['total'] / (batches.n + 1):.4f}", refresh=False)
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": _current_lr(step)}
            row.update({f"train_{k}": all_reduce_mean(v / len(loader), context) for k, v in sums.items()})
            for scheduler in schedulers.values():
                scheduler.step()
            if context.distributed:
                row["replicas_in_sync"] = _replicas_agree(model, context)
            improved = False
            if context.is_main:
                with average.swapped_into(model) if average is not None else nullcontext():
                    row.update(self.validate(step))
                if metric == "val_selection":
                    row["val_selection"] = row["val_mae"] + self.config.selection_dice_weight_hu * (1.0 - row["val_bone_dice"])
                value = row.get(metric, float(epoch + 1))
                improved = _better(value, state["best_value"], mode)
                if improved:
                    state["best_value"], state["best_epoch"] = value, epoch + 1
                state["wall_time_s"] += time.perf_counter() - start
                row["seconds"] = round(time.perf_counter() - start, 2)
                state["epoch"] = epoch + 1
                state["history"].append(row)
                self._save(last, model, step, schedulers, sample_generator, noise_generator, state, phase, average)
                if improved:
                    _copy_atomic(last, best_path)
                _append_csv(folder / "log.csv", row)
                logger.info("%s epoch %d: %s", phase, epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
            else:
                state["epoch"] = epoch + 1
            barrier(context)
        if context.is_main and not best_path.is_file() and last.is_file() and state["epoch"] >= settings.epochs:
            _copy_atomic(last, best_path)
        barrier(context)
        return PhaseResult(phase, settings.epochs, metric, state["best_value"], state["best_epoch"], state["wall_time_s"], state["history"])

    # ------------------------------------------------------------------ validation

    def _best_metric(self, phase: str) -> tuple[str, str]:
        """Which validation number picks ``best.pt``: with aligned CTs the MAE (or
        ``val_selection``, the MAE with the bone Dice, when ``selection_dice_weight_hu`` is
        set), else a no-reference one; the last epoch when there is no validation case."""
        if not self.val_cases:
            return "epoch", "max"
        truth = all(case.truth_hu is not None for case in self.val_cases)
        if phase == "registration":
            return ("val_warped_mae", "min") if truth else ("val_mse", "min")
        if truth and self.config.selection_dice_weight_hu > 0:
            return "val_selection", "min"
        return ("val_mae", "min") if truth else ("val_gradient_correlation", "max")

    @torch.no_grad()
    def validate(self, step: Phase) -> dict[str, float]:
        """Whole-slice validation on the canvas (metrics from :mod:`..metrics`, HU).

        Stage 1 / Stage 2: ``val_mae``, ``val_psnr``, ``val_bone_dice`` (with aligned CTs),
        ``val_gradient_correlation`` with the input. Registration: ``val_mse`` (ŷ vs warped y),
        ``val_warped_mae`` and ``val_rigid_mae`` (warped and unwarped reference vs the aligned CT).
        Stage 2 also reports ``val_stage1_mae``.
        """
        if not self.val_cases:
            return {}
        step.model.eval()
        per_case: list[dict[str, float]] = []
        for case in self.val_cases:
            slices = validation_slices(case, self.config.val_slices_per_case, self.config.min_body_fraction)
            outputs: dict[str, list[np.ndarray]] = {}
            for start in range(0, len(slices), _VAL_BATCH):
                chosen = slices[start : start + _VAL_BATCH]
                x = torch.from_numpy(case.x[chosen][:, None]).to(step.device)
                y = torch.from_numpy(case.y[chosen][:, None]).to(step.device)
                for key, value in step.predict(x, y).items():
                    outputs.setdefault(key, []).append(value.float().cpu().numpy())
            out = {k: np.concatenate(v) for k, v in outputs.items()}
            mask = case.mask[slices]
            if not mask.any():
                continue
            truth = case.truth_hu[slices] if case.truth_hu is not None else None
            metrics: dict[str, float] = {}
            if step.name == "registration":
                metrics["val_mse"] = float(np.mean((out["stage1"][:, 0] - out["warped"][:, 0]) ** 2))
                if truth is not None:
                    metrics["val_warped_mae"] = mae(case.to_hu(out["warped"][:, 0]), truth, mask)
                    metrics["val_rigid_mae"] = mae(case.to_hu(case.y[slices]), truth, mask)
            else:
                pred = case.to_hu(out["output" if step.name == "stage2" else "stage1"][:, 0])
                if truth is not None:
                    metrics["val_mae"] = mae(pred, truth, mask)
                    metrics["val_psnr"] = psnr(pred, truth, mask)
                    metrics["val_bone_dice"] = bone_dice_by_threshold(pred, truth, mask)
                    if step.name == "stage2":
                        metrics["val_stage1_mae"] = mae(case.to_hu(out["stage1"][:, 0]), truth, mask)
                metrics["val_gradient_correlation"] = gradient_correlation(case.x[slices], pred, mask)
            per_case.append(metrics)
        keys = sorted({k for m in per_case for k in m})
        return {k: _nanmean([m.get(k, math.nan) for m in per_case]) for k in keys}

    # ------------------------------------------------------------------ checkpoints

    def _save(self, path: Path, model, step: Phase, schedulers, sample_generator, noise_generator, state, phase: str,
              average: WeightAverage | None) -> None:
        """Write a checkpoint; with a weight average its ``model`` is the average (what
        validation scored, the next phase starts from and the export reads) and the live
        weights ride along for ``--resume``."""
        live = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        rng = {"torch": torch.get_rng_state(), "sample": sample_generator.get_state(), "noise": noise_generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "phase": phase,
            "library_version": __version__,
            "config": self.config.to_dict(),
            "model": average.weights() if average is not None else live,
            "extras": {name: module.state_dict() for name, module in step.extras.items()},
            "optimizers": {name: optimizer.state_dict() for name, optimizer in step.optimizers.items()},
            "schedulers": {name: scheduler.state_dict() for name, scheduler in schedulers.items()},
            "rng": rng,
            "epoch": state["epoch"],
            "best_value": state["best_value"],
            "best_epoch": state["best_epoch"],
            "history": state["history"],
            "wall_time_s": state["wall_time_s"],
            "feature_networks": feature_network_description(self.config),
            "hardware": hardware_description(self.context.device),
            "world_size": self.context.world_size,
        }
        if average is not None:
            checkpoint["live_model"] = live
            checkpoint["weight_average"] = average.state_dict()
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def _restore(self, checkpoint, model, step: Phase, schedulers, sample_generator, noise_generator,
                 average: WeightAverage | None) -> dict[str, Any]:
        if checkpoint["config"] != self.config.to_dict():
            raise InputError(f"{self.run_dir}: the checkpoint was written with another configuration")
        model.load_state_dict(checkpoint.get("live_model", checkpoint["model"]), strict=True)
        if average is not None:
            average.load_state_dict(checkpoint["weight_average"])
        for name, module in step.extras.items():
            module.load_state_dict(checkpoint["extras"][name], strict=True)
        for name, optimizer in step.optimizers.items():
            optimizer.load_state_dict(checkpoint["optimizers"][name])
        for name, scheduler in schedulers.items():
            scheduler.load_state_dict(checkpoint["schedulers"][name])
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"])
        sample_generator.set_state(rng["sample"])
        noise_generator.set_state(rng["noise"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return {key: checkpoint[key] for key in ("epoch", "best_value", "best_epoch", "history", "wall_time_s")}


def _seed(seed: int, phase: int, rank: int, stream: int) -> int:
    """Distinct, reproducible seeds per (run seed, phase, process, stream)."""
    return int(np.random.SeedSequence([seed, phase, rank, stream]).generate_state(1, dtype=np.uint64)[0] % (2**63))


def _replicas_agree(model: torch.nn.Module, context: DistributedContext) -> bool:
    """Whether every process holds the same weights (DDP keeps them in step; a
    desynchronised replica would silently train another model)."""
    digest = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(context.device)
    gathered = [torch.zeros_like(digest) for _ in range(context.world_size)]
    torch.distributed.all_gather(gathered, digest)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def _current_lr(step: Phase) -> float:
    optimizer = next(iter(step.optimizers.values()))
    return float(optimizer.param_groups[0]["lr"])


def _better(value: float, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return best is None
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _copy_atomic(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append ``row``; the first row fixes the columns (later unknown keys are dropped)."""
    exists = path.is_file() and path.stat().st_size > 0
    if exists:
        with open(path, newline="", encoding="utf-8") as stream:
            fields = next(csv.reader(stream))
    else:
        fields = list(row)
    with open(path, "a", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields, extrasaction="ignore")
        if not exists:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _progress(loader, enabled: bool, description: str):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=description, leave=False, file=sys.stderr, dynamic_ncols=True)
