"""Bone masks of the pseudo-CT: TotalSegmentator when it can run here, else a threshold method.

::

    result = segment_bones(pseudo_ct, "auto", device="cpu")
    print(result.method, result.note)            # "threshold", "TotalSegmentator is not installed: ..."
    write_bone_outputs(result.labels, "out/")    # bones.nii.gz, bones.seg.nrrd

Labels follow :data:`RegisterByGenerationLib.bone_labels.BONE_LABELS` (TotalSegmentator
class names) whatever the method, so the files, the Slicer segments and the metrics do
not depend on which method ran.

Modules: :mod:`.threshold` (always available), :mod:`.totalsegmentator` (optional,
checked before it runs), :mod:`.segfile` (``bones.nii.gz`` and ``bones.seg.nrrd``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..bone_labels import BONE_LABELS
from .segfile import BONE_FILES, BONE_TERMINOLOGY, bone_segmentation, write_bone_outputs
from .threshold import ThresholdSettings, threshold_bones
from .totalsegmentator import run_totalsegmentator, totalsegmentator_status

__all__ = [
    "METHODS",
    "BoneResult",
    "segment_bones",
    "write_bone_outputs",
    "bone_segmentation",
    "BONE_FILES",
    "BONE_TERMINOLOGY",
    "ThresholdSettings",
    "threshold_bones",
    "totalsegmentator_status",
]

#: Accepted values of ``method``.
METHODS = ("auto", "totalsegmentator", "threshold")


@dataclass
class BoneResult:
    """A bone label map and how it was made.

    Attributes:
        labels: uint8 label map on the pseudo-CT's grid, :data:`BONE_LABELS` values.
        method: the method that ran, ``"totalsegmentator"`` or ``"threshold"``.
        note: why ``auto`` fell back to the threshold method (empty otherwise).
        details: what the method found (threshold: landmarks in mm, missing bones,
            bone labelled generic in ml).
    """

    labels: sitk.Image
    method: str
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def volumes_ml(self) -> dict[str, float]:
        """Volume of every bone in ml (0 for a bone not found)."""
        array = sitk.GetArrayViewFromImage(self.labels)
        voxel_ml = float(np.prod(self.labels.GetSpacing())) / 1000.0
        counts = np.bincount(array.ravel(), minlength=max(BONE_LABELS) + 1)
        return {name: round(float(counts[value]) * voxel_ml, 2) for value, name in BONE_LABELS.items()}

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts for the run report."""
        return {"method": self.method, "note": self.note, "volumes_ml": self.volumes_ml(), "details": self.details}


def segment_bones(pseudo_ct: sitk.Image, method: str = "auto", *, device: Any = "cpu", fast: bool = True, body: sitk.Image | None = None) -> BoneResult:
    """Label the pelvic bones of a pseudo-CT.

    Args:
        pseudo_ct: 3D CT-like volume in HU, any orientation.
        method: ``"totalsegmentator"`` (fails with an actionable message when the package
            or its weights are missing), ``"threshold"``, or ``"auto"``: TotalSegmentator
            when its package and weights are present, else the threshold method, with
            the reason in ``BoneResult.note``.
        device: for TotalSegmentator: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``.
        fast: for TotalSegmentator: the 3 mm model (``--fast``) rather than 1.5 mm.
        body: for the threshold method: the pseudo-CT's body mask, if already computed.

    Returns:
        The :class:`BoneResult`; its label map is on ``pseudo_ct``'s exact grid.

    Raises:
        ValueError: unknown ``method`` or a non-3D image.
        ModelError: ``method="totalsegmentator"`` and TotalSegmentator is not usable or failed.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if pseudo_ct.GetDimension() != 3:
        raise ValueError(f"pseudo_ct must be a 3D image, got {pseudo_ct.GetDimension()}D")
    if method == "auto":
        usable, reason = totalsegmentator_status(fast)
        if usable:
            method = "totalsegmentator"
        else:
            labels, details = threshold_bones(pseudo_ct, body=body)
            return BoneResult(labels, "threshold", note=reason, details=details)
    if method == "totalsegmentator":
        labels = run_totalsegmentator(pseudo_ct, device=device, fast=fast)
        return BoneResult(labels, "totalsegmentator", details={"fast": bool(fast)})
    elif method == "threshold":
        labels, details = threshold_bones(pseudo_ct, body=body)
        return BoneResult(labels, "threshold", details=details)
    else:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
