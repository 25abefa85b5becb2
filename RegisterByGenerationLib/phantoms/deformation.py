"""The true misalignment between a phantom's reference CT and its input: rigid + smooth.

A point ``p`` of the reference CT (physical, LPS mm) shows the tissue found at the
input-frame point ``q = D(E(p))``, where ``E`` is a rigid motion (an ITK
``Euler3DTransform``: rotation about ``center`` by ``angles`` then ``translation``) and
``D(x) = x + sum_k a_k exp(-|x - c_k|^2 / (2 s_k^2))`` a sum of Gaussian displacement
bumps. The bumps are scaled so that the largest displacement of ``D`` over the pelvis is
``max_deformation_mm``, and kept gentle enough (``sum |a_k| / s_k < 1``) for ``D`` to
be invertible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

__all__ = ["Misalignment", "sample_misalignment"]


@dataclass(frozen=True)
class Misalignment:
    """Reference-frame point -> input-frame point (both physical, mm).

    Attributes:
        center: rotation centre (mm).
        angles_deg: Euler angles about x, y, z (degrees; ITK's default Z-X-Y order).
        translation: (mm).
        bumps: rows ``(cx, cy, cz, ax, ay, az, sigma)``: centre, displacement, width (mm).
        max_deformation_mm: largest displacement of the deformation part over the pelvis.
    """

    center: tuple[float, float, float]
    angles_deg: tuple[float, float, float]
    translation: tuple[float, float, float]
    bumps: tuple[tuple[float, ...], ...]
    max_deformation_mm: float

    def rigid(self) -> sitk.Euler3DTransform:
        """The rigid part ``E`` as a SimpleITK transform (maps reference -> input points)."""
        transform = sitk.Euler3DTransform()
        transform.SetCenter(self.center)
        transform.SetRotation(*(float(np.radians(a)) for a in self.angles_deg))
        transform.SetTranslation(self.translation)
        return transform

    def rotation_angle_deg(self) -> float:
        """Total rotation angle of ``E`` (degrees)."""
        matrix = np.asarray(self.rigid().GetMatrix()).reshape(3, 3)
        return float(np.degrees(np.arccos(np.clip((np.trace(matrix) - 1) / 2, -1, 1))))

    def displacement(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The displacement of ``D`` at input-frame points (float32 arrays, mm)."""
        dx, dy, dz = (np.zeros(x.shape, np.float32) for _ in range(3))
        for cx, cy, cz, ax, ay, az, sigma in self.bumps:
            squared = (x - np.float32(cx)) ** 2 + (y - np.float32(cy)) ** 2 + (z - np.float32(cz)) ** 2
            weight = np.exp(squared * np.float32(-0.5 / sigma**2))
            dx += np.float32(ax) * weight
            dy += np.float32(ay) * weight
            dz += np.float32(az) * weight
        return dx, dy, dz

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Map reference-frame points to input-frame points (float32 arrays of one shape)."""
        matrix = np.asarray(self.rigid().GetMatrix(), np.float64).reshape(3, 3).astype(np.float32)
        c = np.asarray(self.center, np.float32)
        t = np.asarray(self.translation, np.float32)
        u, v, w = x - c[0], y - c[1], z - c[2]
        rx = matrix[0, 0] * u + matrix[0, 1] * v + matrix[0, 2] * w + (c[0] + t[0])
        ry = matrix[1, 0] * u + matrix[1, 1] * v + matrix[1, 2] * w + (c[1] + t[1])
        rz = matrix[2, 0] * u + matrix[2, 1] * v + matrix[2, 2] * w + (c[2] + t[2])
        dx, dy, dz = self.displacement(rx, ry, rz)
        return rx + dx, ry + dy, rz + dz


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def sample_misalignment(
    rng: np.random.Generator,
    center: np.ndarray,
    region_lo: np.ndarray,
    region_hi: np.ndarray,
    rotation_deg: tuple[float, float] = (2.0, 5.0),
    translation_mm: tuple[float, float] = (3.0, 10.0),
    deformation_mm: tuple[float, float] = (4.0, 10.0),
) -> Misalignment:
    """Draw a misalignment.

    Args:
        rng: generator.
        center: rotation centre (input frame, mm).
        region_lo, region_hi: box (input frame, mm) holding the bump centres, over which
            the largest displacement is measured.
        rotation_deg, translation_mm, deformation_mm: ranges of the total rotation
            angle, the translation length and the largest deformation.
    """
    angles = _unit(rng) * rng.uniform(*rotation_deg)
    translation = _unit(rng) * rng.uniform(*translation_mm)
    lo, hi = np.asarray(region_lo, float), np.asarray(region_hi, float)
    bumps = []
    for _ in range(int(rng.integers(3, 6))):
        bumps.append((*rng.uniform(lo, hi), *_unit(rng) * rng.uniform(0.5, 1.0), rng.uniform(35.0, 60.0)))
    bumps = np.array(bumps)
    target = rng.uniform(*deformation_mm)
    lattice = [np.linspace(a, b, 17, dtype=np.float32) for a, b in zip(lo, hi, strict=True)]
    gx, gy, gz = np.meshgrid(*lattice, indexing="ij")
    probe = Misalignment(tuple(center), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), tuple(map(tuple, bumps)), 0.0)
    magnitude = float(np.max(np.sqrt(sum(d.astype(np.float64) ** 2 for d in probe.displacement(gx, gy, gz)))))
    gain = target / max(magnitude, 1e-6)
    # Keep D invertible: the sum of the bumps' largest slopes stays below 0.9.
    slope = float(np.sum(np.linalg.norm(bumps[:, 3:6], axis=1) * gain / bumps[:, 6])) * np.exp(-0.5)
    if slope > 0.9:
        gain *= 0.9 / slope
        target *= 0.9 / slope
    bumps[:, 3:6] *= gain
    return Misalignment(
        center=tuple(float(v) for v in center),
        angles_deg=tuple(float(v) for v in angles),
        translation=tuple(float(v) for v in translation),
        bumps=tuple(tuple(float(v) for v in row) for row in bumps),
        max_deformation_mm=float(target),
    )
