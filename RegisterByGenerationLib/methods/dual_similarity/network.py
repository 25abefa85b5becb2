"""The dual-similarity inter-modality registration network (Cao et al., MICCAI 2018,
``dual_similarity_registration_paper.txt``).

The paper's network ℳ is a U-Net with two down-samplings and two up-samplings, 3×3×3
convolutions followed by batch normalisation and ReLU, skip connections and a final
1×1×1 convolution without activation: it reads [MR, CT] and returns the field. We keep
that architecture and make the field diffeomorphic, as issue 16 asks: the network
returns a stationary velocity field that MONAI's ``DVF2DDF`` integrates by scaling and
squaring, so the warp is invertible and its folds can be counted.

It runs on a coarse grid: the canvas volume averaged down to about ``coarse_spacing_mm``
per axis (``coarse_factors``), where the deformation is smooth enough to be sampled and a
3-D network fits a CPU budget; the displacement is upsampled to the canvas to warp the CT.

The U-Net is written out here rather than taken from MONAI: MONAI's ``LocalNet`` (the
closest registration net, also two levels) measured 3-5× slower per training step on
one CPU thread than this plain U-Net of the paper, and ``UNet`` without residual units
ends in a strided transposed convolution with no full-resolution convolution after the
last skip.

With ``input_features`` ``"mind"`` (a departure) the network reads, instead of the two
intensities, each image's MIND descriptor (:func:`mind_descriptors`): six channels that
describe local self-similarity and are the same for an MR and a CT of the same
structure whatever their contrast, so the network need not learn the MR↔CT intensity
relation before it can find correspondences.

Tensors are ``[B, C, Z, Y, X]``; displacements are in coarse voxels along (Z, Y, X),
MONAI's ``Warp`` convention: ``warped(i) = moving(i + ddf(i))``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF, Warp
from torch import nn

from ...errors import InputError

__all__ = ["DualSimilarityConfig", "DualSimilarityNet", "INPUT_FEATURES", "NORMS", "coarse_factors", "mind_descriptors"]

#: What the network reads: the two intensity volumes, or their MIND descriptors.
INPUT_FEATURES = ("intensity", "mind")
#: The normalisation after each convolution.
NORMS = ("batch", "instance")


@dataclass
class DualSimilarityConfig:
    """Architecture of :class:`DualSimilarityNet` (saved in ``model.json``).

    Attributes:
        channels: widths of the U-Net's three levels.
        coarse_spacing_mm: the grid the network works on: each canvas axis is averaged
            over ``round(coarse_spacing_mm / spacing)`` voxels (at least 1).
        integration_steps: scaling-and-squaring steps of the velocity field (0: the
            output is the displacement itself, not diffeomorphic).
        patch: ``(Z, Y, X)`` coarse voxels of a training patch (multiples of 4).
        input_features: one of :data:`INPUT_FEATURES`.
        norm: one of :data:`NORMS`: the paper's batch normalisation, or instance
            normalisation (a departure: the same statistics in training and inference, so
            the validation does not jump with the running averages of batches of two).
    """

    channels: tuple[int, int, int] = (16, 32, 64)
    coarse_spacing_mm: float = 3.0
    integration_steps: int = 7
    patch: tuple[int, int, int] = (32, 64, 64)
    input_features: str = "intensity"
    norm: str = "batch"
    kind: str = field(default="dual_similarity", init=False)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.patch = tuple(int(p) for p in self.patch)
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise InputError(f"dual_similarity channels must be three positive widths, got {self.channels}")
        if len(self.patch) != 3 or any(p < 8 or p % 4 for p in self.patch):
            raise InputError(f"dual_similarity patch must be three multiples of 4 (Z, Y, X), at least 8, got {self.patch}")
        if not self.coarse_spacing_mm > 0:
            raise InputError(f"dual_similarity coarse_spacing_mm must be positive, got {self.coarse_spacing_mm!r}")
        if not isinstance(self.integration_steps, int) or self.integration_steps < 0:
            raise InputError(f"dual_similarity integration_steps must be a non-negative integer, got {self.integration_steps!r}")
        if self.input_features not in INPUT_FEATURES:
            raise InputError(f"dual_similarity input_features must be one of {', '.join(INPUT_FEATURES)}, got {self.input_features!r}")
        if self.norm not in NORMS:
            raise InputError(f"dual_similarity norm must be one of {', '.join(NORMS)}, got {self.norm!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualSimilarityConfig:
        data = {k: v for k, v in data.items() if k != "kind"}
        known = set(cls.__dataclass_fields__) - {"kind"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"dual_similarity architecture: unknown keys {', '.join(unknown)}")
        return cls(**data)


def coarse_factors(spacing_zyx: tuple[float, float, float], coarse_spacing_mm: float) -> tuple[int, int, int]:
    """Voxels averaged per coarse voxel along (Z, Y, X): ``round(coarse / spacing)``, at least 1."""
    return tuple(max(1, round(coarse_spacing_mm / float(s))) for s in spacing_zyx)


def mind_descriptors(volume: torch.Tensor) -> torch.Tensor:
    """``[B, 1, Z, Y, X]`` → ``[B, 6, Z, Y, X]`` in (0, 1]: the modality independent
    neighbourhood descriptor (MIND; Heinrich et al., Med Image Anal 2012) on the six-voxel
    neighbourhood: ``exp(−D_r / V)`` with ``D_r`` the 3×3×3 mean of the squared difference
    to the neighbour at offset ``r`` and ``V`` the mean of the six, each voxel's channels
    divided by their maximum. Unchanged when the intensities are scaled or shifted.

    Written here because MONAI has no MIND; it is a dozen tensor operations.
    """
    z, y, x = volume.shape[2:]
    padded = F.pad(volume, (1, 1, 1, 1, 1, 1), mode="replicate")
    distances = []
    for axis in range(3):
        for step in (-1, 1):
            start = [1, 1, 1]
            start[axis] += step
            neighbour = padded[:, :, start[0] : start[0] + z, start[1] : start[1] + y, start[2] : start[2] + x]
            squared = F.pad((volume - neighbour) ** 2, (1, 1, 1, 1, 1, 1), mode="replicate")
            distances.append(F.avg_pool3d(squared, 3, stride=1))
    distance = torch.cat(distances, dim=1)
    variance = distance.mean(dim=1, keepdim=True)
    # Flat regions (air, the padding) have no variance: bound it below by a small share of
    # the volume's mean, as the MIND paper does, so noise there does not dominate.
    floor = 1e-3 * variance.mean(dim=(2, 3, 4), keepdim=True) + 1e-12
    mind = torch.exp(-distance / torch.maximum(variance, floor))
    return mind / mind.amax(dim=1, keepdim=True)


def _block(inputs: int, outputs: int, norm: str) -> nn.Sequential:
    layer = nn.BatchNorm3d if norm == "batch" else lambda n: nn.InstanceNorm3d(n, affine=True)
    return nn.Sequential(
        nn.Conv3d(inputs, outputs, 3, padding=1), layer(outputs), nn.ReLU(inplace=True),
        nn.Conv3d(outputs, outputs, 3, padding=1), layer(outputs), nn.ReLU(inplace=True),
    )  # fmt: skip


class DualSimilarityNet(nn.Module):
    """[MR, CT] on the coarse grid → ``{"velocity", "ddf"}`` (coarse voxels, ``[B, 3, Z, Y, X]``).

    The last convolution starts at zero, so an untrained network returns the identity.
    Inputs must be multiples of 4 along every axis (two poolings).
    """

    size_multiple = 4

    def __init__(self, config: DualSimilarityConfig | None = None) -> None:
        super().__init__()
        self.config = config or DualSimilarityConfig()
        c0, c1, c2 = self.config.channels
        inputs = 2 if self.config.input_features == "intensity" else 12
        norm = self.config.norm
        self.encode0, self.encode1, self.encode2 = _block(inputs, c0, norm), _block(c0, c1, norm), _block(c1, c2, norm)
        self.decode1, self.decode0 = _block(c2 + c1, c1, norm), _block(c1 + c0, c0, norm)
        self.head = nn.Conv3d(c0, 3, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.integrate = DVF2DDF(num_steps=self.config.integration_steps) if self.config.integration_steps else None
        self.warp = Warp(mode="bilinear", padding_mode="border")

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> dict[str, torch.Tensor]:
        if any(n % self.size_multiple for n in fixed.shape[2:]):
            raise InputError(f"dual_similarity: the coarse volume {tuple(fixed.shape[2:])} must be a multiple of 4 along every axis")
        if self.config.input_features == "mind":
            with torch.autocast(fixed.device.type, enabled=False):
                features = torch.cat([mind_descriptors(fixed.float()), mind_descriptors(moving.float())], dim=1)
        else:
            features = torch.cat([fixed, moving], dim=1)
        level0 = self.encode0(features)
        level1 = self.encode1(F.max_pool3d(level0, 2))
        level2 = self.encode2(F.max_pool3d(level1, 2))
        up1 = self.decode1(torch.cat([F.interpolate(level2, size=level1.shape[2:], mode="trilinear"), level1], dim=1))
        up0 = self.decode0(torch.cat([F.interpolate(up1, size=level0.shape[2:], mode="trilinear"), level0], dim=1))
        velocity = self.head(up0)
        ddf = self.integrate(velocity) if self.integrate is not None else velocity
        return {"velocity": velocity, "ddf": ddf}
