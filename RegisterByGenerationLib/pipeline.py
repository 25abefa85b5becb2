"""The inference engine: DESIGN §3 from two SimpleITK images to a pseudo-CT on the input grid.

``Pipeline`` loads a model once and runs it on many cases::

    pipeline = Pipeline("phantom-mr-lite", device="auto")
    result = pipeline.run(read_image("mr.nii.gz"), read_image("ct.nii.gz"))
    process_case(pipeline, "mr.nii.gz", "ct.nii.gz", "out/")   # files to files: case.py

Per case: the input checks, rigid pre-alignment of the reference CT to the input
(optional) and its resampling onto the input grid; then the method
(:mod:`~RegisterByGenerationLib.methods`: RbG or RegistFormer slice by slice on the model
canvas, the STN-fusion 3-D network, or a classical registration) makes the pseudo-CT on
the input grid; outside the input's field of view the pre-aligned reference fills in.
Progress goes to a callback; a ``threading.Event`` cancels between steps and batches, and
nothing is written by ``run`` itself, so a cancelled run leaves no files.

    Pipeline(method="syn", modality="cbct")             # a classical method: no model
    Pipeline("stn-fusion-cbct-lite", modality="cbct")   # the model's card names its method
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from .errors import Cancelled, InputError
from .fov import blend_outside, field_of_view
from .methods import Method, MethodInputs, resolve
from .methods.canvas import NATIVE_SPACING_TOLERANCE, conditions_warnings
from .metrics.deformation import deformation_statistics
from .plausibility import check_modalities
from .prealign import check_overlap
from .preprocess import prealign_reference
from .progress import ProgressCallback, SubProgress
from .refine import REFINEMENTS, register_onto_generated

__all__ = ["Pipeline", "PipelineResult", "select_device", "select_precision", "conditions_warnings", "PRECISIONS", "OUTPUT_FILES", "FOV_BLEND_MM",
           "NATIVE_SPACING_TOLERANCE"]

logger = logging.getLogger(__name__)

#: File names of the images :func:`~RegisterByGenerationLib.case.process_case` writes.
OUTPUT_FILES = {
    "pseudo_ct": "pseudo_ct.nii.gz",
    "stage1": "stage1.nii.gz",
    "flow_magnitude": "flow_magnitude_mm.nii.gz",
    "reference_prealigned": "reference_prealigned.nii.gz",
}


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, else the CPU; Apple MPS only when asked for (``mps``).

    MPS is opt-in: the streaming window attention and the grid sampling of the flows have
    not been checked on MPS (no Apple machine here), so ``auto`` does not pick it.

    Raises:
        InputError: unknown name, or the requested accelerator is not available.
    """
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(f"device must be auto, cpu, cuda[:N] or mps, got {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is usable (torch reports none); use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("device 'mps' requested but Apple MPS is not available; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device must be auto, cpu, cuda[:N] or mps, got {name!r}")
    return device


#: ``--precision`` choices: ``auto`` is mixed precision on CUDA (bfloat16 where the GPU
#: has it, else float16), bfloat16 on a CPU that computes it natively
#: (:func:`cpu_has_native_bfloat16`), float32 elsewhere.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (x86 AVX512-BF16 or AMX), where oneDNN
    runs bfloat16 convolutions natively: about 1.7x faster than float32 for Stage 1
    (docs/benchmarks.md). Elsewhere autocast emulates bfloat16 and gains nothing.

    torch exposes the CPU's features only as private helpers of ``torch.cpu``; a torch
    without them reports no native bfloat16, so ``auto`` stays float32 there.
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def select_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the heavy convolutions, or None for plain float32.

    Inputs, flows and every network's output stay float32 whatever is chosen (each
    network's output layer runs in float32, :func:`~.networks.blocks.float32_head`).
    Reduced precision on the CPU is allowed (``bfloat16``, as tests run the CUDA path);
    ``auto`` picks it on a CPU with native bfloat16, where the bundled MR model's
    pseudo-CT moved by 0.76 HU on average (docs/benchmarks.md) for a 1.3x faster run.

    Raises:
        InputError: unknown name, or float16 asked for on the CPU (autocast has none there).
    """
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bfloat16() else None
    elif name == "float32":
        return None
    elif name == "bfloat16":
        return torch.bfloat16
    elif name == "float16":
        if device.type == "cpu":
            raise InputError("precision float16 needs a GPU; use bfloat16 or float32 on the CPU")
        return torch.float16
    else:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")


@dataclass
class PipelineResult:
    """Everything a run produced, on the input's grid; nothing is on disk yet."""

    pseudo_ct: sitk.Image
    reference_prealigned: sitk.Image
    transform: sitk.Transform
    stage1: sitk.Image | None = None
    flow_magnitude: sitk.Image | None = None
    timings: dict[str, float] = field(default_factory=dict)
    method: str = "rbg"
    device: str = "cpu"
    precision: str = "float32"
    batch_size: int = 0
    canvas: dict[str, Any] = field(default_factory=dict)
    field_of_view: dict[str, Any] = field(default_factory=dict)
    deformation: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Pipeline:
    """Load a method (and its model) once; make pseudo-CTs for many (input, reference CT) pairs.

    Args:
        model: installed model name, model directory, or None for the default model of
            ``method`` and ``modality``.
        method: a name of :data:`~RegisterByGenerationLib.methods.METHODS`, or None for
            the model's own method (``model.json``).
        modality: ``"mr"`` or ``"cbct"``, the kind of input image; must match the model.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        batch_size: slices (or 3-D windows) per forward pass; None chooses one (and, for
            slices, halves it on CUDA out-of-memory errors).
        prealign: rigidly pre-align the reference CT to the input (mutual information).
        seed: seed of the pre-alignment's (and classical registrations') sampling.
        precision: one of :data:`PRECISIONS` (see :func:`select_precision`).
        threads: threads of the rigid pre-alignment (None: one, bit-reproducible; the
            CLI passes its ``--threads``, the networks' thread count).
        refine: ``"none"``, or ``"demons"``: the pre-aligned reference registered onto the
            generated pseudo-CT by mono-modal demons becomes the pseudo-CT
            (:mod:`~RegisterByGenerationLib.refine`); for generative methods only.

    Raises:
        ModelError: the model is missing, corrupt, or made for another method or modality.
        InputError: an unknown method, device, modality or precision, a model given to a
            classical method, refine for a classical method, or a batch size below 1.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        method: str | None = None,
        modality: str = "mr",
        device: str = "auto",
        batch_size: int | None = None,
        prealign: bool = True,
        seed: int = 0,
        precision: str = "auto",
        refine: str = "none",
        threads: int | None = None,
    ) -> None:
        if modality not in ("mr", "cbct"):
            raise InputError(f"modality must be 'mr' or 'cbct', got {modality!r}")
        if refine not in REFINEMENTS:
            raise InputError(f"refine must be one of {', '.join(REFINEMENTS)}, got {refine!r}")
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        method_class, self.info = resolve(method, model, modality)
        if refine != "none" and not method_class.generative:
            raise InputError(f"--refine {refine} refines a generated pseudo-CT; method {method_class.name} registers the reference CT itself")
        self.refine = refine
        self.threads = threads
        self.modality = modality
        self.device = select_device(device)
        self.autocast_dtype = select_precision(precision, self.device)
        self.method: Method = method_class(self.info, device=self.device, autocast_dtype=self.autocast_dtype, batch_size=batch_size, threads=threads)
        self.batch_size = batch_size
        self.prealign = prealign
        self.seed = seed

    @property
    def name(self) -> str:
        """What runs: the model's name, or the method's for a method without a model."""
        return self.info.name if self.info is not None else self.method.name

    def run(
        self,
        input_image: sitk.Image,
        reference_ct: sitk.Image,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        keep_intermediate: bool = False,
        input_name: str = "input",
        reference_name: str = "reference",
    ) -> PipelineResult:
        """Make the pseudo-CT of ``input_image`` from ``reference_ct``.

        ``input_name`` and ``reference_name`` (e.g. the files' paths) start the messages
        of the input checks.

        Returns:
            A :class:`PipelineResult`; ``pseudo_ct`` is int16 HU with exactly the input's
            size, spacing, origin and direction.

        Raises:
            InputMismatchError: the images do not overlap physically, the input is a
                label map, the reference is not a CT in HU, an MR input looks like a CT,
                or the input does not suit the method (e.g. too few slices for a 3-D one).
            InvalidImageError: the case would not fit in RAM.
            Cancelled: ``cancel`` was set; nothing is returned or written.
        """
        report = progress or (lambda fraction, stage, message="": None)
        timings: dict[str, float] = {}

        def checkpoint(stage: str) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"stopped before {stage}")

        warnings = self.method.check(input_image, input_name=input_name)
        for warning in warnings:
            logger.warning(warning)
        check_modalities(input_image, reference_ct, self.modality, input_name=input_name, reference_name=reference_name)
        check_overlap(input_image, reference_ct, fixed_name=input_name, moving_name=reference_name)  # also without pre-alignment
        checkpoint("pre-alignment")
        start = time.perf_counter()
        if self.prealign:
            report(0.0, "prealign", "rigid mutual-information registration of the reference CT")
        prealign_progress = SubProgress(report, 0.0, 0.15)
        transform, reference_on_input = prealign_reference(
            input_image, reference_ct, modality=self.modality, prealign=self.prealign, seed=self.seed, threads=self.threads,
            progress=lambda fraction, message: prealign_progress(fraction, "prealign", message),
        )  # fmt: skip
        timings["prealign_s"] = time.perf_counter() - start

        checkpoint(f"method {self.method.name}")
        start = time.perf_counter()
        inputs = MethodInputs(input_image, reference_ct, reference_on_input, self.modality, self.seed, keep_intermediate,
                              SubProgress(report, 0.15, 0.95), checkpoint, transform)  # fmt: skip
        output = self.method.generate(inputs)
        timings["generate_s"] = time.perf_counter() - start
        generated = output.image
        if self.refine == "demons":
            checkpoint("the demons refinement")
            report(0.95, "refine", "registering the reference CT onto the generated CT (demons)")
            start = time.perf_counter()
            generated, _ = register_onto_generated(generated, reference_on_input, reference_ct, transform)
            timings["refine_s"] = time.perf_counter() - start
        checkpoint("postprocessing")
        report(0.95, "postprocess", "restoring the input grid")
        start = time.perf_counter()
        if output.complete:
            pseudo_ct = _to_int16_hu(generated)
            fov_facts: dict[str, Any] = {"outside": f"none: method {self.method.name} registers the reference CT over the whole grid"}
        else:
            fov, fill = field_of_view(input_image)
            inside = float(np.mean(sitk.GetArrayViewFromImage(fov)))
            pseudo_ct = _to_int16_hu(blend_outside(generated, reference_on_input, fov, FOV_BLEND_MM))
            fov_facts = {
                "fraction_of_grid": inside,
                "fill_value": fill,
                "outside": "pre-aligned reference CT" if inside < 1 else "none: the input covers its whole grid",
                "blend_mm": FOV_BLEND_MM,
            }
        result = PipelineResult(
            pseudo_ct=pseudo_ct,
            reference_prealigned=reference_on_input,
            transform=transform,
            method=self.method.name,
            device=str(self.device),
            precision="float32" if self.autocast_dtype is None else str(self.autocast_dtype).removeprefix("torch."),
            batch_size=int(output.details.get("batch_size", 0)),
            canvas=output.details.get("canvas", {}),
            field_of_view=fov_facts,
            deformation=deformation_statistics(output.displacement) if output.displacement is not None else {},
            warnings=warnings,
        )
        if keep_intermediate:
            result.stage1, result.flow_magnitude = output.stage1, output.flow_magnitude
        timings["postprocess_s"] = time.perf_counter() - start
        result.timings = timings
        report(1.0, "done", "pseudo-CT ready")
        return result


def _to_int16_hu(image: sitk.Image) -> sitk.Image:
    array = np.clip(np.rint(sitk.GetArrayViewFromImage(image)), -32768, 32767).astype(np.int16)
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(image)
    return result


#: Width (mm) of the seam inside the input's field of view where the pseudo-CT fades
#: into the pre-aligned reference CT that fills the rest (DESIGN §3 step 8).
FOV_BLEND_MM = 10.0
