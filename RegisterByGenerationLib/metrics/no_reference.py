"""Metrics without an aligned ground truth (real, misaligned data, as in the RbG papers).

- :func:`gradient_correlation`: do the edges of the output sit where the input's are?
- :func:`normalized_mutual_information`: statistical dependence of input and output.
- :func:`sharpness`: in-plane detail of the output (blurry generators score low).
- :func:`tv_z`: inter-slice consistency of a slice-wise generated volume.

Arrays are ``[z, y, x]`` as returned by ``SimpleITK.GetArrayFromImage``, axial slices along
z. A mask is any array whose voxels ``> 0`` are inside; ``None`` means every voxel.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.feature import canny
from skimage.metrics import normalized_mutual_information as _skimage_nmi

from ._common import as_mask, check_same_shape

__all__ = [
    "ROBUST_PERCENTILES",
    "robust_unit_scale",
    "canny_edges",
    "gradient_correlation",
    "normalized_mutual_information",
    "sharpness",
    "tv_z",
]

#: Percentiles mapped to 0 and 1 before edge detection (same as the MR intensity scheme).
ROBUST_PERCENTILES = (0.5, 99.5)


def robust_unit_scale(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Map the mask's 0.5th/99.5th percentiles of ``image`` to 0/1 and clip to [0, 1].

    Makes images of any modality (HU, MR units) comparable for fixed edge thresholds.
    A constant image (equal percentiles) maps to all zeros. Returns float32 ``[z, y, x]``.
    """
    image = np.asarray(image, dtype=np.float32)
    inside = as_mask(mask, image.shape)
    low, high = np.percentile(image[inside], ROBUST_PERCENTILES)
    if high <= low:
        return np.zeros_like(image)
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def canny_edges(image: np.ndarray, mask: np.ndarray | None = None, sigma: float = 1.0) -> np.ndarray:
    """Slice-wise 2D Canny edge map (boolean ``[z, y, x]``) of a robustly scaled volume.

    The volume is scaled with :func:`robust_unit_scale`, then
    :func:`skimage.feature.canny` runs on each axial slice with Gaussian ``sigma`` (pixels)
    and scikit-image's default hysteresis thresholds (0.1 and 0.2 on the [0, 1] scale).
    With a mask, Canny only reports edges inside it (scikit-image erodes the mask, so the
    mask's own outline is not an edge).
    """
    scaled = robust_unit_scale(image, mask)
    inside = None if mask is None else np.asarray(mask) > 0
    edges = np.zeros(scaled.shape, dtype=bool)
    for z in range(scaled.shape[0]):
        edges[z] = canny(scaled[z], sigma=sigma, mask=None if inside is None else inside[z])
    return edges


def gradient_correlation(
    input: np.ndarray, output: np.ndarray, mask: np.ndarray | None = None, sigma: float = 1.0
) -> float:
    """Pearson correlation between the Canny edge maps of ``input`` and ``output``.

    Each image is scaled to [0, 1] by its own robust percentiles (0.5 % → 0, 99.5 % → 1,
    clipped; computed over the mask), then each axial slice gets a 2D Canny edge map
    (:func:`skimage.feature.canny`, Gaussian ``sigma`` in pixels, default hysteresis
    thresholds 0.1/0.2, restricted to the mask). The result is the Pearson correlation of
    the two binary edge volumes over the mask voxels. Contrast-independent, so it compares
    an MR or CBCT input with a CT-like output: 1 when every edge coincides, about 0 for
    unrelated edges.

    Args:
        input: the MR/CBCT input, shape ``[z, y, x]``, any intensity unit.
        output: the generated pseudo-CT, same shape.
        mask: voxels ``> 0`` are evaluated (body mask); ``None`` for all voxels.
        sigma: standard deviation of Canny's Gaussian smoothing, in pixels.

    Returns:
        Correlation in [-1, 1], dimensionless; ``nan`` when either edge map is constant
        inside the mask (no edges at all), where the correlation is undefined.

    Raises:
        ValueError: shapes differ or are not 3D, the mask is empty, or ``sigma <= 0``.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma}")
    shape = check_same_shape(input=input, output=output, mask=mask)
    inside = as_mask(mask, shape)
    a = canny_edges(input, mask, sigma)[inside].astype(np.float64)
    b = canny_edges(output, mask, sigma)[inside].astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def normalized_mutual_information(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, bins: int = 64
) -> float:
    """Studholme's normalised mutual information :math:`(H(A) + H(B)) / H(A, B)`.

    Entropies of the joint histogram (``bins`` × ``bins`` equal-width bins between each
    image's minimum and maximum inside the mask) and its marginals, computed by
    :func:`skimage.metrics.normalized_mutual_information` on the mask voxels (Studholme,
    Hill & Hawkes, Pattern Recognition 32(1), 1999). Invariant to either image's intensity
    scale, so it compares an MR or CBCT input with a CT-like output.

    Args:
        a, b: images of the same shape ``[z, y, x]``, any intensity units.
        mask: voxels ``> 0`` are evaluated; ``None`` for all voxels.
        bins: number of histogram bins per image.

    Returns:
        NMI in [1, 2], dimensionless: 2 for identical images (or any one-to-one relabelling
        of the bins), about 1 for independent images (slightly above, from the finite
        sample); ``nan`` when both images are constant inside the mask.

    Raises:
        ValueError: shapes differ or are not 3D, the mask is empty, or ``bins < 2``.
    """
    if int(bins) != bins or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins}")
    shape = check_same_shape(a=a, b=b, mask=mask)
    inside = as_mask(mask, shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(_skimage_nmi(np.asarray(a)[inside], np.asarray(b)[inside], bins=int(bins)))


def sharpness(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Variance of the slice-wise 2D Laplacian of ``image``.

    The Laplacian is the in-plane 5-point stencil
    :math:`L = V[y-1,x] + V[y+1,x] + V[y,x-1] + V[y,x+1] - 4V[y,x]` on each axial slice
    (edges replicated), in image units per pixel² (HU for a CT; values depend on the pixel
    spacing, so compare images on the same grid). In-plane because slices are generated one
    by one and the slice spacing is often 2-3× the pixel spacing; inter-slice behaviour is
    :func:`tv_z`'s job. With a mask the variance is taken over the mask voxels whose whole
    stencil lies inside the mask, so the body outline and anything outside do not count.

    Args:
        image: volume ``[z, y, x]``.
        mask: voxels ``> 0`` are evaluated; ``None`` for all voxels.

    Returns:
        Variance of the Laplacian, in (image unit)² (HU² for CT). Higher is sharper.

    Raises:
        ValueError: not 3D, or the mask is empty or too thin to hold a full stencil.
    """
    shape = check_same_shape(image=image, mask=mask)
    volume = np.asarray(image, dtype=np.float64)
    second_difference = np.array([1.0, -2.0, 1.0])
    laplacian = ndimage.correlate1d(volume, second_difference, axis=1, mode="nearest")
    laplacian += ndimage.correlate1d(volume, second_difference, axis=2, mode="nearest")
    inside = as_mask(mask, shape)
    if mask is not None:
        # The stencil's support: the in-plane cross, one slice thick.
        cross = np.zeros((3, 3, 3), dtype=bool)
        cross[1] = ndimage.generate_binary_structure(2, 1)
        inside = ndimage.binary_erosion(inside, structure=cross, border_value=1)
        if not inside.any():
            raise ValueError("mask is too thin: no mask voxel has its 4 in-plane neighbours inside the mask")
    return float(np.var(laplacian[inside]))


def tv_z(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute difference between consecutive axial slices inside the body.

    .. math:: \\mathrm{TV}_z = \\frac{1}{|P|} \\sum_{(z, y, x) \\in P} |V[z+1, y, x] - V[z, y, x]|

    over the voxel pairs :math:`P` whose two voxels are both in the mask. Measures the
    inter-slice consistency of slice-wise generation: 0 for a volume constant along z, the
    step height for a staircase. Not divided by the slice spacing.

    Args:
        image: volume ``[z, y, x]`` (HU for a CT), at least 2 slices.
        mask: voxels ``> 0`` are inside the body; ``None`` for all voxels.

    Returns:
        TV-z in image units (HU for CT).

    Raises:
        ValueError: not 3D, fewer than 2 slices, or no pair of z-neighbours in the mask.
    """
    shape = check_same_shape(image=image, mask=mask)
    if shape[0] < 2:
        raise ValueError(f"tv_z needs at least 2 slices, got shape {shape}")
    inside = as_mask(mask, shape)
    pairs = inside[1:] & inside[:-1]
    if not pairs.any():
        raise ValueError("mask has no pair of voxels that are neighbours along z")
    volume = np.asarray(image, dtype=np.float64)
    return float(np.mean(np.abs(volume[1:] - volume[:-1])[pairs]))
