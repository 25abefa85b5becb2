"""Resample benchmark cases in-plane and/or along the slices, to measure a model's advantage at other resolutions.

Each case folder under SRC (input, ``mask``, ``ct_aligned``, the reference ``ct`` and
any ``phantom.json``/``case.json``) is written to DST with the input, its mask and its
truth resampled to SPACING mm in-plane and/or SLICE_SPACING mm between slices (same
physical extent and direction; images smoothed to the coarser voxel then sampled
linearly, the mask nearest). The reference CT is copied
as it is: it has its own grid. A coarser input is what a user with a 1.5 or 3 mm scan
gives the methods; the truth on that grid is what they are scored against.

    .venv/bin/python benchmarks/resample_cases.py SRC DST --spacing 1.5
    .venv/bin/python benchmarks/resample_cases.py SRC DST --slice-spacing 3.3
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

INPUTS = ("mr.nii.gz", "cbct.nii.gz")


def resample_axes(image: sitk.Image, spacing: tuple[float | None, float | None, float | None], interpolator: int) -> sitk.Image:
    """``image`` on a grid of ``spacing`` mm along its three axes (None keeps an axis), same extent."""
    old_spacing, old_size = image.GetSpacing(), image.GetSize()
    new_spacing = tuple(old if new is None else float(new) for old, new in zip(old_spacing, spacing))
    new_size = [max(1, round(old_size[i] * old_spacing[i] / new_spacing[i])) for i in range(3)]
    # Keep the outer edge of the first voxel where it was: origins are voxel centres.
    shift = [(new_spacing[i] - old_spacing[i]) / 2 for i in range(3)]
    matrix = [image.GetDirection()[r * 3 : r * 3 + 3] for r in range(3)]
    origin = [image.GetOrigin()[r] + sum(matrix[r][c] * shift[c] for c in range(3)) for r in range(3)]
    default = float(sitk.GetArrayViewFromImage(image).min())
    if interpolator != sitk.sitkNearestNeighbor:
        # A scanner's coarser voxels average the finer ones: a Gaussian of the extra
        # width (FWHM = sqrt(new² - old²)) before sampling, along the coarsened axes.
        sigma_mm = [max(new_spacing[i] ** 2 - old_spacing[i] ** 2, 0.0) ** 0.5 / 2.355 for i in range(3)]
        array = ndimage.gaussian_filter(sitk.GetArrayFromImage(image).astype(np.float32), [sigma_mm[i] / old_spacing[i] for i in (2, 1, 0)])
        smoothed = sitk.GetImageFromArray(array)
        smoothed.CopyInformation(image)
        image = sitk.Cast(smoothed, image.GetPixelID())
    return sitk.Resample(image, new_size, sitk.Transform(), interpolator, origin, new_spacing, image.GetDirection(), default, image.GetPixelID())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    parser.add_argument("--spacing", type=float, help="in-plane spacing of the written inputs (mm; default: unchanged)")
    parser.add_argument("--slice-spacing", type=float, help="slice spacing of the written inputs (mm; default: unchanged)")
    args = parser.parse_args()
    if args.spacing is None and args.slice_spacing is None:
        parser.error("give --spacing, --slice-spacing or both")
    spacing = (args.spacing, args.spacing, args.slice_spacing)
    cases = sorted(p.parent for p in args.source.rglob("ct_aligned.nii.gz"))
    for folder in cases:
        out = args.destination / folder.relative_to(args.source)
        out.mkdir(parents=True, exist_ok=True)
        for name in (*INPUTS, "ct_aligned.nii.gz", "mask.nii.gz"):
            if (folder / name).exists():
                nearest = name == "mask.nii.gz"
                image = sitk.ReadImage(str(folder / name))
                sitk.WriteImage(resample_axes(image, spacing, sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear), str(out / name), True)
        for name in ("ct.nii.gz", "phantom.json", "case.json"):
            if (folder / name).exists():
                shutil.copy2(folder / name, out / name)
        print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
