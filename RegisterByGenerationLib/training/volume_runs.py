"""What the methods' own training runs share (``rbg train stn-fusion``, ``dual-similarity``, ``mr-gan``).

A run folder holds ``run.json`` (``{"method", "config", "data"}``), ``last.pt`` and
``best.pt``, ``log.csv`` (one row per epoch) and ``cache/`` (the preprocessed cases).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["crop3d", "append_csv", "load_config_file", "run_method", "split_run_cases", "train_epochs", "read_run_for_export", "model_card"]


def crop3d(volume: np.ndarray, corner: tuple[int, int, int], size: tuple[int, ...], pad: float) -> np.ndarray:
    """``volume[corner : corner + size]``, padded with ``pad`` where it leaves the volume."""
    out = np.full(size, pad, dtype=np.float32)
    src = [slice(max(c, 0), min(c + s, n)) for c, s, n in zip(corner, size, volume.shape)]
    dst = [slice(a.start - c, a.stop - c) for a, c in zip(src, corner)]
    if all(a.stop > a.start for a in src):
        out[tuple(dst)] = volume[tuple(src)]
    return out


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append one epoch's row to ``log.csv`` (header on the first)."""
    new = not path.is_file()
    with open(path, "a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def load_config_file(cls: type, path: str | os.PathLike | None, **overrides: Any) -> Any:
    """``cls``'s defaults, then the JSON file at ``path`` (unknown keys refused), then ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: cannot read the configuration ({error})") from error
    data.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(data) - set(cls.__dataclass_fields__))
    if unknown:
        raise InputError(f"{path or 'config'}: unknown keys {', '.join(unknown)}")
    return cls(**data)


def run_method(run_dir: str | os.PathLike) -> str | None:
    """The method a 3-D training run in ``run_dir`` trains (its ``run.json`` says), or None."""
    try:
        return json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8")).get("method")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def split_run_cases(config: Any, data_dir: str | os.PathLike, run_dir: str | os.PathLike, resume: bool) -> tuple[list, list]:
    """``(training, validation)`` case files of a new or resumed run, before anything is
    written: ``config`` has ``modality``, ``val_fraction``, ``seed`` and ``val_cases``.

    Raises:
        InputError: a checkpoint exists without ``resume``, bad data, or no training case
            left after the validation split.
    """
    from .data import find_cases, split_cases

    if (Path(run_dir) / "last.pt").is_file() and not resume:
        raise InputError(f"{run_dir}: already has a checkpoint; pass --resume to continue it, or use a new --out")
    _, files = find_cases(data_dir, config.modality)
    train_files, val_files = split_cases(files, val_fraction=config.val_fraction, seed=config.seed, val_cases=config.val_cases)
    if not train_files:
        raise InputError(f"{data_dir}: no training case left after the validation split")
    return train_files, val_files


def train_epochs(method: str, net: Any, config: Any, dataset: Any, run: Path, *, device: Any, resume: bool, stop_after: int | None,
                 terms_of: Callable[[dict], dict], validate: Callable[[], dict], adversary: Any = None,
                 adversary_terms_of: Callable[[dict], dict] | None = None) -> dict[str, Any]:  # fmt: skip
    """The epoch loop these trainers share: Adam with the config's step schedule, resume
    from ``run/last.pt`` (same config only), one ``log.csv`` row per epoch, ``best.pt`` at
    the lowest ``val_mae`` (else the latest epoch).

    ``config`` has ``lr``, ``lr_milestones``, ``lr_gamma``, ``epochs``, ``batch_size``,
    ``to_dict()`` and optionally ``betas`` (Adam's; default 0.9, 0.999); ``dataset`` has
    ``set_epoch``; ``terms_of(batch on device)`` returns the loss terms with ``"total"``;
    ``validate()`` the validation numbers. A GAN passes its discriminators as
    ``adversary``: after each step of ``net``, ``adversary_terms_of(batch)`` gives their
    loss (with ``"total"``), which a second Adam on the same schedule minimises; they are
    checkpointed beside ``net`` (``adversary_model``, ``adversary_optimizer``, ...), never exported.

    Returns:
        ``epoch``, ``best_value``, ``best_epoch``, ``wall_time_s`` of the last checkpoint.
    """
    import torch

    from .. import __version__
    from ..io import atomic_path
    from .trainer import hardware_description

    if (adversary is None) != (adversary_terms_of is None):
        raise ValueError("adversary and adversary_terms_of go together")
    last, best = run / "last.pt", run / "best.pt"
    milestones = sorted({max(1, round(m * config.epochs)) for m in config.lr_milestones})
    betas = tuple(getattr(config, "betas", (0.9, 0.999)))
    trained = {"": net} if adversary is None else {"": net, "adversary_": adversary}
    optimizers = {prefix: torch.optim.Adam(module.parameters(), lr=config.lr, betas=betas) for prefix, module in trained.items()}
    schedulers = {prefix: torch.optim.lr_scheduler.MultiStepLR(opt, milestones, config.lr_gamma) for prefix, opt in optimizers.items()}
    optimizer = optimizers[""]
    state: dict[str, Any] = {"epoch": 0, "best_value": None, "best_epoch": 0, "history": [], "wall_time_s": 0.0}
    if resume and last.is_file():
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        if checkpoint["config"] != config.to_dict():
            raise InputError(f"{run}: the checkpoint was written with another configuration")
        for prefix, module in trained.items():
            module.load_state_dict(checkpoint[f"{prefix}model" if prefix else "model"])
            optimizers[prefix].load_state_dict(checkpoint[f"{prefix}optimizer"])
            schedulers[prefix].load_state_dict(checkpoint[f"{prefix}scheduler"])
        torch.set_rng_state(checkpoint["rng"])
        state = {k: checkpoint[k] for k in state}
    hardware = hardware_description(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=False, drop_last=True)
    final = config.epochs if stop_after is None else min(config.epochs, int(stop_after))
    net.train()
    for epoch in range(state["epoch"], final):
        start = time.perf_counter()
        dataset.set_epoch(epoch)
        sums: dict[str, float] = {}
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            terms = terms_of(batch)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            if adversary is not None:
                adversary_terms = adversary_terms_of(batch)
                optimizers["adversary_"].zero_grad(set_to_none=True)  # also the gradients net's loss left in it
                adversary_terms["total"].backward()
                optimizers["adversary_"].step()
                terms.update({f"adversary_{k}": v for k, v in adversary_terms.items()})
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        for scheduler in schedulers.values():
            scheduler.step()
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **{f"train_{k}": v / len(loader) for k, v in sums.items()}}
        row.update(validate())
        row["seconds"] = round(time.perf_counter() - start, 2)
        value = row.get("val_mae", float(-(epoch + 1)))
        improved = state["best_value"] is None or value < state["best_value"]
        if improved:
            state["best_value"], state["best_epoch"] = value, epoch + 1
        state["epoch"], state["wall_time_s"] = epoch + 1, state["wall_time_s"] + row["seconds"]
        state["history"].append(row)
        checkpoint = {"format": 1, "method": method, "library_version": __version__, "config": config.to_dict(), "rng": torch.get_rng_state(),
                      "hardware": hardware, "threads": torch.get_num_threads(), **state}  # fmt: skip
        for prefix, module in trained.items():
            checkpoint[f"{prefix}model" if prefix else "model"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
            checkpoint[f"{prefix}optimizer"], checkpoint[f"{prefix}scheduler"] = optimizers[prefix].state_dict(), schedulers[prefix].state_dict()
        with atomic_path(last) as tmp:
            torch.save(checkpoint, tmp)
        if improved:
            with atomic_path(best) as tmp:
                torch.save(checkpoint, tmp)
        append_csv(run / "log.csv", row)
        logger.info("%s epoch %d: %s", method, epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
    return {k: state[k] for k in ("epoch", "best_value", "best_epoch", "wall_time_s")}


def read_run_for_export(run_dir: str | os.PathLike, method: str, checkpoint: str, name: str) -> tuple[dict, dict, dict]:
    """``(run.json, the checkpoint to export, last.pt)`` of a ``method`` run, after the checks
    every export makes.

    Raises:
        InputError: not a run of ``method``, ``checkpoint`` neither ``best`` nor ``last`` or
            missing, or ``name`` not a plain model name.
    """
    import torch

    run_dir = Path(run_dir)
    if run_method(run_dir) != method:
        raise InputError(f"{run_dir}: not a training run of method {method} (no run.json with method {method})")
    if checkpoint not in ("best", "last"):
        raise InputError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise InputError(f"name must be a plain, non-empty model name, got {name!r}")
    path = run_dir / f"{checkpoint}.pt"
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint; train the run first")
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    state = torch.load(path, map_location="cpu", weights_only=True)
    latest = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)  # the whole run, whichever checkpoint is exported
    return run, state, latest


def model_card(method: str, name: str, description: str, config: Any, exported: tuple[dict, dict, dict], checkpoint: str,
               departures: list[str], **training: Any) -> dict[str, Any]:  # fmt: skip
    """The model card (``metadata`` of :func:`~..modelstore.save_model`) of an exported run:
    what every method's card says, with the method's own ``training`` facts (its target,
    supervision, ...) after the data and the config."""
    from .. import __version__
    from .export import INTENDED_USE, data_description

    run, state, latest = exported
    best_row = next((row for row in latest["history"] if row["epoch"] == latest["best_epoch"]), {})
    return {
        "name": name,
        "method": method,
        "modality": config.modality,
        "pixel_spacing_mm": list(config.pixel_spacing_mm),
        "normalization": config.normalization,
        "canvas": None,
        "description": description,
        "version": __version__,
        "intended_use": INTENDED_USE,
        "training": {
            "data": data_description(run),
            "config": config.to_dict(),
            **training,
            "epochs": latest["epoch"],
            "best_epoch": latest["best_epoch"],
            "exported_checkpoint": f"{checkpoint}.pt (epoch {state['epoch']})",
            "validation_at_best_epoch": {k: v for k, v in best_row.items() if k.startswith("val_")},
            "wall_time_s": round(float(latest["wall_time_s"]), 1),
            "hardware": latest.get("hardware", "not recorded"),
            "departures_from_the_paper": departures,
            "library_version": __version__,
        },
    }
