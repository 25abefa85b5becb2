"""Pelvic bone masks with TotalSegmentator, checked up to the point where it would run.

TotalSegmentator (Wasserthal et al., Radiology: AI 2023; ``pip install TotalSegmentator``)
is an nnU-Net that labels 117 structures in CT. We call its Python API with the task
``total`` restricted (``roi_subset``) to the pelvic bones of :data:`BONE_LABELS`, one
multilabel image (``ml=True``), and map its class ids onto our label values by class name.

It is optional. It is never installed or downloaded by this library: the package and its
weights must be put in place by the user, and every check here happens *before* anything
is called, so a missing piece gives an actionable :class:`ModelError` at once, never a
download attempt or a hang. How to set it up (checked against TotalSegmentator 2.18.0):

1. ``pip install TotalSegmentator==2.18.0`` (in Slicer: the TotalSegmentator extension, or
   ``slicer.util.pip_install``).
2. On a machine with internet: ``totalseg_download_weights -t total_fast`` (for ``fast``;
   ``-t total`` for the full-resolution models). The weights land in
   ``~/.totalsegmentator/nnunet/results``; copy that folder to the offline machine, or point
   ``TOTALSEG_HOME_DIR`` (weights in ``$TOTALSEG_HOME_DIR/nnunet/results``) or
   ``TOTALSEG_WEIGHTS_PATH`` (the results folder itself) at it.
3. Offline machines: set ``"send_usage_stats": false`` in
   ``$TOTALSEG_HOME_DIR/config.json``; otherwise TotalSegmentator tries to post anonymous
   usage statistics after each run (it gives up after 5 s).

The ``total`` task (v2 class map, unchanged from TotalSegmentator 2.0.0 to 2.18.0, file
``totalsegmentator/map_to_binary.py``) numbers our classes 25 sacrum, 27 vertebrae_L5,
75 femur_left, 76 femur_right, 77 hip_left, 78 hip_right. With ``roi_subset`` it first
runs its 6 mm model (dataset 298) to crop, then the 3 mm (297, ``fast``) or the five
1.5 mm models (291-295).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..bone_labels import BONE_LABELS, PELVIC_LABELS
from ..errors import ModelError

__all__ = [
    "TOTALSEGMENTATOR_VERSION",
    "TOTAL_TASK_CLASS_IDS",
    "ROI_SUBSET",
    "required_weight_folders",
    "totalsegmentator_weights_dir",
    "totalsegmentator_status",
    "check_totalsegmentator",
    "totalsegmentator_kwargs",
    "totalsegmentator_device",
    "map_totalsegmentator_labels",
    "run_totalsegmentator",
]

logger = logging.getLogger(__name__)

#: The TotalSegmentator release whose class map, weights layout and API we checked.
TOTALSEGMENTATOR_VERSION = "2.18.0"

#: Class ids of our bones in TotalSegmentator's ``total`` task (v2 class map).
TOTAL_TASK_CLASS_IDS: dict[str, int] = {
    "sacrum": 25,
    "vertebrae_L5": 27,
    "femur_left": 75,
    "femur_right": 76,
    "hip_left": 77,
    "hip_right": 78,
}

#: ``roi_subset`` passed to TotalSegmentator: the pelvic classes of :data:`BONE_LABELS`.
ROI_SUBSET: list[str] = list(PELVIC_LABELS.values())

# nnU-Net result folders that ``totalsegmentator(task="total", roi_subset=...)`` loads
# (map_tasks_config.TASK_ID_WEIGHTS_CONFIGS of 2.18.0); 298 is the 6 mm cropping model.
_CROP_MODEL = "Dataset298_TotalSegmentator_total_6mm_1559subj"
_FAST_MODEL = "Dataset297_TotalSegmentator_total_3mm_1559subj"
_FULL_MODELS = (
    "Dataset291_TotalSegmentator_part1_organs_1559subj",
    "Dataset292_TotalSegmentator_part2_vertebrae_1532subj",
    "Dataset293_TotalSegmentator_part3_cardiac_1559subj",
    "Dataset294_TotalSegmentator_part4_muscles_1559subj",
    "Dataset295_TotalSegmentator_part5_ribs_1559subj",
)


def required_weight_folders(fast: bool = True) -> list[str]:
    """Names of the nnU-Net result folders the pelvic-bone run needs (``fast`` or full)."""
    return [_FAST_MODEL, _CROP_MODEL] if fast else [*_FULL_MODELS, _CROP_MODEL]


def totalsegmentator_weights_dir() -> Path:
    """Where TotalSegmentator looks for its weights, by its own rules (``config.get_weights_dir``).

    ``$TOTALSEG_WEIGHTS_PATH`` if set; else ``$TOTALSEG_HOME_DIR/nnunet/results``; else
    ``~/.totalsegmentator/nnunet/results`` (``/tmp/.totalsegmentator`` when the home
    folder is ``/``, as in some containers).
    """
    if "TOTALSEG_WEIGHTS_PATH" in os.environ:
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    if "TOTALSEG_HOME_DIR" in os.environ:
        home = Path(os.environ["TOTALSEG_HOME_DIR"])
    else:
        home = (Path("/tmp") if str(Path.home()) == "/" else Path.home()) / ".totalsegmentator"
    return home / "nnunet" / "results"


def _package_installed() -> bool:
    return importlib.util.find_spec("totalsegmentator") is not None


def _missing_weights(fast: bool) -> list[str]:
    """Required folders that are absent or hold no ``checkpoint_final.pth``.

    TotalSegmentator itself only tests that the folder exists (and downloads it when it
    does not); a folder without a checkpoint is a half-finished copy and would fail later.
    """
    root = totalsegmentator_weights_dir()
    missing = []
    for name in required_weight_folders(fast):
        folder = root / name
        if not folder.is_dir() or next(folder.rglob("checkpoint_final.pth"), None) is None:
            missing.append(name)
    return missing


def totalsegmentator_status(fast: bool = True) -> tuple[bool, str]:
    """Whether TotalSegmentator can run here without downloading anything, and why not.

    Returns:
        ``(True, "")`` when the package is importable and every weight folder is present;
        else ``(False, reason)`` with an actionable one-line reason.
    """
    task = "total_fast" if fast else "total"
    if not _package_installed():
        return False, (
            f"TotalSegmentator is not installed: pip install TotalSegmentator=={TOTALSEGMENTATOR_VERSION}; "
            f"then download the weights with `totalseg_download_weights -t {task}` on a machine with internet "
            f"and copy them to {totalsegmentator_weights_dir()} (or set TOTALSEG_HOME_DIR / TOTALSEG_WEIGHTS_PATH)"
        )
    missing = _missing_weights(fast)
    if missing:
        return False, (
            f"TotalSegmentator weights missing in {totalsegmentator_weights_dir()} ({', '.join(missing)}): "
            f"run `totalseg_download_weights -t {task}` on a machine with internet and copy its "
            "~/.totalsegmentator/nnunet/results here, or point TOTALSEG_HOME_DIR (weights in "
            "$TOTALSEG_HOME_DIR/nnunet/results) or TOTALSEG_WEIGHTS_PATH at them; nothing is downloaded at run time"
        )
    return True, ""


def check_totalsegmentator(fast: bool = True) -> None:
    """Raise :class:`ModelError` with the reason of :func:`totalsegmentator_status` unless usable."""
    usable, reason = totalsegmentator_status(fast)
    if not usable:
        raise ModelError(reason)


def totalsegmentator_device(device: Any = "cpu") -> str:
    """Translate a torch-style device (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``auto``) to
    TotalSegmentator's names (``cpu``, ``gpu``, ``gpu:1``, ``mps``).

    Raises:
        ValueError: an unknown device.
    """
    name = str(device)
    if name == "auto":
        import torch

        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name in ("cpu", "mps"):
        return name
    elif name == "cuda":
        return "gpu"
    elif name.startswith("cuda:") and name[5:].isdigit():
        return f"gpu:{name[5:]}"
    else:
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")


def totalsegmentator_kwargs(input_path: str | os.PathLike, output_path: str | os.PathLike, *, device: Any = "cpu", fast: bool = True) -> dict[str, Any]:
    """Keyword arguments of ``totalsegmentator.python_api.totalsegmentator`` for our bones.

    One multilabel NIfTI (``ml=True``) of the ``total`` task restricted to
    :data:`ROI_SUBSET`, quiet, single-threaded resampling and saving (we share the
    machine with the rest of the pipeline), no statistics or preview.
    """
    return {
        "input": Path(input_path),
        "output": Path(output_path),
        "ml": True,
        "task": "total",
        "roi_subset": list(ROI_SUBSET),
        "fast": bool(fast),
        "device": totalsegmentator_device(device),
        "quiet": True,
        "nr_thr_resamp": 1,
        "nr_thr_saving": 1,
        "statistics": False,
        "preview": False,
    }


def map_totalsegmentator_labels(ts_labels: np.ndarray) -> np.ndarray:
    """Map TotalSegmentator ``total``-task class ids to our label values (by class name).

    Args:
        ts_labels: integer label array of any shape, TotalSegmentator class ids.

    Returns:
        uint8 array of the same shape: :data:`BONE_LABELS` values, 0 for every other class.
    """
    ts_labels = np.asarray(ts_labels)
    lookup = np.zeros(max(TOTAL_TASK_CLASS_IDS.values()) + 1, dtype=np.uint8)
    for value, name in PELVIC_LABELS.items():
        lookup[TOTAL_TASK_CLASS_IDS[name]] = value
    inside = (ts_labels >= 0) & (ts_labels < lookup.size)
    out = np.zeros(ts_labels.shape, dtype=np.uint8)
    out[inside] = lookup[ts_labels[inside].astype(np.int64)]
    return out


def run_totalsegmentator(pseudo_ct: sitk.Image, *, device: Any = "cpu", fast: bool = True) -> sitk.Image:
    """Segment the pelvic bones of ``pseudo_ct`` with TotalSegmentator.

    Args:
        pseudo_ct: CT-like volume in HU.
        device: torch-style device name (see :func:`totalsegmentator_device`).
        fast: the 3 mm model (minutes on a CPU) instead of the 1.5 mm models.

    Returns:
        uint8 label map with :data:`BONE_LABELS` values on ``pseudo_ct``'s grid.

    Raises:
        ModelError: the package or its weights are missing (checked before running), or
            TotalSegmentator failed.
    """
    check_totalsegmentator(fast)
    totalsegmentator_device(device)  # an unknown device fails before any work
    from totalsegmentator.python_api import totalsegmentator

    with tempfile.TemporaryDirectory(prefix="rbg-totalseg-") as tmp:
        ct_path, seg_path = Path(tmp) / "ct.nii.gz", Path(tmp) / "bones_ts.nii.gz"
        sitk.WriteImage(pseudo_ct, str(ct_path))
        kwargs = totalsegmentator_kwargs(ct_path, seg_path, device=device, fast=fast)
        try:
            totalsegmentator(**kwargs)
            ts_image = sitk.ReadImage(str(seg_path))
        except Exception as error:  # noqa: BLE001 - any failure of the third-party run
            raise ModelError(f"TotalSegmentator failed: {type(error).__name__}: {error}") from error
    labels = sitk.GetImageFromArray(map_totalsegmentator_labels(sitk.GetArrayFromImage(ts_image)))
    labels.CopyInformation(ts_image)
    # TotalSegmentator writes on the input grid via nibabel; resample (nearest) in case
    # its header round trip moved the geometry by rounding.
    return sitk.Resample(labels, pseudo_ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
