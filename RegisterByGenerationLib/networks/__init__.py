"""Networks of Register by Generation: Stage 1, registration, DACA and Stage 2.

``build_model(ModelConfig.lite())`` gives the whole :class:`RbgModel`; the stages are
importable on their own. Tensors are ``[B, 1, H, W]`` in [-1, 1]; flows ``[B, 2, H, W]``
in pixels (dy, dx) with ``warp(m, φ)(p) = m(p + φ(p))`` (DESIGN §4). The authors'
published networks, for imported checkpoints, are in :mod:`.published`;
``build_from_architecture`` builds either kind from a model card.
"""

from __future__ import annotations

from .adain import AdaINGenerator
from .blocks import resize_flow, scaling_and_squaring, warp
from .config import ModelConfig, RegistrationConfig, Stage1Config, Stage2Config
from .daca import DACABlock
from .fusion import FusionUNet
from .model import RbgModel, build_from_architecture, build_model, build_stage1, count_parameters
from .registration import DiffeomorphicRegistration
from .stage1 import PAdaINGenerator
from .stage2 import FeatureReconstruction, FeatureUNet, Stage2Network

__all__ = [
    "AdaINGenerator",
    "DACABlock",
    "DiffeomorphicRegistration",
    "FeatureReconstruction",
    "FeatureUNet",
    "FusionUNet",
    "ModelConfig",
    "PAdaINGenerator",
    "RbgModel",
    "RegistrationConfig",
    "Stage1Config",
    "Stage2Config",
    "Stage2Network",
    "build_from_architecture",
    "build_model",
    "build_stage1",
    "count_parameters",
    "resize_flow",
    "scaling_and_squaring",
    "warp",
]
