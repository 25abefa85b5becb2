"""``rbg evaluate PSEUDO_CT [--truth CT] [--input MR_OR_CBCT] [--mask MASK] [--json FILE]``."""

from __future__ import annotations

import argparse
import math
import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="image-quality metrics of a pseudo-CT (with or without a ground-truth CT)",
        description=(
            "Print the metrics of PSEUDO_CT that the given files allow (DESIGN §6): always "
            "sharpness and TV-z; with --truth (an aligned CT) MAE, PSNR, SSIM (SynthRAD2023 "
            "definitions) and bone Dice/HD95 (HU > 200, or the label maps); with --input the "
            "gradient correlation and normalised mutual information. All images must be on "
            "PSEUDO_CT's grid. Metrics are computed inside --mask, or inside an automatic body "
            "mask of the pseudo-CT."
        ),
    )
    parser.add_argument("pseudo_ct", metavar="PSEUDO_CT", help="the generated CT in HU (file or DICOM folder)")
    parser.add_argument("--truth", metavar="CT", help="ground-truth CT aligned with the input, on PSEUDO_CT's grid")
    parser.add_argument("--input", metavar="MR_OR_CBCT", help="the MR or CBCT the pseudo-CT was generated for")
    parser.add_argument("--mask", metavar="MASK", help="body mask (voxels > 0 are evaluated); default: automatic")
    parser.add_argument("--truth-bones", metavar="LABELS", help="ground-truth bone label map (needs --pred-bones)")
    parser.add_argument("--pred-bones", metavar="LABELS", help="bone label map of the pseudo-CT (needs --truth-bones)")
    parser.add_argument("--field", metavar="FIELD", help="a displacement field (vector image, mm, physical axes) on PSEUDO_CT's grid, e.g. a "
                        "registration's: its Jacobian determinant's fold fraction, minimum, 1st percentile and spread (inside --mask if given)")  # fmt: skip
    parser.add_argument(
        "--json",
        metavar="FILE",
        help='also write {"inputs", "metrics", "units"} to FILE (written atomically; inf/nan as strings)',
    )
    return parser


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..errors import InputError, OutputError
    from ..io import atomic_path, read_image
    from ..metrics import check_same_grid, deformation_statistics, evaluate_images, unit_of

    # Validate everything before computing or writing anything.
    if (args.truth_bones is None) != (args.pred_bones is None):
        raise InputError("--truth-bones and --pred-bones must be given together")
    json_path = Path(args.json) if args.json else None
    if json_path is not None and not json_path.parent.is_dir():
        raise OutputError(f"{json_path}: output folder {json_path.parent} does not exist")

    pseudo_ct = read_image(args.pseudo_ct)
    images = {}
    for key, path, reader in (
        ("truth", args.truth, read_image),
        ("input_image", args.input, read_image),
        ("mask", args.mask, _read_label_map),
        ("truth_bones", args.truth_bones, _read_label_map),
        ("pred_bones", args.pred_bones, _read_label_map),
    ):
        if path is not None:
            images[key] = reader(path)
            check_same_grid(pseudo_ct, images[key], str(path), reference_name=f"pseudo-CT {args.pseudo_ct}")
    if "mask" in images and not _any_nonzero(images["mask"]):
        raise InputError(f"{args.mask}: mask is empty (no voxel > 0)")

    field = None
    if args.field is not None:
        field = read_image(args.field, validate=False)
        check_same_grid(pseudo_ct, field, str(args.field), reference_name=f"pseudo-CT {args.pseudo_ct}")
    metrics = evaluate_images(pseudo_ct, **images)
    if field is not None:
        try:
            metrics.update(deformation_statistics(field, images.get("mask")))
        except InputError as error:
            raise InputError(f"{args.field}: {error}") from None

    if "mask" not in images:
        print("metrics inside the automatic body mask of the pseudo-CT", file=sys.stderr, flush=True)
    rows = [(name, _format(value), unit_of(name) or "-") for name, value in metrics.items()]
    header = ("metric", "value", "unit")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for name, value, unit in [header, *rows]:
        print(f"{name.ljust(widths[0])}  {value.rjust(widths[1])}  {unit}")
    sys.stdout.flush()

    if json_path is not None:
        document = {
            "inputs": {
                "pseudo_ct": str(args.pseudo_ct),
                "truth": args.truth,
                "input": args.input,
                "mask": args.mask or "automatic body mask of the pseudo-CT",
                "truth_bones": args.truth_bones,
                "pred_bones": args.pred_bones,
                "field": args.field,
            },
            "metrics": {name: value if math.isfinite(value) else str(value) for name, value in metrics.items()},
            "units": {name: unit_of(name) for name in metrics},
        }
        try:
            with atomic_path(json_path) as tmp:
                tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        except OSError as error:
            raise OutputError(f"{json_path}: cannot be written ({error.strerror or error})") from error
        print(f"metrics written to {json_path}", file=sys.stderr)
    return 0


def _read_label_map(path):
    """Read a mask/label map: like ``read_image`` but a constant map (all body, no bone) is allowed."""
    from ..errors import InputError
    from ..io import read_image

    image = read_image(path, validate=False)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: a 3D scalar label map is required")
    return image


def _any_nonzero(image) -> bool:
    import SimpleITK as sitk

    return bool(sitk.GetArrayViewFromImage(image).any())


def _format(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)
