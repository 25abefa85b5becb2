"""The bone label table shared by the phantoms, bone segmentation and the metrics.

Label values and names follow TotalSegmentator's class names, so a TotalSegmentator
result maps onto this table by name. Patient left is +x in LPS (the array's columns
run from the patient's right to the left after canonical reorientation).
"""

from __future__ import annotations

__all__ = ["BONE_LABELS", "PELVIC_LABELS", "GENERIC_BONE", "BONE_COLORS", "BACKGROUND", "label_of"]

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
    7: "bone",
}

#: Label value of bone that is not one of the pelvic bones, or that cannot be told apart
#: (upper vertebrae, ribs; any bone when no pelvic landmark is found): one generic
#: segment rather than invented hip and femur labels. Not a TotalSegmentator class.
GENERIC_BONE = 7

#: The named pelvic bones (TotalSegmentator classes): every label but :data:`GENERIC_BONE`.
PELVIC_LABELS: dict[int, str] = {value: name for value, name in BONE_LABELS.items() if value != GENERIC_BONE}

#: Label value -> display colour (red, green, blue in [0, 1]); left and right differ.
BONE_COLORS: dict[int, tuple[float, float, float]] = {
    1: (0.89, 0.85, 0.55),
    2: (0.95, 0.72, 0.40),
    3: (0.56, 0.80, 0.90),
    4: (0.40, 0.60, 0.95),
    5: (0.85, 0.55, 0.75),
    6: (0.60, 0.85, 0.55),
    7: (0.80, 0.80, 0.80),
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
