"""Configuration of the published-layout networks (the authors' RbG / RegistFormer models).

An imported checkpoint's ``model.json`` holds ``architecture = PublishedConfig.to_dict()``,
recognised by ``"layout": "published"``. Every field is either read from the checkpoint's
tensor shapes (widths, canvas) or a constant of the published code that the file does not
record (heads, window, integration steps), which the importer takes as options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LAYOUT",
    "SOURCES",
    "PAdaINConfig",
    "MUNITConfig",
    "VoxelMorphConfig",
    "DACAStage2Config",
    "PublishedConfig",
]

LAYOUT = "published"
SOURCES = ("RbG", "RegistFormer")


def _check_positive(owner: str, **values: Any) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


def _ints(owner: str, name: str, values: Any, length: int | None = None) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{owner}.{name} must be a list of positive integers, got {values!r}")
    values = tuple(values)
    if (length is not None and len(values) != length) or not values:
        raise ValueError(f"{owner}.{name} must have {length or 'at least 1'} entries, got {values!r}")
    for value in values:
        _check_positive(owner, **{name: value})
    return values


def _from_dict(cls, data: Any):
    """``cls(**data)``, refusing unknown and missing keys (``kind`` is checked, not passed)."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    names = {item.name for item in dataclasses.fields(cls)}
    given = set(data) - {"kind"}
    unknown, missing = sorted(given - names), sorted(names - given)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; expected {sorted(names)}")
    if missing:
        raise ValueError(f"{cls.__name__}: missing keys {missing}")
    return cls(**{key: data[key] for key in names})


def _to_dict(config, **extra: Any) -> dict[str, Any]:
    result = dict(extra)
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        result[item.name] = list(value) if isinstance(value, tuple) else value
    return result


@dataclass(frozen=True)
class PAdaINConfig:
    """RbG's published Stage 1 (``PAdaINSynthesisModule``): 12 style blocks.

    Attributes:
        channels: ``feat_ch``, the width of every block (published 256).
        style_hidden: width of the shared γ/β convolution (published 512).
        guide_downsample: the reference is resized by ``1 / guide_downsample`` (16).
        noise: draw the per-element noise the published blocks add in every mode
            (``noise_strength · N(0, 1)``); off by default, so inference is deterministic.
    """

    channels: int = 256
    style_hidden: int = 512
    guide_downsample: int = 16
    noise: bool = False

    kind = "padain"

    def __post_init__(self) -> None:
        _check_positive("PAdaINConfig", channels=self.channels, style_hidden=self.style_hidden, guide_downsample=self.guide_downsample)
        if not isinstance(self.noise, bool):
            raise ValueError(f"PAdaINConfig.noise must be true or false, got {self.noise!r}")

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self, kind=self.kind)


@dataclass(frozen=True)
class MUNITConfig:
    """RegistFormer's published Stage 1 (MUNIT ``AdaINGen``, content of A, style of B).

    Attributes:
        channels: ``ngf``, width after the 7×7 stem (published 64); ×2 at each of two
            downsamplings.
        blocks: residual blocks in the content encoder and the decoder (4).
        style_hidden: hidden width of the 3-layer MLP to the AdaIN parameters (256).
        style_dim: style code dimension (8).
    """

    channels: int = 64
    blocks: int = 4
    style_hidden: int = 256
    style_dim: int = 8

    kind = "adain"

    def __post_init__(self) -> None:
        _check_positive("MUNITConfig", channels=self.channels, blocks=self.blocks, style_hidden=self.style_hidden, style_dim=self.style_dim)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self, kind=self.kind)


@dataclass(frozen=True)
class VoxelMorphConfig:
    """The published VoxelMorph (``VxmDense``, one conv per level, integration at ½).

    Attributes:
        encoder: encoder widths (published 16, 32, 32, 32).
        decoder: decoder widths, the first ``len(encoder)`` on the up path, the rest at
            full resolution (32, 32, 32, 32, 32, 16, 16).
        integration_steps: scaling-and-squaring steps (7; not recorded in the file).
        canvas: ``(H, W)`` of the published slices, from the file's grid buffers (384, 320).
    """

    encoder: tuple[int, ...] = (16, 32, 32, 32)
    decoder: tuple[int, ...] = (32, 32, 32, 32, 32, 16, 16)
    integration_steps: int = 7
    canvas: tuple[int, int] = (384, 320)

    def __post_init__(self) -> None:
        encoder = _ints("VoxelMorphConfig", "encoder", self.encoder)
        decoder = _ints("VoxelMorphConfig", "decoder", self.decoder)
        if len(decoder) < len(encoder) + 1:
            raise ValueError(f"VoxelMorphConfig.decoder needs at least {len(encoder) + 1} entries, got {decoder!r}")
        canvas = _ints("VoxelMorphConfig", "canvas", self.canvas, 2)
        multiple = 2 ** len(encoder)
        if canvas[0] % multiple or canvas[1] % multiple:
            raise ValueError(f"VoxelMorphConfig.canvas must be multiples of {multiple}, got {canvas!r}")
        _check_positive("VoxelMorphConfig", integration_steps=self.integration_steps)
        object.__setattr__(self, "encoder", encoder)
        object.__setattr__(self, "decoder", decoder)
        object.__setattr__(self, "canvas", canvas)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(frozen=True)
class DACAStage2Config:
    """The published Stage 2 (``RbG_framework`` / ``RegistFormer`` minus Stage 1 and registration).

    Attributes:
        feature_channels: ``feat_dim``, the width of every FE/DACA/FR layer (14).
        heads: attention heads (2; not recorded in the file).
        window: attention window side P at every scale (28; not recorded in the file).
        mlp_hidden: hidden width of the DACA MLP (``int(feat_dim · mlp_ratio)`` = 28).
    """

    feature_channels: int = 14
    heads: int = 2
    window: int = 28
    mlp_hidden: int = 28

    def __post_init__(self) -> None:
        _check_positive("DACAStage2Config", feature_channels=self.feature_channels, heads=self.heads, window=self.window, mlp_hidden=self.mlp_hidden)
        if self.feature_channels % self.heads:
            raise ValueError(f"DACAStage2Config.heads ({self.heads}) must divide feature_channels ({self.feature_channels})")

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(frozen=True)
class PublishedConfig:
    """A whole imported model: Stage 1, registration and (optionally) Stage 2.

    Attributes:
        source: ``"RbG"`` or ``"RegistFormer"``, the framework the weights come from.
        transpose: the published slices are the transpose of our canonical axial slices
            (DESIGN §4: rows anterior→posterior, columns right→left); the model transposes
            its inputs, and its outputs back, so callers always use our orientation.
        stage1: :class:`PAdaINConfig` or :class:`MUNITConfig`.
        registration: :class:`VoxelMorphConfig`.
        stage2: :class:`DACAStage2Config`, or None when only Stage 1 and the registration
            were imported (the pseudo-CT is then Stage 1's).

    Example::

        >>> config = PublishedConfig(source="RbG", transpose=True, stage1=PAdaINConfig(),
        ...                          registration=VoxelMorphConfig(), stage2=DACAStage2Config())
        >>> PublishedConfig.from_dict(config.to_dict()) == config
        True
    """

    source: str
    transpose: bool
    stage1: PAdaINConfig | MUNITConfig
    registration: VoxelMorphConfig
    stage2: DACAStage2Config | None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"PublishedConfig.source must be one of {SOURCES}, got {self.source!r}")
        if not isinstance(self.transpose, bool):
            raise ValueError(f"PublishedConfig.transpose must be true or false, got {self.transpose!r}")
        if not isinstance(self.stage1, (PAdaINConfig, MUNITConfig)):
            raise ValueError(f"PublishedConfig.stage1 must be a PAdaINConfig or MUNITConfig, got {type(self.stage1).__name__}")
        if not isinstance(self.registration, VoxelMorphConfig):
            raise ValueError(f"PublishedConfig.registration must be a VoxelMorphConfig, got {type(self.registration).__name__}")
        if self.stage2 is not None and not isinstance(self.stage2, DACAStage2Config):
            raise ValueError(f"PublishedConfig.stage2 must be a DACAStage2Config or None, got {type(self.stage2).__name__}")

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this: VoxelMorph pools ``len(encoder)`` times, and
        MUNIT's style encoder and PAdaIN's 1/16 guide need at least 16."""
        return max(16, 2 ** len(self.registration.encoder))

    @property
    def canvas(self) -> tuple[int, int]:
        """The canvas ``(H, W)`` in our orientation (the published one transposed when
        :attr:`transpose`)."""
        height, width = self.registration.canvas
        return (width, height) if self.transpose else (height, width)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": LAYOUT,
            "source": self.source,
            "transpose": self.transpose,
            "stage1": self.stage1.to_dict(),
            "registration": self.registration.to_dict(),
            "stage2": None if self.stage2 is None else self.stage2.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PublishedConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: not the published layout, unknown or missing keys, invalid values.
        """
        if not isinstance(data, dict) or data.get("layout") != LAYOUT:
            raise ValueError(f"PublishedConfig: expected a mapping with layout {LAYOUT!r}")
        expected = {"layout", "source", "transpose", "stage1", "registration", "stage2"}
        if set(data) != expected:
            raise ValueError(f"PublishedConfig: keys must be {sorted(expected)}, got {sorted(data)}")
        stage1 = data["stage1"]
        kind = stage1.get("kind") if isinstance(stage1, dict) else None
        if kind == PAdaINConfig.kind:
            stage1_config = _from_dict(PAdaINConfig, stage1)
        elif kind == MUNITConfig.kind:
            stage1_config = _from_dict(MUNITConfig, stage1)
        else:
            raise ValueError(f"PublishedConfig.stage1.kind must be 'padain' or 'adain', got {kind!r}")
        return cls(
            source=data["source"],
            transpose=data["transpose"],
            stage1=stage1_config,
            registration=_from_dict(VoxelMorphConfig, data["registration"]),
            stage2=None if data["stage2"] is None else _from_dict(DACAStage2Config, data["stage2"]),
        )
