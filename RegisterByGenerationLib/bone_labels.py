"""The bone label table shared by the phantoms, bone segmentation and the metrics.

Label values and names follow TotalSegmentator's class names, so a TotalSegmentator
result maps onto this table by name. Patient left is +x in LPS (the array's columns
run from the patient's right to the left after canonical reorientation).
"""

from __future__ import annotations

__all__ = ["BONE_LABELS", "BONE_COLORS", "BACKGROUND", "label_of"]

#: Label value of voxels that belong to no bone.
BACKGROUND = 0

#: Label value -> TotalSegmentator class name.
BONE_LABELS: dict[int, str] = {
    1: "hip_left",
    2: "hip_right",
    3: "femur_left",
    4: "femur_right",
    5: "sacrum",
    6: "vertebrae_L5",
}

#: Label value -> display colour (red, green, blue in [0, 1]); left and right differ.
BONE_COLORS: dict[int, tuple[float, float, float]] = {
    1: (0.89, 0.85, 0.55),
    2: (0.95, 0.72, 0.40),
    3: (0.56, 0.80, 0.90),
    4: (0.40, 0.60, 0.95),
    5: (0.85, 0.55, 0.75),
    6: (0.60, 0.85, 0.55),
}


def label_of(name: str) -> int:
    """The label value of a bone class name.

    Raises:
        ValueError: ``name`` is not in :data:`BONE_LABELS`.
    """
    for value, known in BONE_LABELS.items():
        if known == name:
            return value
    raise ValueError(f"name: unknown bone {name!r}; known: {', '.join(BONE_LABELS.values())}")
