"""Self-supervised training of the three RbG phases (``rbg train``).

- :mod:`.config`: :class:`TrainingConfig` with the ``tiny``, ``lite`` and ``full`` presets.
- :mod:`.data`: SynthRAD2023-layout datasets, cached preprocessing, random crops.
- :mod:`.phases`: Stage 1, registration and Stage 2 steps and what each freezes.
- :mod:`.trainer`: the loop, validation, checkpoints, exact resume, CSV logs.
- :mod:`.distributed`: torchrun / DistributedDataParallel helpers.
- :mod:`.export`: a trained run → a model directory with its model card.

See ``docs/training.md``.
"""

from __future__ import annotations

from .config import PHASES, PRESETS, AugmentSettings, LossWeights, PhaseSettings, TrainingConfig, default_normalization, load_config
from .data import CachedCase, CaseFiles, SliceCropDataset, find_cases, load_case, split_cases
from .export import export_run, model_card
from .trainer import PhaseResult, Trainer, load_checkpoint, read_run

__all__ = [
    "PHASES",
    "PRESETS",
    "AugmentSettings",
    "CachedCase",
    "CaseFiles",
    "LossWeights",
    "PhaseResult",
    "PhaseSettings",
    "SliceCropDataset",
    "Trainer",
    "TrainingConfig",
    "default_normalization",
    "export_run",
    "find_cases",
    "load_case",
    "load_checkpoint",
    "load_config",
    "model_card",
    "read_run",
    "split_cases",
]
