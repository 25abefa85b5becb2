"""Architecture configurations of the two-stage model, with presets.

A configuration is saved beside the weights (``model.json``, key ``"architecture"``)
and read back strictly, so a checkpoint always rebuilds the network it was trained as.

Presets:

- :meth:`ModelConfig.full`: the published sizes (Stage 1: 12 style blocks of 256
  channels, ≈ 35 M parameters; VoxelMorph 16/32 registration; Stage 2: 14 feature
  channels, 2 heads, 28×28 windows). Meant for a GPU.
- :meth:`ModelConfig.lite`: practical on a CPU (about a second per 384×320 slice on
  two threads; see ``docs`` for the measured numbers).
- :meth:`ModelConfig.tiny`: for tests; a 32×32 forward takes milliseconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STAGE1_KINDS", "Stage1Config", "RegistrationConfig", "Stage2Config", "ModelConfig"]

STAGE1_KINDS = ("padain", "adain", "fusion")


def _positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


def _positive_ints(owner: str, name: str, values: Any, min_length: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{owner}.{name} must be a sequence of positive integers, got {values!r}")
    values = tuple(values)
    if len(values) < min_length:
        raise ValueError(f"{owner}.{name} must have at least {min_length} entries, got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{owner}.{name} must be a sequence of positive integers, got {values!r}")
    return values


def _from_dict(cls, data: Any):
    """Build the dataclass ``cls`` from a mapping, refusing unknown and missing keys."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    names = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; expected {sorted(names)}")
    missing = sorted(names - set(data))
    if missing:
        raise ValueError(f"{cls.__name__}: missing keys {missing}")
    return cls(**data)


def _to_dict(config) -> dict[str, Any]:
    """JSON-ready dict: tuples become lists."""
    result = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        result[item.name] = list(value) if isinstance(value, tuple) else value
    return result


@dataclass(frozen=True)
class Stage1Config:
    """Stage 1, the synthesis network ``ŷ = G(x, y)``.

    Attributes:
        kind: ``"padain"`` (RbG: Patch AdaIN U-net), ``"adain"`` (RegistFormer:
            MUNIT-style content/style generator) or ``"fusion"`` (a U-Net on the input
            and the reference stacked, :class:`~.fusion.FusionUNet`; our departure for
            CPU training; ``blocks``, ``style_*`` and ``noise`` do not apply to it).
        channels: PAdaIN: width of every style block (published 256). AdaIN: width of
            the first encoder layer, doubled at each of the two downsamplings (MUNIT 64).
            Fusion: width of the U-Net's first level (32: about 2 M parameters).
        blocks: PAdaIN: number of style conv blocks, at least 5 (two down, at least one
            at the bottleneck, two up; published 12). AdaIN: residual blocks in the
            content encoder and in the decoder (MUNIT 4).
        style_hidden: PAdaIN: hidden width of the γ/β convolutions (published 512).
            AdaIN: hidden width of the MLP from the style code to the AdaIN parameters
            (MUNIT 256).
        style_downsample: PAdaIN only: the reference CT is downsampled by this factor
            before it modulates the features (paper 32, published code 16).
        noise: PAdaIN only: learned-scale noise injection in every style block
            (drawn in training mode only).
        residual: fusion only: ``ŷ = y + Δ(x, y)`` instead of ``tanh(U-Net(x, y))``: the
            network starts as the pre-aligned reference and learns only the correction,
            so the reference's HU and texture pass through exactly where it is aligned.
    """

    kind: str = "padain"
    channels: int = 256
    blocks: int = 12
    style_hidden: int = 512
    style_downsample: int = 16
    noise: bool = True
    residual: bool = False

    def __post_init__(self) -> None:
        if self.kind not in STAGE1_KINDS:
            raise ValueError(f"Stage1Config.kind must be one of {STAGE1_KINDS}, got {self.kind!r}")
        for name in ("channels", "blocks", "style_hidden", "style_downsample"):
            _positive_int("Stage1Config", name, getattr(self, name))
        if self.kind == "padain" and self.blocks < 5:
            raise ValueError(f"Stage1Config.blocks must be at least 5 for kind 'padain', got {self.blocks}")
        for name in ("noise", "residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Stage1Config.{name} must be true or false, got {getattr(self, name)!r}")
        if self.residual and self.kind != "fusion":
            raise ValueError(f"Stage1Config.residual applies to kind 'fusion' only, got kind {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage1Config:
        """Cards written before ``residual`` existed (version 1.1 and older) lack the key:
        their networks are not residual."""
        if isinstance(data, dict) and "residual" not in data:
            data = {**data, "residual": False}
        return _from_dict(cls, data)


@dataclass(frozen=True)
class RegistrationConfig:
    """The VoxelMorph-style registration network ``φ = R(fixed=ŷ, moving=y)``.

    Attributes:
        encoder: widths of the encoder levels at H, H/2, H/4, …; the input size must be a
            multiple of ``2 ** len(encoder)`` (VoxelMorph: 16, 32, 32, 32).
        decoder: widths of the decoder: the first ``len(encoder)`` are the convolutions
            from the coarsest level up to H/2, the rest run at full resolution (at least
            one; VoxelMorph: 32, 32, 32, 32, 32, 16, 16).
        integration_steps: scaling-and-squaring steps (VoxelMorph: 7).
    """

    encoder: tuple[int, ...] = (16, 32, 32, 32)
    decoder: tuple[int, ...] = (32, 32, 32, 32, 32, 16, 16)
    integration_steps: int = 7

    def __post_init__(self) -> None:
        encoder = _positive_ints("RegistrationConfig", "encoder", self.encoder, 1)
        decoder = _positive_ints("RegistrationConfig", "decoder", self.decoder, len(encoder) + 1)
        object.__setattr__(self, "encoder", encoder)
        object.__setattr__(self, "decoder", decoder)
        _positive_int("RegistrationConfig", "integration_steps", self.integration_steps)

    @property
    def size_multiple(self) -> int:
        return 2 ** len(self.encoder)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegistrationConfig:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class Stage2Config:
    """Stage 2, the refinement network ``ỹ = F(x, ŷ, y, φ)``.

    Attributes:
        feature_channels: channels of the FE1/FE2 features and DACA blocks (published 14).
        unet_channels: widths of the FE1/FE2 U-net levels at H, H/2, H/4, … (at least 3,
            since features are taken at H/4, H/2 and H); FR uses the first three.
        heads: attention heads of each DACA block; must divide ``feature_channels``.
        windows: attention window side P of the DACA blocks at H/4, H/2 and H, in
            pixels of that scale (paper: 28 at every scale).
        mlp_ratio: hidden width of the DACA MLP as a multiple of ``feature_channels``.
    """

    feature_channels: int = 14
    unet_channels: tuple[int, ...] = (32, 64, 128, 256)
    heads: int = 2
    windows: tuple[int, int, int] = (28, 28, 28)
    mlp_ratio: float = 2.0

    def __post_init__(self) -> None:
        _positive_int("Stage2Config", "feature_channels", self.feature_channels)
        _positive_int("Stage2Config", "heads", self.heads)
        if self.feature_channels % self.heads:
            raise ValueError(
                f"Stage2Config.heads ({self.heads}) must divide feature_channels ({self.feature_channels})"
            )
        object.__setattr__(
            self, "unet_channels", _positive_ints("Stage2Config", "unet_channels", self.unet_channels, 3)
        )
        windows = _positive_ints("Stage2Config", "windows", self.windows, 1)
        if len(windows) != 3:
            raise ValueError(f"Stage2Config.windows must have 3 entries (H/4, H/2, H), got {windows!r}")
        object.__setattr__(self, "windows", windows)
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or not self.mlp_ratio > 0:
            raise ValueError(f"Stage2Config.mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        object.__setattr__(self, "mlp_ratio", float(self.mlp_ratio))

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.unet_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage2Config:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class ModelConfig:
    """The whole two-stage model: Stage 1, registration, Stage 2.

    Example::

        >>> config = ModelConfig.lite()
        >>> ModelConfig.from_dict(config.to_dict()) == config
        True
    """

    stage1: Stage1Config = field(default_factory=Stage1Config)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)

    def __post_init__(self) -> None:
        for name, kind in (("stage1", Stage1Config), ("registration", RegistrationConfig), ("stage2", Stage2Config)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"ModelConfig.{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")

    @property
    def size_multiple(self) -> int:
        """H and W of the model's input must be multiples of this (16 for all presets)."""
        return max(16, self.registration.size_multiple, self.stage2.size_multiple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage1": self.stage1.to_dict(),
            "registration": self.registration.to_dict(),
            "stage2": self.stage2.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: unknown or missing keys at any level, or invalid values.
        """
        if not isinstance(data, dict):
            raise ValueError(f"ModelConfig: expected a mapping, got {type(data).__name__}")
        parts = {"stage1": Stage1Config, "registration": RegistrationConfig, "stage2": Stage2Config}
        unknown = sorted(set(data) - set(parts))
        if unknown:
            raise ValueError(f"ModelConfig: unknown keys {unknown}; expected {sorted(parts)}")
        missing = sorted(set(parts) - set(data))
        if missing:
            raise ValueError(f"ModelConfig: missing keys {missing}")
        return cls(**{name: kind.from_dict(data[name]) for name, kind in parts.items()})

    @classmethod
    def full(cls, kind: str = "padain") -> ModelConfig:
        """The published sizes. ``kind="adain"`` gives RegistFormer's MUNIT-size Stage 1,
        ``kind="fusion"`` a 64-wide :class:`~.fusion.FusionUNet`."""
        return cls(stage1=_stage1_preset(kind, padain=(256, 12, 512), adain=(64, 4, 256), fusion=64))

    @classmethod
    def lite(cls, kind: str = "padain") -> ModelConfig:
        """Practical on a CPU: about a second per 384×320 slice on 2 threads.

        Stage 1 is 32 channels wide with 6 style blocks (γ/β hidden 32); the
        registration keeps the published sizes (it is cheap); Stage 2 keeps 14 feature
        channels and 2 heads on narrower U-nets (16, 32, 64), with windows shrinking
        from coarse to fine, (7, 5, 3): ±3 pixels at H/4 still reach ±12 pixels of the
        full grid, where registration errors are absorbed, while the full-resolution
        block (the most expensive: its cost grows with P²·H·W) refines within ±1 pixel.
        """
        return cls(
            stage1=_stage1_preset(kind, padain=(32, 6, 32), adain=(16, 2, 64), fusion=32),
            registration=RegistrationConfig(),
            stage2=Stage2Config(feature_channels=14, unet_channels=(16, 32, 64), heads=2, windows=(7, 5, 3)),
        )

    @classmethod
    def tiny(cls, kind: str = "padain") -> ModelConfig:
        """A few thousand parameters, for tests: a 32×32 forward takes milliseconds."""
        return cls(
            stage1=_stage1_preset(kind, padain=(8, 5, 8), adain=(4, 1, 8), fusion=4, style_downsample=4),
            registration=RegistrationConfig(encoder=(4, 8, 8, 8), decoder=(8, 8, 8, 8, 8, 4)),
            stage2=Stage2Config(feature_channels=4, unet_channels=(4, 8, 8), heads=2, windows=(3, 3, 3)),
        )


def _stage1_preset(
    kind: str, padain: tuple[int, int, int], adain: tuple[int, int, int], fusion: int, style_downsample: int = 16
) -> Stage1Config:
    if kind == "padain":
        channels, blocks, hidden = padain
    elif kind == "adain":
        channels, blocks, hidden = adain
    elif kind == "fusion":
        return Stage1Config(kind=kind, channels=fusion, noise=False)
    else:
        raise ValueError(f"kind must be one of {STAGE1_KINDS}, got {kind!r}")
    return Stage1Config(
        kind=kind, channels=channels, blocks=blocks, style_hidden=hidden, style_downsample=style_downsample
    )
