"""Implicit shapes (approximate signed distance functions) for the pelvis phantoms.

Every shape maps points ``x, y, z`` (float32 arrays of equal shape, mm, anatomy space:
+x patient left, +y posterior, +z superior) to an approximate signed distance in mm:
negative inside, positive outside, close to the Euclidean distance near the surface
(first-order ``f / |grad f|``). That is all the renderer needs: it turns the distance
into a partial-volume occupancy over one voxel and paints shells (cortical bone,
bladder wall) as distance bands.

Shapes know a conservative bounding box (``lo``, ``hi``, mm), so a union evaluates each
part only where it can matter. Outside its box a part reports :data:`FAR` (a large
positive distance), which keeps every inside/outside decision exact.

Hand-written rather than taken from a library: the usual SDF packages render meshes
or images on their own grids, while the phantom must be evaluated at arbitrary
(rotated, deformed) physical points so that the input, the truth and the misaligned
reference are sampled from one continuous anatomy without resampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "FAR",
    "Shape",
    "Ellipsoid",
    "Capsule",
    "SweptEllipse",
    "Arc",
    "Contour",
    "HalfSpace",
    "Union",
    "Subtract",
    "Intersect",
    "Offset",
    "Mirror",
    "smooth_min",
]

#: Distance reported for points far outside a shape's bounding box (mm).
FAR = np.float32(1.0e3)
_EPS = np.float32(1e-6)


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (a blended union) with blend radius ``k`` mm; ``k = 0`` is ``min``."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / np.float32(k), 0, 1)
    return b + (a - b) * h - np.float32(k) * h * (1 - h)


class _ZTable:
    """Keyframe columns linearly interpolated along z, read from a 0.25 mm lookup table.

    ``np.interp`` per column and call was the hot spot of rendering; one table lookup
    gives every column at once. The value at ``z`` is the keyframe interpolation at the
    nearest table sample, at most 0.125 mm of z away (shapes move by a fraction of
    that; every image of a phantom reads the same table, so they agree exactly).
    """

    STEP = 0.25

    def __init__(self, keys: np.ndarray):
        z = keys[:, 0]
        count = int(np.ceil((z[-1] - z[0]) / self.STEP)) + 1
        samples = z[0] + np.arange(count) * self.STEP
        self.z0, self.last = np.float32(z[0] - self.STEP / 2), np.float32(count - 1)
        self.table = np.stack([np.interp(samples, z, keys[:, j]) for j in range(1, keys.shape[1])]).astype(np.float32)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """Columns 1.. of the keyframes at ``z``: array of shape (columns - 1, *z.shape)."""
        i = np.clip((z - self.z0) * np.float32(1 / self.STEP), 0, self.last).astype(np.int32)
        return np.take(self.table, i, axis=1)


def _extrude(d2: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """Signed distance of a 2D section of distance ``d2`` extruded over a slab of distance ``dz``."""
    outside = np.sqrt(np.maximum(d2, 0) ** 2 + np.maximum(dz, 0) ** 2)
    return outside + np.minimum(np.maximum(d2, dz), 0)


def _ellipse_distance(u: np.ndarray, v: np.ndarray, rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """First-order distance to the ellipse ``(u/rx)^2 + (v/ry)^2 = 1`` (mm)."""
    rho = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    grad = np.sqrt((u / rx**2) ** 2 + (v / ry**2) ** 2) / np.maximum(rho, _EPS)
    # No point is deeper than the smaller semi-axis (the estimate overshoots near the centre).
    return np.maximum((rho - 1) / np.maximum(grad, _EPS), -np.minimum(rx, ry))


def _from_boxes(shape: Shape, boxes) -> None:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 2, 3)
    shape._set_bounds(boxes[:, 0].min(axis=0), boxes[:, 1].max(axis=0), boxes)


class Shape:
    """Base class: a callable ``(x, y, z) -> distance`` with a bounding box ``lo``, ``hi`` (mm)."""

    lo: np.ndarray
    hi: np.ndarray
    #: Boxes whose union holds the shape, shape (n, 2, 3): a tighter cover than
    #: (lo, hi) for long oblique or curved shapes; the renderer skips points outside them.
    boxes: np.ndarray

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _set_bounds(self, lo: Sequence[float], hi: Sequence[float], boxes: np.ndarray | None = None) -> None:
        self.lo = np.asarray(lo, dtype=np.float64)
        self.hi = np.asarray(hi, dtype=np.float64)
        if np.any(self.hi < self.lo):
            raise ValueError(f"{type(self).__name__}: empty bounding box lo={self.lo}, hi={self.hi}")
        if boxes is None:
            boxes = np.stack([self.lo, self.hi])[None]
        self.boxes = np.asarray(boxes, np.float64).reshape(-1, 2, 3)

    def evaluate(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, margin: float) -> np.ndarray:
        """Distance at every point; :data:`FAR` beyond the bounding box grown by ``margin`` mm."""
        inside = (
            (x >= self.lo[0] - margin) & (x <= self.hi[0] + margin)
            & (y >= self.lo[1] - margin) & (y <= self.hi[1] + margin)
            & (z >= self.lo[2] - margin) & (z <= self.hi[2] + margin)
        )
        out = np.full(x.shape, FAR, dtype=np.float32)
        if inside.all():
            return self(x, y, z)
        if inside.any():
            out[inside] = self(x[inside], y[inside], z[inside])
        return out


class Ellipsoid(Shape):
    """Axis-aligned ellipsoid with ``center`` and semi-axes ``radii`` (mm)."""

    def __init__(self, center: Sequence[float], radii: Sequence[float]):
        self.c = np.asarray(center, np.float32)
        self.r = np.asarray(radii, np.float32)
        if np.any(self.r <= 0):
            raise ValueError(f"radii must be positive, got {radii}")
        # Four slabs along z, each as wide as the ellipsoid's widest section within it.
        boxes = []
        edges = np.linspace(-1.0, 1.0, 5)
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            nearest = 0.0 if a < 0 < b else min(abs(a), abs(b))
            reach = self.r[:2] * np.sqrt(1 - nearest**2)
            boxes.append([
                (*(self.c[:2] - reach), self.c[2] + a * self.r[2]),
                (*(self.c[:2] + reach), self.c[2] + b * self.r[2]),
            ])
        _from_boxes(self, boxes)

    def __call__(self, x, y, z):
        u, v, w = x - self.c[0], y - self.c[1], z - self.c[2]
        r = self.r
        rho = np.sqrt((u / r[0]) ** 2 + (v / r[1]) ** 2 + (w / r[2]) ** 2)
        grad = np.sqrt((u / r[0] ** 2) ** 2 + (v / r[1] ** 2) ** 2 + (w / r[2] ** 2) ** 2) / np.maximum(rho, _EPS)
        # No point is deeper than the smallest semi-axis (the estimate overshoots near the centre).
        return np.maximum((rho - 1) / np.maximum(grad, _EPS), -np.min(r))


class Capsule(Shape):
    """Segment from ``a`` to ``b`` swept by a sphere whose radius runs from ``ra`` to ``rb`` (mm)."""

    def __init__(self, a: Sequence[float], b: Sequence[float], ra: float, rb: float | None = None):
        self.a = np.asarray(a, np.float32)
        self.b = np.asarray(b, np.float32)
        self.ra = np.float32(ra)
        self.rb = np.float32(ra if rb is None else rb)
        if self.ra <= 0 or self.rb <= 0:
            raise ValueError(f"radii must be positive, got {ra}, {rb}")
        r = float(max(self.ra, self.rb))
        ends = self.a[None] + np.linspace(0, 1, 5)[:, None] * (self.b - self.a)[None]
        pieces = zip(ends[:-1], ends[1:], strict=True)
        _from_boxes(self, [[np.minimum(p, q) - r, np.maximum(p, q) + r] for p, q in pieces])

    def __call__(self, x, y, z):
        ab = self.b - self.a
        t = ((x - self.a[0]) * ab[0] + (y - self.a[1]) * ab[1] + (z - self.a[2]) * ab[2]) / np.float32(ab @ ab)
        t = np.clip(t, 0, 1)
        d = np.sqrt(
            (x - self.a[0] - t * ab[0]) ** 2 + (y - self.a[1] - t * ab[1]) ** 2 + (z - self.a[2] - t * ab[2]) ** 2
        )
        return d - (self.ra + (self.rb - self.ra) * t)


class SweptEllipse(Shape):
    """A tube of elliptic section whose centre and radii follow keyframes along z.

    Args:
        keys: rows ``(z, cx, cy, rx, ry)`` or ``(z, cx, cy, rx, ry, angle_deg)`` with
            increasing z (mm); linear in between; flat caps at the first and last z.
            ``angle_deg`` rotates the section (from +x towards +y).
    """

    def __init__(self, keys: Sequence[Sequence[float]]):
        k = np.asarray(keys, np.float64)
        if k.ndim != 2 or k.shape[1] not in (5, 6) or len(k) < 2:
            raise ValueError(f"keys must be rows of (z, cx, cy, rx, ry[, angle]), got shape {k.shape}")
        if np.any(np.diff(k[:, 0]) <= 0) or np.any(k[:, 3:5] <= 0):
            raise ValueError("keys must have increasing z and positive radii")
        self.keys, self._table = k, _ZTable(k)
        r = np.max(k[:, 3:5], axis=1)
        lo = np.column_stack([k[:, 1] - r, k[:, 2] - r, k[:, 0]])
        hi = np.column_stack([k[:, 1] + r, k[:, 2] + r, k[:, 0]])
        _from_boxes(self, [[np.minimum(lo[i], lo[i + 1]), np.maximum(hi[i], hi[i + 1])] for i in range(len(k) - 1)])

    def __call__(self, x, y, z):
        k = self.keys
        p = self._table(z)
        u, v = x - p[0], y - p[1]
        if k.shape[1] == 6:
            angle = np.deg2rad(p[4])
            c, s = np.cos(angle), np.sin(angle)
            u, v = u * c + v * s, v * c - u * s
        d2 = _ellipse_distance(u, v, p[2], p[3])
        dz = np.maximum(np.float32(k[0, 0]) - z, z - np.float32(k[-1, 0]))
        return _extrude(d2, dz)


class Arc(Shape):
    """A curved plate: a band around part of an ellipse in each axial section.

    The iliac wings and the muscles lining them are arcs. Keyframe rows are
    ``(z, cx, cy, rx, ry, theta0, theta1, t0, t_mid, t1, offset)``: ellipse centre and
    semi-axes (mm), the covered angles (degrees, -180..180, from +x towards +y), the
    band thickness at the first end, the middle and the second end (mm), and a radial
    offset of the band's mid-line from the ellipse (mm, + outwards). Ends are rounded.
    """

    def __init__(self, keys: Sequence[Sequence[float]]):
        k = np.asarray(keys, np.float64)
        if k.ndim != 2 or k.shape[1] != 11 or len(k) < 2:
            raise ValueError(f"keys must be rows of 11 values, got shape {k.shape}")
        if np.any(np.diff(k[:, 0]) <= 0) or np.any(k[:, 3:5] <= 0) or np.any(k[:, 6] <= k[:, 5]):
            raise ValueError("keys must have increasing z, positive radii and theta1 > theta0")
        self.keys, self._table = k, _ZTable(k)
        # Bounds from the band itself (not the whole ellipse): sample its mid-line.
        boxes = []
        for z0, z1 in zip(k[:-1, 0], k[1:, 0], strict=True):
            zs = np.linspace(z0, z1, 9)
            columns = (np.interp(zs, k[:, 0], k[:, j])[:, None] for j in range(1, 11))
            cx, cy, rx, ry, th0, th1, t0, tm, t1, offset = columns
            theta = np.deg2rad(th0 + (th1 - th0) * np.linspace(0, 1, 64)[None, :])
            radius = np.sqrt((rx * np.cos(theta)) ** 2 + (ry * np.sin(theta)) ** 2)
            scale = 1 + offset / radius
            px, py = cx + rx * np.cos(theta) * scale, cy + ry * np.sin(theta) * scale
            # Between samples the mid-line bows by at most r * (1 - cos(step / 2)) and moves by
            # at most one z step's change; add those and half the thickness.
            step = np.max(np.abs(np.diff(px, axis=0)), initial=0) + np.max(np.abs(np.diff(py, axis=0)), initial=0)
            bow = np.max(rx + ry) * (1 - np.cos(np.pi / 63))
            grow = np.max(np.maximum(np.maximum(t0, tm), t1)) / 2 + bow + step + 1
            boxes.append([(px.min() - grow, py.min() - grow, z0), (px.max() + grow, py.max() + grow, z1)])
        _from_boxes(self, boxes)

    def __call__(self, x, y, z):
        k = self.keys
        cx, cy, rx, ry, th0, th1, t0, tm, t1, offset = self._table(z)
        th0, th1 = np.deg2rad(th0), np.deg2rad(th1)
        u, v = (x - cx) / rx, (y - cy) / ry
        rho = np.sqrt(u * u + v * v)
        theta = np.arctan2(v, u)
        radius = np.sqrt((rx * np.cos(theta)) ** 2 + (ry * np.sin(theta)) ** 2)
        s = np.clip((theta - th0) / (th1 - th0), 0, 1)
        thickness = np.where(s < 0.5, t0 + (tm - t0) * 2 * s, tm + (t1 - tm) * (2 * s - 1))
        along = np.abs((rho - 1) * radius - offset) - thickness / 2
        # Beyond either end: distance to the end point of the band's mid-line (rounded end).
        ends = []
        for th, t in ((th0, t0), (th1, t1)):
            scale = 1 + offset / np.sqrt((rx * np.cos(th)) ** 2 + (ry * np.sin(th)) ** 2)
            ex, ey = cx + rx * np.cos(th) * scale, cy + ry * np.sin(th) * scale
            ends.append(np.sqrt((x - ex) ** 2 + (y - ey) ** 2) - t / 2)
        beyond = np.minimum(ends[0], ends[1])
        d2 = np.where((theta >= th0) & (theta <= th1), along, beyond)
        dz = np.maximum(np.float32(k[0, 0]) - z, z - np.float32(k[-1, 0]))
        return _extrude(d2, dz)


class Contour(Shape):
    """An axial outline that changes along z: a superellipse with separate front and back depths.

    Keyframe rows are ``(z, cy, half_width, front, back)`` (mm): the centre's y, the
    half width, and the distances from the centre to the anterior (-y) and posterior
    (+y) surfaces. ``exponent`` > 2 squares the outline off (2 is an ellipse);
    ``back_exponent`` flattens the back, where a supine patient lies on the table.
    ``wobble`` holds ``(k, amplitude, phase)`` rows: a relative radial modulation
    ``1 + sum(amplitude * cos(k * angle + phase))`` that makes each outline individual.
    The shape extends over the keyframe z range (flat caps).
    """

    def __init__(
        self,
        keys: Sequence[Sequence[float]],
        exponent: float = 2.4,
        back_exponent: float = 3.0,
        wobble: Sequence[Sequence[float]] = (),
    ):
        k = np.asarray(keys, np.float64)
        if k.ndim != 2 or k.shape[1] != 5 or len(k) < 2 or np.any(k[:, 2:] <= 0) or np.any(np.diff(k[:, 0]) <= 0):
            raise ValueError("keys must be rows of (z, cy, half_width, front, back), positive sizes, increasing z")
        if exponent < 2 or back_exponent < 2:
            raise ValueError(f"exponents must be >= 2, got {exponent}, {back_exponent}")
        self.keys, self._table = k, _ZTable(k)
        self.p, self.q = np.float32(exponent), np.float32(back_exponent)
        self.wobble = np.asarray(sorted(tuple(w) for w in wobble), np.float32).reshape(-1, 3)
        if np.any(self.wobble[:, 0] < 1):
            raise ValueError("wobble orders must be >= 1")
        grow = 1 + float(np.sum(np.abs(self.wobble[:, 1])))
        boxes = []
        for i in range(len(k) - 1):
            rows = k[i : i + 2]
            boxes.append([(-np.max(rows[:, 2]) * grow, np.min(rows[:, 1] - rows[:, 3] * grow), rows[0, 0]),
                          (np.max(rows[:, 2]) * grow, np.max(rows[:, 1] + rows[:, 4] * grow), rows[1, 0])])
        _from_boxes(self, boxes)

    def __call__(self, x, y, z):
        k = self.keys
        cy, a, front, back = self._table(z)
        u = x
        v = y - cy
        front_side = v < 0
        b = np.where(front_side, front, back)
        if len(self.wobble):
            r = np.maximum(np.sqrt(u * u + v * v), _EPS)
            cos1, sin1 = u / r, v / r
            scale = np.ones_like(u)
            ck, sk, order = cos1, sin1, 1
            for k_order, amplitude, phase in self.wobble:
                while order < int(k_order):
                    ck, sk, order = ck * cos1 - sk * sin1, sk * cos1 + ck * sin1, order + 1
                scale += amplitude * (ck * np.cos(phase) - sk * np.sin(phase))
            a, b = a * scale, b * scale
        ua, vb = np.abs(u) / a, np.abs(v) / b
        # Superellipse norm f and its gradient, with a scalar exponent per half (fast powers).
        d2 = np.empty_like(u)
        for side, p in ((front_side, self.p), (~front_side, self.q)):
            if not side.any():
                continue
            us, vs, as_, bs = ua[side], vb[side], a[side], b[side]
            f = (us**p + vs**p) ** (1 / p)
            fp = np.maximum(f, _EPS) ** (1 - p)
            gx = us ** (p - 1) * fp / as_
            gy = vs ** (p - 1) * fp / bs
            d2[side] = np.maximum((f - 1) / np.maximum(np.sqrt(gx * gx + gy * gy), _EPS), -np.minimum(as_, bs))
        dz = np.maximum(np.float32(k[0, 0]) - z, z - np.float32(k[-1, 0]))
        return _extrude(d2, dz)


class HalfSpace(Shape):
    """Points with ``coordinate[axis] < level`` (``below=True``) or ``> level``; unbounded."""

    def __init__(self, axis: int, level: float, below: bool = True):
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        self.axis, self.level, self.sign = axis, np.float32(level), np.float32(1 if below else -1)
        lo, hi = [-1e6] * 3, [1e6] * 3
        (hi if below else lo)[axis] = level
        self._set_bounds(lo, hi)

    def __call__(self, x, y, z):
        return self.sign * ((x, y, z)[self.axis] - self.level)


class Union(Shape):
    """Union of ``parts``, blended over ``k`` mm (0: sharp)."""

    def __init__(self, parts: Sequence[Shape], k: float = 0.0, margin: float = 6.0):
        if not parts:
            raise ValueError("parts must not be empty")
        self.parts, self.k, self.margin = list(parts), float(k), float(margin) + float(k)
        # A blended union bulges by up to k / 4 beyond its parts.
        _from_boxes(self, np.concatenate([p.boxes for p in parts]) + np.array([-1.0, 1.0])[None, :, None] * self.k / 4)

    def __call__(self, x, y, z):
        out = self.parts[0].evaluate(x, y, z, self.margin)
        for part in self.parts[1:]:
            out = smooth_min(out, part.evaluate(x, y, z, self.margin), self.k)
        return out


class Subtract(Shape):
    """``base`` minus ``cut`` grown by ``gap`` mm (a joint space or a cavity)."""

    def __init__(self, base: Shape, cut: Shape, gap: float = 0.0, margin: float = 6.0):
        self.base, self.cut, self.gap, self.margin = base, cut, np.float32(gap), float(margin) + float(gap)
        self._set_bounds(base.lo, base.hi, base.boxes)

    def __call__(self, x, y, z):
        return np.maximum(self.base(x, y, z), self.gap - self.cut.evaluate(x, y, z, self.margin))


class Intersect(Shape):
    """Points inside both ``a`` and ``b``."""

    def __init__(self, a: Shape, b: Shape, margin: float = 6.0):
        self.a, self.b, self.margin = a, b, float(margin)
        boxes = a.boxes.copy()
        boxes[:, 0] = np.maximum(boxes[:, 0], b.lo)
        boxes[:, 1] = np.minimum(boxes[:, 1], b.hi)
        keep = np.all(boxes[:, 1] >= boxes[:, 0], axis=1)
        if keep.any():
            _from_boxes(self, boxes[keep])
        else:  # disjoint: an empty shape, kept as a degenerate box
            self._set_bounds(a.lo, a.lo)

    def __call__(self, x, y, z):
        return np.maximum(self.a(x, y, z), self.b.evaluate(x, y, z, self.margin))


class Offset(Shape):
    """``shape`` grown by ``distance`` mm (negative: shrunk)."""

    def __init__(self, shape: Shape, distance: float):
        self.shape, self.distance = shape, np.float32(distance)
        grow = max(float(distance), 0.0)
        _from_boxes(self, shape.boxes + np.array([-grow, grow])[None, :, None])

    def __call__(self, x, y, z):
        return self.shape(x, y, z) - self.distance


class Mirror(Shape):
    """``shape`` mirrored through the mid-sagittal plane (x -> -x): the right side from the left."""

    def __init__(self, shape: Shape):
        self.shape = shape
        boxes = shape.boxes.copy()
        boxes[:, 0, 0], boxes[:, 1, 0] = -shape.boxes[:, 1, 0], -shape.boxes[:, 0, 0]
        _from_boxes(self, boxes)

    def __call__(self, x, y, z):
        return self.shape(-x, y, z)
