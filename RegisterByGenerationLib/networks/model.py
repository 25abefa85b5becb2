"""The whole two-stage model: Stage 1, registration, Stage 2, built from a config.

``RbgModel(x, y)`` runs the inference data flow of DESIGN §3 step 7 on a batch of
slices: ``ŷ = G(x, y)``; ``φ = R(fixed=ŷ, moving=y)``; ``ỹ = F(x, ŷ, y, φ)``. The three
stages are trained one after the other (Stage 1; registration with Stage 1 frozen;
Stage 2 with both frozen), so they are separate submodules that training code can
freeze and optimise on their own.
"""

from __future__ import annotations

import torch
from torch import nn

from .adain import AdaINGenerator
from .blocks import check_input_pair
from .config import ModelConfig, Stage1Config
from .fusion import FusionUNet
from .published import LAYOUT, PublishedConfig, PublishedRbgModel
from .registration import DiffeomorphicRegistration
from .stage1 import PAdaINGenerator
from .stage2 import Stage2Network

__all__ = ["RbgModel", "build_from_architecture", "build_model", "build_stage1", "count_parameters"]


def build_stage1(config: Stage1Config) -> PAdaINGenerator | AdaINGenerator | FusionUNet:
    """The Stage 1 network that ``config.kind`` names.

    Raises:
        ValueError: unknown kind.
    """
    if config.kind == "padain":
        return PAdaINGenerator(
            channels=config.channels,
            blocks=config.blocks,
            style_hidden=config.style_hidden,
            style_downsample=config.style_downsample,
            noise=config.noise,
        )
    elif config.kind == "adain":
        return AdaINGenerator(channels=config.channels, blocks=config.blocks, style_hidden=config.style_hidden)
    elif config.kind == "fusion":
        return FusionUNet(channels=config.channels, residual=config.residual)
    else:
        raise ValueError(f"unknown Stage 1 kind {config.kind!r}; expected 'padain', 'adain' or 'fusion'")


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(parameter.numel() for parameter in module.parameters())


class RbgModel(nn.Module):
    """Register by Generation: ``(x, y) → (ŷ, φ, ỹ)``.

    Args:
        config: the architecture; kept as ``self.config`` (saved beside the weights).

    Attributes:
        stage1: ``ŷ = stage1(x, y)``, :class:`~.stage1.PAdaINGenerator` or
            :class:`~.adain.AdaINGenerator`.
        registration: ``φ = registration(fixed=ŷ, moving=y)``,
            :class:`~.registration.DiffeomorphicRegistration`.
        stage2: ``ỹ = stage2(x, ŷ, y, φ)``, :class:`~.stage2.Stage2Network`.
        size_multiple: H and W of the inputs must be multiples of this (16).

    Example::

        >>> model = build_model(ModelConfig.tiny()).eval()
        >>> x = y = torch.zeros(1, 1, 32, 32)
        >>> sorted(model(x, y))
        ['flow', 'output', 'stage1']
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.stage1 = build_stage1(config.stage1)
        self.registration = DiffeomorphicRegistration(
            encoder=config.registration.encoder,
            decoder=config.registration.decoder,
            integration_steps=config.registration.integration_steps,
        )
        self.stage2 = Stage2Network(
            feature_channels=config.stage2.feature_channels,
            unet_channels=config.stage2.unet_channels,
            heads=config.stage2.heads,
            windows=config.stage2.windows,
            mlp_ratio=config.stage2.mlp_ratio,
        )
        self.size_multiple = config.size_multiple

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Generate the pseudo-CT for a batch of slices.

        Args:
            x: ``[B, 1, H, W]`` input (MR/CBCT) in [-1, 1]; H and W multiples of 16.
            y: ``[B, 1, H, W]`` reference CT in [-1, 1] on the same grid.
            generator: optional generator for Stage 1's noise (training mode only;
                in eval mode the model is deterministic).

        Returns:
            ``{"stage1": ŷ [B, 1, H, W], "flow": φ [B, 2, H, W] (pixels, dy, dx),
            "output": ỹ [B, 1, H, W]}``, images in (-1, 1).

        Raises:
            ValueError: bad shapes, or H, W not multiples of 16.
        """
        check_input_pair(x, y, self.size_multiple)
        y_hat = self.stage1(x, y, generator=generator)
        flow = self.registration(fixed=y_hat, moving=y)
        output = self.stage2(x, y_hat, y, flow)
        return {"stage1": y_hat, "flow": flow, "output": output}


def build_model(config: ModelConfig) -> RbgModel:
    """The :class:`RbgModel` that ``config`` describes (freshly initialised)."""
    return RbgModel(config)


def build_from_architecture(architecture: dict) -> RbgModel | PublishedRbgModel:
    """The network a model card's ``architecture`` describes (freshly initialised): the
    authors' published layout when it says ``"layout": "published"``, else ours.

    Raises:
        ValueError: the architecture is invalid for its layout.
    """
    if isinstance(architecture, dict) and architecture.get("layout") == LAYOUT:
        return PublishedRbgModel(PublishedConfig.from_dict(architecture))
    return build_model(ModelConfig.from_dict(architecture))
