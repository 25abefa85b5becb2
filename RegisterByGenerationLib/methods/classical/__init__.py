"""Classical registrations (rigid, ANTs SyN, elastix): what users run instead of RbG."""

from .method import ElastixMethod, RigidMethod, SynMethod

__all__ = ["ElastixMethod", "RigidMethod", "SynMethod"]
