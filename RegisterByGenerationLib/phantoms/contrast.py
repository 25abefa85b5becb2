"""Tissue intensities and acquisition effects: CT, MR (T1, T2 or random contrast) and CBCT.

Each tissue has a CT value (HU) and a T1-weighted MR signal (arbitrary units, about
0-1000: fat bright, muscle intermediate-dark, cortical bone and air dark, fatty marrow
bright, urine dark), plus the amplitudes with which two smooth random texture fields
(coarse, about 8 mm, and fine, about 2 mm) modulate them. The texture fields live in
anatomy space (see :mod:`.render`), so the texture moves with the anatomy.

Acquisition effects are applied afterwards on the image grid:

- MR: the sequence's contrast (:func:`sample_mr_contrast`: T1-like, T2-like, or random
  signals per tissue, domain randomisation so a model does not learn one simulated
  sequence), a smooth multiplicative bias field and Rician noise (non-negative result).
- CBCT: a vendor intensity scale (hundreds of HU of offset and ±25 % of scale: real CBCT
  values are not HU), cupping and low-frequency shading, streaks (the dark
  band between the femoral heads, and a few streaks from gas and bone), correlated
  noise, and a cylindrical field of view outside which the image is set to -1000.
- CT: correlated Gaussian noise of 10-20 HU.

Parameters are drawn by the ``sample_*`` functions and applied by the ``apply_*``
functions, so a draw is reproducible and can be reported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "Tissue",
    "TISSUES",
    "sample_tissues",
    "MRAcquisition",
    "MR_SEQUENCES",
    "sample_mr_contrast",
    "sample_mr_acquisition",
    "apply_mr",
    "CBCTAcquisition",
    "sample_cbct_acquisition",
    "apply_cbct",
    "correlated_noise",
]

#: Value written outside the CBCT field of view and for air (HU).
AIR_HU = -1000.0


@dataclass(frozen=True)
class Tissue:
    """Intensities of one tissue.

    Attributes:
        ct: CT number (HU).
        mr: T1-weighted MR signal (about 0-1000).
        ct_coarse, ct_fine: HU per unit (standard deviation) of the coarse/fine texture.
        mr_coarse, mr_fine: MR signal per unit of the coarse/fine texture.
        bubbles: where the fine texture exceeds this level the tissue holds gas (stool);
            ``None`` for none.
    """

    ct: float
    mr: float
    ct_coarse: float = 0.0
    ct_fine: float = 0.0
    mr_coarse: float = 0.0
    mr_fine: float = 0.0
    bubbles: float | None = None


#: Typical values; :func:`sample_tissues` varies them per patient.
TISSUES: dict[str, Tissue] = {
    "air": Tissue(AIR_HU, 0.0),
    "gas": Tissue(-990.0, 5.0),
    "skin": Tissue(25.0, 430.0, 5, 0, 20, 0),
    "fat": Tissue(-105.0, 870.0, 10, 3, 45, 15),
    "visceral_fat": Tissue(-92.0, 820.0, 12, 4, 50, 20),
    "fascia": Tissue(15.0, 380.0, 5, 0, 20, 0),
    "muscle": Tissue(52.0, 300.0, 6, 3, 25, 12),
    "cortical_bone": Tissue(1450.0, 35.0, 140, 110, 8, 8),
    "marrow": Tissue(290.0, 620.0, 60, 85, 55, 60),
    "yellow_marrow": Tissue(-30.0, 760.0, 25, 10, 40, 15),
    "disc": Tissue(85.0, 280.0, 6, 4, 20, 10),
    "csf": Tissue(15.0, 140.0, 3, 0, 10, 0),
    "bladder_wall": Tissue(45.0, 320.0, 4, 0, 15, 0),
    "urine": Tissue(8.0, 110.0, 2, 1, 6, 3),
    "prostate": Tissue(42.0, 360.0, 5, 4, 25, 18),
    "seminal_vesicle": Tissue(32.0, 330.0, 4, 3, 25, 15),
    "rectal_wall": Tissue(45.0, 330.0, 4, 0, 15, 0),
    "stool": Tissue(15.0, 250.0, 30, 45, 60, 70, bubbles=1.6),
    "bowel_wall": Tissue(45.0, 320.0, 4, 0, 15, 0),
    "bowel_content": Tissue(18.0, 200.0, 12, 15, 40, 35, bubbles=2.0),
    "artery": Tissue(42.0, 60.0),
    "vein": Tissue(40.0, 170.0),
}


def sample_tissues(rng: np.random.Generator) -> dict[str, Tissue]:
    """Patient-specific copy of :data:`TISSUES`: CT values vary by a few HU (bone more),
    MR signals by a few percent per tissue and a global gain."""
    gain = rng.uniform(0.85, 1.15)
    spread = {"cortical_bone": 180.0, "marrow": 60.0, "yellow_marrow": 20.0, "fat": 10.0, "visceral_fat": 10.0}
    out = {}
    for name, tissue in TISSUES.items():
        if name in ("air", "gas"):
            out[name] = tissue
            continue
        ct = tissue.ct + rng.uniform(-1, 1) * spread.get(name, 6.0)
        mr = tissue.mr * gain * rng.uniform(0.92, 1.08)
        out[name] = dataclasses.replace(tissue, ct=float(ct), mr=float(mr))
    return out


def correlated_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: float, correlation_px: float
) -> np.ndarray:
    """Gaussian noise of standard deviation ``sigma`` blurred in-plane over ``correlation_px`` voxels.

    ``shape`` is ``(z, y, x)``; the blur acts on y and x only (reconstruction kernels are 2D).
    """
    noise = rng.standard_normal(shape, dtype=np.float32)
    if correlation_px > 0:
        noise = ndimage.gaussian_filter(noise, (0, correlation_px, correlation_px), mode="reflect")
        noise /= max(float(noise.std()), 1e-6)
    return noise * np.float32(sigma)


# ---------------------------------------------------------------------------------- MR

#: Typical T2-weighted signals (about 0-1000): fluid bright, fat intermediate-bright,
#: muscle and cortical bone dark, flowing blood void. T1 signals are :data:`TISSUES`' own.
T2_SIGNALS: dict[str, float] = {
    "skin": 380.0, "fat": 720.0, "visceral_fat": 690.0, "fascia": 260.0, "muscle": 230.0,
    "cortical_bone": 30.0, "marrow": 430.0, "yellow_marrow": 640.0, "disc": 620.0, "csf": 950.0,
    "bladder_wall": 240.0, "urine": 1000.0, "prostate": 560.0, "seminal_vesicle": 820.0,
    "rectal_wall": 260.0, "stool": 380.0, "bowel_wall": 280.0, "bowel_content": 520.0,
    "artery": 40.0, "vein": 90.0,
}  # fmt: skip

#: The MR contrasts a phantom can have and the probability of each.
MR_SEQUENCES = {"t1": 0.35, "t2": 0.45, "random": 0.2}


def sample_mr_contrast(tissues: dict[str, Tissue], rng: np.random.Generator) -> tuple[str, dict[str, Tissue]]:
    """Draw the MR sequence and the tissues' signals under it.

    ``t1`` keeps the signals of ``tissues``; ``t2`` takes :data:`T2_SIGNALS` (scaled by
    ``tissues``' own patient gain and jittered by ±8 %); ``random`` gives every soft tissue a
    signal drawn uniformly in [60, 1000] (cortical bone, air and gas stay dark: they have
    no mobile protons in any sequence).

    Returns:
        ``(sequence name, tissues with the sequence's MR signals)``.
    """
    names = list(MR_SEQUENCES)
    sequence = names[int(rng.choice(len(names), p=list(MR_SEQUENCES.values())))]
    gain = tissues["muscle"].mr / TISSUES["muscle"].mr
    out = {}
    for name, tissue in tissues.items():
        if sequence == "t1" or name in ("air", "gas"):
            signal = tissue.mr
        elif sequence == "t2":
            signal = T2_SIGNALS[name] * gain * rng.uniform(0.92, 1.08)
        elif sequence == "random":
            signal = rng.uniform(15, 60) if name == "cortical_bone" else rng.uniform(60, 1000)
        else:
            raise ValueError(f"unknown MR sequence {sequence!r}")
        out[name] = dataclasses.replace(tissue, mr=float(signal))
    return sequence, out



@dataclass(frozen=True)
class MRAcquisition:
    """An MR acquisition's bias field and noise (its contrast: :func:`sample_mr_contrast`).

    Attributes:
        bias_coefficients: 10 coefficients of a quadratic polynomial (1, u, v, w, u^2,
            v^2, w^2, uv, uw, vw) in grid coordinates normalised to [-1, 1]; the bias
            field is ``exp`` of it.
        noise_sigma: standard deviation of each complex channel (signal units).
    """

    bias_coefficients: tuple[float, ...]
    noise_sigma: float


def sample_mr_acquisition(rng: np.random.Generator) -> MRAcquisition:
    coefficients = rng.normal(0.0, 1.0, 10)
    coefficients[0] = 0.0
    coefficients[4:] *= 0.5
    # Scale so the field spans about +-15..35 % over the grid (checked on the corners).
    strength = rng.uniform(0.15, 0.35) / np.sum(np.abs(coefficients))
    return MRAcquisition(tuple(float(c) for c in coefficients * strength), float(rng.uniform(10.0, 22.0)))


def apply_mr(
    signal: np.ndarray, grid_uvw: tuple[np.ndarray, ...], acquisition: MRAcquisition, rng: np.random.Generator
) -> np.ndarray:
    """Bias field and Rician noise on a clean T1 signal.

    Args:
        signal: clean signal, shape (z, y, x).
        grid_uvw: grid coordinates ``u, v, w`` (x, y, z along the grid axes), each in
            [-1, 1] over the grid, broadcastable to ``signal``.
        acquisition: the draw of :func:`sample_mr_acquisition`.
        rng: generator of the noise.

    Returns:
        float32 image >= 0, shape of ``signal``.
    """
    u, v, w = grid_uvw
    c = np.asarray(acquisition.bias_coefficients, np.float32)
    log_bias = c[1] * u + c[2] * v + c[3] * w + c[4] * u * u + c[5] * v * v + c[6] * w * w
    log_bias = log_bias + c[7] * u * v + c[8] * u * w + c[9] * v * w
    biased = signal * np.exp(log_bias).astype(np.float32)
    sigma = np.float32(acquisition.noise_sigma)
    real = biased + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imaginary * imaginary).astype(np.float32)


# -------------------------------------------------------------------------------- CBCT


@dataclass(frozen=True)
class CBCTAcquisition:
    """A cone-beam CT acquisition; lengths in mm in the grid frame (index * spacing).

    Attributes:
        scale, offset: HU error ``hu' = scale * hu + offset``.
        cupping: HU lost at the centre of the field of view (parabolic in radius).
        shading: ``(amplitude HU, kx, ky, kz, phase)`` rows of smooth cosine shading.
        streaks: ``(x0, y0, angle_deg, z0, z_half_mm, width_mm, amplitude HU, half_length_mm)``
            rows: bands along a line through ``(x0, y0)`` over slices near ``z0``.
        noise_sigma: HU; noise correlation: ``noise_correlation_px``.
        fov_center: ``(x, y)`` of the cylinder axis; ``fov_radius``: its radius.
    """

    scale: float
    offset: float
    cupping: float
    shading: tuple[tuple[float, ...], ...]
    streaks: tuple[tuple[float, ...], ...]
    noise_sigma: float
    noise_correlation_px: float
    fov_center: tuple[float, float]
    fov_radius: float


def sample_cbct_acquisition(
    rng: np.random.Generator,
    extent_mm: tuple[float, float, float],
    body_half_width: float,
    dense_pair: tuple[np.ndarray, np.ndarray],
    dense_half_height: float,
    gas_points: list[np.ndarray],
) -> CBCTAcquisition:
    """Draw a CBCT acquisition for a grid of physical ``extent_mm`` (x, y, z).

    Args:
        extent_mm: grid extent along its axes (mm).
        body_half_width: the body's largest half width (mm); the field of view is
            about that large, so wide patients are truncated at the sides.
        dense_pair: the femoral head centres in the grid frame (mm); a dark band
            joins them (beam hardening between dense objects).
        dense_half_height: half height (mm) of the slab where that band shows.
        gas_points: grid-frame points of gas pockets where streaks start.
    """
    ex, ey, ez = extent_mm
    center = (ex / 2 + rng.uniform(-5, 5), ey / 2 + rng.uniform(-5, 5))
    radius = min(body_half_width * rng.uniform(0.92, 1.06), 0.6 * min(ex, ey))
    shading = []
    for _ in range(3):
        wave = rng.uniform(-1, 1, 3) * 1.6 * np.pi / np.array([ex, ey, ez])  # at most 0.8 periods over the grid
        shading.append((rng.uniform(10, 35), *wave, rng.uniform(0, 2 * np.pi)))
    a, b = dense_pair
    mid = (a + b) / 2
    angle = np.degrees(np.arctan2(b[1] - a[1], b[0] - a[0]))
    half_length = np.linalg.norm(b - a) / 2
    width, amplitude = rng.uniform(4, 7), -rng.uniform(50, 120)
    streaks = [(mid[0], mid[1], angle, mid[2], dense_half_height, width, amplitude, half_length)]
    for _ in range(int(rng.integers(2, 5))):
        start = gas_points[int(rng.integers(len(gas_points)))] if gas_points else np.array([*center, ez / 2])
        sign = rng.choice([-1, 1])
        streaks.append((start[0], start[1], rng.uniform(-180, 180), start[2], rng.uniform(4, 12), rng.uniform(1.5, 3.5),
                        sign * rng.uniform(25, 70), rng.uniform(60, 160)))
    return CBCTAcquisition(
        scale=float(rng.uniform(0.75, 1.25)),
        offset=float(rng.uniform(-300, 300)),
        cupping=float(rng.uniform(30, 90)),
        shading=tuple(tuple(float(v) for v in row) for row in shading),
        streaks=tuple(tuple(float(v) for v in row) for row in streaks),
        noise_sigma=float(rng.uniform(25, 45)),
        noise_correlation_px=float(rng.uniform(0.6, 1.0)),
        fov_center=(float(center[0]), float(center[1])),
        fov_radius=float(radius),
    )


def apply_cbct(
    ct: np.ndarray,
    grid_xyz: tuple[np.ndarray, ...],
    body: np.ndarray,
    acquisition: CBCTAcquisition,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn a clean CT (HU) into a CBCT-like image.

    Args:
        ct: clean CT of the input anatomy, shape (z, y, x), HU.
        grid_xyz: grid-frame coordinates (mm) along x, y, z, broadcastable to ``ct``.
        body: body occupancy in [0, 1], shape of ``ct`` (streaks and shading act in the body).
        acquisition: the draw of :func:`sample_cbct_acquisition`.
        rng: generator of the noise.

    Returns:
        ``(cbct, fov)``: float32 HU with -1000 outside the field of view, and the
        boolean field-of-view cylinder.
    """
    gx, gy, gz = grid_xyz
    acq = acquisition
    r2 = ((gx - acq.fov_center[0]) ** 2 + (gy - acq.fov_center[1]) ** 2) / np.float32(acq.fov_radius**2)
    fov = np.broadcast_to(r2 <= 1.0, ct.shape)
    artefact = np.zeros(ct.shape, np.float32)
    artefact -= np.float32(acq.cupping) * np.clip(1 - r2, 0, 1)
    for amplitude, kx, ky, kz, phase in acq.shading:
        artefact += np.float32(amplitude) * np.cos(kx * gx + ky * gy + kz * gz + phase).astype(np.float32)
    for x0, y0, angle, z0, z_half, width, amplitude, half_length in acq.streaks:
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        along = (gx - x0) * c + (gy - y0) * s
        across = -(gx - x0) * s + (gy - y0) * c
        profile = np.exp(-0.5 * (across / np.float32(width)) ** 2)
        profile *= np.exp(-0.5 * (along / np.float32(half_length)) ** 4)
        slab = np.clip(1 - np.abs(gz - z0) / np.float32(z_half), 0, 1)
        artefact += np.float32(amplitude) * (profile * slab).astype(np.float32)
    cbct = np.float32(acq.scale) * ct + np.float32(acq.offset) + artefact * body
    cbct += correlated_noise(rng, ct.shape, acq.noise_sigma, acq.noise_correlation_px)
    cbct = np.where(fov, cbct, np.float32(AIR_HU)).astype(np.float32)
    return cbct, np.ascontiguousarray(fov)
