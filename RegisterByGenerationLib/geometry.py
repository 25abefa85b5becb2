"""Reorientation, resampling and the model's slice canvas, each with an exact inverse.

Physical geometry is owned by SimpleITK (LPS, mm). The canonical axial orientation is
``sitk.DICOMOrient(image, "LPS")``: a permutation/flip of axes (no interpolation), so
for a non-oblique image the direction becomes the identity and NumPy arrays read
``[z, y, x]`` = inferior→superior, anterior→posterior, right→left. An oblique image
keeps its residual rotation in the direction matrix.

:class:`CanvasGrid` maps a volume of any orientation onto the model's canvas, a stack
of axial slices ``[Z, H, W]`` with the model's in-plane pixel spacing, and back onto
exactly the original grid. Slices are never resampled along z.

Example:
    >>> grid = CanvasGrid.for_image(image, pixel_spacing=1.0, canvas=(256, 256))
    >>> x = grid.to_canvas(image, default_value=0.0)          # [Z, 256, 256] float32
    >>> back = grid.from_canvas(x, default_value=0.0)         # image's exact grid
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

__all__ = ["CANONICAL_ORIENTATION", "to_axial", "from_axial", "resample_onto", "warp_once", "CanvasGrid"]

#: DICOM orientation code of the canonical axial orientation (identity direction).
CANONICAL_ORIENTATION = "LPS"

_GEOMETRY_TOLERANCE = 1e-9


def to_axial(image: sitk.Image) -> sitk.Image:
    """Reorient ``image`` to the canonical axial orientation (LPS) by permuting/flipping axes.

    Voxel values are copied, never interpolated. An oblique image keeps its residual
    rotation (at most 45 degrees) in the direction matrix.
    """
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION)


def from_axial(image: sitk.Image, like: sitk.Image) -> sitk.Image:
    """Undo :func:`to_axial`: return ``image`` on exactly ``like``'s grid.

    Args:
        image: a volume on the grid of ``to_axial(like)``.
        like: the volume before reorientation; its size, spacing, origin and direction
            are given to the result.

    Raises:
        ValueError: ``image`` is not on the grid of ``to_axial(like)`` (after undoing
            the permutation, geometry differs by more than 1e-9).
    """
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(like.GetDirection())
    result = sitk.DICOMOrient(image, orientation)
    if not _same_grid(result, like, _GEOMETRY_TOLERANCE):
        raise ValueError(
            f"image must be on the grid of to_axial(like); after reorientation to {orientation} it has "
            f"size {result.GetSize()}, spacing {result.GetSpacing()}, origin {result.GetOrigin()}, "
            f"direction {result.GetDirection()} but like has size {like.GetSize()}, spacing "
            f"{like.GetSpacing()}, origin {like.GetOrigin()}, direction {like.GetDirection()}"
        )
    # The permutation is exact; only the origin's arithmetic can differ in the last bits.
    result.CopyInformation(like)
    return result


def resample_onto(
    moving: sitk.Image,
    fixed: sitk.Image,
    transform: sitk.Transform | None = None,
    *,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample ``moving`` onto ``fixed``'s grid (size, spacing, origin, direction).

    Args:
        moving: the volume to resample.
        fixed: the volume whose grid the result takes (its voxels are not read).
        transform: maps points of ``fixed``'s physical space (mm) to ``moving``'s, the
            SimpleITK convention (as returned by a registration); identity when None.
        interpolator: a SimpleITK interpolator (``sitk.sitkNearestNeighbor`` for labels).
        default_value: value of points that fall outside ``moving`` (e.g. -1024 HU for CT).

    Returns:
        float32 image on ``fixed``'s grid.
    """
    if moving.GetDimension() != fixed.GetDimension():
        raise ValueError(f"moving is {moving.GetDimension()}D but fixed is {fixed.GetDimension()}D")
    transform = sitk.Transform(fixed.GetDimension(), sitk.sitkIdentity) if transform is None else transform
    return sitk.Resample(
        _as_float32(moving), fixed, transform, interpolator, float(default_value), sitk.sitkFloat32
    )


def warp_once(moving: sitk.Image, fixed: sitk.Image, prealign: sitk.Transform, displacement: sitk.Image, *, default_value: float) -> sitk.Image:
    """``moving`` as given, resampled once onto ``fixed``'s grid at ``prealign(p + u(p))``.

    ``displacement`` (``u``: vectors in mm on ``fixed``'s grid, ITK's convention) was found
    against the pre-aligned copy of ``moving``; warping that copy again would interpolate
    ``moving`` twice and blur it, so the pre-alignment and the field are composed (a
    ``CompositeTransform`` applies its last transform first) and ``moving`` is read once.
    """
    composite = sitk.CompositeTransform([prealign, sitk.DisplacementFieldTransform(sitk.Image(displacement))])
    return resample_onto(moving, fixed, composite, default_value=default_value)


@dataclass(frozen=True)
class _Grid:
    """Size (x, y, z), spacing (mm), origin (mm, LPS) and direction (row-major 3x3)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> _Grid:
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def resample(self, image: sitk.Image, interpolator: int, default_value: float, extrapolate: bool = False) -> sitk.Image:
        """Resample ``image`` onto this grid (identity transform), float32.

        With ``extrapolate``, points outside ``image`` take the nearest voxel's value.
        """
        resampler = sitk.ResampleImageFilter()
        resampler.SetUseNearestNeighborExtrapolator(extrapolate)
        resampler.SetSize([int(n) for n in self.size])
        resampler.SetOutputSpacing(self.spacing)
        resampler.SetOutputOrigin(self.origin)
        resampler.SetOutputDirection(self.direction)
        resampler.SetInterpolator(interpolator)
        resampler.SetDefaultPixelValue(float(default_value))
        resampler.SetOutputPixelType(sitk.sitkFloat32)
        return resampler.Execute(_as_float32(image))


class CanvasGrid:
    """The mapping between an image's grid and the model's axial slice canvas.

    The canvas is the image's axial orientation (:func:`to_axial`) with in-plane pixel
    spacing ``pixel_spacing`` (mm, rows then columns; None: the image's own), the
    image's own slices (no resampling along z), and ``canvas`` = (H, W) pixels centred
    on the in-plane centre of the image's extent, so a larger image is cropped and a
    smaller one padded. When
    the canvas spacing equals the image's spacing along an axis, the canvas is shifted
    by less than half a pixel so that its pixels coincide with the image's voxels and
    the round trip copies values exactly.

    Padding pixels within one canvas pixel of the image's outermost voxel centres take
    the edge voxel's value (nearest-neighbour extrapolation), the rest ``default_value``:
    so interpolating back never mixes the padding value into the image's edge voxels.

    Build it with :meth:`for_image`. Attributes: ``pixel_spacing`` (row, column) mm,
    ``shape`` (Z, H, W).
    """

    def __init__(
        self,
        image_grid: _Grid,
        canvas_grid: _Grid,
        pixel_spacing: tuple[float, float],
        orientation: str,
        inside_yx: tuple[np.ndarray, np.ndarray],
    ):
        self._image = image_grid
        self._canvas = canvas_grid
        self._inside_yx = inside_yx
        self.pixel_spacing = pixel_spacing
        self.orientation = orientation

    @classmethod
    def for_image(
        cls,
        image: sitk.Image,
        pixel_spacing: float | tuple[float, float] | None,
        canvas: tuple[int, int] | None = None,
        multiple: int = 16,
    ) -> CanvasGrid:
        """The canvas grid of ``image``.

        Args:
            image: a 3D volume in any orientation (its voxels are not read).
            pixel_spacing: in-plane canvas spacing in mm, one number or (row, column) = (y, x);
                None keeps the image's own in-plane spacing (no in-plane interpolation:
                the round trip is exact whatever the image's spacing).
            canvas: (H, W) in pixels, each a positive multiple of ``multiple``; None takes
                the smallest multiple of ``multiple`` covering the image's in-plane extent.
            multiple: the network's size divisor (16 for two stride-2 levels and margin).

        Raises:
            ValueError: a non-3D image, a non-positive spacing, a bad ``multiple`` or ``canvas``.
        """
        if image.GetDimension() != 3:
            raise ValueError(f"image must be 3D, got {image.GetDimension()}D")
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise ValueError(f"multiple must be a positive integer, got {multiple!r}")
        axial = _axial_grid(image)
        spacing_yx = (axial.spacing[1], axial.spacing[0]) if pixel_spacing is None else _pixel_spacing(pixel_spacing)
        extent_yx = (axial.size[1] * axial.spacing[1], axial.size[0] * axial.spacing[0])
        if canvas is None:
            shape_hw = tuple(multiple * math.ceil(e / s / multiple - 1e-9) for e, s in zip(extent_yx, spacing_yx))
        else:
            shape_hw = _canvas_shape(canvas, multiple)
        axes = list(zip(axial.size[1::-1], axial.spacing[1::-1], shape_hw, spacing_yx))
        offset_yx = tuple(_canvas_offset(n, s, m, c) for n, s, m, c in axes)
        inside_yx = tuple(_near_image(o, n, s, m, c) for o, (n, s, m, c) in zip(offset_yx, axes))
        # Physical position of canvas pixel (0, 0, 0): offset_yx is in image voxels.
        origin = _physical_point(axial, (offset_yx[1], offset_yx[0], 0.0))
        canvas_grid = _Grid(
            size=(shape_hw[1], shape_hw[0], axial.size[2]),
            spacing=(spacing_yx[1], spacing_yx[0], axial.spacing[2]),
            origin=origin,
            direction=axial.direction,
        )
        orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
        return cls(_Grid.of(image), canvas_grid, spacing_yx, orientation, inside_yx)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Canvas array shape (Z, H, W)."""
        return tuple(int(n) for n in self._canvas.size[::-1])

    def to_canvas(self, image: sitk.Image, *, interpolator: int = sitk.sitkLinear, default_value: float) -> np.ndarray:
        """Resample ``image`` onto the canvas in one interpolation (reorientation included).

        Args:
            image: the image the grid was built for, or any image on the same grid.
            interpolator: a SimpleITK interpolator.
            default_value: value of canvas pixels outside the image (padding), e.g. -1024 HU.

        Returns:
            float32 array ``[Z, H, W]``.

        Raises:
            ValueError: ``image`` is not on the grid this canvas was built for.
        """
        if not _same_grid(image, self._image, 1e-6):
            raise ValueError(
                f"image must be on the grid the canvas was built for (size {self._image.size}, spacing "
                f"{self._image.spacing}, origin {self._image.origin}), got size {image.GetSize()}, "
                f"spacing {image.GetSpacing()}, origin {image.GetOrigin()}"
            )
        array = sitk.GetArrayFromImage(self._canvas.resample(image, interpolator, default_value, extrapolate=True))
        rows, columns = self._inside_yx
        array[:, ~rows, :] = default_value
        array[:, :, ~columns] = default_value
        return array

    def from_canvas(self, array: np.ndarray, *, interpolator: int = sitk.sitkLinear, default_value: float) -> sitk.Image:
        """Resample a canvas array ``[Z, H, W]`` back onto exactly the original image's grid.

        Args:
            array: canvas values, shape :attr:`shape`.
            interpolator: a SimpleITK interpolator (``sitk.sitkNearestNeighbor`` for labels).
            default_value: value of image voxels outside the canvas (cropped away).

        Returns:
            float32 image with the original size, spacing, origin and direction.

        Raises:
            ValueError: ``array`` does not have shape :attr:`shape`.
        """
        array = np.asarray(array)
        if array.shape != self.shape:
            raise ValueError(f"array must have the canvas shape {self.shape} (Z, H, W), got {array.shape}")
        canvas = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
        canvas.SetSpacing(self._canvas.spacing)
        canvas.SetOrigin(self._canvas.origin)
        canvas.SetDirection(self._canvas.direction)
        return self._image.resample(canvas, interpolator, default_value)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Canvas voxel spacing (mm) along the array axes (Z, H, W)."""
        return tuple(float(s) for s in self._canvas.spacing[::-1])

    def displacement_from_canvas(self, ddf: np.ndarray) -> sitk.Image:
        """A canvas displacement in voxels → a displacement field in mm on the image's grid.

        Args:
            ddf: ``[3, Z, H, W]``, channel ``k`` the displacement along array axis ``k``
                in canvas voxels (MONAI's ``Warp`` convention: ``out(i) = image(i + ddf(i))``).

        Returns:
            A float64 vector image on the original grid whose vectors are physical (LPS, mm):
            ``sitk.DisplacementFieldTransform`` of it maps each image point ``p`` to
            ``p + u(p)``, where the canvas displacement points. Outside the canvas: zero.

        Raises:
            ValueError: ``ddf`` does not have shape ``[3, *shape]``.
        """
        ddf = np.asarray(ddf, dtype=np.float64)
        if ddf.shape != (3, *self.shape):
            raise ValueError(f"ddf must have shape (3, {', '.join(map(str, self.shape))}), got {ddf.shape}")
        along_xyz = ddf[::-1] * np.asarray(self._canvas.spacing, dtype=np.float64)[:, None, None, None]  # mm along the canvas axes
        physical = np.tensordot(np.reshape(self._canvas.direction, (3, 3)), along_xyz, axes=1)
        components = [sitk.GetArrayFromImage(self.from_canvas(c, default_value=0.0)) for c in physical]
        field = sitk.GetImageFromArray(np.stack(components, axis=-1).astype(np.float64), isVector=True)
        field.SetSpacing(self._image.spacing)
        field.SetOrigin(self._image.origin)
        field.SetDirection(self._image.direction)
        return field

    def to_dict(self) -> dict:
        """A JSON-ready description of the image grid and the canvas, for reports."""
        return {
            "canvas_shape_zhw": list(self.shape),
            "pixel_spacing_mm": list(self.pixel_spacing),
            "slice_spacing_mm": self._canvas.spacing[2],
            "canvas_origin_mm": list(self._canvas.origin),
            "canvas_direction": list(self._canvas.direction),
            "image_size_xyz": list(self._image.size),
            "image_spacing_mm": list(self._image.spacing),
            "image_origin_mm": list(self._image.origin),
            "image_direction": list(self._image.direction),
            "image_orientation": self.orientation,
        }

    def __repr__(self) -> str:
        return f"CanvasGrid(shape={self.shape}, pixel_spacing={self.pixel_spacing}, orientation={self.orientation!r})"


def _axial_grid(image: sitk.Image) -> _Grid:
    """The grid of ``to_axial(image)``, computed on a 1-byte placeholder of the same geometry."""
    placeholder = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    placeholder.CopyInformation(image)
    return _Grid.of(to_axial(placeholder))


def _physical_point(grid: _Grid, continuous_index: Sequence[float]) -> tuple[float, ...]:
    direction = np.reshape(grid.direction, (3, 3))
    point = np.asarray(grid.origin) + direction @ (np.asarray(grid.spacing) * np.asarray(continuous_index))
    return tuple(float(v) for v in point)


def _canvas_offset(n: int, spacing: float, m: int, canvas_spacing: float) -> float:
    """Continuous image index of canvas pixel 0 along one axis (centres coincide).

    With equal spacing, the offset is rounded to a whole voxel so pixels coincide.
    """
    centre = (n - 1) / 2 - (m - 1) / 2 * canvas_spacing / spacing
    if abs(canvas_spacing - spacing) <= 1e-9 * spacing:
        return float(math.floor(centre + 0.5))
    return centre


def _near_image(offset: float, n: int, spacing: float, m: int, canvas_spacing: float) -> np.ndarray:
    """Which of the ``m`` canvas pixels lie within one canvas pixel of the voxel centres 0..n-1."""
    step = canvas_spacing / spacing
    index = offset + step * np.arange(m)
    return (index >= -step - 1e-6) & (index <= n - 1 + step + 1e-6)


def _pixel_spacing(pixel_spacing: float | Sequence[float]) -> tuple[float, float]:
    values = (pixel_spacing, pixel_spacing) if np.isscalar(pixel_spacing) else tuple(pixel_spacing)
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"pixel_spacing must be one or two positive numbers (mm), got {pixel_spacing!r}")
    return float(values[0]), float(values[1])


def _canvas_shape(canvas: Sequence[int], multiple: int) -> tuple[int, int]:
    values = tuple(canvas)
    if len(values) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 and v % multiple == 0 for v in values
    ):
        raise ValueError(f"canvas must be (H, W), positive multiples of {multiple}, got {canvas!r}")
    return int(values[0]), int(values[1])


def _same_grid(image: sitk.Image, grid: sitk.Image | _Grid, tolerance: float) -> bool:
    other = grid if isinstance(grid, _Grid) else _Grid.of(grid)
    return (
        tuple(image.GetSize()) == tuple(other.size)
        and np.allclose(image.GetSpacing(), other.spacing, rtol=0, atol=tolerance)
        and np.allclose(image.GetOrigin(), other.origin, rtol=0, atol=tolerance)
        and np.allclose(image.GetDirection(), other.direction, rtol=0, atol=tolerance)
    )


def _as_float32(image: sitk.Image) -> sitk.Image:
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
