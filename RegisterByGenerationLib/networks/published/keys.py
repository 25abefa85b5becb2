"""The authors' state-dict key layout, mapped onto the keys of our published-layout networks.

Each function lists ``(published key, our key)`` pairs for one network, both relative to
the network (no ``netG_A.`` / ``stage1.net.`` prefix): the importer requires every pair,
checks every shape, and refuses any other key under the network's prefix unless it
matches that network's ``*_UNUSED`` patterns (parameters and buffers the published
forward pass never reads). The mapping is one to one, so :func:`to_published` inverts it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from .padain import BLOCK_RESAMPLING

__all__ = [
    "PADAIN_NAMES",
    "PADAIN_UNUSED",
    "MUNIT_CONTENT_UNUSED",
    "MUNIT_STYLE_UNUSED",
    "VOXELMORPH_GRIDS",
    "padain_pairs",
    "munit_content_pairs",
    "munit_style_pairs",
    "voxelmorph_pairs",
    "stage2_pairs",
    "matches",
    "to_published",
]

#: The published names of the 12 PAdaIN blocks, in order.
PADAIN_NAMES = ("conv0", "conv11", "conv12", "conv21", "conv22", "conv31", "conv32", "conv41", "conv42", "conv51", "conv52", "conv6")

#: PAdaIN: the unused guide network and the (commented-out) blur kernels of resampling blocks.
PADAIN_UNUSED = (r"guide_net\.\d+\.(weight|bias)", r"conv(11|21|41|51)\.blur\.kernel")

#: MUNIT generator A: only its content encoder runs; AdaIN running buffers are never read.
MUNIT_CONTENT_UNUSED = (r"enc_style\..+", r"mlp\..+", r"dec\..+")

#: MUNIT generator B: its content encoder never runs.
MUNIT_STYLE_UNUSED = (r"enc_content\..+", r"dec\.model\.0\.model\.\d+\.model\.[01]\.norm\.running_(mean|var)")

#: VoxelMorph's identity-grid buffers (full and half size): checked, not loaded.
VOXELMORPH_GRIDS = ("transformer.grid", "integrate.transformer.grid")

_PARAMS = ("weight", "bias")


def _both(published: str, ours: str) -> list[tuple[str, str]]:
    return [(f"{published}.{p}", f"{ours}.{p}") for p in _PARAMS]


def padain_pairs() -> list[tuple[str, str]]:
    """``PAdaINSynthesisModule`` ↔ :class:`~.padain.PublishedPAdaIN`."""
    pairs = []
    conv = {"none": "conv", "down": "down.0", "up": "up.1"}
    for index, (name, resampling) in enumerate(zip(PADAIN_NAMES, BLOCK_RESAMPLING)):
        ours = f"blocks.{index}"
        pairs += _both(f"{name}.{conv[resampling]}", f"{ours}.conv")
        pairs += _both(f"{name}.mlp_shared.0", f"{ours}.modulation.shared.0")
        pairs += _both(f"{name}.mlp_gamma", f"{ours}.modulation.gamma")
        pairs += _both(f"{name}.mlp_beta", f"{ours}.modulation.beta")
        pairs.append((f"{name}.noise_strength", f"{ours}.noise_strength"))
    return pairs + _both("conv_final", "head")


def munit_content_pairs(blocks: int) -> list[tuple[str, str]]:
    """MUNIT generator A's content encoder ↔ ``PublishedMUNIT.content``."""
    pairs = []
    for index in range(3):
        pairs += _both(f"enc_content.model.{index}.conv", f"content.{index}.conv")
    for block in range(blocks):
        for layer in (0, 1):
            pairs += _both(f"enc_content.model.3.model.{block}.model.{layer}.conv", f"content.{3 + block}.conv{layer + 1}.conv")
    return pairs


def munit_style_pairs(blocks: int) -> list[tuple[str, str]]:
    """MUNIT generator B's style encoder, MLP and decoder ↔ the rest of ``PublishedMUNIT``."""
    pairs = []
    for index in range(5):
        pairs += _both(f"enc_style.model.{index}.conv", f"style.{index}.conv")
    pairs += _both("enc_style.model.6", "style.6")
    for published, ours in ((0, 0), (1, 2), (2, 4)):
        pairs += _both(f"mlp.model.{published}.fc", f"mlp.{ours}")
    for block in range(blocks):
        for layer in (0, 1):
            pairs += _both(f"dec.model.0.model.{block}.model.{layer}.conv", f"decoder.{block}.conv{layer + 1}.conv")
    for published, ours in ((2, 0), (4, 1)):
        pairs += _both(f"dec.model.{published}.conv", f"up.{ours}.conv")
        pairs += [(f"dec.model.{published}.norm.gamma", f"up.{ours}.norm.gamma"), (f"dec.model.{published}.norm.beta", f"up.{ours}.norm.beta")]
    return pairs + _both("dec.model.5.conv", "head.conv")


def voxelmorph_pairs(levels: int, remaining: int) -> list[tuple[str, str]]:
    """``VxmDense`` (one conv per level) ↔ :class:`~.voxelmorph.PublishedVoxelMorph`."""
    pairs = []
    for level in range(levels):
        pairs += _both(f"unet_model.encoder.{level}.0.main", f"encoder.{level}")
        pairs += _both(f"unet_model.decoder.{level}.0.main", f"decoder.{level}")
    for index in range(remaining):
        pairs += _both(f"unet_model.remaining.{index}.main", f"remaining.{index}")
    return pairs + _both("flow", "flow_head")


def _double(published: str, ours: str, up: bool) -> list[tuple[str, str]]:
    first, second = (1, 3) if up else (0, 2)
    return _both(f"{published}.conv.{first}", f"{ours}.conv_a") + _both(f"{published}.conv.{second}", f"{ours}.conv_b")


def stage2_pairs(fe_names: tuple[str, str]) -> list[tuple[str, str]]:
    """The published Stage 2 (FE1/FE2 named ``fe_names``: ``FE1, FE2`` in RbG, ``net1,
    net2`` in RegistFormer) ↔ :class:`~.stage2.PublishedStage2`."""
    pairs = []
    for published, ours in zip(fe_names, ("fe1", "fe2")):
        pairs += _both(f"{published}.conv_in.conv.0", f"{ours}.conv_in")
        for index, (name, up) in enumerate((("down1", False), ("down2", False), ("middle", False), ("up1", True), ("up2", True), ("out", False))):
            pairs += _double(f"{published}.conv{index + 1}", f"{ours}.{name}", up)
    for block in range(3):
        published, ours = f"DACA_block.{block}", f"daca.{block}"
        for projection, name in (("w_q", "q_proj"), ("w_k", "k_proj"), ("w_v", "v_proj"), ("fc", "out_proj")):
            pairs.append((f"{published}.attention.{projection}.weight", f"{ours}.{name}.weight"))
        pairs += _both(f"{published}.mlp.linear1", f"{ours}.mlp.0") + _both(f"{published}.mlp.linear2", f"{ours}.mlp.2")
        pairs += _both(f"{published}.normalization", f"{ours}.norm")
    for index, (name, up) in enumerate((("full", False), ("down1", False), ("down2", False), ("middle", False), ("up1", True), ("up2", True))):
        pairs += _double(f"conv{index}", f"fr.{name}", up)
    return pairs + _both("conv6.0.conv.0", "fr.out_conv") + _both("conv6.1", "fr.head")


def matches(key: str, patterns: Iterable[str]) -> bool:
    """Whether ``key`` matches one of the regular expressions ``patterns`` entirely."""
    return any(re.fullmatch(pattern, key) for pattern in patterns)


def to_published(state: Mapping[str, torch.Tensor], pairs: Iterable[tuple[str, str]], prefix: str = "") -> dict[str, torch.Tensor]:
    """Our state ``state`` in the published layout: ``prefix + published key → tensor``
    (the inverse of the import's mapping, for tests and for the equivalence recipe)."""
    return {prefix + published: state[ours] for published, ours in pairs}
