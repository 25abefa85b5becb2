"""Phantom cases with ground truth, written in the SynthRAD2023 layout.

One case (seed ``s``) is one patient scanned twice:

- the **input** (MR or CBCT) and, on the same grid, the truth: ``ct_aligned`` (the CT
  of the input's anatomy, HU, no acquisition noise), ``bones`` (bone labels of
  :mod:`RegisterByGenerationLib.bone_labels`) and ``mask`` (body mask of the input);
- the **reference CT** on its own grid (other origin, field of view and spacing), of the
  same patient with another bladder filling and rectal gas, moved rigidly and deformed
  (:mod:`.deformation`), with CT noise;
- optionally (MR cases, ``reference_mr``) the **MR of the reference's anatomy** on the
  reference grid (``mr_reference``): the pair of the reference CT that paired-data
  training (the dual-similarity registration) needs, same sequence, its own noise.

Both scans evaluate one continuous anatomy (:mod:`.anatomy`) at their own physical
points, so the truth is exact and nothing is resampled. The same seed gives the same
bytes.

Example:
    >>> case = generate_case(1, "mr", size=(64, 48, 16))
    >>> case.case_id, case.input.GetSize()
    ('1PS0001', (64, 48, 16))
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Callable, Sequence
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import InputError
from ..io import atomic_path, check_writable_dir, write_image
from . import anatomy as anat
from .contrast import (
    apply_cbct,
    apply_mr,
    correlated_noise,
    sample_cbct_acquisition,
    sample_mr_acquisition,
    sample_mr_contrast,
    sample_tissues,
)
from .deformation import Misalignment, sample_misalignment
from .render import NoiseField, render, tile_order

__all__ = [
    "PHANTOM_VERSION",
    "MODALITIES",
    "PhantomCase",
    "Grid",
    "case_id",
    "generate_case",
    "write_case",
    "write_phantom_dataset",
]

#: Version of the generator; bump it whenever the same seed would give other images.
PHANTOM_VERSION = "1.1"

#: Modality -> (SynthRAD2023 task number, input file stem).
MODALITIES = {"mr": (1, "mr"), "cbct": (2, "cbct")}

DEFAULT_SIZE = (256, 192, 48)
_MAX_VOXELS = 64 * 1024 * 1024


@dataclass
class PhantomCase:
    """One generated case; images carry their geometry (LPS)."""

    case_id: str
    modality: str
    seed: int
    input: sitk.Image
    reference_ct: sitk.Image
    ct_aligned: sitk.Image
    mask: sitk.Image
    bones: sitk.Image
    truth: dict = field(default_factory=dict)
    reference_mr: sitk.Image | None = None


@dataclass(frozen=True)
class Grid:
    """An image grid: size (x, y, z), spacing (mm), origin (mm), direction (row-major 3x3)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grid-frame coordinates (index * spacing) along x, y, z, shaped to broadcast over (z, y, x)."""
        nx, ny, nz = self.size
        sx, sy, sz = self.spacing
        return (
            (np.arange(nx, dtype=np.float32) * np.float32(sx))[None, None, :],
            (np.arange(ny, dtype=np.float32) * np.float32(sy))[None, :, None],
            (np.arange(nz, dtype=np.float32) * np.float32(sz))[:, None, None],
        )

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Physical x, y, z of every voxel as flat float32 arrays in image (z, y, x) order."""
        d = np.asarray(self.direction, np.float32).reshape(3, 3)
        gx, gy, gz = self.axes_mm()
        shape = self.size[::-1]
        return tuple(
            np.broadcast_to(np.float32(self.origin[r]) + d[r, 0] * gx + d[r, 1] * gy + d[r, 2] * gz, shape).ravel()
            for r in range(3)
        )

    def to_grid_frame(self, point: np.ndarray) -> np.ndarray:
        """Physical point -> grid-frame coordinates (mm along the grid axes)."""
        d = np.asarray(self.direction, float).reshape(3, 3)
        return d.T @ (np.asarray(point, float) - np.asarray(self.origin))

    def image(self, array: np.ndarray) -> sitk.Image:
        """Wrap a (z, y, x) array as an image on this grid."""
        image = sitk.GetImageFromArray(array.reshape(self.size[::-1]))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def case_id(seed: int, modality: str) -> str:
    """SynthRAD2023-style case name: task 1 (MR) or 2 (CBCT), pelvis, phantom, seed."""
    _check_modality(modality)
    return f"{MODALITIES[modality][0]}PS{seed:04d}"


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise InputError(f"modality: must be one of {', '.join(MODALITIES)}, got {modality!r}")


def _check_seed(seed, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"{name}: must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_size(size: Sequence[int]) -> tuple[int, int, int]:
    try:
        values = () if isinstance(size, (str, bytes)) else tuple(size)
    except TypeError:
        values = ()
    if len(values) != 3 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        raise InputError(f"size: must be three integers (x, y, z), got {size!r}")
    if min(values) < 16:
        raise InputError(f"size: every dimension must be at least 16 voxels, got {tuple(values)}")
    if int(np.prod(values)) > _MAX_VOXELS:
        raise InputError(f"size: {tuple(values)} has more than {_MAX_VOXELS} voxels")
    return tuple(int(v) for v in values)


def _check_oblique(oblique) -> None:
    if not isinstance(oblique, (bool, np.bool_)):
        raise InputError(f"oblique: must be True or False, got {oblique!r}")


def _rotation(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    transform = sitk.VersorTransform(tuple(axis), float(np.radians(rng.uniform(low, high))))
    return np.asarray(transform.GetMatrix()).reshape(3, 3)


def _grid(center: np.ndarray, size, spacing, direction: np.ndarray) -> Grid:
    half = direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
    return Grid(
        tuple(int(n) for n in size),
        tuple(float(s) for s in spacing),
        tuple(float(v) for v in center - half),
        tuple(float(v) for v in direction.ravel()),
    )


def _sample_grids(rng, patient: anat.Patient, size, oblique: bool, table: np.ndarray) -> tuple[Grid, Grid]:
    """The input grid (``size``) around the body and the reference grid (own spacing, origin, field of view)."""
    z_lo = anat.Z_RANGE[0] + rng.uniform(3, 8)
    z_hi = min(z_lo + rng.uniform(128, 142), anat.Z_RANGE[1] - 4)
    tilt = 6.0 if oblique else 0.0
    # Room around the body: less at the back, where the patient lies on the table.
    margin = np.array([rng.uniform(8, 20), rng.uniform(4, 12)]) + tilt + (z_hi - z_lo) / 2 * np.sin(np.radians(tilt))
    # The body's extent over the slab (and a little beyond, for tilted and misaligned grids).
    boxes = anat.body_outline(patient)[0].boxes
    boxes = boxes[(boxes[:, 1, 2] >= z_lo - 25) & (boxes[:, 0, 2] <= z_hi + 25)]
    body_lo, body_hi = boxes[:, 0].min(axis=0), boxes[:, 1].max(axis=0)
    need = np.array([2 * max(-body_lo[0], body_hi[0]), body_hi[1] - body_lo[1]]) + 2 * margin
    spacing_xy = round(float(np.max(need / np.asarray(size[:2]))), 4)
    spacing = (spacing_xy, spacing_xy, round((z_hi - z_lo) / size[2], 4))
    slack = (np.asarray(size[:2]) * spacing_xy - need) / 2
    center = np.array([
        rng.uniform(-1, 1) * min(6, slack[0]),
        (body_lo[1] + body_hi[1]) / 2 + rng.uniform(-1, 1) * min(6, slack[1]),
        (z_lo + z_hi) / 2,
    ])
    direction = _rotation(rng, 2, 5) if oblique else np.eye(3)
    grid_in = _grid(center + table, size, spacing, direction)

    ref_spacing = np.array([spacing_xy * rng.uniform(0.8, 0.95)] * 2 + [spacing[2] * rng.uniform(1.1, 1.25)])
    ref_lo = max(z_lo - rng.uniform(0, 10), anat.Z_RANGE[0])
    ref_hi = min(z_hi + rng.uniform(0, 10), anat.Z_RANGE[1] - 2)
    # The reference covers the body with room for the misalignment (<= 10 mm and 5 degrees).
    extent = np.array([*(need + 2 * (rng.uniform(22, 35) - margin + tilt)), ref_hi - ref_lo])
    ref_size = np.maximum(np.ceil(extent / ref_spacing).astype(int), 8)
    ref_center = np.array([center[0] + rng.uniform(-8, 8), center[1] + rng.uniform(-8, 8), (ref_lo + ref_hi) / 2])
    ref_direction = _rotation(rng, 2, 5) if oblique else np.eye(3)
    grid_ref = _grid(ref_center + table, ref_size, [round(float(s), 4) for s in ref_spacing], ref_direction)
    return grid_in, grid_ref


@dataclass(frozen=True)
class _Plan:
    """Everything a seed decides before any image is rendered."""

    patient: anat.Patient
    state_in: anat.OrganState
    state_ref: anat.OrganState
    tissues: dict
    table: np.ndarray  # physical position of the anatomy origin (mm)
    grid_in: Grid
    grid_ref: Grid
    misalignment: Misalignment
    ct_noise_hu: float
    coarse: NoiseField
    fine: NoiseField


def _plan(seed: int, size: tuple[int, int, int], oblique: bool) -> _Plan:
    rng = np.random.default_rng(seed)
    patient = anat.sample_patient(rng)
    state_in, state_ref = anat.sample_state(rng), anat.sample_state(rng)
    tissues = sample_tissues(rng)
    table = np.array([rng.uniform(-25, 25), rng.uniform(-40, 40), rng.uniform(-250, 50)])
    grid_in, grid_ref = _sample_grids(rng, patient, size, oblique, table)
    f = np.asarray(patient.scale)
    # Rotation about the middle of the pelvis; bumps over the pelvis (input frame, mm).
    center, lo, hi = (table + np.array(v) * f for v in ((0.0, 10, 30), (-110.0, -80, -40), (110.0, 90, 100)))
    misalignment = sample_misalignment(rng, center, lo, hi)
    ct_noise_hu = float(rng.uniform(10, 20))
    # Texture fields over the body (anatomy space); beyond, they repeat their border (air there).
    coarse = NoiseField(rng, (-210.0, -170, -70), (210.0, 180, 140), 6.0, smooth=1.0)
    fine = NoiseField(rng, (-210.0, -170, -70), (210.0, 180, 140), 2.0, smooth=0.7)
    return _Plan(
        patient, state_in, state_ref, tissues, table, grid_in, grid_ref, misalignment, ct_noise_hu, coarse, fine
    )


def _scan(plan: _Plan, grid: Grid, state: anat.OrganState, channels: tuple[str, ...], moved: bool):
    """Render the anatomy in ``state`` at ``grid``'s points (through the misalignment when ``moved``)."""
    order = tile_order(grid.size[::-1])
    points = tuple(p[order] for p in grid.points())
    if moved:
        points = plan.misalignment(*points)
    x, y, z = anat.organic_warp(plan.patient, *(p - np.float32(t) for p, t in zip(points, plan.table, strict=True)))
    seen = render(anat.build_layers(plan.patient, state), x, y, z, tissues=plan.tissues, coarse=plan.coarse,
                  fine=plan.fine, blur_mm=float(np.mean(grid.spacing[:2])), channels=channels)
    return seen.unpermuted(order)


def generate_case(
    seed: int, modality: str, size: Sequence[int] = DEFAULT_SIZE, oblique: bool = False, reference_mr: bool = False
) -> PhantomCase:
    """Generate one phantom case.

    Args:
        seed: non-negative integer; it fixes everything (anatomy, scans, noise). The MR
            and CBCT cases of one seed show the same patient, reference CT and truth.
        modality: ``"mr"`` (MR input of a random T1-, T2-like or random contrast) or ``"cbct"``.
        size: input grid size (x, y, z) in voxels, each >= 16; the spacing follows
            from the patient's size so the body always fits.
        oblique: tilt both grids a few degrees off the axes.
        reference_mr: MR cases only: also render the MR of the reference's anatomy on the
            reference grid (same sequence and bias model, its own noise); every other
            image is unchanged by it.

    Returns:
        The case; ``truth`` holds the misalignment and organ changes (JSON-ready).

    Raises:
        InputError: bad argument.
    """
    seed = _check_seed(seed)
    _check_modality(modality)
    size = _check_size(size)
    _check_oblique(oblique)
    if reference_mr and modality != "mr":
        raise InputError(f"reference_mr: only MR cases have one, got modality {modality!r}")
    plan = _plan(seed, size, oblique)
    # Separate streams, so the MR and the CBCT case of a seed share everything above.
    noise_rng, acquisition_rng, ref_noise_rng = (np.random.default_rng([seed, k]) for k in (1, 2, 3))
    grid_in, grid_ref = plan.grid_in, plan.grid_ref

    shape = size[::-1]
    if modality == "mr":  # its own stream: the CBCT case of the seed is not affected
        sequence, mr_tissues = sample_mr_contrast(plan.tissues, np.random.default_rng([seed, 4]))
        seen = _scan(dataclasses.replace(plan, tissues=mr_tissues), grid_in, plan.state_in, ("ct", "mr"), moved=False)
    else:
        seen = _scan(plan, grid_in, plan.state_in, ("ct",), moved=False)
    ct_truth = seen.ct.reshape(shape)
    body = seen.body.reshape(shape)
    mask = body >= 0.5
    if modality == "mr":
        uvw = tuple(2 * a / np.float32(max(float(a.max()), 1e-6)) - 1 for a in grid_in.axes_mm())
        mr_acq = sample_mr_acquisition(acquisition_rng)
        image = apply_mr(seen.mr.reshape(shape), uvw, mr_acq, noise_rng)
        acquisition = {"mr": {"sequence": sequence, **asdict(mr_acq)}}
    elif modality == "cbct":
        f = np.asarray(plan.patient.scale)
        heads = [grid_in.to_grid_frame(plan.table + np.array([side * 84.0, 0, 0]) * f) for side in (1, -1)]
        gas = [grid_in.to_grid_frame(plan.table + np.array([0, 30, p.z]) * f) for p in plan.state_in.gas]
        extent = tuple(float(n * s) for n, s in zip(size, grid_in.spacing, strict=True))
        outline = anat.body_outline(plan.patient)[0]
        cbct_acq = sample_cbct_acquisition(acquisition_rng, extent, float(max(-outline.lo[0], outline.hi[0])),
                                           (heads[0], heads[1]), 23.5 * f[2], gas)
        image, fov = apply_cbct(ct_truth, grid_in.axes_mm(), body, cbct_acq, noise_rng)
        image = _to_int16(image)
        mask &= fov
        acquisition = {"cbct": asdict(cbct_acq)}
    else:  # _check_modality lets nothing else through
        raise InputError(f"modality: must be one of {', '.join(MODALITIES)}, got {modality!r}")

    ref_shape = grid_ref.size[::-1]
    if reference_mr:
        ref = _scan(dataclasses.replace(plan, tissues=mr_tissues), grid_ref, plan.state_ref, ("ct", "mr"), moved=True)
        ref_uvw = tuple(2 * a / np.float32(max(float(a.max()), 1e-6)) - 1 for a in grid_ref.axes_mm())
        ref_mr = grid_ref.image(apply_mr(ref.mr.reshape(ref_shape), ref_uvw, mr_acq, np.random.default_rng([seed, 5])))
    else:
        ref, ref_mr = _scan(plan, grid_ref, plan.state_ref, ("ct",), moved=True), None
    ref_ct = ref.ct.reshape(ref_shape) + correlated_noise(ref_noise_rng, ref_shape, plan.ct_noise_hu, 0.6)

    identifier = case_id(seed, modality)
    ml_in, ml_ref = float(np.prod(grid_in.spacing)) / 1000, float(np.prod(grid_ref.spacing)) / 1000
    truth = {
        "case_id": identifier,
        "seed": seed,
        "modality": modality,
        "generator": "RegisterByGenerationLib.phantoms",
        "generator_version": PHANTOM_VERSION,
        "library_version": __version__,
        "frame": "LPS mm; the input frame is the physical space of the input, ct_aligned, mask and bones",
        "misalignment": _misalignment_json(plan.misalignment),
        "bladder": _organ_json(
            "bladder", plan.state_in.bladder_fill, plan.state_ref.bladder_fill, seen.counts, ref.counts, ml_in, ml_ref
        ),
        "rectal_gas": _gas_json(plan.state_in, plan.state_ref, seen.counts, ref.counts, ml_in, ml_ref),
        "reference_ct_noise_hu": plan.ct_noise_hu,
        "acquisition": acquisition,
        "patient": asdict(plan.patient),
    }
    return PhantomCase(
        case_id=identifier,
        modality=modality,
        seed=seed,
        input=grid_in.image(image),
        reference_ct=grid_ref.image(_to_int16(ref_ct)),
        ct_aligned=grid_in.image(_to_int16(ct_truth)),
        mask=grid_in.image(mask.astype(np.uint8)),
        bones=grid_in.image(seen.labels.reshape(shape)),
        truth=truth,
        reference_mr=ref_mr,
    )


def _to_int16(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _misalignment_json(m: Misalignment) -> dict:
    return {
        "maps": "reference-CT point p -> input-frame point q = D(E(p))",
        "rigid": {
            "type": "SimpleITK Euler3DTransform E (rotation about center, then translation)",
            "center_mm": list(m.center),
            "rotation_deg": list(m.angles_deg),
            "rotation_total_deg": m.rotation_angle_deg(),
            "translation_mm": list(m.translation),
        },
        "deformation": {
            "type": "D(x) = x + sum_k amplitude_k * exp(-|x - center_k|^2 / (2 sigma_k^2))",
            "max_mm": m.max_deformation_mm,
            "bumps": [{"center_mm": list(b[:3]), "amplitude_mm": list(b[3:6]), "sigma_mm": b[6]} for b in m.bumps],
        },
    }


# Volumes count the voxels each image holds (an organ cut by the field of view counts in part).
def _organ_json(name, fill_in, fill_ref, counts_in, counts_ref, ml_in, ml_ref) -> dict:
    volume_in, volume_ref = counts_in[name] * ml_in, counts_ref[name] * ml_ref
    return {"fill_input": fill_in, "fill_reference": fill_ref, "volume_ml_input": volume_in,
            "volume_ml_reference": volume_ref, "change_ml": volume_in - volume_ref}


def _gas_json(state_in, state_ref, counts_in, counts_ref, ml_in, ml_ref) -> dict:
    gas_in = sum(v for k, v in counts_in.items() if k.startswith("rectal_gas")) * ml_in
    gas_ref = sum(v for k, v in counts_ref.items() if k.startswith("rectal_gas")) * ml_ref
    return {"pockets_input": len(state_in.gas), "pockets_reference": len(state_ref.gas),
            "volume_ml_input": gas_in, "volume_ml_reference": gas_ref, "change_ml": gas_in - gas_ref}


def write_case(case: PhantomCase, out_dir: str | os.PathLike) -> Path:
    """Write ``case`` into ``out_dir/<case_id>/`` (each file atomically); return that folder."""
    folder = check_writable_dir(Path(out_dir) / case.case_id)
    write_image(case.input, folder / f"{MODALITIES[case.modality][1]}.nii.gz")
    write_image(case.reference_ct, folder / "ct.nii.gz")
    write_image(case.mask, folder / "mask.nii.gz")
    write_image(case.ct_aligned, folder / "ct_aligned.nii.gz")
    write_image(case.bones, folder / "bones.nii.gz")
    if case.reference_mr is not None:
        write_image(case.reference_mr, folder / "mr_reference.nii.gz")
    with atomic_path(folder / "phantom.json") as tmp:
        tmp.write_text(json.dumps(case.truth, indent=2) + "\n", encoding="utf-8")
    return folder


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    cases: int,
    seed: int,
    modality: str,
    size: Sequence[int] = DEFAULT_SIZE,
    oblique: bool = False,
    progress: Callable[[Path], None] | None = None,
    reference_mr: bool = False,
) -> list[Path]:
    """Generate ``cases`` cases with seeds ``seed, seed + 1, ...`` and write them under ``out_dir``.

    Args:
        out_dir: output folder, created if needed.
        cases, seed, modality, size, oblique, reference_mr: see :func:`generate_case`.
        progress: called with each case folder once it is written.

    Returns:
        The case folders, ``out_dir/<case_id>``.

    Raises:
        InputError: bad argument (checked before anything is written).
        OutputError: ``out_dir`` cannot be written.
    """
    if isinstance(cases, bool) or not isinstance(cases, numbers.Integral) or cases < 1:
        raise InputError(f"cases: must be an integer >= 1, got {cases!r}")
    seed = _check_seed(seed)
    _check_modality(modality)
    size = _check_size(size)
    _check_oblique(oblique)
    if reference_mr and modality != "mr":
        raise InputError(f"reference_mr: only MR cases have one, got modality {modality!r}")
    out = check_writable_dir(out_dir)
    folders = []
    for i in range(int(cases)):
        folders.append(write_case(generate_case(seed + i, modality, size, oblique, reference_mr), out))
        if progress is not None:
            progress(folders[-1])
    return folders
