"""Bone outputs: a plain label map and a 3D Slicer segmentation with standard terminology.

``bones.seg.nrrd`` is written with slicerio, one segment per bone of :data:`BONE_LABELS`
(segment id and name = the TotalSegmentator class name, label value = ours, our colour)
and a DICOM-style terminology entry, so Slicer shows the segments with their anatomical
meaning and they match what the SlicerTotalSegmentator extension produces.

Codes (SNOMED CT, scheme ``SCT``), as in SlicerTotalSegmentator's
``TotalSegmentator/Resources/totalsegmentator_snomed_mapping.csv`` and its
``SegmentationCategoryTypeModifier-TotalSegmentator.term.json`` (lassoan/
SlicerTotalSegmentator, May 2026); the femur, sacrum and the laterality modifiers are
also in Slicer's ``SegmentationCategoryTypeModifier-DICOM-Master.json``:

=================  ============================  =======================
bone               type                          type modifier
=================  ============================  =======================
hip_left/right     29836001 Hip                  7771000 Left / 24028007 Right
femur_left/right   71341001 Femur                7771000 Left / 24028007 Right
sacrum             54735007 Sacrum
vertebrae_L5       49668003 L5 vertebra
bone (generic)     272673000 Bone
=================  ============================  =======================

all in category 123037004 "Anatomical Structure". (24136001 is "Hip joint" in the DICOM
master list, not the hip bone; SlicerTotalSegmentator uses 29836001 "Hip" for it.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..bone_labels import BONE_COLORS, BONE_LABELS
from ..errors import OutputError
from ..io import atomic_path, check_writable_dir, write_image

__all__ = [
    "BONE_FILES",
    "TERMINOLOGY_CONTEXT",
    "ANATOMIC_CONTEXT",
    "BONE_TERMINOLOGY",
    "bone_segmentation",
    "write_bone_outputs",
]

#: File names written by :func:`write_bone_outputs`.
BONE_FILES = {"labelmap": "bones.nii.gz", "segmentation": "bones.seg.nrrd"}

#: Terminology context of the entries (the one SlicerTotalSegmentator uses for these types).
TERMINOLOGY_CONTEXT = "Segmentation category and type - Total Segmentator"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

_CATEGORY = ["SCT", "123037004", "Anatomical Structure"]
_LEFT = ["SCT", "7771000", "Left"]
_RIGHT = ["SCT", "24028007", "Right"]
_HIP = ["SCT", "29836001", "Hip"]
_FEMUR = ["SCT", "71341001", "Femur"]

#: Bone class name -> (type code, type modifier code or None); codes are [scheme, value, meaning].
BONE_TERMINOLOGY: dict[str, tuple[list[str], list[str] | None]] = {
    "hip_left": (_HIP, _LEFT),
    "hip_right": (_HIP, _RIGHT),
    "femur_left": (_FEMUR, _LEFT),
    "femur_right": (_FEMUR, _RIGHT),
    "sacrum": (["SCT", "54735007", "Sacrum"], None),
    "vertebrae_L5": (["SCT", "49668003", "L5 vertebra"], None),
    "bone": (["SCT", "272673000", "Bone"], None),  # bone the threshold method does not name
}


def _terminology(name: str) -> dict[str, Any]:
    """slicerio terminology dict of a bone (see ``slicerio.segmentation.terminology_entry_from_string``)."""
    code_type, modifier = BONE_TERMINOLOGY[name]
    entry: dict[str, Any] = {
        "contextName": TERMINOLOGY_CONTEXT,
        "category": list(_CATEGORY),
        "type": list(code_type),
        "anatomicContextName": ANATOMIC_CONTEXT,
    }
    if modifier is not None:
        entry["typeModifier"] = list(modifier)
    return entry


def bone_segmentation(labels: sitk.Image) -> dict[str, Any]:
    """The slicerio segmentation dict of a bone label map (voxels in ``[i, j, k]`` order).

    Every bone of :data:`BONE_LABELS` gets a segment, an empty one too (extent
    ``0 -1 0 -1 0 -1``), so readers always find all names; the label values are ours.

    Raises:
        ValueError: ``labels`` is not 3D or holds values that are not bone labels.
    """
    if labels.GetDimension() != 3:
        raise ValueError(f"labels must be a 3D label map, got {labels.GetDimension()}D")
    array = sitk.GetArrayFromImage(labels)
    unknown = sorted(set(np.unique(array).tolist()) - set(BONE_LABELS) - {0})
    if unknown:
        raise ValueError(f"labels holds values {unknown} that are not bone labels {sorted(BONE_LABELS)}")
    voxels = np.ascontiguousarray(array.transpose(2, 1, 0)).astype(np.uint8)  # [z,y,x] -> [i,j,k]
    direction = np.reshape(labels.GetDirection(), (3, 3))
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.asarray(labels.GetSpacing())[np.newaxis, :]
    ijk_to_lps[:3, 3] = labels.GetOrigin()
    segments = []
    for value, name in BONE_LABELS.items():
        indices = np.nonzero(voxels == value)
        extent = [int(v) for axis in indices for v in (axis.min(), axis.max())] if indices[0].size else [0, -1, 0, -1, 0, -1]
        segments.append(
            {
                "id": name,
                "name": name,
                "labelValue": int(value),
                "layer": 0,
                "color": [float(c) for c in BONE_COLORS[value]],
                "extent": extent,
                "terminology": _terminology(name),
                "status": "completed",
            }
        )
    return {
        "voxels": voxels,
        "ijkToLPS": ijk_to_lps,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": segments,
    }


def write_bone_outputs(labels: sitk.Image, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``bones.nii.gz`` (uint8 label map) and ``bones.seg.nrrd`` (Slicer segmentation).

    Both are written atomically (temporary name, then rename). The segmentation is built
    before anything is written, so bad labels leave no file behind.

    Args:
        labels: label map with :data:`BONE_LABELS` values (e.g. ``BoneResult.labels``).
        out_dir: output folder, created if needed.

    Returns:
        ``{"labelmap": path, "segmentation": path}``.

    Raises:
        ValueError: bad ``labels`` (see :func:`bone_segmentation`).
        OutputError: the folder or a file cannot be written.
    """
    import slicerio

    segmentation = bone_segmentation(labels)
    folder = check_writable_dir(out_dir)
    paths = {key: folder / name for key, name in BONE_FILES.items()}
    write_image(sitk.Cast(labels, sitk.sitkUInt8), paths["labelmap"])
    try:
        with atomic_path(paths["segmentation"]) as tmp:
            slicerio.write_segmentation(str(tmp), segmentation)
    except OSError as error:
        raise OutputError(f"{paths['segmentation']}: cannot be written ({error.strerror or error})") from error
    return paths
