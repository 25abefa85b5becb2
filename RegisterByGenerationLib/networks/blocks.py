"""Building blocks shared by the networks: argument checks, conv blocks, noise, flows.

Flow convention (DESIGN §4): a flow is a tensor of shape ``[B, 2, H, W]`` holding
displacements in **pixels** of its own grid, channel 0 = dy (rows), channel 1 = dx
(columns), and

.. math::

    \\mathrm{warp}(m, \\varphi)(p) = m(p + \\varphi(p))

with bilinear interpolation. This is exactly the convention of
:class:`monai.networks.blocks.Warp` for two spatial dimensions (DDF channel ``i``
displaces spatial dimension ``i``, in voxels), so :func:`warp` uses it as is.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from monai.networks.blocks import DVF2DDF, Convolution, Warp
from torch import nn
from torch.nn import functional as F

from ..errors import TensorError

__all__ = [
    "check_image",
    "check_same_grid",
    "check_multiple",
    "check_input_pair",
    "float32_head",
    "conv_block",
    "init_normal",
    "NoiseInjection",
    "GridWarp",
    "warp",
    "resize_flow",
    "scaling_and_squaring",
]

_LEAKY_RELU = ("leakyrelu", {"negative_slope": 0.2, "inplace": True})


# --------------------------------------------------------------------------- checks


def check_image(name: str, tensor: torch.Tensor, channels: int | None = None) -> None:
    """Raise unless ``tensor`` is a floating-point ``[B, channels, H, W]`` tensor.

    Args:
        name: the argument's name, used in the message.
        tensor: the value to check.
        channels: the required number of channels, or ``None`` for any.

    Raises:
        TypeError: not a tensor.
        TensorError (a ValueError): wrong number of dimensions or channels, empty, or not floating point.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    expected = f"[B, {'C' if channels is None else channels}, H, W]"
    if tensor.ndim != 4 or (channels is not None and tensor.shape[1] != channels):
        raise TensorError(f"{name} must have shape {expected}, got {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise TensorError(f"{name} must not be empty, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TensorError(f"{name} must be a floating-point tensor, got {tensor.dtype}")


def check_same_grid(name: str, tensor: torch.Tensor, reference_name: str, reference: torch.Tensor) -> None:
    """Raise unless ``tensor`` has the batch size and spatial size of ``reference``.

    Raises:
        TensorError (a ValueError): batch or spatial sizes differ, or device/dtype differ.
    """
    if tensor.shape[0] != reference.shape[0] or tensor.shape[2:] != reference.shape[2:]:
        raise TensorError(
            f"{name} must have the batch and spatial size of {reference_name} "
            f"({reference.shape[0]}, *, {reference.shape[2]}, {reference.shape[3]}), got {tuple(tensor.shape)}"
        )
    if tensor.device != reference.device or tensor.dtype != reference.dtype:
        raise TensorError(
            f"{name} must be on the device and of the dtype of {reference_name} "
            f"({reference.device}, {reference.dtype}), got ({tensor.device}, {tensor.dtype})"
        )


def check_multiple(name: str, tensor: torch.Tensor, multiple: int) -> None:
    """Raise unless the spatial size ``(H, W)`` of ``tensor`` is a multiple of ``multiple``.

    Raises:
        TensorError (a ValueError): ``"H and W must be multiples of {multiple}, got (H, W)"``.
    """
    height, width = tensor.shape[-2:]
    if height % multiple or width % multiple:
        raise TensorError(f"{name}: H and W must be multiples of {multiple}, got ({height}, {width})")


def check_input_pair(x: torch.Tensor, y: torch.Tensor, multiple: int) -> None:
    """The checks of every ``(x, y)`` network: two ``[B, 1, H, W]`` tensors on one grid,
    device and dtype, H and W multiples of ``multiple``.

    Raises:
        TensorError (a ValueError): as :func:`check_image`, :func:`check_same_grid`, :func:`check_multiple`.
    """
    check_image("x", x, channels=1)
    check_image("y", y, channels=1)
    check_same_grid("y", y, "x", x)
    check_multiple("x", x, multiple)


# --------------------------------------------------------------------------- layers


def float32_head(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """``tanh(head(features))`` in float32, outside any autocast region.

    Every network's output layer runs through this, so images and flows leave a network
    in float32 however the convolutions before ran: a bfloat16 tanh resolves only about
    8 HU of the CT window, and the stages compare their outputs (same dtype required).
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        return torch.tanh(head(features.float()))


def conv_block(in_channels: int, out_channels: int, strides: int = 1) -> Convolution:
    """3×3 convolution → InstanceNorm (affine) → LeakyReLU(0.2), MONAI's ``Convolution``.

    Instance normalisation (not batch) so that training with batches of 4–8 crops and
    inference on one slice at a time see the same statistics.

    Example::

        >>> conv_block(2, 16)(torch.zeros(1, 2, 32, 32)).shape
        torch.Size([1, 16, 32, 32])
    """
    return Convolution(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        strides=strides,
        kernel_size=3,
        act=_LEAKY_RELU,
        norm=("instance", {"affine": True}),
        bias=False,  # the norm removes (and its affine part replaces) a conv bias
        adn_ordering="NDA",
    )


def init_normal(module: nn.Module, std: float = 0.02) -> None:
    """Initialise every convolution and linear layer of ``module``: weights N(0, std²), bias 0.

    The published networks use this "normal" initialisation (pix2pix/CUT habit,
    std 0.02). Normalisation layers keep PyTorch's defaults (weight 1, bias 0).
    """
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class NoiseInjection(nn.Module):
    """StyleGAN noise: add ``weight[c] * n(p)``, one Gaussian noise image per sample.

    Noise is drawn **only in training mode**; in eval mode the block is the identity,
    so inference is deterministic. The per-channel weight starts at zero (as in
    StyleGAN) and is learned.

    Args:
        channels: number of feature channels C.

    Example::

        >>> block = NoiseInjection(8).eval()
        >>> block(torch.ones(1, 8, 4, 4)).sum().item()
        128.0
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        self.weight = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Args:
            features: ``[B, C, H, W]``.
            generator: optional generator for the noise (on ``features``' device);
                the same generator state gives the same noise.

        Returns:
            ``[B, C, H, W]``: ``features`` plus scaled noise (train) or ``features`` (eval).
        """
        if not self.training:
            return features
        batch, _, height, width = features.shape
        noise = torch.randn(
            (batch, 1, height, width), generator=generator, device=features.device, dtype=features.dtype
        )
        return features + self.weight * noise


# --------------------------------------------------------------------------- flows


@contextmanager
def _quiet_monai_warp() -> Iterator[None]:
    # MONAI's Warp warns on every construction that it falls back to grid_sample.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
        yield


class GridWarp(Warp):
    """MONAI's :class:`~monai.networks.blocks.Warp` without its cached reference grid.

    MONAI caches the identity grid keyed by shape only, so a module moved to another
    device or dtype (or first run under ``torch.inference_mode``) would reuse a stale
    grid, and two threads sharing one module could swap grids. Building the grid is
    an ``arange`` + ``meshgrid``, negligible next to ``grid_sample``, so it is built
    afresh on every call from the incoming field (device and dtype from the input).
    """

    def __init__(self, padding_mode: str = "border") -> None:
        if padding_mode not in ("border", "zeros", "reflection"):
            raise ValueError(f"padding_mode must be 'border', 'zeros' or 'reflection', got {padding_mode!r}")
        with _quiet_monai_warp():
            super().__init__(mode="bilinear", padding_mode=padding_mode)

    def get_reference_grid(self, ddf: torch.Tensor, jitter: bool = False, seed: int = 0) -> torch.Tensor:
        if jitter:
            raise ValueError("GridWarp does not support jitter")
        axes = [torch.arange(size, device=ddf.device, dtype=ddf.dtype) for size in ddf.shape[2:]]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)
        return grid.unsqueeze(0).expand(ddf.shape[0], *grid.shape)


# Border padding: our images are in [-1, 1] with air (-1) at the canvas edge, so
# replicating the edge pulls in air; zero padding would pull in 0, i.e. mid-range
# intensity (≈ +988 HU for the CT window [-1024, 3000]) along the border.
_WARP_BORDER = GridWarp(padding_mode="border")


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Warp ``image`` with ``flow``: ``warped(p) = image(p + flow(p))``, bilinear.

    Samples outside the image take the value of the nearest border pixel (see the
    comment on border padding above).

    Args:
        image: ``[B, C, H, W]``, the moving image (any number of channels).
        flow: ``[B, 2, H, W]`` displacement in pixels (channel 0 = dy, 1 = dx) on the
            fixed grid, same device and dtype as ``image``.

    Returns:
        ``[B, C, H, W]``, the moving image resampled onto the fixed grid.

    Raises:
        ValueError: shapes, devices or dtypes do not match.

    Example::

        >>> image = torch.zeros(1, 1, 8, 8); image[0, 0, 5, 3] = 1
        >>> flow = torch.zeros(1, 2, 8, 8); flow[:, 0] = 2.0   # dy = +2
        >>> warp(image, flow)[0, 0, 3, 3].item()               # warped(3, 3) = image(5, 3)
        1.0
    """
    check_image("image", image)
    check_image("flow", flow, channels=2)
    check_same_grid("flow", flow, "image", image)
    return _WARP_BORDER(image, flow)


def resize_flow(flow: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a flow to another grid, scaling its displacements accordingly.

    The two grids share their outer pixel edges (``align_corners=False``, the
    convention of average pooling), under which a displacement of ``d`` pixels on an
    ``H``-row grid is ``d * H_out / H`` pixels on an ``H_out``-row grid: dy is scaled
    by the row ratio and dx by the column ratio. Shrinking uses antialiased bilinear
    interpolation (exactly the 2×2 mean for a factor 2), enlarging plain bilinear.

    Args:
        flow: ``[B, 2, H, W]`` in pixels, channel 0 = dy, 1 = dx.
        size: the target ``(H_out, W_out)``.

    Returns:
        ``[B, 2, H_out, W_out]`` in pixels of the target grid.

    Raises:
        ValueError: ``flow`` is not ``[B, 2, H, W]`` or ``size`` is not two positive ints.

    Example::

        >>> [round(v, 6) for v in resize_flow(torch.ones(1, 2, 8, 8), (4, 2))[0, :, 0, 0].tolist()]
        [0.5, 0.25]
    """
    check_image("flow", flow, channels=2)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"size must be two positive integers (H_out, W_out), got {size}")
    height, width = flow.shape[-2:]
    if size == (height, width):
        return flow
    resized = F.interpolate(flow, size=size, mode="bilinear", align_corners=False, antialias=True)
    scale = torch.tensor([size[0] / height, size[1] / width], device=flow.device, dtype=flow.dtype)
    return resized * scale.view(1, 2, 1, 1)


def scaling_and_squaring(num_steps: int = 7) -> DVF2DDF:
    """MONAI's :class:`~monai.networks.blocks.DVF2DDF` (velocity → displacement) on :class:`GridWarp`.

    Border padding while composing: beyond the edge the field continues with its edge
    value, so a constant (translation) field stays exactly constant; MONAI's default,
    zero padding, shrinks displacements near the border at every squaring.

    Example::

        >>> velocity = torch.full((1, 2, 8, 8), 1.5)
        >>> torch.allclose(scaling_and_squaring(7)(velocity), velocity)
        True
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    with _quiet_monai_warp():
        integrator = DVF2DDF(num_steps=num_steps, mode="bilinear", padding_mode="border")
    integrator.warp_layer = GridWarp(padding_mode="border")
    return integrator
