"""The registration network of Stage 2: diffeomorphic VoxelMorph in 2D.

``φ = R(fixed=ŷ, moving=y)``: a mono-modal registration of the reference CT ``y`` onto
the Stage 1 synthesis ``ŷ``. ``φ`` lives on the fixed (input) grid and points into the
moving image, so ``warp(y, φ) ≈ ŷ`` (DESIGN §4). Trained with
``MSE(ŷ, warp(y, φ)) + 0.5 · smooth(φ)`` after Stage 1 is frozen.

Steps of :meth:`DiffeomorphicRegistration.forward`:

1. The VoxelMorph U-net (MONAI's :class:`~monai.networks.nets.VoxelMorphUNet`, configured
   to the published 2D sizes) maps ``concat(fixed, moving)`` to a stationary velocity
   field at full resolution.
2. The velocity is resized to half resolution (values × 0.5) and integrated by scaling
   and squaring (MONAI's :class:`~monai.networks.blocks.DVF2DDF`, 7 steps), which makes
   the displacement diffeomorphic.
3. The displacement is resized back to full resolution (values × 2).

MONAI's own ``VoxelMorph`` wrapper is not used: with ``half_res`` it hard-codes
trilinear interpolation (fails in 2D) and does not rescale the field's values
consistently with the grid change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import VoxelMorphUNet
from torch import nn

from .blocks import check_image, check_multiple, check_same_grid, resize_flow, scaling_and_squaring, warp

__all__ = ["DiffeomorphicRegistration", "warp"]

FLOW_INIT_STD = 1e-5


class DiffeomorphicRegistration(nn.Module):
    """Diffeomorphic VoxelMorph-style 2D registration: ``flow = R(fixed, moving)``.

    Args:
        encoder: encoder widths at H, H/2, H/4, … (VoxelMorph 16, 32, 32, 32). The input
            size must be a multiple of ``2 ** len(encoder)``.
        decoder: decoder widths: ``len(encoder)`` convolutions from the coarsest level
            up to H/2, then at least one at full resolution (VoxelMorph 32, 32, 32, 32,
            32, 16, 16).
        integration_steps: scaling-and-squaring steps (VoxelMorph 7).

    Example::

        >>> net = DiffeomorphicRegistration(encoder=(4, 8), decoder=(8, 8, 4)).eval()
        >>> fixed = moving = torch.zeros(1, 1, 32, 32)
        >>> net(fixed=fixed, moving=moving).shape
        torch.Size([1, 2, 32, 32])
    """

    def __init__(
        self,
        encoder: Sequence[int] = (16, 32, 32, 32),
        decoder: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        integration_steps: int = 7,
    ) -> None:
        super().__init__()
        encoder, decoder = tuple(encoder), tuple(decoder)
        if not encoder or min(encoder) <= 0:
            raise ValueError(f"encoder must be a non-empty sequence of positive widths, got {encoder}")
        if len(decoder) < len(encoder) + 1 or min(decoder) <= 0:
            raise ValueError(
                f"decoder must have at least len(encoder) + 1 = {len(encoder) + 1} positive widths, got {decoder}"
            )
        if integration_steps <= 0:
            raise ValueError(f"integration_steps must be positive, got {integration_steps}")
        levels = len(encoder)
        self.size_multiple = 2**levels
        # MONAI's channel list interleaves, per level k from the top, the encoder width
        # and the width of the up-path convolution one level below; the last entry is
        # the bottom convolution. VoxelMorph lists its decoder from the bottom up, so
        # level k's up-path width is decoder[levels - 1 - k]. decoder[levels] is the
        # first full-resolution convolution (MONAI's "unet_out_channels"), the rest are
        # MONAI's "final_conv_channels".
        channels: list[int] = []
        for k in range(levels):
            channels += [encoder[k], decoder[levels - 1 - k]]
        self.unet = VoxelMorphUNet(
            spatial_dims=2,
            in_channels=2,
            unet_out_channels=decoder[levels],
            channels=channels,
            final_conv_channels=decoder[levels + 1 :],
        )
        # Initialise the flow head near zero so training starts from the identity
        # transform: a random head would start from a random deformation that the
        # smoothness and image terms first have to undo.
        head = self.unet.net[1].final_conv_out.conv
        nn.init.normal_(head.weight, 0.0, FLOW_INIT_STD)
        nn.init.zeros_(head.bias)
        self.integrate_velocity = scaling_and_squaring(integration_steps)

    def integrate(self, velocity: torch.Tensor) -> torch.Tensor:
        """Velocity ``[B, 2, H, W]`` → displacement ``[B, 2, H, W]``, integrated at half resolution.

        H and W must be even. Both fields are in pixels of the full-resolution grid.
        """
        check_image("velocity", velocity, channels=2)
        height, width = velocity.shape[-2:]
        if height % 2 or width % 2:
            raise ValueError(f"velocity: H and W must be even, got ({height}, {width})")
        half = resize_flow(velocity, (height // 2, width // 2))
        return resize_flow(self.integrate_velocity(half), (height, width))

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """Register ``moving`` onto ``fixed``.

        Args:
            fixed: ``[B, 1, H, W]`` (Stage 1 output ŷ) in [-1, 1]; H and W multiples of
                ``2 ** len(encoder)`` (16 for the published sizes).
            moving: ``[B, 1, H, W]`` (reference CT y) in [-1, 1], same grid.

        Returns:
            ``[B, 2, H, W]`` displacement in pixels (channel 0 = dy, 1 = dx) on the fixed
            grid: ``warp(moving, flow) ≈ fixed``.

        Raises:
            ValueError: bad shapes or sizes.
        """
        check_image("fixed", fixed, channels=1)
        check_image("moving", moving, channels=1)
        check_same_grid("moving", moving, "fixed", fixed)
        check_multiple("fixed", fixed, self.size_multiple)
        velocity = self.unet(torch.cat([fixed, moving], dim=1)).float()
        # Integration composes warps: in float32 whatever the autocast (flows are in pixels,
        # and bfloat16 has a resolution of a pixel at 256).
        with torch.autocast(device_type=velocity.device.type, enabled=False):
            return self.integrate(velocity)
