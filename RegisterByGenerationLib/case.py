"""One case from files to files: what ``rbg run``, ``rbg batch`` and ``rbg demo`` share.

:func:`process_case` reads the input and the reference CT, runs the
:class:`~RegisterByGenerationLib.pipeline.Pipeline`, segments the bones, and writes the
pseudo-CT, the bone masks, ``overview.png`` and ``report.json``. Every file is first
written to a hidden staging folder inside the output folder and moved into place only
when all of them are complete, so a failure or a cancel leaves the output folder as it
was. ``pseudo_ct.nii.gz`` is moved last: its presence marks a finished case.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from .errors import Cancelled, InputMismatchError, OutputError
from .io import check_writable_dir, missing_folders, read_image, remove_empty_folders, write_image
from .mask import body_mask
from .pipeline import OUTPUT_FILES, Pipeline, PipelineResult
from .progress import ProgressCallback, SubProgress

__all__ = ["BONE_METHODS", "CaseOutputs", "process_case", "REPORT_FILE", "OVERVIEW_FILE"]

BONE_METHODS = ("auto", "totalsegmentator", "threshold", "none")
REPORT_FILE = "report.json"
OVERVIEW_FILE = "overview.png"


@dataclass
class CaseOutputs:
    """What :func:`process_case` wrote and computed."""

    paths: dict[str, Path]
    report: dict[str, Any]
    result: PipelineResult = field(repr=False)
    bones: Any = field(default=None, repr=False)


def process_case(
    pipeline: Pipeline,
    input_path: str | os.PathLike,
    reference_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    bones: str = "auto",
    save_intermediate: bool = False,
    overview: bool = True,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    input_series: str | None = None,
    reference_series: str | None = None,
) -> CaseOutputs:
    """Generate, segment and report one case into ``out_dir``.

    Args:
        pipeline: a loaded :class:`~RegisterByGenerationLib.pipeline.Pipeline`.
        input_path, reference_path: the MR/CBCT and the reference CT (files or DICOM folders).
        out_dir: output folder, created if needed.
        bones: ``auto``, ``totalsegmentator``, ``threshold`` or ``none``.
        save_intermediate: also write the Stage-1 image, flow magnitude and pre-aligned reference.
        overview: render ``overview.png``.
        progress: ``progress(fraction, stage, message)``.
        cancel: set it to stop between steps; nothing is written then.
        input_series, reference_series: the DICOM Series Instance UID to read when the
            input or the reference is a folder of several series.

    Returns:
        The written paths (keys: ``pseudo_ct``, ``labelmap``, ``segmentation``,
        ``overview``, ``report``, and the intermediate ones) and the report.

    Raises:
        InputError: unreadable or unsuitable inputs (a subclass says which), including one
            file given as both. OutputError: ``out_dir`` unwritable, or the disk fills.
        ModelError: TotalSegmentator requested but not usable. Cancelled: ``cancel`` was set.
    """
    from .bones import segment_bones, write_bone_outputs
    from .bones.totalsegmentator import check_totalsegmentator
    from .overview import render_overview
    from .report import build_report, write_report

    if bones not in BONE_METHODS:
        raise ValueError(f"bones must be one of {BONE_METHODS}, got {bones!r}")
    input_image = read_image(input_path, series=input_series)
    reference_ct = read_image(reference_path, series=reference_series)
    if os.path.samefile(input_path, reference_path) and input_series == reference_series:
        raise InputMismatchError(f"{reference_path}: the same file as the input {input_path}; the reference must be the patient's CT")
    if bones == "totalsegmentator":
        check_totalsegmentator()  # fail before minutes of work, not after
    out_dir = check_writable_dir(out_dir, create=False)  # created only once there is something to write
    report = progress or (lambda fraction, stage, message="": None)

    result = pipeline.run(input_image, reference_ct, progress=SubProgress(report, 0.0, 0.85), cancel=cancel, keep_intermediate=save_intermediate,
                          input_name=str(input_path), reference_name=str(reference_path))  # fmt: skip
    # The pseudo-CT's body mask, computed once for the threshold bones and the report's metrics.
    start = time.perf_counter()
    body = body_mask(result.pseudo_ct, modality="ct")
    timings = {"body_mask_s": time.perf_counter() - start}
    bone_result = None
    if bones != "none":
        if cancel is not None and cancel.is_set():
            raise Cancelled("stopped before bone segmentation")
        report(0.85, "bones", f"bone segmentation ({bones})")
        start = time.perf_counter()
        bone_result = segment_bones(result.pseudo_ct, bones, device=pipeline.device, body=body)
        timings["bones_s"] = time.perf_counter() - start

    report(0.93, "report", "writing outputs, overview and report")
    created = missing_folders(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=".rbg-staging-", dir=check_writable_dir(out_dir)))
    moved: list[Path] = []
    try:
        staged = _write_images(result, staging, save_intermediate)
        if bone_result is not None:
            staged.update(write_bone_outputs(bone_result.labels, staging))
        if overview:
            labels = bone_result.labels if bone_result is not None else None
            staged["overview"] = render_overview(input_image, result.reference_prealigned, result.pseudo_ct, labels, staging / OVERVIEW_FILE, modality=pipeline.modality)
        final = {name: out_dir / path.name for name, path in staged.items()}
        final["report"] = out_dir / REPORT_FILE
        run_report = build_report(
            input_image,
            reference_ct,
            result,
            model=pipeline.info,
            input_path=input_path,
            reference_path=reference_path,
            modality=pipeline.modality,
            bones=bone_result,
            mask=body if sitk.GetArrayViewFromImage(body).any() else None,  # None: the report's error names the pseudo-CT
            extra_timings=timings,
            outputs=final,
        )
        staged["report"] = write_report(run_report, staging / REPORT_FILE)
        if cancel is not None and cancel.is_set():
            raise Cancelled("stopped before the outputs were moved into place")
        for name in sorted(staged, key=lambda n: n == "pseudo_ct"):  # pseudo_ct last: it marks completion
            os.replace(staged[name], final[name])
            moved.append(final[name])
    except BaseException as error:
        for path in moved:  # half a set of outputs is worse than none
            path.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty_folders(created)
        if isinstance(error, OSError):  # a full disk or a vanished folder while writing
            raise OutputError(f"{out_dir}: cannot write the outputs ({error.strerror or error})") from error
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report(1.0, "written", f"outputs written to {out_dir}")
    return CaseOutputs(paths=final, report=run_report, result=result, bones=bone_result)


def _write_images(result: PipelineResult, folder: Path, save_intermediate: bool) -> dict[str, Path]:
    images = {"pseudo_ct": result.pseudo_ct}
    if save_intermediate:
        images.update(stage1=result.stage1, flow_magnitude=result.flow_magnitude, reference_prealigned=result.reference_prealigned)
    return {name: write_image(image, folder / OUTPUT_FILES[name]) for name, image in images.items() if image is not None}  # a method may have no Stage 1 or flow
