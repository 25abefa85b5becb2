"""Pelvic bone labels from HU thresholds and anatomical landmarks; no model, always available.

What it does, step by step (on the canonical axial orientation, decisions in physical
LPS coordinates, so flipped or permuted directions give the same anatomy):

1. **Bone mask**: voxels above ``threshold_hu`` inside the body mask (:func:`body_mask`),
   a ~2 mm closing, holes up to ``max_hole_area_mm2`` filled in every axial slice (the
   marrow of the femoral shaft and of vertebral bodies; the pelvic cavity, far larger,
   stays open), and connected pieces below ``min_volume_mm3`` removed (calcifications,
   contrast specks).
2. **Landmarks**: the midline (median left-right position of the bone, then halfway
   between the femoral heads); on each side the femoral head as the thickest bone
   (maximum of the distance transform) more than 40 mm from the midline; the iliac
   crest as the top of the lateral bone connected to the iliac seeds; the discs as dips
   of the fraction of voxels above the threshold in a 20 mm box that follows the
   vertebral bodies up the midline, the L5/S1 disc being the one nearest to 3/4 of the
   way from the femoral heads to the crest.
3. **Seeds** where the anatomy is unambiguous: the core of each femoral head, the
   greater trochanter (lateral to and below the head) and the shaft far below; the iliac
   body and wing above the acetabulum, and the pubis and ischium medial to and below the
   head; the sacrum in the posterior midline below the L5/S1 disc, L5 between the L5/S1
   and L4/L5 discs, and the vertebrae above as "other bone".
4. **Marker watershed** (:func:`skimage.segmentation.watershed`) of the bone mask on the
   negated, lightly smoothed HU: each voxel joins the seed it reaches along the densest
   path, so neighbouring bones meet where bone is least dense: joint spaces, discs.

Measured against the phantoms' truth (``Testing/test_bones.py``), Dice per bone: 0.86-0.94
at 1.6 mm pixels, 0.70-0.87 at 2.1-2.3 mm (overall bone 0.90-0.93); at 3 mm the hip
joint space is lost to partial volume and part of the acetabulum goes to the femur
(femurs 0.68-0.72).

What it cannot do: tell bone from contrast-filled vessels or bowel and from metal (above
the threshold they count as bone, and touching a bone they join it); separate the
femoral head from the acetabulum where the joint space is not resolved (coarse voxels,
thin cartilage); count vertebrae (L5 is "the vertebra above the disc 3/4 of the way from
the femoral heads to the iliac crest": wrong for transitional anatomy, and where the
discs do not show, e.g. in osteoporotic bone at 3 mm, L5 is missed or misplaced by one
level); name bones without the femoral heads' region in the field of view. What it
cannot name it does not guess: upper vertebrae, ribs, bone no seed reaches, and every
bone of a volume without a femoral head (an abdomen) get the single generic label
:data:`~RegisterByGenerationLib.bone_labels.GENERIC_BONE` ("bone"), its volume
reported as ``generic_bone_ml``. Memory: about six float32 copies of the volume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.segmentation import watershed

from ..bone_labels import GENERIC_BONE, PELVIC_LABELS, label_of
from ..geometry import from_axial, to_axial
from ..mask import body_mask

__all__ = ["ThresholdSettings", "threshold_bones"]

logger = logging.getLogger(__name__)

_DISC_MARGIN_MM = 5.0  # seeds keep this far from a disc
_OTHER = 255  # seed label of bone that is not one of ours (upper vertebrae)
# In-plane 8-connectivity, nothing across slices: per-slice operations on a 3D array.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = True


@dataclass(frozen=True)
class ThresholdSettings:
    """Parameters of :func:`threshold_bones` (mm, mm², mm³, HU)."""

    threshold_hu: float = 150.0
    closing_radius_mm: float = 2.0
    max_hole_area_mm2: float = 1200.0
    min_volume_mm3: float = 1000.0
    min_head_radius_mm: float = 14.0
    head_min_offset_mm: float = 40.0

    def __post_init__(self) -> None:
        for name in ("closing_radius_mm", "max_hole_area_mm2", "min_volume_mm3", "min_head_radius_mm", "head_min_offset_mm"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not np.isfinite(self.threshold_hu):
            raise ValueError(f"threshold_hu must be finite, got {self.threshold_hu}")


@dataclass
class _Frame:
    """Physical coordinates (mm, LPS) of the voxel centres of an axial-oriented array."""

    shape: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray
    axes: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def of(cls, image: sitk.Image) -> _Frame:
        frame = cls(
            shape=image.GetSize()[::-1],
            spacing_zyx=image.GetSpacing()[::-1],
            origin=np.asarray(image.GetOrigin()),
            direction=np.reshape(image.GetDirection(), (3, 3)),
        )
        spacing = np.asarray(image.GetSpacing())
        # axes[c][d]: contribution of array axis d (z, y, x) to physical coordinate c.
        for c in range(3):
            per_axis = []
            for d, image_axis in enumerate((2, 1, 0)):
                step = frame.direction[c, image_axis] * spacing[image_axis]
                extent = [1, 1, 1]
                extent[d] = frame.shape[d]
                per_axis.append((step * np.arange(frame.shape[d], dtype=np.float32)).reshape(extent))
            frame.axes.append(per_axis)
        return frame

    def coordinate(self, c: int) -> np.ndarray:
        """Physical coordinate ``c`` (0 = x left, 1 = y posterior, 2 = z superior) of every voxel."""
        z, y, x = self.axes[c]
        return (np.float32(self.origin[c]) + z + y + x).astype(np.float32)

    def point(self, index_zyx) -> np.ndarray:
        index_xyz = np.asarray(index_zyx, dtype=float)[::-1]
        return self.origin + self.direction @ (np.asarray(self.spacing_zyx[::-1]) * index_xyz)


def threshold_bones(
    ct: sitk.Image, settings: ThresholdSettings | None = None, *, body: sitk.Image | None = None
) -> tuple[sitk.Image, dict[str, Any]]:
    """Label the pelvic bones of a CT (or pseudo-CT) by threshold, landmarks and watershed.

    Args:
        ct: 3D volume in HU, any orientation.
        settings: parameters; defaults suit adult pelvis CTs of 0.5-3 mm voxels.
        body: ``body_mask(ct, modality="ct")`` when the caller has it already (a run
            computes it once for the bones and the report); None computes it.

    Returns:
        ``(labels, info)``: a uint8 label map with :data:`BONE_LABELS` values on ``ct``'s
        grid, and a dict of what was found (landmarks in mm, missing pelvic bones, bone
        labelled generic in ml) for the report.

    Raises:
        ValueError: ``ct`` is not 3D, or ``body`` is not on its grid.
    """
    if ct.GetDimension() != 3:
        raise ValueError(f"ct must be a 3D image, got {ct.GetDimension()}D")
    if body is not None and body.GetSize() != ct.GetSize():
        raise ValueError(f"body must be on ct's grid {ct.GetSize()}, got size {body.GetSize()}")
    settings = settings or ThresholdSettings()
    axial = to_axial(sitk.Cast(ct, sitk.sitkFloat32))
    frame = _Frame.of(axial)
    voxel_mm3 = float(np.prod(frame.spacing_zyx))
    axial_body = body_mask(axial, modality="ct") if body is None else to_axial(sitk.Cast(body, sitk.sitkUInt8))
    bone = _bone_mask(axial, axial_body, frame, settings)
    labels = np.zeros(frame.shape, dtype=np.uint8)
    info: dict[str, Any] = {"threshold_hu": settings.threshold_hu, "bone_ml": float(bone.sum() * voxel_mm3 / 1000)}
    if bone.any():
        hu = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(axial, 1.0))
        seeds = _seeds(bone, sitk.GetArrayViewFromImage(axial), frame, settings, info)
        if seeds.any():
            # Elevation: negated, lightly smoothed HU. A voxel joins the seed it reaches
            # through the densest path, so bones meet where the path is least dense:
            # joint spaces (cartilage) and discs.
            elevation = -np.clip(hu, settings.threshold_hu - 200.0, 2000.0)
            grown = watershed(elevation, markers=seeds.astype(np.int32), mask=bone)
            labels = np.where(grown == _OTHER, 0, grown).astype(np.uint8)
        labels[bone & (labels == 0)] = GENERIC_BONE  # named by no seed: bone, but not a pelvic one we can tell
    info["missing"] = [name for value, name in PELVIC_LABELS.items() if not (labels == value).any()]
    info["generic_bone_ml"] = float((labels == GENERIC_BONE).sum() * voxel_mm3 / 1000)
    result = sitk.GetImageFromArray(labels)
    result.CopyInformation(axial)
    return from_axial(result, ct), info


def _bone_mask(axial: sitk.Image, body: sitk.Image, frame: _Frame, settings: ThresholdSettings) -> np.ndarray:
    """Threshold inside the body, closing, small holes filled per slice, small pieces removed."""
    bone_image = sitk.And(sitk.BinaryThreshold(axial, settings.threshold_hu, float("inf"), 1, 0), body != 0)
    radius = [int(round(settings.closing_radius_mm / s)) for s in axial.GetSpacing()]
    if any(radius):
        bone_image = sitk.BinaryMorphologicalClosing(bone_image, radius, sitk.sitkBall)
    bone = sitk.GetArrayFromImage(bone_image).astype(bool)
    bone = _fill_small_holes(bone, settings.max_hole_area_mm2 / (frame.spacing_zyx[1] * frame.spacing_zyx[2]))
    pieces, count = ndimage.label(bone, structure=np.ones((3, 3, 3)))
    if count:
        sizes = np.bincount(pieces.ravel()) * float(np.prod(frame.spacing_zyx))
        keep = sizes >= settings.min_volume_mm3
        keep[0] = False
        bone = keep[pieces]
    return bone


def _fill_small_holes(mask: np.ndarray, max_pixels: float) -> np.ndarray:
    """Fill, in every axial slice, the holes of at most ``max_pixels`` pixels.

    scipy's hole filling with an in-plane structure does all slices in one call; the
    array is padded with an empty slice at both ends so that the first and last slices
    are not "border" everywhere (which would leave their holes open).
    """
    padded = np.pad(mask, ((1, 1), (0, 0), (0, 0)))
    holes = ndimage.binary_fill_holes(padded, structure=_IN_PLANE)[1:-1] & ~mask
    hole_labels, count = ndimage.label(holes, structure=_IN_PLANE)
    if not count:
        return mask
    small = np.bincount(hole_labels.ravel()) <= max_pixels
    small[0] = False
    return mask | small[hole_labels]


def _seeds(bone: np.ndarray, raw: np.ndarray, frame: _Frame, settings: ThresholdSettings, info: dict[str, Any]) -> np.ndarray:
    """Seed labels (ours, and :data:`_OTHER`) where the anatomy is unambiguous."""
    seeds = np.zeros(bone.shape, dtype=np.uint8)
    x = frame.coordinate(0)
    bone_x = x[bone]
    midline = float(np.median(bone_x))
    distance = _distance_to_background(bone, frame.spacing_zyx)

    heads: dict[str, tuple[np.ndarray, float]] = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        lateral = bone & (sign * (x - midline) > settings.head_min_offset_mm)
        if not lateral.any():
            continue
        flat = int(np.argmax(np.where(lateral, distance, 0)))
        radius = float(distance.flat[flat])
        if radius < settings.min_head_radius_mm:
            continue
        heads[side] = (frame.point(np.unravel_index(flat, bone.shape)), radius)
    info["femoral_heads_mm"] = {side: [round(float(v), 1) for v in centre] for side, (centre, _) in heads.items()}
    if len(heads) == 2:
        midline = float(np.mean([centre[0] for centre, _ in heads.values()]))
    info["midline_x_mm"] = round(midline, 1)
    if not heads:
        logger.info("no femoral head found: pelvic landmarks unavailable, all bone labelled generic")
        return seeds

    y, z = frame.coordinate(1), frame.coordinate(2)
    head_z = float(np.mean([centre[2] for centre, _ in heads.values()]))
    head_y = float(np.mean([centre[1] for centre, _ in heads.values()]))
    head_offset = float(np.mean([abs(centre[0] - midline) for centre, _ in heads.values()]))

    crest_z = []
    for side, sign in (("left", 1.0), ("right", -1.0)):
        if side not in heads:
            continue
        centre, radius = heads[side]
        offset = sign * (x - midline)
        r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
        # Femur: the head's core; the greater trochanter and neck (lateral to the head,
        # below its centre, where no pelvic bone is); the shaft far below.
        core = r2 <= (0.3 * radius) ** 2
        trochanter = (sign * (x - centre[0]) > radius + 15.0) & (z < centre[2] - 0.5 * radius)
        shaft = (offset > settings.head_min_offset_mm) & (z < centre[2] - 100.0)
        seeds[bone & (core | trochanter | shaft)] = label_of(f"femur_{side}")
        # Hip bone: the iliac body and wing above the acetabular roof, lateral to the
        # sacro-iliac joints, below where the lowest ribs can reach.
        lateral = bone & (offset > 0.75 * head_offset)
        above = lateral & (z > centre[2] + radius + 5.0) & (z < centre[2] + 110.0)
        # ... and the pubis and ischium: medial to and below the femoral head, outside it
        # (and not the posterior midline, which is the coccyx). The head radius is capped
        # at an adult's 26 mm: a head merged with the acetabulum measures larger.
        head = min(radius, 26.0)
        medial = (offset > 15.0) & (offset < head_offset - 0.5 * head) & ((y < head_y + 20.0) | (offset > 30.0))
        below = medial & (z < centre[2] - 0.5 * head) & (z > centre[2] - 80.0) & (r2 > (head + 3.0) ** 2)
        seeds[above | (bone & below)] = label_of(f"hip_{side}")
        # The iliac crest: top of the lateral bone that connects to the acetabulum region.
        pieces, _ = ndimage.label(lateral & (z > centre[2] - radius), structure=np.ones((3, 3, 3)))
        ids = np.unique(pieces[above])
        ids = ids[ids > 0]
        if ids.size:
            crest_z.append(float(z[np.isin(pieces, ids)].max()))
    crest = float(np.mean(crest_z)) if crest_z else head_z + 110.0
    info["iliac_crest_z_mm"] = round(crest, 1)

    # Sacrum and L5 in the posterior midline, split at the L5/S1 disc (and L4/L5 above).
    spine = bone & (np.abs(x - midline) < 15.0) & (y > head_y + 20.0)
    discs = _discs(bone, raw, settings.threshold_hu, frame, midline, head_y, head_z + 20.0)
    info["disc_z_mm"] = [round(d, 1) for d in discs]
    lumbosacral = _pick_lumbosacral(discs, head_z, crest)
    if lumbosacral is None:
        # No L5/S1 disc found: L5 stays unlabelled rather than guessed; the spine above
        # the crest is kept from the hip bones.
        seeds[spine & (z > head_z + 20.0) & (z < crest - 40.0)] = label_of("sacrum")
        seeds[spine & (z > crest + 5.0)] = _OTHER
        info["lumbosacral_disc_z_mm"] = None
    else:
        info["lumbosacral_disc_z_mm"] = round(lumbosacral, 1)
        higher = [d for d in discs if d > lumbosacral + 15.0]
        l4_l5 = higher[0] if higher else lumbosacral + 60.0
        seeds[spine & (z > head_z + 20.0) & (z < lumbosacral - _DISC_MARGIN_MM)] = label_of("sacrum")
        seeds[spine & (z > lumbosacral + _DISC_MARGIN_MM) & (z < l4_l5 - _DISC_MARGIN_MM)] = label_of("vertebrae_L5")
        seeds[spine & (z > l4_l5 + _DISC_MARGIN_MM)] = _OTHER
    return seeds


def _distance_to_background(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    """``ndimage.distance_transform_edt(mask)`` as float32, computed on the mask's bounding
    box grown by one voxel of background: the same distances (the grown box's faces are
    background, nearer than anything beyond them) at the cost of the bones, not the grid."""
    distance = np.zeros(mask.shape, dtype=np.float32)
    present = np.nonzero(mask)
    if not present[0].size:
        return distance
    box = tuple(slice(max(0, int(i.min()) - 1), int(i.max()) + 2) for i in present)
    distance[box] = ndimage.distance_transform_edt(mask[box], sampling=spacing_zyx)
    return distance


def _discs(bone: np.ndarray, raw: np.ndarray, threshold: float, frame: _Frame, midline: float, head_y: float, z_min: float) -> list[float]:
    """Heights (mm) of the intervertebral discs above ``z_min``: dips of the fraction of
    voxels above ``threshold`` in a 20 mm box that follows the vertebral bodies up the
    midline.

    Per axial slice, the vertebral body is the first run of bone (at least 12 mm long)
    from anterior to posterior in the midline band of the bone mask; its centre is
    interpolated over slices without one and median-filtered along z. The raw threshold
    is used, not the bone mask, because hole filling closes discs that the posterior
    arch surrounds. The profile is smoothed (1.5 mm) and its dips of at least 0.35,
    15 mm apart, are the discs.
    """
    from scipy.signal import find_peaks

    dz, dy, dx = frame.spacing_zyx
    x, y, z = frame.coordinate(0), frame.coordinate(1), frame.coordinate(2)
    heights = z.mean(axis=(1, 2))
    centres = np.full(bone.shape[0], np.nan)
    for k in np.nonzero(heights > z_min)[0]:
        band = np.abs(x[k] - midline) < 12.0
        rows = (bone[k] & band).sum(axis=1) >= 0.5 * band.sum(axis=1).clip(min=1)
        rows &= y[k].mean(axis=1) > head_y - 30.0
        starts = np.flatnonzero(np.diff(np.concatenate([[0], rows.astype(np.int8), [0]])) == 1)
        ends = np.flatnonzero(np.diff(np.concatenate([[0], rows.astype(np.int8), [0]])) == -1)
        long = [(a, b) for a, b in zip(starts, ends) if (b - a) * dy >= 12.0]
        if long:
            a, b = long[0]
            centres[k] = float(y[k].mean(axis=1)[a:b].mean())
    valid = np.flatnonzero(~np.isnan(centres))
    if valid.size < 3:
        return []
    # Slices without a body run (the discs themselves) take the interpolated centre.
    segment = np.arange(valid[0], valid[-1] + 1)
    window = max(3, int(round(15.0 / dz)) | 1)
    filled = np.interp(segment, valid, centres[valid])
    smooth_centres = ndimage.median_filter(filled, size=window, mode="nearest")
    values = np.empty(segment.size)
    for i, k in enumerate(segment):
        box = (np.abs(x[k] - midline) < 10.0) & (np.abs(y[k] - smooth_centres[i]) < 8.0)
        values[i] = float((raw[k][box] > threshold).mean()) if box.any() else 1.0
    values = ndimage.gaussian_filter1d(values, sigma=1.5 / dz, mode="nearest")
    logger.debug("disc profile %s", np.round(values, 2).tolist())
    dips, _ = find_peaks(-values, prominence=0.35, distance=max(1, int(15.0 / dz)))
    return [float(heights[segment[d]]) for d in dips]


def _pick_lumbosacral(discs: list[float], head_z: float, crest: float) -> float | None:
    """The L5/S1 disc: the disc nearest to 3/4 of the way from the femoral heads to the
    iliac crest (0.69 in our real pelvis CT, 0.83 in the phantoms), within 0.5-1.05."""
    span = crest - head_z
    if span <= 0:
        return None
    candidates = [d for d in discs if 0.5 <= (d - head_z) / span <= 1.05]
    if not candidates:
        return None
    return min(candidates, key=lambda d: abs((d - head_z) / span - 0.75))

