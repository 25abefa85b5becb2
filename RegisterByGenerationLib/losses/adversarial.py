"""Least-squares GAN loss with a PatchGAN discriminator (RbG §III-E-2).

The discriminator (Isola et al., "Image-to-Image Translation with Conditional
Adversarial Networks", 2017) is fully convolutional: 4×4 convolutions, ``layers``
of them with stride 2 doubling the width (capped at 8 × ``channels``), one more at
stride 1, then a 1-channel 4×4 convolution, so it scores overlapping patches (70×70
pixels for 3 layers) rather than the whole image. Instance normalisation (no batch
statistics, so the result of one image does not depend on the others in its batch)
and LeakyReLU(0.2).

LSGAN (Mao et al., 2017) replaces the cross-entropy with squared errors to the
targets 1 (real) and 0 (fake):

- discriminator: ``½ [(D(real) - 1)² + D(fake)²]``,
- generator: ``(D(fake) - 1)²``.

Example::

    >>> d = PatchDiscriminator(channels=8, layers=2)
    >>> scores = d(torch.zeros(2, 1, 32, 32))
    >>> tuple(scores.shape)
    (2, 1, 6, 6)
    >>> LSGANLoss()(torch.ones(2, 1, 6, 6), True).item()
    0.0
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..networks.blocks import init_normal

__all__ = ["PatchDiscriminator", "LSGANLoss", "REAL_TARGET", "FAKE_TARGET"]

REAL_TARGET = 1.0
FAKE_TARGET = 0.0


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator for ``[B, in_channels, H, W]`` images in [-1, 1].

    Args:
        in_channels: image channels (1 for CT slices).
        channels: width of the first layer (pix2pix: 64).
        layers: number of stride-2 layers (pix2pix: 3, a 70×70 receptive field).

    Returns (forward):
        ``[B, 1, H', W']`` unbounded patch scores.
    """

    def __init__(self, in_channels: int = 1, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("channels", channels), ("layers", layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        modules: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = channels
        for level in range(1, layers + 1):
            stride = 2 if level < layers else 1
            next_width = channels * min(2**level, 8)
            modules += [
                nn.Conv2d(width, next_width, 4, stride=stride, padding=1),
                nn.InstanceNorm2d(next_width),
                nn.LeakyReLU(0.2, True),
            ]
            width = next_width
        modules.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*modules)
        init_normal(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4:
            raise ValueError(f"image must be [B, C, H, W], got {tuple(image.shape)}")
        return self.model(image)


class LSGANLoss(nn.Module):
    """Mean squared error of discriminator scores to the real (1) or fake (0) target."""

    def forward(self, scores: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        """Args:
            scores: discriminator output, any shape.
            target_is_real: compare with 1 (True) or 0 (False).

        Returns:
            Scalar loss.
        """
        if not isinstance(target_is_real, bool):
            raise ValueError(f"target_is_real must be True or False, got {target_is_real!r}")
        target = REAL_TARGET if target_is_real else FAKE_TARGET
        return F.mse_loss(scores.float(), torch.full_like(scores, target, dtype=torch.float32))

    def discriminator_loss(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
        """``½ [(D(real) - 1)² + D(fake)²]``."""
        return 0.5 * (self(real_scores, True) + self(fake_scores, False))

    def generator_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        """``(D(fake) - 1)²``: the generator wants its images scored as real."""
        return self(fake_scores, True)
