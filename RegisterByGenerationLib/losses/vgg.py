"""VGG-19 feature network for the contextual and PatchNCE losses, in plain torch.

The layers are laid out exactly as ``torchvision.models.vgg19().features`` (a
``Sequential`` whose convolutions sit at indices 0, 2, 5, 7, 10, …, 34), so a state dict
saved from torchvision (``features.N.weight`` / ``features.N.bias``, plus the
``classifier.*`` keys, which are ignored) loads **strictly** into it: all 32 ``features``
keys of VGG-19 must be present with their exact shapes, and nothing else may be in the
file (the layers deeper than the ones asked for are checked, then left unused). No
download and no torchvision dependency: the user gives a local file, e.g. one written by
``torch.save(torchvision.models.vgg19(weights="IMAGENET1K_V1").state_dict(), "vgg19.pth")``
on a machine with network access.

Without a file the network is built with fixed random weights (He initialisation, the
torchvision default for VGG, plus random biases; see :meth:`VGG19Features._init_random`),
drawn from a seeded generator, so every run and every machine gets the same network. Random shallow convolution + ReLU layers act as a
fixed random filter bank; matching the statistics of such features is known to
reproduce textures (Ustyuzhaninov et al., "Texture synthesis using shallow
convolutional networks with random filters", 2016), which is what the contextual loss
needs. ``docs/training.md`` explains the choice; :attr:`VGG19Features.description`
names the network a model was trained with (recorded in its model card).

Features are taken after the ReLU that follows the named convolution (``conv1_2`` is
``features.3``'s output), as in the contextual-loss and CUT codebases. Grey images in
[-1, 1] are mapped to [0, 1], repeated to three channels and standardised with the
ImageNet mean and standard deviation that the pretrained weights expect.

Example::

    >>> net = VGG19Features(("conv1_2", "conv2_2"))
    >>> [tuple(f.shape) for f in net(torch.zeros(1, 1, 32, 32))]
    [(1, 64, 32, 32), (1, 128, 16, 16)]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..modelstore import file_sha256

__all__ = ["VGG19_LAYERS", "VGG19Features", "load_torchvision_state_dict", "vgg19_layer_index"]

# torchvision's "E" configuration: channels per convolution, "M" = max pooling.
_CONFIG_E = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_names() -> dict[str, int]:
    """``"convB_K"`` → index of the ReLU after that convolution in ``features``."""
    names: dict[str, int] = {}
    index, block, conv = 0, 1, 0
    for item in _CONFIG_E:
        if item == "M":
            index += 1
            block, conv = block + 1, 0
        else:
            conv += 1
            names[f"conv{block}_{conv}"] = index + 1  # the ReLU right after the convolution
            index += 2
    return names


#: Layer name (``conv1_1`` … ``conv5_4``) → index in ``features`` of its ReLU output.
VGG19_LAYERS: dict[str, int] = _layer_names()


def vgg19_layer_index(name: str) -> int:
    """Index in ``features`` of the ReLU output of layer ``name`` (e.g. ``"conv4_2"`` → 22).

    Raises:
        ValueError: unknown layer name.
    """
    if name not in VGG19_LAYERS:
        raise ValueError(f"layer must be one of {', '.join(VGG19_LAYERS)}, got {name!r}")
    return VGG19_LAYERS[name]


def _build_features(last_index: int) -> nn.Sequential:
    """torchvision's ``vgg19().features`` truncated after index ``last_index``."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in _CONFIG_E:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_channels = item
        if len(layers) > last_index:
            break
    return nn.Sequential(*layers[: last_index + 1])


# Shapes of every parameter of the full torchvision VGG-19 ``features`` (meta tensors: no memory).
with torch.device("meta"):
    _FULL_DEPTH_SHAPES = _build_features(36).state_dict()


def load_torchvision_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torchvision VGG-19 state dict from ``path`` without executing code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A checkpoint wrapping the weights in
    ``{"state_dict": ...}`` is unwrapped.

    Raises:
        InputError: missing or unreadable file, or not a mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: VGG-19 weights file not found")
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many kinds for a bad file
        raise InputError(f"{path}: cannot be read as a VGG-19 state dict ({str(error).strip().splitlines()[0]})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state


class VGG19Features(nn.Module):
    """Frozen VGG-19 returning the ReLU outputs of the named layers, shallow to deep.

    Args:
        layers: layer names such as ``("conv1_2", "conv2_2", "conv3_2")``; the network is
            truncated after the deepest one.
        weights: a local file holding a torchvision-layout VGG-19 state dict (ImageNet),
            or None for fixed random weights.
        seed: seed of the random weights (ignored when ``weights`` is given).

    Attributes:
        description: what the network is, for the model card: ``"vgg19-imagenet
            (file <name>, sha256 <12 hex>)"`` or ``"vgg19-random (He init, seed N)"``.

    Raises:
        ValueError: no or unknown layer names.
        InputError: the weights file is missing, unreadable, or does not match the
            torchvision VGG-19 layout (the message lists the mismatching keys).
    """

    def __init__(self, layers: Sequence[str], weights: str | os.PathLike | None = None, seed: int = 0) -> None:
        super().__init__()
        layers = tuple(layers)
        if not layers:
            raise ValueError("layers must name at least one VGG-19 layer")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers must not repeat a name, got {layers}")
        indices = [vgg19_layer_index(name) for name in layers]
        order = sorted(range(len(layers)), key=lambda i: indices[i])
        self.layers = tuple(layers[i] for i in order)
        self._indices = tuple(indices[i] for i in order)
        self.features = _build_features(max(self._indices))
        if weights is None:
            self._init_random(seed)
            self.description = f"vgg19-random (He init, random biases, seed {seed})"
        else:
            self._load(Path(weights))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _init_random(self, seed: int) -> None:
        """He-initialised weights (torchvision's VGG initialisation) and random biases.

        Biases are not zero, unlike torchvision's: with zero biases a ReLU network is
        positively homogeneous, so every flat region of the same sign gives the same
        feature *direction* whatever its level (measured: cosine 0.997 between soft
        tissue and air at ``conv1_2``), and the cosine-based contextual loss could not
        tell tissues apart. Each bias is drawn from N(0, (s/2)²), where s is the standard
        deviation of the layer's pre-activation on a fixed probe image (intensity ramps
        over [-1, 1]), so the biases are on the scale of the signals they shift.
        """
        generator = torch.Generator().manual_seed(int(seed))
        size = 64
        ramp = torch.linspace(-1.0, 1.0, size)
        probe = (0.7 * ramp.view(1, 1, 1, size) + 0.3 * torch.cos(6.0 * ramp).view(1, 1, size, 1)).clamp(-1, 1)
        out = (((probe + 1.0) / 2.0).expand(-1, 3, -1, -1) - torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            for layer in self.features:
                if isinstance(layer, nn.Conv2d):
                    fan_out = layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
                    layer.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=generator)
                    layer.bias.zero_()
                    spread = float(layer(out).std())
                    layer.bias.normal_(0.0, 0.5 * spread, generator=generator)
                out = layer(out)

    def _load(self, path: Path) -> None:
        state = load_torchvision_state_dict(path)
        expected = {f"features.{key}" for key in self.features.state_dict()}
        full_depth = {f"features.{key}": tuple(value.shape) for key, value in _FULL_DEPTH_SHAPES.items()}
        unexpected = sorted(k for k in state if not (k in full_depth or k.startswith("classifier.")))
        missing = sorted(k for k in full_depth if k not in state)
        wrong = sorted(k for k in full_depth if k in state and tuple(state[k].shape) != full_depth[k])
        if unexpected or missing or wrong:
            details = []
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
                if keys:
                    details.append(f"{label}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}")
            raise InputError(f"{path}: not a torchvision VGG-19 state dict ({'; '.join(details)})")
        self.features.load_state_dict({k[len("features."):]: state[k] for k in expected}, strict=True)
        digest = file_sha256(path)[:12]
        self.description = f"vgg19-imagenet (file {path.name}, sha256 {digest})"

    def train(self, mode: bool = True) -> VGG19Features:
        """The feature network stays in eval mode (it is a fixed loss network)."""
        return super().train(False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Features of a grey image.

        Args:
            image: ``[B, 1, H, W]`` in [-1, 1] (or ``[B, 3, H, W]`` RGB in [0, 1]).

        Returns:
            One ``[B, C_l, H_l, W_l]`` tensor per layer in :attr:`layers` (shallow to deep).
        """
        if image.ndim != 4 or image.shape[1] not in (1, 3):
            raise ValueError(f"image must have shape [B, 1, H, W] or [B, 3, H, W], got {tuple(image.shape)}")
        if image.shape[1] == 1:
            image = ((image + 1.0) / 2.0).expand(-1, 3, -1, -1)
        out = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        results = []
        wanted = iter(self._indices)
        target = next(wanted)
        for index, layer in enumerate(self.features):
            out = layer(out)
            if index == target:
                results.append(out)
                target = next(wanted, None)
                if target is None:
                    break
        return results
