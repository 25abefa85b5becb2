"""The published layout: networks that compute exactly what the authors' RbG and
RegistFormer code computes, so their trained checkpoints run in our engine.

``PublishedRbgModel(PublishedConfig.from_dict(card["architecture"]))`` builds an imported
model; :mod:`.keys` maps the authors' state-dict keys onto ours. Each module's docstring
lists where it differs from our own networks (``docs/import-published.md`` the measured
equivalence).
"""

from __future__ import annotations

from .config import LAYOUT, DACAStage2Config, MUNITConfig, PAdaINConfig, PublishedConfig, VoxelMorphConfig
from .model import PublishedRbgModel, build_published_stage1
from .munit import PublishedMUNIT
from .padain import PublishedPAdaIN
from .stage2 import PublishedStage2
from .voxelmorph import PublishedVoxelMorph

__all__ = [
    "LAYOUT",
    "DACAStage2Config",
    "MUNITConfig",
    "PAdaINConfig",
    "PublishedConfig",
    "PublishedMUNIT",
    "PublishedPAdaIN",
    "PublishedRbgModel",
    "PublishedStage2",
    "PublishedVoxelMorph",
    "VoxelMorphConfig",
    "build_published_stage1",
]
