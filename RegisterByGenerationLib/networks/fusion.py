"""Stage 1 with early fusion: ``ŷ = tanh(U-Net([x, y]))`` or ``ŷ = y + U-Net([x, y])``
(a departure from RbG's PAdaIN).

PAdaIN sees the reference CT only through γ/β maps made from a 1/16-scale copy, so it
must invent every edge from the input and learns CT intensities slowly. A plain U-Net
fed the input and the pre-aligned reference side by side can carry the reference's HU
and texture through its skips and learn only where the anatomy moved: trained with an
L1 term against the reference registered onto the input by a classical method (see
``docs/training.md``), it converges on a CPU in tens of minutes. It is MONAI's
:class:`~monai.networks.nets.BasicUNet` (well kept, 2D, any size that is a multiple of
16) with its last 1×1 convolution replaced by one that runs in float32.

The residual form starts as the pre-aligned reference itself and learns only the
correction, so the reference's HU and texture pass through unchanged where it is already
aligned instead of being re-synthesised through instance-normalised features.
"""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from .blocks import check_input_pair, float32_head

__all__ = ["FusionUNet"]


class FusionUNet(nn.Module):
    """``ŷ = G(x, y)``: a 2D U-Net on the input and the reference CT, stacked as channels.

    Args:
        channels: width of the first level; the levels have ``c, c, 2c, 4c, 8c`` channels
            and the decoder's last ``c`` (32 gives about 2 M parameters).
        residual: ``ŷ = y + Δ`` (clamped to [-1, 1] with the identity's gradient, so a
            voxel pushed past the window still learns) instead of ``tanh(U-Net)``.

    Attributes:
        size_multiple: H and W must be multiples of this (16: four downsamplings).

    Example::

        >>> net = FusionUNet(channels=8).eval()
        >>> net(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 1, 32, 32])
    """

    size_multiple = 16

    def __init__(self, channels: int = 32, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        c = channels
        self.unet = BasicUNet(spatial_dims=2, in_channels=2, out_channels=c, features=(c, c, 2 * c, 4 * c, 8 * c, c),
                              act=("LeakyReLU", {"negative_slope": 0.1, "inplace": True}), norm=("instance", {"affine": True}))  # fmt: skip
        self.unet.final_conv = nn.Identity()
        self.head = nn.Conv2d(c, 1, 1)
        if residual:  # start exactly as the reference: Δ = 0
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def encoder_layers(self) -> list[nn.Module]:
        """The encoder levels at H, H/2, H/4, H/8 (for PatchNCE)."""
        return [self.unet.conv_0, self.unet.down_1, self.unet.down_2, self.unet.down_3]

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x``, ``y``: ``[B, 1, H, W]`` in [-1, 1] → ``[B, 1, H, W]`` in (-1, 1), float32.

        ``generator`` is accepted for the Stage 1 interface; this network draws no noise.

        Raises:
            TensorError: bad shapes, or H, W not multiples of 16.
        """
        check_input_pair(x, y, self.size_multiple)
        features = self.unet(torch.cat([x, y], dim=1))
        if not self.residual:
            return float32_head(self.head, features)
        with torch.autocast(device_type=features.device.type, enabled=False):
            out = y.float() + self.head(features.float())
        return out + (out.clamp(-1.0, 1.0) - out).detach()  # the clamped value, the identity's gradient
