"""Methods that make the pseudo-CT, one folder per family, and the registry that names them.

==============  ==================  ==========================================================
name            family              what it is
==============  ==================  ==========================================================
``rbg``         ``slice_networks``  Register by Generation (2-D, slice by slice; a model)
``registformer`` ``slice_networks`` RegistFormer (2-D; an imported or trained model)
``stn-fusion``  ``stn_fusion``      STN + early-fusion 3-D U-Net (sliding windows; a model)
``dual-similarity`` ``dual_similarity`` dual-similarity MR→CT registration network (a model)
``mr-gan``      ``mr_gan``          MR-GAN MR→CT synthesis alone (a model)
``registration-by-synthesis`` ``mr_gan`` an MR-GAN model's CT→MR network, then MR↔MR demons
``rigid``       ``classical``       the rigid pre-alignment alone
``syn``         ``classical``       ANTs SyN (benchmark extra)
``elastix``     ``classical``       elastix rigid + B-spline, 40 mm grid (benchmark extra)
==============  ==================  ==========================================================

A model's card names its method (``model.json`` ``method``; older cards: ``registformer``
when Stage 1 is AdaIN/MUNIT, else ``rbg``); a method may run the models of another
(``model_method``: registration-by-synthesis runs MR-GAN models). :func:`resolve` turns the user's
``--method``/``--model`` into the method class and the model it runs.
"""

from __future__ import annotations

import os

from ..errors import InputError, ModelError
from ..modelstore import ModelInfo, default_model_name, find_model
from .base import Method, MethodInputs, MethodOutput
from .classical import ElastixMethod, RigidMethod, SynMethod
from .dual_similarity import DualSimilarityMethod
from .mr_gan import MRGANMethod, RegistrationBySynthesisMethod
from .slice_networks import RbgMethod, RegistFormerMethod
from .stn_fusion import STNFusionMethod

__all__ = ["METHODS", "Method", "MethodInputs", "MethodOutput", "get_method", "method_names", "resolve"]

#: Every method by name, in the order ``rbg methods`` lists them.
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    RbgMethod, RegistFormerMethod, STNFusionMethod, DualSimilarityMethod, MRGANMethod, RegistrationBySynthesisMethod, RigidMethod, SynMethod, ElastixMethod,
)}


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def get_method(name: str) -> type[Method]:
    """The method class called ``name``.

    Raises:
        InputError: no method has that name (the message lists them).
    """
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {name!r}") from None


def resolve(method: str | None, model: str | os.PathLike | None, modality: str) -> tuple[type[Method], ModelInfo | None]:
    """The method and the model a run uses.

    No ``method``: the model's own (``model`` or the modality's default model). A
    ``method`` that needs a model takes ``model`` or its default for ``modality``, and the
    model must be one of that method's; a method without a model refuses one.

    Raises:
        InputError: unknown method, or a model given to a method that has none.
        ModelError: no such model, a model of another method or modality, or no default.
    """
    if method is None:
        info = find_model(model if model is not None else default_model_name(modality))
        try:
            cls = get_method(info.method)
        except InputError as error:
            raise ModelError(f"{info.path}: {error}") from None
    else:
        cls = get_method(method)
        if not cls.needs_model:
            if model is not None:
                raise InputError(f"method {method} uses no model; leave out --model")
            return cls, None
        name = model if model is not None else cls.default_models.get(modality)
        if name is None:
            raise ModelError(f"method {method} has no default {modality.upper()} model; pass --model NAME|DIR (rbg models list shows the installed ones)")
        info = find_model(name)
        if info.method != cls.model_kind():
            raise ModelError(f"model {info.name!r} is a {info.method} model, not a {cls.model_kind()} one; pick a {cls.model_kind()} model or leave out --method")
    if info.modality != modality:
        raise ModelError(f"model {info.name!r} is for {info.modality.upper()} input, not {modality.upper()}; pick a {modality.upper()} model or change --modality")
    return cls, info
