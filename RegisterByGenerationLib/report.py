"""The run report (``report.json``): what went in, what ran, how long, how much memory, and
the metrics that need no ground truth.

::

    report = build_report(input_image, reference_ct, result, model=pipeline.info,
                          input_path=mr_path, reference_path=ct_path, modality="mr",
                          bones=bone_result, outputs=paths)
    write_report(report, out_dir / "report.json")

Everything in the report is plain JSON (no NaN: a metric that is undefined is ``null``
and listed in ``"undefined_metrics"``), so any tool can read it. :func:`write_report`
writes through a temporary file and a rename.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from . import __version__
from .errors import OutputError, RbgError
from .io import atomic_path
from .prealign import orientation_change

if TYPE_CHECKING:  # imported for annotations only: the pipeline pulls in torch
    from .bones import BoneResult
    from .modelstore import ModelInfo
    from .pipeline import PipelineResult

__all__ = ["REPORT_FORMAT_VERSION", "REPORT_FILE", "image_geometry", "transform_summary", "peak_memory", "build_report", "write_report"]

logger = logging.getLogger(__name__)

REPORT_FORMAT_VERSION = 1
REPORT_FILE = "report.json"


def image_geometry(image: sitk.Image, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Geometry and intensity range of an image, as the report records it.

    Returns:
        ``path`` (or None), ``size`` (x, y, z voxels), ``spacing`` (mm), ``origin`` (mm,
        LPS), ``direction`` (row-major 3x3), ``orientation`` (DICOM code, e.g. ``"LPS"``),
        ``pixel_type``, ``extent_mm`` and ``intensity`` (min, 1st, 50th, 99th percentile,
        max; from every voxel up to 2 million, evenly strided beyond).
    """
    array = sitk.GetArrayViewFromImage(image)
    step = max(1, int(array.size // 2_000_000))
    values = np.asarray(array).ravel()[::step].astype(np.float64)
    p1, p50, p99 = np.percentile(values, [1, 50, 99]) if values.size else (math.nan,) * 3
    return {
        "path": None if path is None else str(path),
        "size": list(image.GetSize()),
        "spacing": [float(v) for v in image.GetSpacing()],
        "origin": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
        "orientation": sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()) if image.GetDimension() == 3 else None,
        "pixel_type": image.GetPixelIDTypeAsString(),
        "extent_mm": [float(n * s) for n, s in zip(image.GetSize(), image.GetSpacing())],
        "intensity": {"min": float(array.min()), "p1": float(p1), "p50": float(p50), "p99": float(p99), "max": float(array.max())},
    }


def transform_summary(transform: sitk.Transform | None) -> dict[str, Any] | None:
    """The pre-alignment transform: its kind, raw parameters and, for a rigid (Euler)
    transform, rotation angles in degrees and translation in mm.

    The transform maps points of the input's space to the reference CT's space (it is
    the one ``SimpleITK.Resample`` uses to bring the reference onto the input grid).
    """
    if transform is None:
        return None
    summary: dict[str, Any] = {
        "kind": transform.GetName(),
        "parameters": [float(v) for v in transform.GetParameters()],
        "fixed_parameters": [float(v) for v in transform.GetFixedParameters()],
    }
    if transform.GetName() == "Euler3DTransform":
        euler = sitk.Euler3DTransform(transform)
        summary["rotation_deg"] = [math.degrees(a) for a in (euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ())]
        summary["translation_mm"] = [float(v) for v in euler.GetTranslation()]
        summary["center_mm"] = [float(v) for v in euler.GetCenter()]
        summary["identity"] = bool(np.allclose(euler.GetParameters(), 0.0))
        # The half turn (if any) between the two scanners' declared frames that the
        # multi-start pre-alignment found; "none" for the usual case.
        summary["orientation_change"] = orientation_change(euler)
    return summary


def peak_memory(device: Any = None) -> dict[str, float | None]:
    """Peak memory of this process so far, in MiB.

    ``peak_rss_mib``: the resident set's high-water mark (``resource.getrusage``; on
    Windows, psutil's peak working set). ``cuda_max_allocated_mib``: PyTorch's
    ``max_memory_allocated`` on ``device`` when it is a CUDA device (None otherwise).
    """
    peak_rss: float | None = None
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports kibibytes, macOS bytes.
        peak_rss = peak / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        peak_rss = getattr(info, "peak_wset", info.rss) / 2**20
    cuda: float | None = None
    if device is not None and str(device).startswith("cuda") and "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            cuda = torch.cuda.max_memory_allocated(torch.device(str(device))) / 2**20
    return {"peak_rss_mib": None if peak_rss is None else round(peak_rss, 1), "cuda_max_allocated_mib": None if cuda is None else round(cuda, 1)}


def build_report(
    input_image: sitk.Image,
    reference_ct: sitk.Image,
    result: PipelineResult,
    *,
    model: ModelInfo | dict[str, Any] | None = None,
    input_path: str | os.PathLike | None = None,
    reference_path: str | os.PathLike | None = None,
    modality: str | None = None,
    bones: BoneResult | None = None,
    mask: sitk.Image | None = None,
    metrics: dict[str, float] | None = None,
    extra_timings: dict[str, float] | None = None,
    outputs: dict[str, str | os.PathLike] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The report of one run, as a JSON-ready dict.

    Args:
        input_image: the MR/CBCT as read.
        reference_ct: the reference CT as read (before pre-alignment).
        result: the :class:`~RegisterByGenerationLib.pipeline.PipelineResult` (pseudo-CT,
            pre-alignment transform, per-stage timings, device, batch size, canvas).
        model: the model's :class:`~RegisterByGenerationLib.modelstore.ModelInfo` (its
            ``summary()`` is recorded: name, method, version, sha256, ...) or such a
            dict; None for a method without a model (``result.method`` names it).
        input_path, reference_path: where the images came from.
        modality: ``"mr"`` or ``"cbct"``.
        bones: the bone segmentation, if one ran (method, fallback note, volumes).
        mask: body mask on the input grid for the metrics (else computed from the pseudo-CT).
        metrics: metrics already computed; when None, the no-truth metrics of
            :func:`~RegisterByGenerationLib.metrics.evaluate_images` (sharpness, TV-z,
            gradient correlation and NMI with the input) are computed here. A metric
            failure is recorded under ``"metrics_error"``, never raised: the pseudo-CT
            exists by then and the report must still be written.
        extra_timings: more stage timings in seconds (e.g. ``{"bones_s": 3.1}``).
        outputs: output files by kind.
        warnings: messages for the user (e.g. input checks).

    Returns:
        The report dict (see the module docstring); ``write_report`` writes it.
    """
    from .metrics import unit_of

    report: dict[str, Any] = {
        "format": "RegisterByGeneration run report",
        "format_version": REPORT_FORMAT_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "library": _library_versions(),
        "inputs": {
            "input": {**image_geometry(input_image, input_path), "modality": modality},
            "reference_ct": image_geometry(reference_ct, reference_path),
        },
        "method": result.method,
        "model": model.summary() if hasattr(model, "summary") else (dict(model) if model is not None else None),
        "device": str(result.device),
        "precision": result.precision,
        "batch_size": int(result.batch_size),
        "canvas": result.canvas,
        "field_of_view": result.field_of_view,
        "deformation": result.deformation or None,
        "prealignment": transform_summary(result.transform),
    }
    timings = {key: round(float(value), 3) for key, value in {**result.timings, **(extra_timings or {})}.items()}
    report["timings_s"] = timings
    report["total_s"] = round(sum(timings.values()), 3)
    report["memory"] = peak_memory(result.device)
    report["pseudo_ct"] = image_geometry(result.pseudo_ct)
    report["bones"] = bones.summary() if bones is not None else {"method": "none", "note": "bone segmentation not requested"}

    if metrics is None:
        from .metrics import evaluate_images

        try:
            metrics = evaluate_images(result.pseudo_ct, input_image=input_image, mask=mask)
        except (RbgError, ValueError) as error:
            logger.warning("metrics not computed: %s", error)
            report["metrics_error"] = str(error)
            metrics = {}
    clean, undefined = {}, []
    for name, value in metrics.items():
        value = float(value)
        if math.isfinite(value):
            clean[name] = value
        else:
            clean[name] = None
            undefined.append(name)
    report["metrics"] = clean
    report["metric_units"] = {name: _unit(unit_of, name) for name in clean}
    if undefined:
        report["undefined_metrics"] = undefined
    report["outputs"] = {key: str(path) for key, path in (outputs or {}).items()}
    report["warnings"] = [*result.warnings, *(warnings or [])]
    return report


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``report`` as indented JSON, atomically (temporary file, then rename).

    Raises:
        ValueError: the report holds values JSON cannot represent (NaN, objects).
        OutputError: the file cannot be written.
    """
    path = Path(path)
    try:
        text = json.dumps(report, indent=2, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"report is not plain JSON: {error}") from error
    if not path.parent.is_dir():
        raise OutputError(f"{path}: output folder {path.parent} does not exist")
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    except OSError as error:
        raise OutputError(f"{path}: cannot be written ({error.strerror or error})") from error
    return path


def _unit(unit_of, name: str) -> str:
    try:
        return unit_of(name)
    except KeyError:
        return ""


def _library_versions() -> dict[str, Any]:
    versions: dict[str, Any] = {
        "RegisterByGeneration": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "SimpleITK": sitk.Version_VersionString(),
        "numpy": np.__version__,
    }
    if "torch" in sys.modules:
        versions["torch"] = sys.modules["torch"].__version__
    return versions
