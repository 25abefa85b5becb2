"""``rbg batch DATA_DIR -o OUT_DIR``: every case of a SynthRAD2023-layout folder."""

from __future__ import annotations

import argparse
import json
import sys

from .options import add_compute_arguments, compute_options

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="generate pseudo-CTs for every case folder of a SynthRAD2023-layout folder",
        description=(
            "Process every case folder DATA_DIR/<ID>/ holding mr.nii.gz (or cbct.nii.gz) and ct.nii.gz "
            "into OUT_DIR/<ID>/, loading the model once. Cases whose OUT_DIR/<ID>/pseudo_ct.nii.gz exists "
            "are skipped (resume); a failing case is recorded and the batch goes on. OUT_DIR/summary.csv "
            "lists each case's status, seconds, error and metrics (with truth when <ID>/ct_aligned.nii.gz "
            "exists). Exit status 0 when no case failed, 1 otherwise."
        ),
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", help="folder of case folders")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output root (created if needed)")
    parser.add_argument("--modality", choices=("mr", "cbct"), help="kind of input (default: inferred from the file names)")
    parser.add_argument("--model", metavar="NAME|DIR", help="installed model name or model folder (default: the bundled model)")
    add_compute_arguments(parser)
    parser.add_argument("--bones", choices=("auto", "totalsegmentator", "threshold", "none"), default="auto", help="bone segmentation of each pseudo-CT (default: auto)")
    parser.add_argument("--no-prealign", dest="prealign", action="store_false", help="skip the rigid pre-alignment of the reference CTs")
    parser.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto", help="progress display (json: one object per line on stdout)")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..batch import SUMMARY_FILE, run_batch
    from ..progress import make_progress

    progress = make_progress(args.progress)

    def report(result) -> None:
        if args.progress == "json":
            return
        if result.status == "skipped":
            line = f"{result.case_id}: skipped (its pseudo_ct.nii.gz exists)"
        else:
            line = f"{result.case_id}: {result.status} in {result.seconds:.1f} s" + (f" ({result.error})" if result.error else "")
        print(line, file=sys.stderr, flush=True)

    try:
        results = run_batch(
            args.data_dir,
            args.output,
            modality=args.modality,
            model=args.model,
            **compute_options(args),
            prealign=args.prealign,
            bones=args.bones,
            progress=progress,
            on_case=report,
        )
    finally:
        if progress is not None:
            progress.close()
    counts = {status: sum(r.status == status for r in results) for status in ("done", "skipped", "failed")}
    summary = f"{args.output}/{SUMMARY_FILE}"
    if args.progress == "json":
        print(json.dumps({"fraction": 1.0, "stage": "finished", "message": "batch done", "result": {"summary": summary, **counts}}), flush=True)
    else:
        print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; summary: {summary}", file=sys.stderr)
    return 1 if counts["failed"] else 0
