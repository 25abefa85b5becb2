"""MR-GAN's networks (Jin et al., "Deep CT to MR Synthesis using Paired and Unpaired Data", 2019).

Two synthesis networks, ``syn_ct`` (MR → CT) and ``syn_mr`` (CT → MR), each the
Johnson et al. (2016) fully convolutional generator the paper uses: a 7×7 convolution,
two stride-2 convolutions, ``residual_blocks`` residual blocks (the paper: 9), two
stride-2 transposed convolutions and a 7×7 output convolution, instance normalisation and
ReLU after every convolution but the last, ``tanh`` out (images in [-1, 1]). Written here
because neither MONAI nor torchvision ships this generator.

The discriminators (training only, never in a model folder) follow the paper's Figure 4:
one head per input (one image for unpaired data, a CT/MR pair stacked as two channels for
paired data), a shared PatchGAN body of four convolutions (three of stride 2), and one
tail per loss (least squares for unpaired data, cross-entropy logits for pairs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ...errors import InputError
from ...networks.blocks import check_image, check_multiple, float32_head, init_normal

__all__ = ["MRGANConfig", "ResnetGenerator", "MRGAN", "PairedUnpairedDiscriminator"]


@dataclass(frozen=True)
class MRGANConfig:
    """The generators' and discriminators' widths (the paper: 64 channels, 9 blocks)."""

    channels: int = 16
    residual_blocks: int = 6
    discriminator_channels: int = 32

    def __post_init__(self) -> None:
        for name in ("channels", "residual_blocks", "discriminator_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"mr-gan architecture: {name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MRGANConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"mr-gan architecture: unknown keys {', '.join(unknown)}")
        return cls(**data)


def _conv_norm_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.InstanceNorm2d(channels), nn.ReLU(inplace=True)]


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), *_conv_norm_relu(nn.Conv2d(channels, channels, 3), channels),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """``[B, 1, H, W]`` in [-1, 1] → ``[B, 1, H, W]`` in [-1, 1]; H and W multiples of 4."""

    size_multiple = 4

    def __init__(self, channels: int, residual_blocks: int) -> None:
        super().__init__()
        c = channels
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), *_conv_norm_relu(nn.Conv2d(1, c, 7), c)]
        layers += _conv_norm_relu(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), 2 * c)
        layers += _conv_norm_relu(nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), 4 * c)
        layers += [_ResidualBlock(4 * c) for _ in range(residual_blocks)]
        layers += _conv_norm_relu(nn.ConvTranspose2d(4 * c, 2 * c, 3, stride=2, padding=1, output_padding=1), 2 * c)
        layers += _conv_norm_relu(nn.ConvTranspose2d(2 * c, c, 3, stride=2, padding=1, output_padding=1), c)
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(c, 1, 7))
        init_normal(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_image("image", image, channels=1)
        check_multiple("image", image, self.size_multiple)
        return float32_head(self.head, self.body(image))  # tanh in float32, outside autocast (the CUDA path)


class MRGAN(nn.Module):
    """What a model folder holds: the two synthesis networks."""

    size_multiple = ResnetGenerator.size_multiple

    def __init__(self, config: MRGANConfig) -> None:
        super().__init__()
        self.config = config
        self.syn_ct = ResnetGenerator(config.channels, config.residual_blocks)
        self.syn_mr = ResnetGenerator(config.channels, config.residual_blocks)

    def forward(self, mr: torch.Tensor, ct: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both translations: ``{"ct": syn_ct(mr), "mr": syn_mr(ct)}``."""
        return {"ct": self.syn_ct(mr), "mr": self.syn_mr(ct)}


class _Discriminator(nn.Module):
    """One domain's discriminator: a single-image head and a pair head, a shared body,
    a least-squares tail and a cross-entropy tail."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        lrelu = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        self.single_head = nn.Sequential(nn.Conv2d(1, c, 4, stride=2, padding=1), lrelu())
        self.pair_head = nn.Sequential(nn.Conv2d(2, c, 4, stride=2, padding=1), lrelu())
        body: list[nn.Module] = []
        width = c
        for level, stride in enumerate((2, 2, 2, 1), start=1):
            out = c * min(2**level, 8)
            body += [nn.Conv2d(width, out, 4, stride=stride, padding=1), nn.InstanceNorm2d(out), lrelu()]
            width = out
        self.body = nn.Sequential(*body)
        self.least_squares_tail = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.InstanceNorm2d(width), lrelu(), nn.Conv2d(width, 1, 3, padding=1))
        self.cross_entropy_tail = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.InstanceNorm2d(width), lrelu(), nn.Conv2d(width, 1, 3, padding=1))

    def single(self, image: torch.Tensor) -> torch.Tensor:
        """Least-squares patch scores of one image (unpaired data)."""
        return self.least_squares_tail(self.body(self.single_head(image)))

    def pair(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Cross-entropy patch logits of ``image`` given the other modality's ``condition``."""
        return self.cross_entropy_tail(self.body(self.pair_head(torch.cat([condition, image], dim=1))))


class PairedUnpairedDiscriminator(nn.Module):
    """``ct`` judges CTs (real or made by ``syn_ct``), ``mr`` judges MRs."""

    def __init__(self, config: MRGANConfig) -> None:
        super().__init__()
        self.ct = _Discriminator(config.discriminator_channels)
        self.mr = _Discriminator(config.discriminator_channels)
        init_normal(self)
