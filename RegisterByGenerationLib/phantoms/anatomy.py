"""A male pelvis as implicit shapes in anatomy space, varied by a seed.

Anatomy space (mm): +x patient left, +y posterior, +z superior (LPS axes); the origin
is midway between the femoral head centres. The skeleton, muscles and organs are
drawn once in "design" coordinates for an average pelvis (keyframes along z, below)
and scaled per patient; the body outline is then built around them with a
patient-specific subcutaneous fat layer. Bilateral structures are drawn on the left
and mirrored. The design squeezes the pelvis a little along z so that a 13-14 cm slab
holds the femoral necks, the hips, the sacrum and the lumbar vertebra L5.

:func:`sample_patient` draws the patient (fixed anatomy), :func:`sample_state` the
things that change between two scans of that patient (bladder filling, rectal gas),
and :func:`build_layers` turns both into the ordered layers painted by
:func:`.render.render`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bone_labels import label_of
from .render import Layer
from .shapes import (
    Arc,
    Capsule,
    Contour,
    Ellipsoid,
    HalfSpace,
    Intersect,
    Mirror,
    Offset,
    Shape,
    Subtract,
    SweptEllipse,
    Union,
)

__all__ = [
    "Patient",
    "OrganState",
    "GasPocket",
    "sample_patient",
    "sample_state",
    "build_layers",
    "body_outline",
    "organic_warp",
    "Z_RANGE",
]

#: Anatomy z range (mm) an image slab should stay within: femoral necks to the L5 body.
Z_RANGE = (-46.0, 106.0)

JOINT_GAP_MM = 2.5


@dataclass(frozen=True)
class GasPocket:
    """Gas in the rectum: at height ``z`` (mm) over ``half_height`` mm, filling ``fraction``
    of the lumen's depth from its anterior wall (supine: gas rises anteriorly)."""

    z: float
    half_height: float
    fraction: float


@dataclass(frozen=True)
class OrganState:
    """What differs between two scans of one patient."""

    bladder_fill: float  # 0 (nearly empty) .. 1 (full, about 500 ml)
    gas: tuple[GasPocket, ...]


@dataclass(frozen=True)
class Patient:
    """The fixed anatomy of one phantom patient (lengths in mm, factors near 1)."""

    scale: tuple[float, float, float]  # skeleton/organ scale along x, y, z
    fat_side: float
    fat_front: float
    fat_back: float
    belly: float  # extra anterior fat at the top of the slab
    muscle_bulk: float
    wobble: tuple[tuple[float, float, float], ...]
    wing_flare: float  # iliac wings: extra lateral reach (mm)
    sacral_curve: float  # sacrum: extra posterior bulge (mm)
    neck_angle: float  # femoral neck: extra drop (mm over the neck)
    prostate: tuple[float, float, float]  # semi-axes
    rectum_width: float
    bladder_offset: tuple[float, float]  # x, y shift
    bowel: tuple[tuple[float, ...], ...]  # (cx, cy, cz, length, radius, angle_deg)
    warp: tuple[tuple[float, ...], ...]  # (axis, amplitude_mm, kx, ky, kz, phase): see organic_warp


def sample_patient(rng: np.random.Generator) -> Patient:
    """Draw a patient; every length and position of the anatomy depends on this draw."""
    s = rng.uniform(0.9, 1.04)
    bowel = []
    for _ in range(int(rng.integers(4, 8))):
        bowel.append((
            float(rng.uniform(-60, 60)), float(rng.uniform(-75, -25)), float(rng.uniform(40, 100)),
            float(rng.uniform(10, 40)), float(rng.uniform(10, 16)), float(rng.uniform(0, 180)),
        ))
    return Patient(
        scale=tuple(float(s * rng.uniform(1 - spread, 1 + spread)) for spread in (0.04, 0.05, 0.03)),
        fat_side=float(rng.uniform(7, 28)),
        fat_front=float(rng.uniform(8, 30)),
        fat_back=float(rng.uniform(8, 28)),
        belly=float(rng.uniform(0, 18)),
        muscle_bulk=float(rng.uniform(0.85, 1.15)),
        wobble=tuple((k, float(rng.uniform(-0.025, 0.025)), float(rng.uniform(0, 2 * np.pi))) for k in (2.0, 3.0, 4.0)),
        wing_flare=float(rng.uniform(-8, 10)),
        sacral_curve=float(rng.uniform(-6, 8)),
        neck_angle=float(rng.uniform(-6, 6)),
        prostate=tuple(float(v) for v in np.array([20.0, 15.0, 16.0]) * rng.uniform(0.85, 1.3)),
        rectum_width=float(rng.uniform(0.85, 1.25)),
        bladder_offset=(float(rng.uniform(-5, 5)), float(rng.uniform(-4, 4))),
        bowel=tuple(bowel),
        warp=tuple(_sample_warp(rng)),
    )


def _sample_warp(rng: np.random.Generator) -> list[tuple[float, ...]]:
    waves = []
    for axis in range(3):
        for _ in range(3):
            direction = rng.standard_normal(3)
            k = direction / np.linalg.norm(direction) * 2 * np.pi / rng.uniform(50, 100)
            amplitude, phase = rng.uniform(0.6, 1.4), rng.uniform(0, 2 * np.pi)
            waves.append((float(axis), float(amplitude), *(float(v) for v in k), float(phase)))
    return waves


def organic_warp(
    patient: Patient, x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Displace anatomy-space points by a smooth patient-specific field of a few mm.

    The shapes are drawn as ellipses and arcs; evaluating them at warped points makes
    every outline a little irregular, the same way in every scan of the patient. Each
    component is a sum of three plane waves with ``amplitude * |k| <= 0.18``, so the
    warp's Jacobian stays close to the identity (no folding).
    """
    out = [x.copy(), y.copy(), z.copy()]
    for axis, amplitude, kx, ky, kz, phase in patient.warp:
        argument = np.float32(kx) * x + np.float32(ky) * y + np.float32(kz) * z + np.float32(phase)
        out[int(axis)] += np.float32(amplitude) * np.sin(argument)
    return out[0], out[1], out[2]


def sample_state(rng: np.random.Generator) -> OrganState:
    """Draw a bladder filling and 0-2 rectal gas pockets."""
    pockets = tuple(
        GasPocket(float(rng.uniform(-20, 45)), float(rng.uniform(6, 20)), float(rng.uniform(0.2, 0.7)))
        for _ in range(int(rng.integers(0, 3)))
    )
    return OrganState(float(rng.uniform(0.1, 1.0)), pockets)


class _Frame:
    """Scales design coordinates (an average pelvis) to one patient."""

    def __init__(self, scale: tuple[float, float, float]):
        self.f = np.asarray(scale, np.float64)

    def pt(self, x: float, y: float, z: float) -> np.ndarray:
        return np.array([x, y, z]) * self.f

    def tube(self, rows) -> SweptEllipse:
        k = np.array(rows, np.float64)
        k[:, [0, 1, 2, 3, 4]] *= self.f[[2, 0, 1, 0, 1]]
        return SweptEllipse(k)

    def arc(self, rows) -> Arc:
        k = np.array(rows, np.float64)
        k[:, [0, 1, 2, 3, 4]] *= self.f[[2, 0, 1, 0, 1]]
        k[:, 7:11] *= float(np.mean(self.f[:2]))
        return Arc(k)

    def ellipsoid(self, center, radii) -> Ellipsoid:
        return Ellipsoid(self.pt(*center), np.asarray(radii) * self.f)

    def capsule(self, a, b, ra, rb=None) -> Capsule:
        m = float(np.mean(self.f))
        return Capsule(self.pt(*a), self.pt(*b), ra * m, (ra if rb is None else rb) * m)


def _both(shape: Shape) -> list[Shape]:
    return [shape, Mirror(shape)]


def _arc_through(a: np.ndarray, b: np.ndarray, sagitta: float) -> tuple[float, float, float, float, float]:
    """Circle arc from ``a`` to ``b`` bulging by ``sagitta`` to the right of a -> b.

    Returns ``(cx, cy, radius, theta_a, theta_b)`` (mm, degrees) for :class:`Arc` keys.
    """
    chord = b - a
    length = float(np.hypot(*chord))
    radius = (length**2 / 4 + sagitta**2) / (2 * sagitta)
    toward_center = np.array([-chord[1], chord[0]]) / length
    center = (a + b) / 2 + (radius - sagitta) * toward_center
    ta, tb = (float(np.degrees(np.arctan2(*(p - center)[::-1]))) for p in (a, b))
    return float(center[0]), float(center[1]), radius, ta, tb


# The left iliac wing, axial sections from just above the acetabulum to the crest:
# z, anterior end (x, y), posterior end (x, y), bulge (posterolateral), thickness at the
# anterior end, the middle and the posterior end (design mm).
_WING = np.array([
    [4.0, 88, -16, 62, 30, 3, 22, 26, 24],
    [24.0, 104, -24, 62, 44, 5, 12, 9, 20],
    [44.0, 118, -30, 56, 58, 8, 9, 4, 22],
    [64.0, 126, -36, 54, 68, 10, 9, 4, 22],
    [82.0, 128, -34, 58, 74, 10, 8, 5, 16],
    [92.0, 122, -20, 68, 70, 8, 6, 6, 8],
    [97.0, 112, -6, 80, 60, 5, 4, 4, 4],
])


def _wing_rows(
    flare: float, offset: float = 0.0, thickness: float | None = None, span: tuple[float, float] = (0.0, 1.0)
) -> list[tuple]:
    """Arc keys of the iliac wing (``offset``/``thickness`` None) or of a muscle lining it.

    ``offset`` moves the band from the wing's mid-line (+ posterolateral), ``thickness``
    replaces the wing's, ``span`` keeps a part of the wing's angular range.
    """
    rows = []
    for z, ax, ay, bx, by, sag, ta, tm, tb in _WING:
        reach = flare * np.clip((z - 10) / 40, 0, 1)
        cx, cy, r, th0, th1 = _arc_through(np.array([ax + reach, ay]), np.array([bx, by]), sag)
        th0, th1 = th0 + (th1 - th0) * span[0], th0 + (th1 - th0) * span[1]
        t = (ta, tm, tb) if thickness is None else (thickness,) * 3
        rows.append((z, cx, cy, r, r, th0, th1, *t, offset))
    return rows


def body_outline(patient: Patient) -> tuple[Contour, Contour]:
    """The skin outline and the inner outline (inside the subcutaneous fat) as shapes."""
    f = patient.scale
    # z, half width, front, back of the muscle compartment (design units)
    inner = np.array([
        [-80.0, 150, 76, 92],
        [-10.0, 152, 76, 96],
        [25.0, 140, 82, 100],
        [60.0, 150, 90, 102],
        [140.0, 146, 96, 106],
    ])
    keys_inner = np.column_stack(
        [inner[:, 0] * f[2], np.zeros(len(inner)), inner[:, 1] * f[0], inner[:, 2] * f[1], inner[:, 3] * f[1]]
    )
    z = keys_inner[:, 0]
    belly = patient.belly * np.clip((z - 10) / 80, 0, 1)
    keys_body = keys_inner.copy()
    keys_body[:, 2] += patient.fat_side
    keys_body[:, 3] += patient.fat_front + belly
    keys_body[:, 4] += patient.fat_back
    return (
        Contour(keys_body, exponent=2.5, back_exponent=3.2, wobble=patient.wobble),
        Contour(keys_inner, exponent=2.3, back_exponent=2.8, wobble=patient.wobble),
    )


def build_layers(patient: Patient, state: OrganState) -> list[Layer]:
    """The layers of ``patient`` in ``state``, in painting order (body first, bones last)."""
    fr = _Frame(patient.scale)
    body, inner = body_outline(patient)
    # Muscles and bowel are clipped to the inner outline (the distances are computed once).
    compartment = inner
    # Inside the fascia everything is muscle unless said otherwise: the fat of the pelvic
    # cavity, the ischioanal fossae and the femoral triangles is carved out next, and the
    # named muscles are outlined by thin fat planes.
    cavity = Union([
        fr.tube([(-90, 0, 20, 34, 40), (-35, 0, 5, 38, 62), (-10, 0, -15, 44, 72), (10, 0, -20, 52, 70),
                 (30, 0, -25, 70, 62), (55, 0, -35, 92, 55), (80, 0, -40, 105, 60), (140, 0, -45, 110, 62)]),
        *_both(fr.ellipsoid((70, -62, -25), (24, 16, 40))),
    ], k=6.0)
    layers = [
        Layer("body", body, "skin", "fat", 1.8),
        Layer("compartment", inner, "fascia", "muscle", 1.5),
        Layer("visceral_fat", cavity, "visceral_fat", within=compartment),
    ]
    for i, (cx, cy, cz, length, radius, angle) in enumerate(patient.bowel):
        d = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle)) * 0.5, 0.3]) * length / 2
        loop = fr.capsule(np.array([cx, cy, cz]) - d, np.array([cx, cy, cz]) + d, radius)
        layers.append(Layer(f"bowel_{i}", loop, "bowel_wall", "bowel_content", 2.5, within=compartment))
    for name, shape in _muscles(fr, patient, inner):
        layers.append(Layer(name, shape, "fat", "muscle", 1.0, within=compartment))
    layers += _vessels(fr)
    layers += _pelvic_organs(fr, patient, state)
    layers += _skeleton(fr, patient)
    return layers


def _muscles(fr: _Frame, patient: Patient, inner: Contour) -> list[tuple[str, Shape]]:
    b = patient.muscle_bulk
    flare = patient.wing_flare

    def tube(rows):
        rows = np.array(rows, np.float64)
        rows[:, 3:5] *= b
        return fr.tube(rows)

    left = {
        "gluteus_maximus": tube([(-90, 100, 60, 50, 26, -45), (-20, 92, 76, 56, 28, -35), (10, 82, 88, 56, 26, -25),
                                 (40, 64, 96, 46, 20, -15), (65, 46, 100, 28, 14, -10), (82, 36, 100, 14, 9, 0)]),
        "gluteus_medius": fr.arc(_wing_rows(flare, offset=20 * b, thickness=26 * b, span=(0.05, 0.85))[:-1]),
        "gluteus_medius_low": tube([(-20, 136, 8, 12, 18, 0), (4, 128, 6, 18, 26, -20), (24, 118, 12, 16, 28, -35)]),
        "iliacus": fr.arc(_wing_rows(flare, offset=-14 * b, thickness=18 * b, span=(0.0, 0.75))[1:]),
        "psoas": tube([(-90, 98, -24, 12, 12), (-20, 84, -38, 16, 14), (0, 72, -44, 18, 15), (20, 64, -36, 19, 16),
                       (45, 52, -15, 19, 17), (75, 40, 8, 18, 17), (130, 34, 22, 17, 16)]),
        "obturator_internus": tube([(-42, 38, 22, 7, 22, 5), (-10, 36, 10, 8, 30, 5), (16, 40, 4, 7, 24, 0)]),
        "piriformis": tube([(22, 92, 52, 14, 8, -25), (40, 70, 60, 18, 10, -10), (58, 38, 60, 12, 10, 0)]),
        "erector_spinae": tube([(15, 12, 92, 10, 7), (45, 20, 94, 20, 12), (75, 26, 94, 24, 16),
                                (130, 34, 88, 28, 20)]),
        "sartorius": tube([(-90, 112, -76, 12, 8), (-15, 124, -68, 11, 8), (30, 126, -56, 8, 7)]),
        "tensor_fasciae_latae": tube([(-90, 146, -30, 10, 20, 25), (-10, 145, -36, 10, 18, 25),
                                      (25, 134, -44, 7, 10, 25)]),
        "rectus_femoris": tube([(-90, 110, -52, 16, 12), (-15, 104, -56, 12, 10), (5, 98, -50, 8, 8)]),
        "vastus": tube([(-90, 130, 2, 30, 36), (-32, 132, 4, 22, 28)]),
        "adductors": tube([(-90, 52, -32, 26, 26, 30), (-25, 48, -40, 20, 16, 30), (-8, 45, -48, 12, 9, 20)]),
        "obturator_externus": tube([(-40, 66, -18, 16, 10, 10), (-14, 62, -16, 16, 10, 10)]),
        "quadratus_femoris": tube([(-90, 90, 46, 22, 10, -20), (-28, 94, 42, 22, 9, -20)]),
        "levator_ani": fr.arc([(-50, 0, 14, 30, 30, 15, 165, 6, 6, 6, 0), (-12, 0, 10, 42, 40, 5, 175, 7, 7, 7, 0)]),
    }
    # The abdominal wall muscles follow the inner outline (its keys are in patient mm).
    keys = inner.keys
    zs = np.array([-20.0, 20, 60, 100, 140]) * fr.f[2]
    front, half = np.interp(zs, keys[:, 0], keys[:, 3]), np.interp(zs, keys[:, 0], keys[:, 2])
    widen = np.clip(zs / fr.f[2] + 20, 0, None)  # the rectus sheath widens upwards
    left["rectus_abdominis"] = SweptEllipse([
        (z, (8 + 0.12 * w) * fr.f[0], -(fy - 7), (10 + 0.15 * w) * fr.f[0], 6.5)
        for z, w, fy in zip(zs, widen, front, strict=True)
    ])
    left["obliques"] = Arc([
        (z, 0, 0, h - 9, fy - 9, -70, 15, 8, 13, 10, 0) for z, h, fy in zip(zs[2:], half[2:], front[2:], strict=True)
    ])
    out = []
    for name, shape in left.items():
        if name == "levator_ani":
            out.append((name, shape))
            continue
        out.append((f"{name}_left", shape))
        out.append((f"{name}_right", Mirror(shape)))
    return out


def _vessels(fr: _Frame) -> list[Layer]:
    artery = fr.tube([(-90, 94, -62, 4.5, 4.5), (0, 78, -64, 4.5, 4.5), (30, 66, -48, 4.8, 4.8), (60, 50, -20, 5, 5),
                      (85, 28, -8, 5.5, 5.5), (130, 14, -4, 6.5, 6.5)])
    vein = fr.tube([(-90, 80, -58, 6.5, 6), (0, 63, -60, 7, 6.5), (30, 55, -40, 7, 6.5), (60, 42, -12, 7.5, 7),
                    (85, 22, 4, 8, 7.5), (130, 10, 8, 9, 8)])
    return [Layer("artery_left", artery, "artery"), Layer("artery_right", Mirror(artery), "artery"),
            Layer("vein_left", vein, "vein"), Layer("vein_right", Mirror(vein), "vein")]


def _rectum(fr: _Frame, width: float) -> SweptEllipse:
    w = width
    return fr.tube([
        (-90, 0, 36, 9, 8), (-32, 0, 28, 12 * w, 11 * w), (-15, 0, 27, 15 * w, 14 * w),
        (5, 0, 31, 17 * w, 15 * w), (25, 2, 37, 18 * w, 16 * w), (45, 6, 37, 17 * w, 15 * w),
        (60, 14, 28, 15 * w, 13 * w), (72, 32, 10, 13 * w, 12 * w),
    ])


def _pelvic_organs(fr: _Frame, patient: Patient, state: OrganState) -> list[Layer]:
    rectum = _rectum(fr, patient.rectum_width)
    layers = [Layer("rectum", rectum, "rectal_wall", "stool", 3.5)]
    lumen = Offset(rectum, -3.5)
    keys = rectum.keys
    for i, pocket in enumerate(state.gas):
        z = pocket.z * fr.f[2]
        cy, ry = np.interp(z, keys[:, 0], keys[:, 2]), np.interp(z, keys[:, 0], keys[:, 4]) - 3.5
        level = cy - ry + 2 * ry * pocket.fraction
        slab = Ellipsoid((np.interp(z, keys[:, 0], keys[:, 1]), cy, z), (60.0, 60.0, pocket.half_height))
        layers.append(Layer(f"rectal_gas_{i}", Intersect(Intersect(lumen, HalfSpace(1, level)), slab), "gas"))
    p = patient.prostate
    layers.append(Layer("prostate", fr.ellipsoid((0, -22, -26), p), "prostate"))
    for side, shape in zip(("left", "right"), _both(fr.ellipsoid((16, 2, -6), (14, 5, 7))), strict=True):
        layers.append(Layer(f"seminal_vesicle_{side}", shape, "seminal_vesicle"))
    fill = state.bladder_fill
    radii = (28 + 30 * fill, 20 + 22 * fill, 18 + 30 * fill)
    dx, dy = patient.bladder_offset
    center = (dx, -26 - 2 * fill + dy, -10 + radii[2])
    layers.append(Layer("bladder", fr.ellipsoid(center, radii), "bladder_wall", "urine", 2.5 + 2.5 * (1 - fill)))
    return layers


def _femur(fr: _Frame, patient: Patient) -> Shape:
    drop = patient.neck_angle
    parts = [
        fr.ellipsoid((84, 0, 0), (23.5, 23.5, 23.5)),
        fr.capsule((90, 2, -4), (118, 10, -26 - drop), 14, 16),
        fr.ellipsoid((133, 14, -18 - drop / 2), (12, 19, 24)),
        fr.capsule((126, 10, -30), (122, 10, -52), 15, 15),
        fr.capsule((122, 10, -52), (112, 8, -240), 14.5, 14),
        fr.ellipsoid((110, 22, -54), (9, 9, 12)),
    ]
    return Union(parts, k=5.0)


def _sacrum(fr: _Frame, patient: Patient) -> tuple[Shape, Shape]:
    """The sacrum (with foramina cut out) and its canal."""
    c = patient.sacral_curve
    z = np.array([-16.0, 0, 15, 30, 45, 60, 74])
    yb = np.array([50.0, 60, 64 + c / 2, 65 + c, 61 + c / 2, 53, 44])
    rx = np.array([5.0, 8, 12, 16, 20, 24, 26])
    ry = np.array([4.0, 6, 8, 10, 12, 14, 16])
    wa = np.array([6.0, 12, 22, 34, 46, 54, 56])
    da = np.array([4.0, 6, 9, 12, 15, 17, 17])
    ya = yb + np.array([2.0, 4, 6, 8, 9, 10, 10])
    # The base is not flat: the S1 body ends in a low dome, the alae slope down and thin out.
    body = fr.tube(np.vstack([np.column_stack([z, 0 * z, yb, rx, ry]), [76.5, 0, 44, 20, 11]]))
    alae_keys = np.column_stack([z, ya, wa, da, da])
    alae_keys[-1] = (71, ya[-1], 48, 9, 9)
    alae = Contour(alae_keys * np.array([fr.f[2], fr.f[1], fr.f[0], fr.f[1], fr.f[1]]), exponent=3.0, back_exponent=3.0)
    canal = fr.tube(np.column_stack([z[2:], 0 * z[2:], yb[2:] + ry[2:] + 3, [3, 5, 7, 9, 10], [2, 3, 4, 5, 6]]))
    foramina = []
    for zk, xk in ((14, 14), (30, 19), (46, 23), (62, 26)):
        y0 = float(np.interp(zk, z, yb))
        foramina += _both(fr.capsule((xk, y0 - 22, zk), (xk + 4, y0 + 22, zk), 4.0))
    sacrum = Subtract(Subtract(Union([body, alae], k=5.0), canal), Union(foramina))
    return sacrum, canal


def _hip(fr: _Frame, patient: Patient, femur: Shape, sacrum: Shape) -> Shape:
    f = patient.wing_flare
    ilium = fr.arc(_wing_rows(f))
    parts = [
        fr.ellipsoid((70, 4, 4), (30, 36, 32)),
        ilium,
        fr.capsule((62, -22, -4), (12, -62, -12), 11, 10),
        fr.tube([(-46, 15, -54, 8, 15, 70), (-28, 14, -58, 9, 17, 70), (-8, 14, -62, 9, 14, 65)]),
        fr.capsule((14, -56, -40), (52, 28, -50), 8, 9),
        fr.capsule((66, 22, -8), (56, 32, -48), 16, 14),
        fr.ellipsoid((58, 36, -50), (14, 17, 14)),
    ]
    hip = Subtract(Union(parts, k=6.0), femur, JOINT_GAP_MM)
    return Subtract(hip, sacrum, JOINT_GAP_MM)


def _vertebra(fr: _Frame, z0: float) -> Shape:
    """A lumbar vertebra whose body spans ``z0`` .. ``z0 + 24`` (design mm), canal excluded."""
    body = fr.tube([(z0, 0, 35, 28, 19), (z0 + 12, 0, 34, 26, 18), (z0 + 24, 0, 33, 27, 19)])
    arch = fr.tube([(z0 + 4, 0, 66, 18, 15), (z0 + 22, 0, 66, 18, 15)])
    parts = [body, arch, fr.capsule((0, 78, z0 + 16), (0, 102, z0 + 10), 5, 4.5)]
    parts += _both(fr.capsule((12, 58, z0 + 16), (48, 62, z0 + 17), 6, 5))
    parts += _both(fr.ellipsoid((16, 72, z0 + 10), (7, 8, 12)))
    return Subtract(Union(parts, k=4.0), _spinal_canal(fr))


def _spinal_canal(fr: _Frame) -> Shape:
    return fr.tube([(70, 0, 64, 11, 8), (160, 0, 63, 11, 8)])


def _spine(fr: _Frame) -> tuple[Shape, Shape, Shape]:
    """L5, L4 (above the slab an input covers; drawn for the taller reference CT), and the discs."""
    discs = Union([
        fr.tube([(74, 0, 37, 27, 18), (82, 0, 35, 28, 19)]),
        fr.tube([(106, 0, 33, 27, 19), (114, 0, 33, 27, 19)]),
    ])
    return _vertebra(fr, 82), _vertebra(fr, 114), discs


def _skeleton(fr: _Frame, patient: Patient) -> list[Layer]:
    femur = _femur(fr, patient)
    sacrum, sacral_canal = _sacrum(fr, patient)
    hip = _hip(fr, patient, femur, sacrum)
    l5, l4, discs = _spine(fr)
    spinal_canal = _spinal_canal(fr)
    femoral_canal = fr.capsule((122, 10, -62), (112, 8, -240), 9.5, 9.0)
    bone = dict(tissue="cortical_bone", core="marrow")
    return [
        Layer("discs", discs, "disc"),
        Layer("spinal_canal", Union([spinal_canal, sacral_canal]), "csf"),
        Layer("femur_left", femur, **bone, depth=2.2, label=label_of("femur_left")),
        Layer("femur_right", Mirror(femur), **bone, depth=2.2, label=label_of("femur_right")),
        Layer("femoral_canal_left", femoral_canal, "yellow_marrow", label=label_of("femur_left")),
        Layer("femoral_canal_right", Mirror(femoral_canal), "yellow_marrow", label=label_of("femur_right")),
        Layer("hip_left", hip, **bone, depth=2.0, label=label_of("hip_left")),
        Layer("hip_right", Mirror(hip), **bone, depth=2.0, label=label_of("hip_right")),
        Layer("sacrum", sacrum, **bone, depth=1.8, label=label_of("sacrum")),
        Layer("vertebrae_L5", l5, **bone, depth=1.6, label=label_of("vertebrae_L5")),
        # L4 is not in the label table; it lies above every input grid (Z_RANGE).
        Layer("vertebrae_L4", l4, **bone, depth=1.6),
    ]
