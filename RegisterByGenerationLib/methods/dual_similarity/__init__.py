"""Dual-similarity inter-modality registration (Cao et al., MICCAI 2018): network, training, method."""

from .method import DualSimilarityMethod
from .network import DualSimilarityConfig, DualSimilarityNet

__all__ = ["DualSimilarityConfig", "DualSimilarityMethod", "DualSimilarityNet"]
