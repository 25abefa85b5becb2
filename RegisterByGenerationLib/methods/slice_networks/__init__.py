"""Register by Generation and RegistFormer: 2-D networks run slice by slice on the canvas."""

from .method import RbgMethod, RegistFormerMethod, SliceNetworkMethod

__all__ = ["RbgMethod", "RegistFormerMethod", "SliceNetworkMethod"]
