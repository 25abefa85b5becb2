"""``rbg batch DATA_DIR -o OUT_DIR``: every case of a SynthRAD2023-layout folder."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import InputError
from .options import add_compute_arguments, add_method_arguments, compute_options

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
            "exists). Exit status 0 when no case failed, 1 otherwise. On a cluster, --shard K/N runs one of N "
            "array-job workers on the same folders; --merge-shards joins their summaries afterwards."
        ),
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", help="folder of case folders")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output root (created if needed)")
    parser.add_argument("--modality", choices=("mr", "cbct"), help="kind of input (default: inferred from the file names)")
    add_method_arguments(parser)
    add_compute_arguments(parser)
    parser.add_argument("--bones", choices=("auto", "totalsegmentator", "threshold", "none"), default="auto", help="bone segmentation of each pseudo-CT (default: auto)")
    parser.add_argument("--no-prealign", dest="prealign", action="store_false", help="skip the rigid pre-alignment of the reference CTs")
    parser.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto", help="progress display (json: one object per line on stdout)")
    parser.add_argument("--shard", metavar="K/N", help="process only every N-th case from the K-th (sorted by name; 1 <= K <= N), e.g. "
                        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; writes OUT_DIR/summary.shard-K-of-N.csv")  # fmt: skip
    parser.add_argument("--merge-shards", action="store_true", help="instead: join OUT_DIR's shard summaries into OUT_DIR/summary.csv, "
                        "checking that every case of DATA_DIR is in exactly one")  # fmt: skip
    return parser


def run(args: argparse.Namespace) -> int:
    from ..batch import SUMMARY_FILE, merge_shards, parse_shard, run_batch, shard_summary_file
    from ..progress import make_progress

    if args.merge_shards:
        if args.shard:
            raise InputError("--merge-shards joins the shards' summaries; it takes no --shard")
        rows = merge_shards(args.data_dir, args.output, modality=args.modality)
        failed = [row["case"] for row in rows if row["status"] == "failed"]
        print(f"{len(rows)} cases merged into {args.output}/{SUMMARY_FILE}; {len(failed)} failed" + (f" ({', '.join(failed)})" if failed else ""), file=sys.stderr)
        return 1 if failed else 0
    shard = parse_shard(args.shard) if args.shard else None

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
            method=args.method,
            **compute_options(args),
            prealign=args.prealign,
            bones=args.bones,
            progress=progress,
            on_case=report,
            shard=shard,
        )
    finally:
        if progress is not None:
            progress.close()
    counts = {status: sum(r.status == status for r in results) for status in ("done", "skipped", "failed")}
    summary = f"{args.output}/{SUMMARY_FILE if shard is None else shard_summary_file(*shard)}"
    if args.progress == "json":
        print(json.dumps({"fraction": 1.0, "stage": "finished", "message": "batch done", "result": {"summary": summary, **counts}}), flush=True)
    else:
        print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; summary: {summary}", file=sys.stderr)
    return 1 if counts["failed"] else 0
