"""STN + early-fusion synthesis (CBCT→CT, arXiv 2507.06067): network, training, method."""

from .method import STNFusionMethod
from .network import STNFusionConfig, STNFusionNet

__all__ = ["STNFusionConfig", "STNFusionMethod", "STNFusionNet"]
