"""Paint an anatomy (a list of layers) at arbitrary points: CT, MR, bone labels, body.

A :class:`Layer` is a shape filled with a tissue, optionally with a different tissue
deeper than ``depth`` mm inside (cortical shell over marrow, bladder wall over urine, a
thin fascia around each muscle). Layers are painted in order, later ones over earlier
ones, with a partial-volume occupancy ``clip(0.5 - distance / blur, 0, 1)``: edges are
as soft as a voxel, and where the occupancy exceeds one half the layer's bone label
(0 for soft tissue) is written.

Texture comes from two :class:`NoiseField` objects, smooth random fields defined on a
box in anatomy space and sampled at the same points as the shapes, so the texture of
the reference CT and of the truth is the same tissue texture, moved with the anatomy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .contrast import Tissue
from .shapes import Shape

__all__ = ["Layer", "NoiseField", "Rendering", "render", "tile_order"]


@dataclass(frozen=True)
class Layer:
    """A shape filled with ``tissue``; deeper than ``depth`` mm inside it, with ``core``.

    Attributes:
        name: unique name, used for volumes (see :attr:`Rendering.counts`).
        shape: the implicit shape (anatomy space, mm).
        tissue: tissue name of the layer (its shell when ``core`` is given).
        core: tissue deeper than ``depth`` mm inside the shape, or ``None``.
        depth: shell thickness (mm).
        label: bone label written where the shape covers a point (0: no bone).
        within: the layer is clipped to this shape (muscles to the inside of the
            subcutaneous fat); its distances are computed once per point and shared.
    """

    name: str
    shape: Shape
    tissue: str
    core: str | None = None
    depth: float = 0.0
    label: int = 0
    within: Shape | None = None


class NoiseField:
    """A smooth Gaussian random field of unit standard deviation on a box in anatomy space.

    Args:
        rng: generator of the field.
        lo, hi: box corners (mm, x y z); outside it the field repeats its border values.
        cell_mm: lattice spacing of the field (mm); the correlation length is about
            ``cell_mm * (1 + smooth)``.
        smooth: Gaussian blur of the white-noise lattice, in cells.
    """

    def __init__(
        self, rng: np.random.Generator, lo: Sequence[float], hi: Sequence[float], cell_mm: float, smooth: float = 1.0
    ):
        if cell_mm <= 0:
            raise ValueError(f"cell_mm must be positive, got {cell_mm}")
        self.lo = np.asarray(lo, np.float32)
        self.cell = np.float32(cell_mm)
        shape = tuple(int(np.ceil((h - l) / cell_mm)) + 2 for l, h in zip(lo, hi, strict=True))
        lattice = rng.standard_normal(shape, dtype=np.float32)
        lattice = ndimage.gaussian_filter(lattice, smooth, mode="wrap")
        self.lattice = (lattice - lattice.mean()) / max(float(lattice.std()), 1e-6)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        coords = np.stack([(x - self.lo[0]) / self.cell, (y - self.lo[1]) / self.cell, (z - self.lo[2]) / self.cell])
        return ndimage.map_coordinates(self.lattice, coords, order=1, mode="nearest").astype(np.float32)


@dataclass
class Rendering:
    """What :func:`render` returns; arrays are flat, one value per point.

    Attributes:
        ct: HU without acquisition noise (``None`` unless requested).
        mr: clean T1 signal (``None`` unless requested).
        labels: bone label per point (uint8).
        body: body occupancy in [0, 1] (of the layer named ``body``).
        counts: per layer name, the number of points its shape covers when painted.
    """

    ct: np.ndarray | None
    mr: np.ndarray | None
    labels: np.ndarray
    body: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)

    def unpermuted(self, order: np.ndarray) -> Rendering:
        """The rendering of points ``p[order]`` returned in the order of ``p``."""

        def back(values):
            if values is None:
                return None
            out = np.empty_like(values)
            out[order] = values
            return out

        return Rendering(back(self.ct), back(self.mr), back(self.labels), back(self.body), dict(self.counts))


def tile_order(shape: tuple[int, int, int], tile: int = 16) -> np.ndarray:
    """Permutation of a (z, y, x) image's flat indices that groups voxels in ``tile`` x ``tile`` squares.

    :func:`render` skips layers by the bounding boxes of runs of consecutive points;
    square tiles make those boxes small (a run of whole rows would span the image width).
    """
    nz, ny, nx = shape
    py, px = -(-ny // tile) * tile, -(-nx // tile) * tile
    index = np.full((nz, py, px), -1, np.int64)
    index[:, :ny, :nx] = np.arange(nz * ny * nx).reshape(shape)
    index = index.reshape(nz, py // tile, tile, px // tile, tile).transpose(0, 1, 3, 2, 4).ravel()
    return index[index >= 0]


def render(
    layers: Sequence[Layer],
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    *,
    tissues: Mapping[str, Tissue],
    coarse: NoiseField,
    fine: NoiseField,
    blur_mm: float,
    channels: Sequence[str] = ("ct", "mr"),
    chunk: int = 1 << 16,
    cull: bool = True,
) -> Rendering:
    """Paint ``layers`` at the points ``x, y, z`` (flat float32 arrays, anatomy space, mm).

    Args:
        layers: painted in order; the one named ``"body"`` defines :attr:`Rendering.body`.
        x, y, z: point coordinates; neighbouring points should be neighbours in memory
            (see :func:`tile_order`), so that runs are compact and most layers are skipped.
        tissues: tissue name -> :class:`Tissue` (must hold ``"air"`` and every layer's tissues).
        coarse, fine: texture fields.
        blur_mm: width of the partial-volume edge (about a voxel, mm).
        channels: any of ``"ct"``, ``"mr"``.
        chunk: points per chunk.
        cull: skip layers on runs of points outside their boxes (same result, faster);
            ``False`` evaluates every layer everywhere (for checking).

    Raises:
        ValueError: bad channel, blur, mismatched arrays or unknown tissue.
    """
    if not (x.shape == y.shape == z.shape and x.ndim == 1):
        raise ValueError(f"x, y, z must be flat arrays of one shape, got {x.shape}, {y.shape}, {z.shape}")
    if blur_mm <= 0:
        raise ValueError(f"blur_mm must be positive, got {blur_mm}")
    for channel in channels:
        if channel not in ("ct", "mr"):
            raise ValueError(f"channels: unknown channel {channel!r}; use 'ct' or 'mr'")
    for layer in layers:
        for name in (layer.tissue, layer.core):
            if name is not None and name not in tissues:
                raise ValueError(f"layer {layer.name!r}: unknown tissue {name!r}")
    n = x.size
    values = {c: np.full(n, getattr(tissues["air"], c), np.float32) for c in channels}
    labels = np.zeros(n, np.uint8)
    body = np.zeros(n, np.float32)
    counts = {layer.name: 0 for layer in layers}
    blur = np.float32(blur_mm)
    shared = {id(layer.within) for layer in layers if layer.within is not None}
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        points = (x[start:stop], y[start:stop], z[start:stop])
        blocks = _Blocks(points)
        cache = _Cache(points)
        for layer in layers:
            index = blocks.select(layer.shape.boxes, blur_mm) if cull else np.arange(stop - start)
            if index is None:
                continue
            if id(layer.shape) in shared:
                distance = cache(layer.shape, index)
            else:
                distance = layer.shape(*(p[index] for p in points))
            if layer.within is not None:
                distance = np.maximum(distance, cache(layer.within, index))
            touched = distance < blur / 2
            index, distance = index[touched], distance[touched]
            if index.size == 0:
                continue
            occupancy = np.clip(0.5 - distance / blur, 0, 1)
            _paint(values, start, index, occupancy, tissues[layer.tissue], tissues, cache, coarse, fine)
            if layer.core is not None:
                deep = distance < blur / 2 - np.float32(layer.depth)
                core_occupancy = np.clip(0.5 - (distance[deep] + np.float32(layer.depth)) / blur, 0, 1)
                _paint(values, start, index[deep], core_occupancy, tissues[layer.core], tissues, cache, coarse, fine)
            covered = index[distance < 0]
            labels[start + covered] = layer.label
            counts[layer.name] += int(covered.size)
            if layer.name == "body":
                body[start + index] = occupancy
    return Rendering(values.get("ct"), values.get("mr"), labels, body, counts)


class _Blocks:
    """Bounding boxes of runs of ``SIZE`` consecutive points, to skip layers cheaply.

    Points in :func:`tile_order` make compact runs (16 x 16 voxel squares), so a layer
    is evaluated only on the runs that its bounding box touches.
    """

    SIZE = 256

    def __init__(self, points: tuple[np.ndarray, ...]):
        self.count = points[0].size
        blocks = -(-self.count // self.SIZE)
        pad = blocks * self.SIZE - self.count
        lo, hi = [], []
        for p in points:
            runs = (np.pad(p, (0, pad), mode="edge") if pad else p).reshape(blocks, self.SIZE)
            lo.append(runs.min(axis=1))
            hi.append(runs.max(axis=1))
        self.lo, self.hi = np.stack(lo), np.stack(hi)
        self.offsets = np.arange(self.SIZE)

    def select(self, boxes: np.ndarray, margin: float) -> np.ndarray | None:
        """Indices of the points in runs that meet any of ``boxes`` (n, 2, 3) grown by
        ``margin``; ``None`` if none."""
        lo, hi = boxes[:, 0, :, None] - margin, boxes[:, 1, :, None] + margin
        hit = np.any(np.all((self.hi[None] >= lo) & (self.lo[None] <= hi), axis=1), axis=0)
        if not hit.any():
            return None
        if hit.all():
            return np.arange(self.count)
        index = (np.flatnonzero(hit)[:, None] * self.SIZE + self.offsets).ravel()
        return index[index < self.count] if index[-1] >= self.count else index


class _Cache:
    """Values of shared fields (texture, clipping shapes) on one chunk, computed only where asked."""

    def __init__(self, points: tuple[np.ndarray, ...]):
        self.points = points
        self.store: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, function, index: np.ndarray) -> np.ndarray:
        entry = self.store.get(id(function))
        if entry is None:
            entry = (np.zeros(self.points[0].shape, np.float32), np.zeros(self.points[0].shape, bool))
            self.store[id(function)] = entry
        values, known = entry
        missing = index[~known[index]]
        if missing.size:
            values[missing] = function(*(p[missing] for p in self.points))
            known[missing] = True
        return values[index]


def _paint(values, start, index, occupancy, tissue: Tissue, tissues, cache: _Cache, coarse_field, fine_field) -> None:
    if index.size == 0:
        return
    coarse = fine = None
    for channel, target in values.items():
        base = np.float32(getattr(tissue, channel))
        amp_coarse, amp_fine = getattr(tissue, f"{channel}_coarse"), getattr(tissue, f"{channel}_fine")
        value = np.full(index.size, base, np.float32)
        if amp_coarse:
            coarse = cache(coarse_field, index) if coarse is None else coarse
            value += np.float32(amp_coarse) * coarse
        if amp_fine or tissue.bubbles is not None:
            fine = cache(fine_field, index) if fine is None else fine
            value += np.float32(amp_fine) * fine
            if tissue.bubbles is not None:
                value = np.where(fine > tissue.bubbles, np.float32(getattr(tissues["gas"], channel)), value)
        view = target[start:]
        view[index] += occupancy * (value - view[index])
