"""The STN + early-fusion synthesis network (arXiv 2507.06067, ``cbct_stn_fusion_summary.md``).

A localisation CNN looks at [reference CT, CBCT] and predicts a 3-D affine transform,
initialised to the identity; a spatial transformer (``affine_grid`` + ``grid_sample``)
warps the CT with it; a 3-D U-Net (MONAI ``BasicUNet``) reads [CBCT, warped CT] stacked
as two channels (early fusion) and returns the synthetic CT. Without the STN
(``stn=False``, the paper's "MM" ablation) the U-Net reads the CT as it comes.

``residual=True`` (our departure, as for the 2-D fusion Stage 1): the U-Net's output is
added to the warped CT, so an untrained network already returns the (warped) reference.

Tensors are ``[B, C, Z, Y, X]`` on the model canvas (the slice canvas of the 2-D models,
stacked: the input's slices, a fixed in-plane spacing), in [-1, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import nn

from ...errors import InputError

__all__ = ["STNFusionConfig", "STNFusionNet", "LocalisationNet"]

#: The 3×4 identity affine, flattened: the localisation head's initial output.
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass
class STNFusionConfig:
    """Architecture of :class:`STNFusionNet` (saved in ``model.json``).

    Attributes:
        features: the six widths of MONAI's ``BasicUNet`` (four poolings: patches must be
            multiples of 16 in every axis).
        stn: warp the CT with the predicted affine first (False: the "MM" ablation).
        residual: add the U-Net's output to the (warped) CT.
        localisation_channels: width of the localisation CNN's first layer.
        patch: ``(Z, Y, X)`` voxels of a training patch and of an inference window.
    """

    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)
    stn: bool = True
    residual: bool = True
    localisation_channels: int = 16
    patch: tuple[int, int, int] = (16, 96, 96)
    kind: str = field(default="stn_fusion", init=False)

    def __post_init__(self) -> None:
        self.features = tuple(int(f) for f in self.features)
        self.patch = tuple(int(p) for p in self.patch)
        if len(self.features) != 6 or min(self.features) < 1:
            raise InputError(f"stn_fusion features must be six positive widths, got {self.features}")
        if len(self.patch) != 3 or any(p < 16 or p % 16 for p in self.patch):
            raise InputError(f"stn_fusion patch must be three multiples of 16 (Z, Y, X), got {self.patch}")
        if self.localisation_channels < 1:
            raise InputError(f"stn_fusion localisation_channels must be positive, got {self.localisation_channels}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["features"], data["patch"] = list(self.features), list(self.patch)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> STNFusionConfig:
        data = {k: v for k, v in data.items() if k != "kind"}
        unknown = set(data) - {"features", "stn", "residual", "localisation_channels", "patch"}
        if unknown:
            raise InputError(f"stn_fusion architecture: unknown keys {sorted(unknown)}")
        return cls(**data)


class LocalisationNet(nn.Module):
    """[CT, CBCT] → a ``[B, 3, 4]`` affine (``affine_grid`` convention), identity at start."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        layers: list[nn.Module] = []
        for cin, cout in ((2, c), (c, 2 * c), (2 * c, 2 * c), (2 * c, 4 * c)):
            layers += [nn.Conv3d(cin, cout, 3, stride=2, padding=1), nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.1)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.head = nn.Linear(4 * c, 12)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor(_IDENTITY))

    def forward(self, ct: torch.Tensor, cbct: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(torch.cat([ct, cbct], dim=1))).float().view(-1, 3, 4)


class STNFusionNet(nn.Module):
    """``forward(x, y)`` → ``{"output": sCT, "warped": warped CT, "theta": affine}``."""

    def __init__(self, config: STNFusionConfig) -> None:
        super().__init__()
        self.config = config
        self.localisation = LocalisationNet(config.localisation_channels) if config.stn else None
        self.unet = BasicUNet(spatial_dims=3, in_channels=2, out_channels=1, features=config.features,
                              act=("LeakyReLU", {"negative_slope": 0.1, "inplace": True}), norm=("instance", {"affine": True}))  # fmt: skip
        if config.residual:  # start as the identity: the (warped) reference CT itself
            nn.init.zeros_(self.unet.final_conv.weight)
            nn.init.zeros_(self.unet.final_conv.bias)

    @property
    def size_multiple(self) -> int:
        return 16

    def warp(self, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``y`` resampled through ``theta`` (trilinear; the border value outside)."""
        grid = F.affine_grid(theta, list(y.shape), align_corners=False)
        return F.grid_sample(y.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape != y.shape or x.ndim != 5 or x.shape[1] != 1:
            raise InputError(f"stn_fusion: input and reference must both be [B, 1, Z, Y, X], got {tuple(x.shape)} and {tuple(y.shape)}")
        if any(s % self.size_multiple for s in x.shape[2:]):
            raise InputError(f"stn_fusion: every axis must be a multiple of {self.size_multiple}, got {tuple(x.shape[2:])}")
        if self.localisation is not None:
            theta = self.localisation(y, x)
            warped = self.warp(y, theta)
        else:
            theta = torch.tensor(_IDENTITY, device=x.device).view(1, 3, 4).expand(x.shape[0], -1, -1)
            warped = y.float()
        out = self.unet(torch.cat([x, warped.to(x.dtype)], dim=1)).float()  # the head in float32 under autocast
        if self.config.residual:
            out = out + warped
        return {"output": out, "warped": warped, "theta": theta}
