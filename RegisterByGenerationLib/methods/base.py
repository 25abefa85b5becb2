"""What every method is: pre-aligned case in, pseudo-CT on the input grid out.

:class:`~RegisterByGenerationLib.pipeline.Pipeline` does what all methods share (the
input checks, the rigid pre-alignment, the field-of-view fill, the int16 result) and
hands the method a :class:`MethodInputs`; the method returns a :class:`MethodOutput`.
Learned methods work on the model canvas (:mod:`.canvas`), 2-D slice by slice or 3-D by
windows; classical ones register the reference CT onto the input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import SimpleITK as sitk
import torch

from ..errors import InputError, ModelError
from ..modelstore import ModelInfo

__all__ = ["Method", "MethodInputs", "MethodOutput"]


@dataclass
class MethodInputs:
    """One case, after the pre-alignment.

    Attributes:
        input_image: the MR or CBCT as given.
        reference_ct: the reference CT as given (classical registrations start from it).
        reference_on_input: the pre-aligned reference CT on the input grid (HU).
        modality: ``"mr"`` or ``"cbct"``.
        seed: seed of any random sampling.
        keep_intermediate: also return the intermediate images the method has.
        progress: a :data:`~..progress.ProgressCallback` ``(fraction, stage, message)``
            within the method's share of the run (the pipeline scales it).
        checkpoint: ``checkpoint(what)`` raises ``Cancelled`` when the run was cancelled;
            a method calls it between its steps.
        prealign_transform: the pre-alignment (input points → reference points) that made
            ``reference_on_input``; a method that deforms the reference composes it with
            its field and resamples ``reference_ct`` once (a second interpolation blurs).
    """

    input_image: sitk.Image
    reference_ct: sitk.Image
    reference_on_input: sitk.Image
    modality: str
    seed: int
    keep_intermediate: bool
    progress: Callable[..., None]
    checkpoint: Callable[[str], None]
    prealign_transform: sitk.Transform = field(default_factory=sitk.Euler3DTransform)


@dataclass
class MethodOutput:
    """What a method made, on the input grid.

    Attributes:
        image: the pseudo-CT in HU (float).
        complete: True when ``image`` is valid on the whole grid (a registered reference
            CT); False when it is made from the input and only valid inside the input's
            field of view, so the pipeline fills the rest with the pre-aligned reference.
        stage1, flow_magnitude: intermediate images (``keep_intermediate``), if the
            method has them.
        displacement: the field the method warped the reference CT with, if it has one
            (a float64 vector image in mm on the input grid, ITK's convention: the output
            at ``p`` is the pre-aligned reference — for SyN and elastix the reference as
            given — at ``p + u(p)``); the pipeline reports its folds.
        details: facts for the report (batch size, canvas, windows, ...).
    """

    image: sitk.Image
    complete: bool
    stage1: sitk.Image | None = None
    flow_magnitude: sitk.Image | None = None
    displacement: sitk.Image | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    """A way of making the pseudo-CT, registered by name in :mod:`RegisterByGenerationLib.methods`.

    Class attributes:
        name: what ``--method`` and ``model.json``'s ``method`` say.
        family: the folder of :mod:`~RegisterByGenerationLib.methods` it lives in.
        summary: one line for ``rbg methods`` and the docs.
        needs_model: the method has trained weights (a model folder).
        default_models: modality → the installed model used when none is given.
        generative: the output is made from the input (so a mono-modal refinement onto
            it, ``--refine demons``, makes sense).
        model_method: the ``method`` of the model cards it runs, when not its own name.
    """

    name: ClassVar[str]
    family: ClassVar[str]
    summary: ClassVar[str]
    needs_model: ClassVar[bool] = True
    default_models: ClassVar[dict[str, str]] = {}
    generative: ClassVar[bool] = True
    model_method: ClassVar[str | None] = None

    def __init__(self, info: ModelInfo | None, *, device: torch.device, autocast_dtype: torch.dtype | None,
                 batch_size: int | None, threads: int | None) -> None:  # fmt: skip
        if self.needs_model and info is None:
            raise ModelError(f"method {self.name} needs a model")
        self.info, self.device, self.autocast_dtype = info, device, autocast_dtype
        self.batch_size, self.threads = batch_size, threads

    @classmethod
    def model_kind(cls) -> str:
        """The ``method`` a model card of this method names."""
        return cls.model_method or cls.name

    @classmethod
    def build_network(cls, architecture: dict[str, Any]) -> torch.nn.Module:
        """The (untrained) network a model card's ``architecture`` describes."""
        raise InputError(f"method {cls.name} has no network")

    def check(self, input_image: sitk.Image, *, input_name: str) -> list[str]:
        """Refuse an input this method cannot run on (one-line error naming
        ``input_name``) before any work; return warnings about it."""
        return []

    @abstractmethod
    def generate(self, inputs: MethodInputs) -> MethodOutput:
        """Make the pseudo-CT of one pre-aligned case."""
