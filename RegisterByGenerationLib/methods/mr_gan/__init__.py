"""MR-GAN (Jin et al. 2019): paired + unpaired MR↔CT synthesis, and registration by synthesis."""

from .method import MRGANMethod, RegistrationBySynthesisMethod

__all__ = ["MRGANMethod", "RegistrationBySynthesisMethod"]
