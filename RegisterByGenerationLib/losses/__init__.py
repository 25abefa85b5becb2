"""Self-supervised training losses of RbG (DESIGN §5; RbG paper §III-E).

- :class:`PatchNCELoss` with :class:`PatchProjection` heads: structure with the input.
- :class:`ContextualLoss`: texture with the (misaligned) reference.
- :class:`LSGANLoss` with a :class:`PatchDiscriminator`: realism.
- :func:`smoothness` and :func:`registration_loss`: the registration network.
- :class:`SoftBoneDiceLoss`: bone Dice at the benchmark's threshold (a CPU-recipe term).
- :class:`VGG19Features`: the feature network of the contextual (and Stage 2 PatchNCE)
  loss, ImageNet weights from a local torchvision file or fixed random weights.
"""

from __future__ import annotations

from .adversarial import LSGANLoss, PatchDiscriminator
from .bone import SoftBoneDiceLoss
from .contextual import ContextualLoss, contextual_similarity
from .patchnce import PatchNCELoss, PatchProjection, sample_positions
from .smoothness import registration_loss, smoothness
from .vgg import VGG19_LAYERS, VGG19Features, load_torchvision_state_dict, vgg19_layer_index

__all__ = [
    "ContextualLoss",
    "LSGANLoss",
    "PatchDiscriminator",
    "PatchNCELoss",
    "PatchProjection",
    "SoftBoneDiceLoss",
    "VGG19Features",
    "VGG19_LAYERS",
    "contextual_similarity",
    "load_torchvision_state_dict",
    "registration_loss",
    "sample_positions",
    "smoothness",
    "vgg19_layer_index",
]
