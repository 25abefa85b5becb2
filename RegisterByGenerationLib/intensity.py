"""Invertible intensity maps to [-1, 1] (DESIGN §3 step 6 and its inverse in step 8).

A normalisation scheme (:class:`CTWindow`, :class:`CTPercentileWindow`,
:class:`PercentileScaling`, :class:`NyulStandardisation`) is configured from the model's ``model.json``
(:func:`normalization_from_config`) and fitted to one image, giving an
:class:`IntensityMap`: a monotone piecewise-linear map whose ``forward`` clips to
[-1, 1] and whose ``inverse`` is exact inside the fitted window.

CT and CBCT use the fixed window [-1024, 3000] HU, the clipping range of the
SynthRAD2023 evaluation: air maps to -1, and cortical bone, dense (metal-free)
structures and iodine contrast stay below 3000 HU, so they are never clipped and the
generated HU are comparable with the challenge's metrics (models imported from the
authors' checkpoints use their per-patient percentile window instead). MR has no absolute unit:
per-image percentiles inside the body (optionally after N4 bias correction) or Nyúl
histogram standardisation with landmarks learnt on the training set.

Example:
    >>> scheme = normalization_from_config({"kind": "ct_window", "low": -1024, "high": 3000})
    >>> ct_map = scheme.fit(ct)
    >>> x = ct_map.forward(sitk.GetArrayFromImage(ct))     # float32 in [-1, 1]
    >>> hu = ct_map.inverse(x)                              # HU again
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError, ModelError
from .io import same_geometry

__all__ = [
    "IntensityMap",
    "CTWindow",
    "CTPercentileWindow",
    "PercentileScaling",
    "NyulStandardisation",
    "normalization_from_config",
    "n4_bias_correct",
]

_N4_FIT_SPACING_MM = 6.0

#: Nyúl landmarks: the 1st and 99th percentiles and the deciles in between.
DEFAULT_NYUL_PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)


class IntensityMap:
    """Monotone piecewise-linear map from image intensities to [-1, 1] and back.

    Args:
        source_points: strictly increasing intensities (image units, e.g. HU).
        target_points: strictly increasing values in [-1, 1], first -1 and last 1.

    Raises:
        ValueError: points of different lengths, fewer than two, not increasing, or
            targets not spanning [-1, 1].
    """

    def __init__(self, source_points: Sequence[float], target_points: Sequence[float]):
        source = np.asarray(source_points, dtype=np.float64)
        target = np.asarray(target_points, dtype=np.float64)
        if source.ndim != 1 or source.shape != target.shape or source.size < 2:
            raise ValueError(
                f"source_points and target_points must be 1D of equal length >= 2, got {source.shape} and {target.shape}"
            )
        if not (np.all(np.diff(source) > 0) and np.all(np.diff(target) > 0)):
            raise ValueError(f"source_points and target_points must increase strictly, got {source} and {target}")
        if target[0] != -1.0 or target[-1] != 1.0:
            raise ValueError(f"target_points must run from -1 to 1, got {target[0]} to {target[-1]}")
        self.source_points = source
        self.target_points = target

    def forward(self, array: np.ndarray) -> np.ndarray:
        """Image intensities → float32 in [-1, 1]; values outside the window are clipped."""
        return np.interp(np.asarray(array, dtype=np.float64), self.source_points, self.target_points).astype(np.float32)

    def inverse(self, array: np.ndarray) -> np.ndarray:
        """Values in [-1, 1] → float32 image intensities (inputs outside are clipped first)."""
        return np.interp(np.asarray(array, dtype=np.float64), self.target_points, self.source_points).astype(np.float32)

    @property
    def window(self) -> tuple[float, float]:
        """The intensities mapped to -1 and 1."""
        return float(self.source_points[0]), float(self.source_points[-1])

    def __repr__(self) -> str:
        return f"IntensityMap(window={self.window}, points={self.source_points.size})"


class CTWindow:
    """Fixed HU window mapped linearly to [-1, 1] (CT and CBCT).

    Args:
        low: HU mapped to -1 (default -1024, air).
        high: HU mapped to 1 (default 3000, the SynthRAD2023 clipping limit).
    """

    kind = "ct_window"

    def __init__(self, low: float = -1024.0, high: float = 3000.0):
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"low must be below high (HU), got low={low!r}, high={high!r}")
        self.low = float(low)
        self.high = float(high)

    def fit(self, image: sitk.Image, mask: sitk.Image | None = None) -> IntensityMap:
        """The window itself; ``image`` and ``mask`` are not read (a fixed HU scale)."""
        return IntensityMap([self.low, self.high], [-1.0, 1.0])

    def to_config(self) -> dict:
        return {"kind": self.kind, "low": self.low, "high": self.high}


class CTPercentileWindow:
    """Per-patient HU window: the CT's own percentiles (all voxels) mapped linearly to [-1, 1].

    The scheme of the authors' published RbG/RegistFormer data (5th and 95th percentile,
    SynthRAD2023 pelvis): the reference CT is clipped at its own percentiles and scaled,
    and the model's output is mapped back through the same window, so HU outside the
    window cannot come out. Fitted on the reference as the pipeline hands it, resampled
    onto the input's grid (the published CTs were on their MR's grid).

    Args:
        lower: percentile (0-100) mapped to -1 (published 5).
        upper: percentile (0-100) mapped to 1 (published 95).
    """

    kind = "ct_percentile"

    def __init__(self, lower: float = 5.0, upper: float = 95.0):
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower!r}, {upper!r}")
        self.lower = float(lower)
        self.upper = float(upper)

    def fit(self, image: sitk.Image, mask: sitk.Image | None = None) -> IntensityMap:
        """The window between ``image``'s percentiles over all voxels (``mask`` is not
        read: the published percentiles were of the whole volume).

        Raises:
            InputError: the two percentiles coincide.
        """
        low, high = np.percentile(_masked_values(image, None), [self.lower, self.upper])
        if not high > low:
            raise InputError(f"CT is constant between its {self.lower} and {self.upper} percentiles ({low} HU); cannot scale it")
        return IntensityMap([low, high], [-1.0, 1.0])

    def to_config(self) -> dict:
        return {"kind": self.kind, "lower": self.lower, "upper": self.upper}


class PercentileScaling:
    """Per-image percentiles inside the body mapped linearly to [-1, 1] (MR).

    Args:
        lower: percentile (0-100) mapped to -1.
        upper: percentile (0-100) mapped to 1.
        n4: the model was trained on N4-corrected images; the caller corrects the image
            with :func:`n4_bias_correct` before :meth:`fit` (this flag only records it).
    """

    kind = "percentile"

    def __init__(self, lower: float = 0.5, upper: float = 99.5, n4: bool = False):
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower!r}, {upper!r}")
        self.lower = float(lower)
        self.upper = float(upper)
        self.n4 = bool(n4)

    def fit(self, image: sitk.Image, mask: sitk.Image | None = None) -> IntensityMap:
        """Percentiles of ``image`` inside ``mask`` (all voxels when None).

        Raises:
            InputError: the two percentiles coincide (image constant inside the mask).
        """
        low, high = np.percentile(_masked_values(image, mask), [self.lower, self.upper])
        if not high > low:
            raise InputError(
                f"image is constant between its {self.lower} and {self.upper} percentiles "
                f"inside the mask ({low}); cannot scale its intensities"
            )
        return IntensityMap([low, high], [-1.0, 1.0])

    def to_config(self) -> dict:
        return {"kind": self.kind, "lower": self.lower, "upper": self.upper, "n4": self.n4}


class NyulStandardisation:
    """Nyúl-Udupa piecewise-linear histogram standardisation (MR) to [-1, 1].

    An image's percentiles ``percentiles`` (inside the body) are mapped to the learnt
    ``landmarks``; intensities beyond the first and last percentile are clipped.

    Args:
        percentiles: increasing percentiles (0-100), at least two.
        landmarks: increasing standard-scale values, one per percentile, from -1 to 1.
    """

    kind = "nyul"

    def __init__(self, percentiles: Sequence[float], landmarks: Sequence[float]):
        self.percentiles = _increasing(percentiles, "percentiles", 0.0, 100.0)
        self.landmarks = _increasing(landmarks, "landmarks", -1.0, 1.0)
        if len(self.landmarks) != len(self.percentiles) or self.landmarks[0] != -1.0 or self.landmarks[-1] != 1.0:
            raise ValueError(
                f"landmarks must have one value per percentile ({len(self.percentiles)}) and run from -1 to 1, "
                f"got {self.landmarks}"
            )

    @classmethod
    def train(
        cls,
        arrays: Sequence[np.ndarray | sitk.Image],
        masks: Sequence[np.ndarray | sitk.Image | None] | None = None,
        percentiles: Sequence[float] = DEFAULT_NYUL_PERCENTILES,
    ) -> NyulStandardisation:
        """Learn landmarks as the mean of each image's percentiles, rescaled so that its
        first and last percentile land on -1 and 1.

        Hand-written (a few lines of NumPy) rather than TorchIO's
        ``HistogramStandardization.train``: TorchIO is a training-only dependency,
        reads files rather than arrays, and fixes its own percentiles and output scale.

        Args:
            arrays: training volumes (NumPy arrays or SimpleITK images).
            masks: one body mask per volume (nonzero inside), or None for all voxels.
            percentiles: increasing percentiles (0-100), at least two.

        Raises:
            ValueError: no arrays, a mask count that differs, or a volume whose first and
                last percentile coincide.
        """
        percentiles = _increasing(percentiles, "percentiles", 0.0, 100.0)
        if len(arrays) == 0:
            raise ValueError("arrays must hold at least one training volume")
        masks = [None] * len(arrays) if masks is None else list(masks)
        if len(masks) != len(arrays):
            raise ValueError(f"masks must have one entry per array ({len(arrays)}), got {len(masks)}")
        scaled = []
        for index, (array, mask) in enumerate(zip(arrays, masks)):
            values = np.percentile(_masked_values(array, mask), percentiles)
            if not values[-1] > values[0]:
                raise ValueError(f"arrays[{index}] is constant inside its mask; cannot learn landmarks from it")
            scaled.append(-1.0 + 2.0 * (values - values[0]) / (values[-1] - values[0]))
        landmarks = np.mean(scaled, axis=0)
        landmarks[0], landmarks[-1] = -1.0, 1.0  # exact despite rounding in the mean
        return cls(percentiles, landmarks)

    def fit(self, image: sitk.Image, mask: sitk.Image | None = None) -> IntensityMap:
        """Map ``image``'s percentiles inside ``mask`` onto the landmarks.

        Percentiles that coincide (plateaus in the histogram) are merged, keeping the map
        monotone and its inverse exact.

        Raises:
            InputError: the image is constant between its first and last percentile.
        """
        values = np.percentile(_masked_values(image, mask), self.percentiles)
        keep = np.concatenate([[True], np.diff(values) > 0])
        if not values[-1] > values[0]:
            raise InputError(f"image is constant inside the mask ({values[0]}); cannot standardise its histogram")
        targets = self.landmarks[keep]
        targets[-1] = 1.0  # a merged last point keeps the first of its equal values
        return IntensityMap(values[keep], targets)

    def to_config(self) -> dict:
        return {"kind": self.kind, "percentiles": self.percentiles.tolist(), "landmarks": self.landmarks.tolist()}


def normalization_from_config(config: dict) -> CTWindow | CTPercentileWindow | PercentileScaling | NyulStandardisation:
    """The scheme described by a ``to_config()`` dict (as stored in ``model.json``).

    Raises:
        ModelError: unknown ``kind`` or invalid parameters.
    """
    if not isinstance(config, dict) or "kind" not in config:
        raise ModelError(f"intensity normalisation config must be a dict with a 'kind', got {config!r}")
    kind = config["kind"]
    parameters = {key: value for key, value in config.items() if key != "kind"}
    if kind == CTWindow.kind:
        scheme = CTWindow
    elif kind == CTPercentileWindow.kind:
        scheme = CTPercentileWindow
    elif kind == PercentileScaling.kind:
        scheme = PercentileScaling
    elif kind == NyulStandardisation.kind:
        scheme = NyulStandardisation
    else:
        known = ", ".join((CTWindow.kind, CTPercentileWindow.kind, PercentileScaling.kind, NyulStandardisation.kind))
        raise ModelError(f"unknown intensity normalisation kind {kind!r}; known kinds: {known}")
    try:
        return scheme(**parameters)
    except (TypeError, ValueError) as error:
        raise ModelError(f"invalid {kind!r} intensity normalisation config {parameters}: {error}") from error


def n4_bias_correct(
    image: sitk.Image,
    mask: sitk.Image | None = None,
    *,
    shrink: int = 4,
    iterations: Sequence[int] = (50, 50, 50),
) -> sitk.Image:
    """N4 bias-field correction, fitted on a shrunk copy and applied at full resolution.

    Args:
        image: 3D MR volume.
        mask: where to fit the field (nonzero voxels), e.g. the body mask; None uses
            Otsu's foreground. Voxels <= 0 are left out (N4 works on log intensities).
        shrink: shrink factor per axis for the fit (raised where needed so that fitting
            voxels are at least 6 mm; N4 then runs in seconds).
        iterations: iterations per fitting level (one entry per B-spline level).

    Returns:
        float32 image ``image / bias`` on ``image``'s grid.
    """
    if isinstance(shrink, bool) or not isinstance(shrink, (int, np.integer)) or shrink < 1:
        raise ValueError(f"shrink must be a positive integer, got {shrink!r}")
    if len(iterations) == 0 or any(int(i) < 1 for i in iterations):
        raise ValueError(f"iterations must be positive integers, one per level, got {iterations!r}")
    image = sitk.Cast(image, sitk.sitkFloat32)
    if mask is None:
        mask = sitk.OtsuThreshold(image, 0, 1, 200)
    elif not same_geometry(mask, image):
        raise ValueError(f"mask must be on the image's grid (size {image.GetSize()}), got size {mask.GetSize()}")
    mask = sitk.And(sitk.Cast(mask != 0, sitk.sitkUInt8), sitk.Cast(image > 0, sitk.sitkUInt8))
    # The bias field varies over decimetres: fitting voxels of >= 6 mm lose nothing, and
    # N4's cost grows with the voxels fitted (a 1 mm MR shrunk only 4x takes ~20 s).
    factors = [
        min(max(int(shrink), math.ceil(_N4_FIT_SPACING_MM / s)), max(1, n // 4))
        for s, n in zip(image.GetSpacing(), image.GetSize())
    ]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.Execute(sitk.Shrink(image, factors), sitk.Shrink(mask, factors))
    log_bias = corrector.GetLogBiasFieldAsImage(image)
    return sitk.Cast(image / sitk.Exp(log_bias), sitk.sitkFloat32)


def _masked_values(image: np.ndarray | sitk.Image, mask: np.ndarray | sitk.Image | None) -> np.ndarray:
    """The voxel values inside ``mask`` (all when None), float64, as a 1D array."""
    array = sitk.GetArrayViewFromImage(image) if isinstance(image, sitk.Image) else np.asarray(image)
    if mask is None:
        return np.asarray(array, dtype=np.float64).ravel()
    inside = sitk.GetArrayViewFromImage(mask) if isinstance(mask, sitk.Image) else np.asarray(mask)
    if inside.shape != array.shape:
        raise ValueError(f"mask must have the image's shape {array.shape}, got {inside.shape}")
    values = np.asarray(array[inside != 0], dtype=np.float64)
    if values.size == 0:
        raise InputError("the body mask is empty; cannot compute intensity percentiles")
    return values


def _increasing(values: Sequence[float], name: str, low: float, high: float) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size < 2 or not np.all(np.diff(array) > 0) or array[0] < low or array[-1] > high:
        raise ValueError(f"{name} must be at least two increasing values in [{low}, {high}], got {values!r}")
    return array
