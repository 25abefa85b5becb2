"""``rbg run INPUT REFERENCE -o OUTDIR``: generate the pseudo-CT of one case."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="generate a pseudo-CT aligned with an MR/CBCT from a misaligned reference CT",
        description=(
            "Generate a pseudo-CT in the frame of INPUT (MR or CBCT) with the intensities and "
            "texture of the patient's REFERENCE CT. Writes OUTDIR/pseudo_ct.nii.gz (int16 HU, "
            "exactly INPUT's size, spacing, origin and direction)."
        ),
    )
    parser.add_argument("input", metavar="INPUT", help="MR or CBCT volume (file or DICOM folder)")
    parser.add_argument("reference", metavar="REFERENCE", help="reference CT of the same patient (file or DICOM folder)")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if needed)")
    parser.add_argument("--modality", choices=("mr", "cbct"), default="mr", help="kind of INPUT (default: mr)")
    parser.add_argument("--model", metavar="NAME|DIR", help="installed model name or model folder (default: the bundled model for --modality)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--batch-size", type=int, metavar="N", help="slices per forward pass (default: automatic)")
    parser.add_argument("--no-prealign", dest="prealign", action="store_false", help="skip the rigid pre-alignment of REFERENCE to INPUT")
    parser.add_argument("--save-intermediate", action="store_true", help="also write the Stage-1 image, the flow magnitude (mm) and the pre-aligned reference")
    parser.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto", help="progress display; json prints one JSON object per line on stdout (default: a bar on a terminal)")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..io import check_writable_dir, read_image
    from ..pipeline import Pipeline, write_outputs
    from ..progress import make_progress

    input_image = read_image(args.input)
    reference = read_image(args.reference)
    check_writable_dir(args.output)
    pipeline = Pipeline(args.model, modality=args.modality, device=args.device, batch_size=args.batch_size, prealign=args.prealign)
    progress = make_progress(args.progress)
    try:
        result = pipeline.run(input_image, reference, progress=progress, keep_intermediate=args.save_intermediate)
    finally:
        if progress is not None:
            progress.close()
    written = write_outputs(result, args.output, save_intermediate=args.save_intermediate)
    summary = {"outputs": {name: str(path) for name, path in written.items()}, "model": pipeline.info.name, "device": result.device, "timings_s": {k: round(v, 2) for k, v in result.timings.items()}}
    if args.progress == "json":
        print(json.dumps({"fraction": 1.0, "stage": "finished", "message": "outputs written", "result": summary}), flush=True)
    else:
        print(f"pseudo-CT written to {written['pseudo_ct']}", file=sys.stderr)
        for name, path in written.items():
            if name != "pseudo_ct":
                print(f"  {name}: {path}", file=sys.stderr)
        timing = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in result.timings.items())
        print(f"model {pipeline.info.name} on {result.device}: {timing}", file=sys.stderr)
    return 0
