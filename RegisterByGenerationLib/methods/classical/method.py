"""Classical registrations as methods: the pseudo-CT is the reference CT registered onto the input.

They need no model and are valid on the whole grid (a registered CT), so the pipeline
does not fill anything outside the input's field of view.
"""

from __future__ import annotations

import os

from ...errors import InputError
from ..base import Method, MethodInputs, MethodOutput
from .registration import missing_extra, run_elastix, run_syn

__all__ = ["RigidMethod", "SynMethod", "ElastixMethod"]


class _Classical(Method):
    family = "classical"
    needs_model = False
    generative = False

    def check(self, input_image, *, input_name: str) -> list[str]:
        reason = missing_extra(self.name)
        if reason:
            raise InputError(reason)
        if self.threads is not None:  # ANTs and elastix read ITK's thread count when ITK loads
            os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(self.threads))
        return []


class RigidMethod(_Classical):
    name = "rigid"
    summary = "the reference CT after the rigid mutual-information pre-alignment alone"

    def generate(self, inputs: MethodInputs) -> MethodOutput:
        return MethodOutput(image=inputs.reference_on_input, complete=True)


class _Registration(_Classical):
    """A registration of the reference CT as given onto the input; subclasses set ``register``."""

    def generate(self, inputs: MethodInputs) -> MethodOutput:
        inputs.progress(0.0, "register", f"{self.name} registration of the reference CT onto the input")
        image, field = self.register(inputs.input_image, inputs.reference_ct, inputs.seed)
        return MethodOutput(image=image, complete=True, displacement=field)


class SynMethod(_Registration):
    name = "syn"
    summary = "ANTs SyN (defaults: affine + SyN, Mattes MI) of the reference CT onto the input; needs the benchmark extra"
    register = staticmethod(run_syn)


class ElastixMethod(_Registration):
    name = "elastix"
    summary = "elastix rigid + B-spline (40 mm grid, Mattes MI) of the reference CT onto the input; needs the benchmark extra"
    register = staticmethod(run_elastix)
