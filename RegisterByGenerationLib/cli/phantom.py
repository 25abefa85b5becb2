"""``rbg phantom``: write synthetic pelvis cases with ground truth (SynthRAD2023 layout)."""

from __future__ import annotations

import argparse
import time

from ..bone_labels import BONE_LABELS

__all__ = ["add_parser", "run"]

DESCRIPTION = f"""\
Generate synthetic pelvis phantoms with ground truth, in the SynthRAD2023 layout:
DIR/<ID>/mr.nii.gz (or cbct.nii.gz) is the input; ct.nii.gz the reference CT of the
same phantom patient, misaligned (rigid + smooth deformation, other bladder filling
and rectal gas) on its own grid; mask.nii.gz the body mask of the input. The truth
is on the input grid: ct_aligned.nii.gz (CT of the input's anatomy, HU) and
bones.nii.gz (bone labels: {", ".join(f"{v} {n}" for v, n in BONE_LABELS.items())}).
phantom.json holds the seed and the true misalignment. Case i uses seed S+i and is
named 1PS<seed> (MR) or 2PS<seed> (CBCT); the same seed always gives the same images.
--reference-mr (MR) also writes mr_reference.nii.gz, the MR of the reference CT's
anatomy on its grid: the pair that `rbg train dual-similarity` needs.
"""


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="write synthetic pelvis phantoms (input, misaligned reference CT, truth)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--cases", type=int, default=1, metavar="N", help="number of cases (default: 1)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the first case (default: 0)")
    parser.add_argument("--modality", required=True, choices=("mr", "cbct"), help="input modality")
    parser.add_argument(
        "--size", type=int, nargs=3, default=(256, 192, 48), metavar=("X", "Y", "Z"),
        help="input grid size in voxels, x y z (default: 256 192 48; each >= 16)",
    )
    parser.add_argument("--oblique", action="store_true", help="tilt the input and reference grids a few degrees")
    parser.add_argument("--reference-mr", action="store_true",
                        help="MR only: also write mr_reference.nii.gz, the MR of the reference's anatomy (paired training)")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..phantoms import write_phantom_dataset

    start = time.perf_counter()
    folders = write_phantom_dataset(
        args.output, args.cases, args.seed, args.modality, tuple(args.size), args.oblique,
        progress=lambda folder: print(folder, flush=True), reference_mr=args.reference_mr,
    )
    elapsed = time.perf_counter() - start
    print(f"rbg phantom: wrote {len(folders)} {args.modality} case(s) to {args.output} in {elapsed:.1f} s")
    return 0
