"""Convert the authors' RbG / RegistFormer checkpoints into one of our model folders.

:func:`import_published` takes the published files (any of: a PAdaIN or MUNIT Stage 1, a
VoxelMorph registration, a Stage 2 with DACA), recognises each by its keys, reads every
weight strictly (every key of the networks used or on the published layout's list of
unused ones, every shape checked, finite values), cross-checks the Stage-1 and
registration copies a Stage-2 file embeds against the separate files, and writes
``model.json`` + ``weights.safetensors`` with the sha256 and provenance of each source.

As in the authors' code, the separate Stage-1 and registration files are what runs when
they are given; a Stage-2 file alone runs with its embedded copies.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .. import __version__
from ..errors import ModelError
from ..modelstore import ModelInfo, file_sha256, save_model, user_models_dir
from ..networks.published import (
    DACAStage2Config,
    MUNITConfig,
    PAdaINConfig,
    PublishedConfig,
    PublishedRbgModel,
    VoxelMorphConfig,
    keys,
)
from .checkpoint import LazyTensor, LightningCheckpoint, read_checkpoint

__all__ = ["SLICE_ORIENTATIONS", "import_published", "identify"]

#: ``--slice-orientation``: how the published slices relate to our canonical axial slices.
SLICE_ORIENTATIONS = ("transposed", "canonical")

_KINDS = {"padain": "PAdaIN Stage 1", "munit": "MUNIT Stage 1", "voxelmorph": "VoxelMorph registration", "stage2": "Stage 2 (DACA)"}


@dataclass
class _Source:
    """One recognised checkpoint and the keys the conversion has accounted for."""

    checkpoint: LightningCheckpoint
    kind: str
    sha256: str
    used: set[str] = field(default_factory=set)

    @property
    def path(self) -> Path:
        return self.checkpoint.path

    def get(self, key: str) -> LazyTensor:
        value = self.checkpoint.state_dict.get(key)
        if value is None:
            raise ModelError(f"{self.path}: missing key {key} of the published {_KINDS[self.kind]} layout")
        if not isinstance(value, LazyTensor):
            raise ModelError(f"{self.path}: {key} is not a tensor ({value!r:.60})")
        return value

    def has(self, key: str) -> bool:
        return key in self.checkpoint.state_dict


def identify(checkpoint: LightningCheckpoint) -> str:
    """``"padain"``, ``"munit"``, ``"voxelmorph"`` or ``"stage2"`` from the checkpoint's keys.

    Raises:
        ModelError: none of the published layouts.
    """
    state = checkpoint.state_dict
    if "netG_A.DACA_block.0.attention.w_q.weight" in state:
        return "stage2"
    elif "netR_A.flow.weight" in state:
        return "voxelmorph"
    elif "netG_A.conv0.conv.weight" in state and "netG_A.conv0.mlp_gamma.weight" in state:
        return "padain"
    elif "netG_A.enc_content.model.0.conv.weight" in state and "netG_B.enc_style.model.0.conv.weight" in state:
        return "munit"
    else:
        raise ModelError(
            f"{checkpoint.path}: not a published RbG/RegistFormer checkpoint (no PAdaIN, MUNIT, VoxelMorph "
            "or DACA keys such as netG_A.conv0.conv.weight, netR_A.flow.weight, netG_A.DACA_block.0...)"
        )


# --------------------------------------------------------------------------- reading weights


def _take(source: _Source, prefix: str, pairs: Iterable[tuple[str, str]], shapes: dict[str, torch.Size], label: str) -> dict[str, torch.Tensor]:
    """Our state for one network: every pair required, every shape checked, finite values."""
    state = {}
    for published, ours in pairs:
        key = prefix + published
        value = source.get(key)
        if tuple(value.shape) != tuple(shapes[ours]):
            raise ModelError(f"{source.path}: {key} has shape {list(value.shape)}, expected {list(shapes[ours])} for the {label}")
        tensor = value.load()
        if not tensor.is_floating_point():
            raise ModelError(f"{source.path}: {key} is {tensor.dtype}, expected floating-point weights")
        if not torch.isfinite(tensor).all():
            raise ModelError(f"{source.path}: {key} holds NaN or infinite values")
        state[ours] = tensor.float()
        source.used.add(key)
    return state


def _shape(source: _Source, key: str, dims: int) -> tuple[int, ...]:
    shape = tuple(source.get(key).shape)
    if len(shape) != dims:
        raise ModelError(f"{source.path}: {key} has shape {list(shape)}, expected {dims} dimensions")
    return shape


def _count(source: _Source, pattern: str) -> int:
    """How many consecutive indices ``i = 0, 1, …`` have the key ``pattern.format(i)``."""
    count = 0
    while source.has(pattern.format(count)):
        count += 1
    return count


def _padain_config(source: _Source, prefix: str, noise: bool) -> PAdaINConfig:
    channels = _shape(source, prefix + "conv0.conv.weight", 4)[0]
    hidden = _shape(source, prefix + "conv0.mlp_shared.0.weight", 4)[0]
    return PAdaINConfig(channels=channels, style_hidden=hidden, guide_downsample=16, noise=noise)


def _munit_config(source: _Source, content: str, style: str) -> MUNITConfig:
    return MUNITConfig(
        channels=_shape(source, content + "enc_content.model.0.conv.weight", 4)[0],
        blocks=_count(source, content + "enc_content.model.3.model.{}.model.0.conv.weight"),
        style_hidden=_shape(source, style + "mlp.model.0.fc.weight", 2)[0],
        style_dim=_shape(source, style + "enc_style.model.6.weight", 4)[0],
    )


def _identity_grid(height: int, width: int) -> torch.Tensor:
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([rows, columns]).unsqueeze(0).float()


def _voxelmorph_config(source: _Source, prefix: str, steps: int) -> VoxelMorphConfig:
    levels = _count(source, prefix + "unet_model.encoder.{}.0.main.weight")
    encoder = tuple(_shape(source, f"{prefix}unet_model.encoder.{i}.0.main.weight", 4)[0] for i in range(levels))
    remaining = _count(source, prefix + "unet_model.remaining.{}.main.weight")
    decoder = tuple(_shape(source, f"{prefix}unet_model.decoder.{i}.0.main.weight", 4)[0] for i in range(levels))
    decoder += tuple(_shape(source, f"{prefix}unet_model.remaining.{i}.main.weight", 4)[0] for i in range(remaining))
    full, half = (prefix + name for name in keys.VOXELMORPH_GRIDS)
    grid_shape = _shape(source, full, 4)
    if grid_shape[:2] != (1, 2):
        raise ModelError(f"{source.path}: {full} has shape {list(grid_shape)}, expected [1, 2, H, W] (a 2D VoxelMorph)")
    height, width = grid_shape[2:]
    for key, size in ((full, (height, width)), (half, (height // 2, width // 2))):
        grid = source.get(key)
        if tuple(grid.shape) != (1, 2, *size) or not torch.equal(grid.load(), _identity_grid(*size)):
            raise ModelError(f"{source.path}: {key} is not the identity grid of a {size[0]}x{size[1]} canvas (integration at half size)")
        source.used.add(key)
    try:
        return VoxelMorphConfig(encoder=encoder, decoder=decoder, integration_steps=steps, canvas=(height, width))
    except ValueError as error:
        raise ModelError(f"{source.path}: unsupported VoxelMorph layout ({error})") from error


def _stage1_pairs(config: PAdaINConfig | MUNITConfig, prefixes: tuple[str, ...]) -> list[tuple[str, list[tuple[str, str]], tuple[str, ...]]]:
    """``(prefix, pairs, unused patterns)`` of each generator Stage 1 reads."""
    if isinstance(config, PAdaINConfig):
        return [(prefixes[0], keys.padain_pairs(), keys.PADAIN_UNUSED)]
    content, style = prefixes
    return [
        (content, keys.munit_content_pairs(config.blocks), keys.MUNIT_CONTENT_UNUSED),
        (style, keys.munit_style_pairs(config.blocks), keys.MUNIT_STYLE_UNUSED),
    ]


def _stage1_state(source: _Source, config, prefixes: tuple[str, ...], shapes: dict[str, torch.Size]) -> tuple[dict[str, torch.Tensor], list[tuple[str, tuple[str, ...]]]]:
    """Stage 1's state from ``source`` and the ``(prefix, unused patterns)`` it owns there."""
    state, owned = {}, []
    for prefix, pairs, unused in _stage1_pairs(config, prefixes):
        state.update(_take(source, prefix, pairs, shapes, "published Stage 1"))
        owned.append((prefix, unused))
    return state, owned


def _check_accounted(source: _Source, owned: Sequence[tuple[str, tuple[str, ...]]]) -> dict[str, int]:
    """Refuse keys under the networks' prefixes that the layout does not know; count the
    other top-level modules (discriminators, projection heads, losses, metrics), which
    only training uses."""
    ignored: Counter[str] = Counter()
    for key in source.checkpoint.state_dict:
        if key in source.used:
            continue
        inside = [(prefix, unused) for prefix, unused in owned if key.startswith(prefix)]
        if inside:  # the innermost network whose prefix it has decides
            prefix, unused = max(inside, key=lambda item: len(item[0]))
            if not keys.matches(key[len(prefix):], unused):
                raise ModelError(f"{source.path}: unexpected key {key} (not part of the published {_KINDS[source.kind]} layout)")
            ignored[f"{prefix} (unused by the published forward pass)"] += 1
        else:
            ignored[key.split(".")[0]] += 1
    return dict(sorted(ignored.items()))


def _compare(separate: dict[str, torch.Tensor], embedded: dict[str, torch.Tensor], what: str, separate_path: Path, stage2_path: Path) -> str | None:
    """None when the embedded copy equals the separate file exactly, else the first difference."""
    for key, value in separate.items():
        if not torch.equal(value, embedded[key]):
            difference = (value - embedded[key]).abs().max().item()
            return f"{what}: {key} differs between {separate_path.name} and the copy in {stage2_path.name} (max |difference| {difference:.3g})"
    return None


# --------------------------------------------------------------------------- the import


def _read_sources(paths: Sequence[str | os.PathLike]) -> dict[str, _Source]:
    if not paths:
        raise ModelError("no checkpoint given: pass the published .ckpt files (Stage 1, registration, Stage 2)")
    sources: dict[str, _Source] = {}
    for path in paths:
        checkpoint = read_checkpoint(path)
        kind = identify(checkpoint)
        if kind in sources:
            raise ModelError(f"{checkpoint.path}: a second {_KINDS[kind]} checkpoint (the first is {sources[kind].path}); give one of each")
        sources[kind] = _Source(checkpoint, kind, file_sha256(checkpoint.path))
    if "padain" in sources and "munit" in sources:
        raise ModelError(f"{sources['munit'].path}: give one Stage 1 (PAdaIN for RbG or MUNIT for RegistFormer), not both")
    return sources


class _Stage2Layout(NamedTuple):
    """How a Stage-2 file names its parts."""

    framework: str  # "RbG" or "RegistFormer"
    fe_names: tuple[str, str]  # FE1/FE2 or net1/net2
    stage1_prefixes: tuple[str, ...]  # of the embedded Stage 1 (one generator, or MUNIT's content and style)
    stage1_kind: str  # "padain" or "munit"


def _stage2_layout(source: _Source) -> _Stage2Layout:
    """The :class:`_Stage2Layout` of a Stage-2 file."""
    state = source.checkpoint.state_dict
    if "netG_A.FE1.conv_in.conv.0.weight" in state:
        framework, fe_names = "RbG", ("FE1", "FE2")
    elif "netG_A.net1.conv_in.conv.0.weight" in state:
        framework, fe_names = "RegistFormer", ("net1", "net2")
    else:
        raise ModelError(f"{source.path}: Stage 2 without FE1/net1 feature extractors (netG_A.FE1.conv_in.conv.0.weight)")
    for prefixes, kind in (
        (("netG_A.synth_net.",), "padain"),
        (("netG_A.synth_net_a.", "netG_A.synth_net_b."), "munit"),
        (("netG_A.synth_net_mr.", "netG_A.synth_net_ct."), "munit"),
    ):
        probe = "conv0.conv.weight" if kind == "padain" else "enc_content.model.0.conv.weight"
        if prefixes[0] + probe in state:
            return _Stage2Layout(framework, fe_names, prefixes, kind)
    raise ModelError(f"{source.path}: Stage 2 without an embedded Stage 1 (netG_A.synth_net...)")


def import_published(
    paths: Sequence[str | os.PathLike],
    *,
    output: str | os.PathLike | None = None,
    name: str | None = None,
    modality: str = "mr",
    heads: int = 2,
    window: int = 28,
    integration_steps: int = 7,
    slice_orientation: str = "transposed",
    pixel_spacing: float | None = 1.25,
    noise: bool = False,
    use_separate_on_mismatch: bool = False,
    force: bool = False,
) -> ModelInfo:
    """Convert published checkpoints into a model folder.

    Args:
        paths: the ``.ckpt`` files, in any order: at most one Stage 1 (PAdaIN or MUNIT),
            one VoxelMorph and one Stage 2. A Stage 1 and a registration (separate or
            embedded in the Stage 2 file) are required.
        output: the model folder to write; default ``user_models_dir() / name``.
        name: the model's name; default ``published-rbg`` / ``published-registformer``
            (``-stage1`` appended without a Stage 2).
        modality: ``"mr"`` (the published models are MR→CT) or ``"cbct"``.
        heads, window, integration_steps: the published constants the files do not record.
        slice_orientation: ``"transposed"`` (the published slices are our axial slices
            transposed: rows right→left, columns anterior→posterior) or ``"canonical"``.
        pixel_spacing: in-plane spacing (mm) of the model's canvas, or None for each
            input's own (the authors resized each patient to fit the canvas).
        noise: keep the published Stage 1 noise (random outputs) instead of turning it off.
        use_separate_on_mismatch: when a Stage-2 file's embedded copies differ from the
            separate files, import anyway with the separate ones (what the authors' code
            runs) instead of refusing.
        force: replace an existing folder.

    Returns:
        The written model's :class:`ModelInfo`.

    Raises:
        ModelError: unreadable or unrecognised files, a missing part, any key or shape
            that does not match the published layout, a cross-check mismatch, an existing
            destination without ``force``.
    """
    if slice_orientation not in SLICE_ORIENTATIONS:
        raise ModelError(f"slice orientation must be one of {', '.join(SLICE_ORIENTATIONS)}, got {slice_orientation!r}")
    if modality not in ("mr", "cbct"):
        raise ModelError(f"modality must be 'mr' or 'cbct', got {modality!r}")
    if pixel_spacing is not None and not pixel_spacing > 0:
        raise ModelError(f"pixel spacing must be positive (mm), got {pixel_spacing!r}")
    sources = _read_sources(paths)
    stage2_source = sources.get("stage2")
    stage1_source = sources.get("padain") or sources.get("munit")
    registration_source = sources.get("voxelmorph")
    layout = _stage2_layout(stage2_source) if stage2_source else None
    if stage1_source is None and layout is None:
        raise ModelError(f"{next(iter(sources.values())).path}: no Stage 1 given (the PAdaIN or MUNIT checkpoint, or a Stage 2 file that embeds it)")
    if registration_source is None and layout is None:
        raise ModelError(f"{stage1_source.path}: no registration given (the VoxelMorph checkpoint, or a Stage 2 file that embeds it)")
    if stage1_source is not None and layout is not None and stage1_source.kind != layout.stage1_kind:
        raise ModelError(f"{stage1_source.path}: a {_KINDS[stage1_source.kind]}, but {stage2_source.path} was trained on a {_KINDS[layout.stage1_kind]}")

    # Stage 1: which file and prefixes run, and the embedded copy to cross-check.
    if stage1_source is not None:
        stage1_prefixes = ("netG_A.",) if stage1_source.kind == "padain" else ("netG_A.", "netG_B.")
        stage1_run = (stage1_source, stage1_prefixes)
    else:
        stage1_run = (stage2_source, layout.stage1_prefixes)
    source, prefixes = stage1_run
    stage1_kind = stage1_source.kind if stage1_source is not None else layout.stage1_kind
    stage1_config = _padain_config(source, prefixes[0], noise) if stage1_kind == "padain" else _munit_config(source, *prefixes)
    registration_run = (registration_source, "netR_A.") if registration_source is not None else (stage2_source, "netG_A.regist_net.")
    registration_config = _voxelmorph_config(registration_run[0], registration_run[1], integration_steps)
    if layout is not None:
        framework = layout.framework
        channels = _shape(stage2_source, "netG_A.DACA_block.0.attention.w_q.weight", 4)[0]
        mlp_hidden = _shape(stage2_source, "netG_A.DACA_block.0.mlp.linear1.weight", 4)[0]
        try:
            stage2_config = DACAStage2Config(feature_channels=channels, heads=heads, window=window, mlp_hidden=mlp_hidden)
        except ValueError as error:
            raise ModelError(f"{stage2_source.path}: {error}") from error
    else:
        framework = "RbG" if isinstance(stage1_config, PAdaINConfig) else "RegistFormer"
        stage2_config = None
    config = PublishedConfig(framework, slice_orientation == "transposed", stage1_config, registration_config, stage2_config)
    model = PublishedRbgModel(config)
    shapes = {key: value.shape for key, value in model.state_dict().items()}

    def part(prefix: str) -> dict[str, torch.Size]:
        return {key[len(prefix):]: shape for key, shape in shapes.items() if key.startswith(prefix)}

    stage1_shapes, registration_shapes = part("stage1.net."), part("registration.net.")
    owned: dict[str, list[tuple[str, tuple[str, ...]]]] = {kind: [] for kind in sources}
    stage1_state, stage1_owned = _stage1_state(source, stage1_config, prefixes, stage1_shapes)
    owned[source.kind] += stage1_owned
    registration_pairs = keys.voxelmorph_pairs(len(registration_config.encoder), len(registration_config.decoder) - len(registration_config.encoder))
    registration_state = _take(registration_run[0], registration_run[1], registration_pairs, registration_shapes, "published VoxelMorph")
    owned[registration_run[0].kind].append((registration_run[1], ()))

    cross_checks, mismatches = [], []
    if layout is not None:
        stage2_state = _take(stage2_source, "netG_A.", keys.stage2_pairs(layout.fe_names), part("stage2.net."), "published Stage 2")
        owned["stage2"].append(("netG_A.", ()))
        if stage1_source is not None:
            embedded, embedded_owned = _stage1_state(stage2_source, stage1_config, layout.stage1_prefixes, stage1_shapes)
            owned["stage2"] += embedded_owned
            cross_checks.append(("Stage 1", stage1_source.path))
            mismatches.append(_compare(stage1_state, embedded, "Stage 1", stage1_source.path, stage2_source.path))
        if registration_source is not None:
            if _voxelmorph_config(stage2_source, "netG_A.regist_net.", integration_steps) != registration_config:
                raise ModelError(f"{stage2_source.path}: its embedded registration is not the architecture of {registration_source.path}")
            embedded = _take(stage2_source, "netG_A.regist_net.", registration_pairs, registration_shapes, "published VoxelMorph")
            owned["stage2"].append(("netG_A.regist_net.", ()))
            cross_checks.append(("registration", registration_source.path))
            mismatches.append(_compare(registration_state, embedded, "registration", registration_source.path, stage2_source.path))
    else:
        stage2_state = {}
    mismatches = [m for m in mismatches if m is not None]
    if mismatches and not use_separate_on_mismatch:
        raise ModelError(f"{stage2_source.path}: {mismatches[0]}; the authors' code runs the separate file: pass --use-separate-on-mismatch to import it so")
    ignored = {kind: _check_accounted(s, owned[kind]) for kind, s in sources.items()}

    state = {f"stage1.net.{k}": v for k, v in stage1_state.items()}
    state.update({f"registration.net.{k}": v for k, v in registration_state.items()})
    state.update({f"stage2.net.{k}": v for k, v in stage2_state.items()})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # our mapping and our modules disagree: a bug, said plainly
        raise ModelError(f"internal error: the published key mapping does not cover the network ({str(error).splitlines()[0]})") from error

    name = name or f"published-{framework.lower()}" + ("" if stage2_config else "-stage1")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ModelError(f"model name must be letters, digits, '.', '_' or '-', got {name!r}")
    destination = Path(output) if output is not None else user_models_dir() / name
    if destination.exists() and not force:
        raise ModelError(f"{destination}: already exists; pass --force to replace it")
    metadata = _card(
        name, modality, framework, config, pixel_spacing, sources, stage1_run[0], registration_run[0],
        cross_checks, mismatches, ignored, model,
    )  # fmt: skip
    return save_model(model, destination, metadata)


def _card(name, modality, framework, config: PublishedConfig, pixel_spacing, sources, stage1_from, registration_from, cross_checks, mismatches, ignored, model) -> dict[str, Any]:
    """``model.json`` of an imported model (save_model adds the architecture and weights)."""
    stage1 = config.stage1
    paper = "Kim et al., IEEE JBHI 2025 (RbG)" if framework == "RbG" else "Kim et al., RegistFormer (WACV)"
    transposed = config.transpose
    return {
        "name": name,
        "method": "rbg" if framework == "RbG" else "registformer",
        "modality": modality,
        "description": (
            f"The authors' published {framework} model ({paper}), trained on SynthRAD2023 pelvis MR-CT, converted from their "
            "checkpoints into a layout that computes exactly what their code computes."
        ),
        "version": "published",
        "pixel_spacing_mm": None if pixel_spacing is None else [float(pixel_spacing)] * 2,
        "canvas": list(config.canvas),
        "normalization": {
            "input": {"kind": "percentile", "lower": 0.5, "upper": 99.5, "n4": False},
            "reference": {"kind": "ct_percentile", "lower": 5.0, "upper": 95.0},
        },
        "pseudo_ct_output": "stage2" if config.stage2 is not None else "stage1",
        "training": {
            "data": "SynthRAD2023 Task 1 pelvis MR-CT, 112 training patients (the authors' split), trained by the authors",
            "feature_network": "not recorded in the files (the authors trained with ImageNet VGG-19 losses)",
        },
        "intended_use": "research; the authors published no licence, so these converted weights are for your own use and are not redistributable",
        "preprocessing": {
            "reference_ct": "clipped at its own 5th and 95th percentile (all voxels, on the input's grid) and scaled to [-1, 1], as published; HU above the 95th percentile cannot come out",
            "input": (
                "published: Nyul histogram matching with landmarks the authors did not publish, then per-patient scaling to [-1, 1]; "
                "here: per-image body percentiles 0.5/99.5 mapped to [-1, 1], the closest scheme we have (outputs differ from the authors' "
                "to the extent the input intensities do)"
            ),
            "canvas": (
                f"published: slices resized per patient to fit {config.registration.canvas[0]}x{config.registration.canvas[1]} keeping the aspect ratio; "
                + ("here: a fixed spacing of %.3g mm, padded or cropped to the canvas" % pixel_spacing if pixel_spacing else "here: each input's own spacing, padded or cropped to the canvas")
            ),
            "slice_orientation": (
                "published slices are our axial slices transposed (rows patient right to left, columns anterior to posterior); "
                "the model transposes internally" if transposed else "published slices taken as our canonical axial slices"
            ) + " (inferred from the 384x320 canvas of a pelvis; the authors' demo data could not be checked)",
        },
        "provenance": {
            "converted_by": f"rbg {__version__} models import-published",
            "redistributable": False,
            "sources": [
                {
                    "file": source.path.name,
                    "path": str(source.path.resolve()),
                    "kind": _KINDS[source.kind],
                    "sha256": source.sha256,
                    "size_bytes": source.path.stat().st_size,
                    "lightning_version": source.checkpoint.lightning_version,
                    "epoch": source.checkpoint.epoch,
                    "global_step": source.checkpoint.global_step,
                    "objects_not_constructed": source.checkpoint.inert,
                    "ignored_keys": ignored[source.kind],
                }
                for source in sources.values()
            ],
            "stage1_weights_from": stage1_from.path.name,
            "registration_weights_from": registration_from.path.name,
            "embedded_copies_checked_against": [f"{what}: {path.name}" for what, path in cross_checks],
            "embedded_copy_mismatches": mismatches,
        },
        "published_layout": {
            "constants_not_in_the_files": {
                "heads": config.stage2.heads if config.stage2 else None,
                "window": config.stage2.window if config.stage2 else None,
                "integration_steps": config.registration.integration_steps,
                "guide_downsample": getattr(stage1, "guide_downsample", None),
            },
            "stage1_noise": (
                ("on: Stage 1 adds its trained noise, outputs are random" if stage1.noise else "off: deterministic; the published code adds it at every call")
                if isinstance(stage1, PAdaINConfig) else "none (MUNIT)"
            ),
            "noise_strengths": model.stage1.net.noise_strengths() if isinstance(stage1, PAdaINConfig) else [],
            "flow": "the published VoxelMorph field (source Stage 1, target reference): on the reference's grid, sampling Stage 1",
        },
    }
