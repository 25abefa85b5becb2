"""A benchmark case with ground truth from one real CT: CBCT- or MR-like input, deformed reference.

The phantoms (:mod:`.phantoms`) have exact truth but simplified anatomy. To measure the
methods on real anatomy we build a case from a single real CT ``C`` (HU):

- **truth**: ``C`` itself (the CT of the input's anatomy);
- **input**: :func:`simulate_cbct` of ``C`` — what a cone-beam CT of the same anatomy
  looks like: a wrong HU scale (gain and offset), low-frequency shading (cupping towards
  the centre plus a smooth random field), slight blur, Gaussian noise, and a cylindrical
  field of view smaller than the body (air outside); or :func:`simulate_mr` of ``C`` —
  an MR-like image: each voxel's HU mapped to a T1- or T2-weighted signal through the
  tissue signals of the phantoms (:mod:`.phantoms.contrast`), then the phantoms' bias
  field and Rician noise;
- **reference CT**: :func:`deform_smoothly` of ``C`` — the same patient misaligned by a
  rigid motion plus a smooth random deformation (mean displacement inside the body
  ~8 mm by default), i.e. the "planning CT" the methods must bring onto the input.

:func:`make_real_case` returns these images and :func:`write_real_case` writes them in
the SynthRAD2023 layout of ``rbg phantom`` (``cbct.nii.gz`` or ``mr.nii.gz``, ``ct.nii.gz``,
``ct_aligned.nii.gz``, ``mask.nii.gz``, plus ``case.json`` with the parameters), so the
same tools read phantoms and this case. Every random draw comes from ``seed``.

Example:
    >>> import SimpleITK as sitk
    >>> ct = sitk.ReadImage("example_ct_pelvis.nii.gz")          # doctest: +SKIP
    >>> case = make_real_case(ct, seed=0)                         # doctest: +SKIP
    >>> write_real_case(case, "data/")                            # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import InputError
from .io import atomic_path, check_writable_dir, write_image
from .mask import body_mask

__all__ = ["RealCase", "simulate_cbct", "simulate_mr", "MR_ANCHORS", "deform_smoothly", "make_real_case", "write_real_case"]

AIR_HU = -1024.0


@dataclass
class RealCase:
    """A CBCT- or MR-like input, a misaligned reference CT and the truth, from one real CT."""

    case_id: str
    input: sitk.Image
    reference_ct: sitk.Image
    ct_aligned: sitk.Image
    mask: sitk.Image
    parameters: dict[str, Any] = field(default_factory=dict)
    modality: str = "cbct"


def _check_ct(ct: sitk.Image, name: str = "ct") -> None:
    if not isinstance(ct, sitk.Image) or ct.GetDimension() != 3:
        raise InputError(f"{name}: must be a 3D SimpleITK image")
    if min(ct.GetSize()) < 4:
        raise InputError(f"{name}: every side must have at least 4 voxels, got {ct.GetSize()}")


def simulate_cbct(
    ct: sitk.Image,
    *,
    seed: int = 0,
    noise_hu: float = 25.0,
    gain: float = 0.92,
    offset_hu: float = -40.0,
    cupping_hu: float = 60.0,
    shading_hu: float = 40.0,
    blur_mm: float = 1.0,
    fov_fraction: float = 0.85,
) -> sitk.Image:
    """A cone-beam-CT-like image of the anatomy of ``ct`` on the same grid (float32).

    ``out = gain * (ct + 1024) - 1024 + offset_hu + shading`` (HU scale error), blurred by
    a Gaussian of ``blur_mm``, plus white Gaussian noise of ``noise_hu`` standard deviation;
    ``shading`` = ``-cupping_hu`` at the axial centre rising to 0 at the field-of-view edge
    (cupping, quadratic in the radius) plus a smooth random field (Gaussian-filtered noise
    of 40 mm correlation length, scaled to ``shading_hu`` standard deviation). Outside a
    cylinder (axis along the image's third axis, through the body's centre, radius
    ``fov_fraction`` × half the body's larger in-plane extent) the value is air, -1024.

    Args:
        ct: CT in HU, 3D, any orientation (the third image axis is taken as axial).
        seed: seed of the noise and the random shading.
        noise_hu, gain, offset_hu, cupping_hu, shading_hu, blur_mm: see above.
        fov_fraction: radius of the field of view relative to the body's half-width, > 0.

    Returns:
        float32 image with ``ct``'s size, spacing, origin and direction.

    Raises:
        InputError: not a 3D image, or a parameter out of range.
    """
    _check_ct(ct)
    if noise_hu < 0 or shading_hu < 0 or blur_mm < 0:
        raise InputError("noise_hu, shading_hu and blur_mm must be >= 0")
    if gain <= 0:
        raise InputError(f"gain must be > 0, got {gain}")
    if fov_fraction <= 0:
        raise InputError(f"fov_fraction must be > 0, got {fov_fraction}")
    rng = np.random.default_rng(seed)
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)  # [z, y, x]
    spacing = np.array(ct.GetSpacing()[::-1], dtype=float)
    body = sitk.GetArrayFromImage(body_mask(ct, modality="ct")) > 0
    if not body.any():
        raise InputError("ct: no body found (nothing above -500 HU)")
    # Field of view: a cylinder around the body's centre in the axial plane, in mm.
    _, ys, xs = np.nonzero(body)
    cy, cx = ys.mean() * spacing[1], xs.mean() * spacing[2]
    half_width = 0.5 * max((ys.max() - ys.min() + 1) * spacing[1], (xs.max() - xs.min() + 1) * spacing[2])
    radius = fov_fraction * half_width
    yy = np.arange(hu.shape[1])[:, None] * spacing[1] - cy
    xx = np.arange(hu.shape[2])[None, :] * spacing[2] - cx
    r2 = (yy**2 + xx**2) / radius**2
    inside_fov = r2 <= 1.0
    # Shading: cupping plus a smooth random field (smoothing of white noise, 40 mm).
    random_field = ndimage.gaussian_filter(rng.standard_normal(hu.shape), sigma=40.0 / spacing)
    random_field *= shading_hu / max(float(random_field.std()), 1e-6)
    shading = -cupping_hu * (1.0 - np.minimum(r2, 1.0))[None] + random_field
    out = gain * (hu - AIR_HU) + AIR_HU + offset_hu + shading
    if blur_mm > 0:
        out = ndimage.gaussian_filter(out, sigma=blur_mm / spacing)
    out = out + rng.normal(0.0, noise_hu, hu.shape) if noise_hu > 0 else out
    out = np.where(inside_fov[None], out, AIR_HU).astype(np.float32)
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(ct)
    return image


def _mr_anchors(sequence: str) -> tuple[tuple[float, float], ...]:
    """``(HU, signal)`` anchors of :data:`MR_ANCHORS` from the phantoms' tissue table."""
    from .phantoms.contrast import T2_SIGNALS, TISSUES

    def signal(name: str) -> float:
        return TISSUES[name].mr if sequence == "t1" else T2_SIGNALS[name]

    # Real CT numbers (the phantoms' own sit a little higher for water and muscle).
    tissues = {"fat": -100.0, "urine": 5.0, "muscle": 40.0, "marrow": TISSUES["marrow"].ct, "cortical_bone": TISSUES["cortical_bone"].ct}
    return ((AIR_HU, 0.0), (-900.0, 5.0), *((hu, signal(name)) for name, hu in tissues.items()), (3000.0, signal("cortical_bone")))


#: Piecewise-linear HU → MR signal maps (about 0-1000) of :func:`simulate_mr`: air and gas
#: dark, then fat, water (urine), muscle, red marrow and cortical bone at their typical CT
#: numbers with their T1- or T2-weighted phantom signals.
MR_ANCHORS: dict[str, tuple[tuple[float, float], ...]] = {sequence: _mr_anchors(sequence) for sequence in ("t1", "t2")}


def simulate_mr(ct: sitk.Image, *, seed: int = 0, sequence: str = "t2", smoothing_mm: float = 2.0) -> sitk.Image:
    """An MR-like image of the anatomy of ``ct`` on the same grid (float32, ≥ 0).

    The CT is smoothed by a Gaussian of ``smoothing_mm`` (so CT noise does not become MR
    texture), mapped to a signal through :data:`MR_ANCHORS` of ``sequence``, then given the
    phantoms' MR acquisition (:func:`~.phantoms.contrast.apply_mr`: a smooth multiplicative
    bias field and Rician noise, drawn from ``seed``). Tissues the CT cannot tell apart
    (water against soft tissue of similar HU) stay apart only as far as their HU do: this
    is a simulation of contrast, not of MR physics.

    Raises:
        InputError: not a 3D image, an unknown sequence, or a negative smoothing.
    """
    from .phantoms.contrast import apply_mr, sample_mr_acquisition

    _check_ct(ct)
    if sequence not in MR_ANCHORS:
        raise InputError(f"sequence must be one of {', '.join(MR_ANCHORS)}, got {sequence!r}")
    if smoothing_mm < 0:
        raise InputError(f"smoothing_mm must be >= 0, got {smoothing_mm}")
    rng = np.random.default_rng(seed)
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    if smoothing_mm > 0:
        hu = ndimage.gaussian_filter(hu, sigma=smoothing_mm / np.array(ct.GetSpacing()[::-1]))
    levels, signals = np.array(MR_ANCHORS[sequence], dtype=np.float32).T
    clean = np.interp(hu, levels, signals).astype(np.float32)
    grid_uvw = tuple(np.linspace(-1.0, 1.0, n, dtype=np.float32).reshape(shape) for n, shape in
                     zip(hu.shape[::-1], ((1, 1, -1), (1, -1, 1), (-1, 1, 1))))  # fmt: skip
    out = apply_mr(clean, grid_uvw, sample_mr_acquisition(rng), rng)
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(ct)
    return image


def deform_smoothly(
    image: sitk.Image,
    *,
    seed: int = 0,
    mean_displacement_mm: float = 8.0,
    rotation_deg: float = 3.0,
    smoothness_mm: float = 30.0,
    mask: sitk.Image | None = None,
) -> tuple[sitk.Image, sitk.DisplacementFieldTransform, float]:
    """Warp ``image`` by a rigid motion plus a smooth random deformation.

    The displacement field ``u`` (on ``image``'s grid, in mm) is the rigid part — a
    rotation of up to ``rotation_deg`` degrees about each axis through the image centre —
    plus ``s`` times a smooth random field (white noise per component, Gaussian-filtered
    with ``smoothness_mm``). ``s`` is found by bisection so that the mean of ``|u|`` inside
    ``mask`` (the body) is ``mean_displacement_mm``. The warped image is
    ``out(p) = image(p + u(p))`` (linear interpolation, -1024 HU outside).

    Returns:
        ``(warped, transform, achieved_mean_mm)``: ``warped`` on ``image``'s grid, the
        transform mapping output points to ``image`` points, and the mean ``|u|`` in mm.

    Raises:
        InputError: not a 3D image, or ``mean_displacement_mm`` smaller than the rigid
            part alone gives.
    """
    _check_ct(image, "image")
    if mean_displacement_mm <= 0 or smoothness_mm <= 0:
        raise InputError("mean_displacement_mm and smoothness_mm must be > 0")
    rng = np.random.default_rng(seed)
    shape = image.GetSize()[::-1]
    spacing = np.array(image.GetSpacing()[::-1], dtype=float)
    inside = np.ones(shape, bool) if mask is None else sitk.GetArrayFromImage(mask) > 0
    # Physical points of every voxel, [z, y, x, 3] in (x, y, z) mm order.
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape[::-1]), indexing="ij"), axis=-1)  # [x, y, z, 3]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    points = np.asarray(image.GetOrigin()) + (index * np.asarray(image.GetSpacing())) @ direction.T
    points = points.transpose(2, 1, 0, 3)  # [z, y, x, 3]
    centre = points[inside].mean(axis=0)
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre.tolist())
    rigid.SetRotation(*np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3)))
    matrix = np.array(rigid.GetMatrix()).reshape(3, 3)
    rigid_u = (points - centre) @ matrix.T + centre - points
    smooth = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma=smoothness_mm / spacing) for _ in range(3)], axis=-1)
    smooth /= max(float(np.linalg.norm(smooth, axis=-1)[inside].mean()), 1e-9)

    def mean_norm(scale: float) -> float:
        return float(np.linalg.norm(rigid_u + scale * smooth, axis=-1)[inside].mean())

    if mean_norm(0.0) > mean_displacement_mm:
        raise InputError(f"mean_displacement_mm={mean_displacement_mm} is below the rigid part alone ({mean_norm(0.0):.1f} mm); lower rotation_deg")
    low, high = 0.0, 4.0 * mean_displacement_mm
    for _ in range(30):  # mean_norm grows with the scale; bisection to ~1e-6 relative
        mid = 0.5 * (low + high)
        low, high = (mid, high) if mean_norm(mid) < mean_displacement_mm else (low, mid)
    u = (rigid_u + 0.5 * (low + high) * smooth).astype(np.float64)
    field_image = sitk.GetImageFromArray(u, isVector=True)
    field_image.CopyInformation(image)
    transform = sitk.DisplacementFieldTransform(sitk.Image(field_image))
    warped = sitk.Resample(image, image, transform, sitk.sitkLinear, AIR_HU, image.GetPixelID())
    return warped, transform, mean_norm(0.5 * (low + high))


def make_real_case(ct: sitk.Image, *, seed: int = 0, mean_displacement_mm: float = 8.0, case_id: str | None = None,
                   modality: str = "cbct", sequence: str = "t2") -> RealCase:  # fmt: skip
    """Build the benchmark case of the module docstring from one real CT (HU): a CBCT-like
    input (``modality="cbct"``, case ``2RC<seed>``) or an MR-like one of ``sequence``
    (``modality="mr"``, case ``1RC<seed>``; its mask is the whole body)."""
    _check_ct(ct)
    if modality not in ("cbct", "mr"):
        raise InputError(f"modality must be cbct or mr, got {modality!r}")
    ct = sitk.Cast(ct, sitk.sitkInt16)
    mask = body_mask(ct, modality="ct")
    reference, _, achieved = deform_smoothly(ct, seed=seed + 1, mean_displacement_mm=mean_displacement_mm, mask=mask)
    deformation = {"mean_displacement_mm": achieved, "rotation_deg_max": 3.0, "smoothness_mm": 30.0}
    if modality == "mr":
        mr = simulate_mr(ct, seed=seed, sequence=sequence)
        parameters = {"kind": "real-ct-simulated-mr", "seed": seed, "mr": {"sequence": sequence, "anchors_hu_signal": MR_ANCHORS[sequence]},
                      "deformation": deformation, "truth": "ct_aligned.nii.gz is the original CT; mask.nii.gz is its body"}  # fmt: skip
        return RealCase(case_id or f"1RC{seed:04d}", mr, sitk.Cast(reference, sitk.sitkInt16), ct, mask, parameters, "mr")
    cbct = simulate_cbct(ct, seed=seed)
    # The input's field of view limits where the truth can be judged: body ∩ FOV.
    fov = sitk.GetArrayFromImage(cbct) > AIR_HU + 1
    mask_array = (sitk.GetArrayFromImage(mask) > 0) & fov
    eval_mask = sitk.GetImageFromArray(mask_array.astype(np.uint8))
    eval_mask.CopyInformation(ct)
    parameters = {
        "kind": "real-ct-simulated-cbct",
        "seed": seed,
        "cbct": {"noise_hu": 25.0, "gain": 0.92, "offset_hu": -40.0, "cupping_hu": 60.0, "shading_hu": 40.0, "blur_mm": 1.0, "fov_fraction": 0.85},
        "deformation": deformation,
        "truth": "ct_aligned.nii.gz is the original CT; mask.nii.gz is its body inside the CBCT field of view",
    }
    return RealCase(case_id or f"2RC{seed:04d}", cbct, sitk.Cast(reference, sitk.sitkInt16), ct, eval_mask, parameters)


def write_real_case(case: RealCase, out_dir: str | os.PathLike) -> Path:
    """Write ``case`` as ``out_dir/<case_id>/`` in the SynthRAD layout; return the folder."""
    folder = check_writable_dir(Path(out_dir) / case.case_id)
    write_image(case.input, folder / f"{case.modality}.nii.gz")
    write_image(case.reference_ct, folder / "ct.nii.gz")
    write_image(case.ct_aligned, folder / "ct_aligned.nii.gz")
    write_image(case.mask, folder / "mask.nii.gz")
    with atomic_path(folder / "case.json") as tmp:
        tmp.write_text(json.dumps(case.parameters, indent=2) + "\n", encoding="utf-8")
    return folder
