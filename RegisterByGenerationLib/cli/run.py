"""``rbg run INPUT REFERENCE -o OUTDIR``: generate the pseudo-CT of one case."""

from __future__ import annotations

import argparse
import json
import sys

from .options import add_compute_arguments, add_method_arguments, compute_options

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="generate a pseudo-CT aligned with an MR/CBCT from a misaligned reference CT",
        description=(
            "Generate a pseudo-CT in the frame of INPUT (MR or CBCT) with the intensities and "
            "texture of the patient's REFERENCE CT. Writes OUTDIR/pseudo_ct.nii.gz (int16 HU, "
            "exactly INPUT's size, spacing, origin and direction), bones.nii.gz and bones.seg.nrrd "
            "(bone masks), overview.png and report.json."
        ),
    )
    parser.add_argument("input", metavar="INPUT", help="MR or CBCT volume (file or DICOM folder)")
    parser.add_argument("reference", metavar="REFERENCE", help="reference CT of the same patient (file or DICOM folder)")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if needed)")
    parser.add_argument("--modality", choices=("mr", "cbct"), default="mr", help="kind of INPUT (default: mr)")
    parser.add_argument("--input-series", metavar="UID", help="DICOM Series Instance UID to read when INPUT is a folder of several series (default: the one with the most files, named in a warning)")
    parser.add_argument("--reference-series", metavar="UID", help="the same for REFERENCE")
    add_method_arguments(parser)
    add_compute_arguments(parser)
    parser.add_argument("--batch-size", type=int, metavar="N", help="slices per forward pass (default: automatic)")
    parser.add_argument("--no-prealign", dest="prealign", action="store_false", help="skip the rigid pre-alignment of REFERENCE to INPUT")
    parser.add_argument("--refine", choices=("none", "demons"), default="none",
                        help="demons: register the pre-aligned REFERENCE onto the generated CT (mono-modal) and output the warped "
                             "reference, so every HU comes from the patient's CT (default: none, the network's pseudo-CT)")  # fmt: skip
    parser.add_argument(
        "--bones",
        choices=("auto", "totalsegmentator", "threshold", "none"),
        default="auto",
        help="bone masks of the pseudo-CT: TotalSegmentator, an HU-threshold method, auto (TotalSegmentator when installed with its weights, else threshold) or none (default: auto)",
    )
    parser.add_argument("--save-intermediate", action="store_true", help="also write the Stage-1 image, the flow magnitude (mm) and the pre-aligned reference")
    parser.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto", help="progress display; json prints one JSON object per line on stdout (default: a bar on a terminal)")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..case import process_case
    from ..pipeline import Pipeline
    from ..progress import make_progress

    pipeline = Pipeline(args.model, method=args.method, modality=args.modality, batch_size=args.batch_size, prealign=args.prealign, refine=args.refine, **compute_options(args))
    progress = make_progress(args.progress)
    try:
        outputs = process_case(
            pipeline,
            args.input,
            args.reference,
            args.output,
            bones=args.bones,
            save_intermediate=args.save_intermediate,
            progress=progress,
            input_series=args.input_series,
            reference_series=args.reference_series,
        )
    finally:
        if progress is not None:
            progress.close()
    report = outputs.report
    if args.progress == "json":
        summary = {"outputs": {name: str(path) for name, path in outputs.paths.items()}, "method": pipeline.method.name, "model": pipeline.name, "device": report["device"], "precision": report["precision"], "timings_s": report["timings_s"]}
        print(json.dumps({"fraction": 1.0, "stage": "finished", "message": "outputs written", "result": summary}), flush=True)
        return 0
    print(f"pseudo-CT written to {outputs.paths['pseudo_ct']}", file=sys.stderr)
    for name, path in outputs.paths.items():
        if name != "pseudo_ct":
            print(f"  {name}: {path}", file=sys.stderr)
    timing = ", ".join(f"{name[:-2]} {seconds:.1f} s" for name, seconds in report["timings_s"].items())
    what = pipeline.method.name + (f" (model {pipeline.info.name})" if pipeline.info is not None else "")
    print(f"{what} on {report['device']} ({report['precision']}): {timing}; bones: {report['bones']['method']}", file=sys.stderr)
    return 0
