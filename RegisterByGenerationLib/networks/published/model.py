"""An imported published model behind the interface of :class:`~..model.RbgModel`.

``PublishedRbgModel(x, y)`` returns ``{"stage1", "flow", "output"}`` like ours, and its
``stage1`` and ``registration`` attributes are callable as ours, so the pipeline, batch,
bones, report and Slicer run it like any other model. Inputs and outputs are in our slice
orientation; when the published slices are transposed (:attr:`PublishedConfig.transpose`)
each stage transposes on the way in and back on the way out, which is exact.

The flow it returns is the published VoxelMorph field (on ``y``'s grid, sampling ``ŷ``),
expressed in our orientation with channel 0 along rows: its magnitude is what
``flow_magnitude_mm`` reports, its direction is the opposite of our convention's.
"""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import check_input_pair
from .config import MUNITConfig, PAdaINConfig, PublishedConfig
from .munit import PublishedMUNIT
from .padain import PublishedPAdaIN
from .stage2 import PublishedStage2
from .voxelmorph import PublishedVoxelMorph

__all__ = ["PublishedRbgModel", "build_published_stage1"]


def build_published_stage1(config: PAdaINConfig | MUNITConfig) -> PublishedPAdaIN | PublishedMUNIT:
    """The published Stage 1 network ``config`` describes.

    Raises:
        ValueError: not a published Stage 1 config.
    """
    if isinstance(config, PAdaINConfig):
        return PublishedPAdaIN(config.channels, config.style_hidden, config.guide_downsample, config.noise)
    elif isinstance(config, MUNITConfig):
        return PublishedMUNIT(config.channels, config.blocks, config.style_hidden, config.style_dim)
    else:
        raise ValueError(f"expected a PAdaINConfig or MUNITConfig, got {type(config).__name__}")


def _swap(tensor: torch.Tensor, transpose: bool) -> torch.Tensor:
    """Images between our and the published orientation (its own inverse)."""
    return tensor.transpose(-1, -2) if transpose else tensor


def _swap_flow(flow: torch.Tensor, transpose: bool) -> torch.Tensor:
    """A flow between orientations: transposed grid, and the two axes' channels exchanged."""
    return flow.transpose(-1, -2).flip(1) if transpose else flow


class _Stage1(nn.Module):
    def __init__(self, net: nn.Module, transpose: bool) -> None:
        super().__init__()
        self.net, self.transpose = net, transpose

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return _swap(self.net(_swap(x, self.transpose), _swap(y, self.transpose), generator=generator), self.transpose)


class _Registration(nn.Module):
    def __init__(self, net: PublishedVoxelMorph, transpose: bool) -> None:
        super().__init__()
        self.net, self.transpose = net, transpose

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        return _swap_flow(self.net(fixed=_swap(fixed, self.transpose), moving=_swap(moving, self.transpose)), self.transpose)


class _Stage2(nn.Module):
    def __init__(self, net: PublishedStage2, transpose: bool) -> None:
        super().__init__()
        self.net, self.transpose = net, transpose

    def forward(self, x: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        t = self.transpose
        return _swap(self.net(_swap(x, t), _swap(y_hat, t), _swap(y, t), _swap_flow(flow, t)), t)


class PublishedRbgModel(nn.Module):
    """The authors' RbG or RegistFormer model: ``(x, y) → (ŷ, φ, ỹ)``.

    Args:
        config: the :class:`PublishedConfig` (kept as ``self.config``, saved beside the weights).

    Attributes:
        stage1: ``ŷ = stage1(x, y)``.
        registration: ``φ = registration(fixed=ŷ, moving=y)`` (the published field, see module docstring).
        stage2: ``ỹ = stage2(x, ŷ, y, φ)``, or None when no Stage 2 was imported.
        size_multiple: H and W of the inputs must be multiples of this (16).

    Example::

        >>> from .config import DACAStage2Config, VoxelMorphConfig
        >>> config = PublishedConfig("RbG", True, PAdaINConfig(8, 8), VoxelMorphConfig((4, 8), (8, 8, 4), 7, (32, 32)),
        ...                          DACAStage2Config(4, 2, 3, 8))
        >>> sorted(PublishedRbgModel(config).eval()(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)))
        ['flow', 'output', 'stage1']
    """

    def __init__(self, config: PublishedConfig) -> None:
        super().__init__()
        if not isinstance(config, PublishedConfig):
            raise TypeError(f"config must be a PublishedConfig, got {type(config).__name__}")
        self.config = config
        t = config.transpose
        self.stage1 = _Stage1(build_published_stage1(config.stage1), t)
        registration = config.registration
        self.registration = _Registration(PublishedVoxelMorph(registration.encoder, registration.decoder, registration.integration_steps), t)
        stage2 = config.stage2
        self.stage2 = None if stage2 is None else _Stage2(PublishedStage2(stage2.feature_channels, stage2.heads, stage2.window, stage2.mlp_hidden), t)
        self.size_multiple = config.size_multiple

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Generate the pseudo-CT for a batch of slices in our orientation.

        Args:
            x: ``[B, 1, H, W]`` input in [-1, 1]; H and W multiples of 16 (the card's canvas).
            y: ``[B, 1, H, W]`` reference CT in [-1, 1].
            generator: the published Stage 1 noise, when the config enables it.

        Returns:
            ``{"stage1": ŷ, "flow": φ [B, 2, H, W] (pixels, channel 0 along rows), "output": ỹ}``.

        Raises:
            TensorError: bad shapes, or H, W not multiples of 16.
            ValueError: the model has no Stage 2 (call ``stage1`` and ``registration``).
        """
        check_input_pair(x, y, self.size_multiple)
        if self.stage2 is None:
            raise ValueError("this imported model has no Stage 2; its pseudo-CT is stage1(x, y)")
        y_hat = self.stage1(x, y, generator=generator)
        flow = self.registration(fixed=y_hat, moving=y)
        return {"stage1": y_hat, "flow": flow, "output": self.stage2(x, y_hat, y, flow)}
