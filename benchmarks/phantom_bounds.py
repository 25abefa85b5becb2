"""What the held-out phantom cases allow: MAE (HU, inside the body mask, vs ``ct_aligned``)
of references and simple estimates that bound what a model can reach.

- ``rigid``: the reference CT after the library's rigid pre-alignment (the issue-4 baseline).
- ``oracle_2d`` / ``oracle_3d``: that reference further registered **to the truth itself**
  by SimpleITK's symmetric-forces demons (slice by slice / in 3D, 100 iterations, σ 1.5
  voxels): no registration of the reference can do much better, so a model must also use
  what the input shows (bladder filling, gas) to go below it.
- ``input``: the input as it is (CBCT only: it is in HU).
- ``input_linear``: the input through the best linear HU map fitted on the truth (CBCT only;
  a perfect de-shading and de-noising model does better still).
- ``canvas_<s>mm``: the truth resampled to a model canvas of ``s`` mm pixels and back: the
  error a model at that pixel spacing makes even when it is perfect on its canvas;
  ``canvas_native``: the canvas at each case's own spacing (``pixel_spacing_mm: null``).

    .venv/bin/python benchmarks/phantom_bounds.py --modality cbct --seeds 9000 9001 9002 9003 9004
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk

from RegisterByGenerationLib.geometry import CanvasGrid
from RegisterByGenerationLib.metrics import mae
from RegisterByGenerationLib.phantoms import generate_case
from RegisterByGenerationLib.preprocess import prealign_reference


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float32)


def demons(fixed: sitk.Image, moving: sitk.Image) -> sitk.Image:
    """``moving`` deformably registered onto ``fixed`` (symmetric-forces demons)."""
    registration = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    registration.SetNumberOfIterations(100)
    registration.SetStandardDeviations(1.5)
    field = registration.Execute(fixed, moving)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    return sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1024.0)


def demons_slice_by_slice(fixed: sitk.Image, moving: sitk.Image) -> np.ndarray:
    fixed_array, moving_array = array(fixed), array(moving)
    slices = [demons(sitk.GetImageFromArray(f), sitk.GetImageFromArray(m)) for f, m in zip(fixed_array, moving_array)]
    return np.stack([array(s) for s in slices])


def canvas_round_trip(image: sitk.Image, spacing: float | None) -> np.ndarray:
    grid = CanvasGrid.for_image(image, None if spacing is None else (spacing, spacing))
    return array(grid.from_canvas(grid.to_canvas(image, default_value=-1024.0), default_value=-1024.0))


def bounds(seed: int, modality: str, size: tuple[int, int, int], spacings: list[float]) -> dict[str, float]:
    case = generate_case(seed, modality, size=size)
    truth_image = sitk.Cast(case.ct_aligned, sitk.sitkFloat32)
    truth, inside = array(truth_image), array(case.mask) > 0
    _, rigid = prealign_reference(case.input, case.reference_ct, modality=modality)
    row = {
        "rigid": mae(array(rigid), truth, inside),
        "oracle_2d": mae(demons_slice_by_slice(truth_image, rigid), truth, inside),
        "oracle_3d": mae(array(demons(truth_image, rigid)), truth, inside),
    }
    if modality == "cbct":
        values = array(case.input)
        slope, intercept = np.polyfit(values[inside], truth[inside], 1)
        row["input"] = mae(values, truth, inside)
        row["input_linear"] = mae(slope * values + intercept, truth, inside)
    for spacing in spacings:
        row[f"canvas_{spacing:g}mm"] = mae(canvas_round_trip(truth_image, spacing), truth, inside)
    row["canvas_native"] = mae(canvas_round_trip(truth_image, None), truth, inside)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modality", choices=("mr", "cbct"), default="cbct")
    parser.add_argument("--seeds", type=int, nargs="+", default=[9000, 9001, 9002, 9003, 9004])
    parser.add_argument("--size", type=int, nargs=3, default=[128, 96, 32], metavar=("X", "Y", "Z"))
    parser.add_argument("--spacings", type=float, nargs="*", default=[3.2], help="canvas pixel spacings to score (mm)")
    args = parser.parse_args()
    rows = {seed: bounds(seed, args.modality, tuple(args.size), args.spacings) for seed in args.seeds}
    names = list(next(iter(rows.values())))
    print(f"MAE (HU) inside the body vs ct_aligned; {args.modality} phantoms {args.size[0]}x{args.size[1]}x{args.size[2]}")
    print("| seed | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for seed, row in rows.items():
        print(f"| {seed} | " + " | ".join(f"{row[n]:.1f}" for n in names) + " |")
    print("| **mean** | " + " | ".join(f"{np.mean([r[n] for r in rows.values()]):.1f}" for n in names) + " |")


if __name__ == "__main__":
    main()
