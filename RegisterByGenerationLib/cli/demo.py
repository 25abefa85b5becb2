"""``rbg demo``: a synthetic pelvis case through the bundled model, scored against its truth."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .options import add_compute_arguments, compute_options

__all__ = ["DEMO_SEED", "DEMO_SIZE", "add_parser", "run"]

#: Phantom seed of the demo case; the bundled models never saw it in training.
DEMO_SEED = 9001
#: Phantom size of the demo case (x, y, z): ~3 mm voxels, so the demo runs in about a
#: minute on 2 cores; inside the spacings the bundled models' cards validate.
DEMO_SIZE = (128, 96, 32)


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="run the whole method on a synthetic pelvis case and score it against the truth",
        description=(
            "Generate a synthetic pelvis case (input, misaligned reference CT, and the truth), "
            "run the bundled model, segment the bones, write the overview and report, and compare "
            "the pseudo-CT and the rigidly pre-aligned reference CT with the truth."
        ),
    )
    parser.add_argument("-o", "--output", default="demo_output", metavar="DIR", help="output folder (default: ./demo_output)")
    parser.add_argument(
        "--modality",
        choices=("mr", "cbct"),
        default="cbct",
        help="input modality of the demo case (default: cbct, whose bundled model is the better trained; see docs/training.md)",
    )
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help=f"phantom seed (default: {DEMO_SEED}, never used in training)")
    parser.add_argument("--size", type=int, nargs=3, default=DEMO_SIZE, metavar=("X", "Y", "Z"),
                        help="phantom size in voxels (default: %(default)s, the bundled models' training size)")  # fmt: skip
    parser.add_argument("--model", metavar="NAME|DIR", help="model (default: the bundled model for --modality)")
    add_compute_arguments(parser)
    parser.add_argument("--bones", choices=("auto", "totalsegmentator", "threshold", "none"), default="auto", help="bone segmentation method (default: auto)")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="skip ANTs SyN and elastix (run by default when the benchmark extra is installed; about a minute each)")  # fmt: skip
    return parser


def run(args: argparse.Namespace) -> int:
    from ..case import process_case
    from ..io import atomic_path, check_writable_dir
    from ..phantoms import generate_case, write_case
    from ..pipeline import Pipeline
    from ..progress import make_progress

    start = time.perf_counter()
    pipeline = Pipeline(args.model, modality=args.modality, **compute_options(args))
    print(f"[1/3] generating phantom case (seed {args.seed}, {args.modality.upper()})", file=sys.stderr)
    case = generate_case(args.seed, args.modality, size=tuple(args.size))
    out = check_writable_dir(args.output)  # after the checks of the model and the case: nothing created on bad input
    case_dir = write_case(case, out / "data")
    input_name = "mr.nii.gz" if args.modality == "mr" else "cbct.nii.gz"
    print(f"[2/3] running model {pipeline.info.name} on {pipeline.device}", file=sys.stderr)
    progress = make_progress("auto")
    try:
        outputs = process_case(pipeline, case_dir / input_name, case_dir / "ct.nii.gz", out / "result", bones=args.bones,
                               progress=progress, save_intermediate=True)  # fmt: skip
    finally:
        if progress is not None:
            progress.close()
    print("[3/3] scoring against the phantom's truth, beside what a user has instead", file=sys.stderr)
    scores = score_against_truth(outputs, case, baselines=_baselines(case, args.modality) if args.baselines else {},
                                 stage1_is_output=pipeline.info.pseudo_ct_output == "stage1")  # fmt: skip
    with atomic_path(out / "evaluation.json") as tmp:
        tmp.write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    wall = time.perf_counter() - start
    _print_summary(scores, outputs, out, wall)
    return 0


def _baselines(case, modality: str) -> dict:
    """ANTs SyN and elastix (as ``rbg benchmark`` runs them) when the benchmark extra is installed."""
    from ..benchmark import missing_extra, run_baseline

    images = {}
    for method in ("syn", "elastix"):
        if missing_extra(method):
            print(f"  {method}: not run ({missing_extra(method)})", file=sys.stderr)
            continue
        start = time.perf_counter()
        images[method] = run_baseline(method, case.input, case.reference_ct, modality=modality)
        print(f"  {method}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return images


def score_against_truth(outputs, case, baselines: dict | None = None, *, stage1_is_output: bool = False) -> dict:
    """MAE/PSNR/SSIM/bone Dice vs ``ct_aligned`` of the pseudo-CT and of what a user has instead:
    the input itself (CBCT only), the rigidly pre-aligned reference, Stage 1 alone (unless
    ``stage1_is_output``: a model whose pseudo-CT is Stage 1's), and ``baselines`` (name ->
    image on the input grid, e.g. ANTs SyN and elastix)."""
    import SimpleITK as sitk

    from ..metrics import bone_dice_by_threshold, dice, mae, psnr, ssim

    truth = sitk.GetArrayFromImage(case.ct_aligned).astype("float32")
    mask = sitk.GetArrayFromImage(case.mask) > 0
    truth_bones = sitk.GetArrayFromImage(case.bones)
    candidates = {"pseudo_ct": outputs.result.pseudo_ct}
    if case.truth["modality"] == "cbct":
        candidates["input_as_is"] = case.input
    candidates["rigid_reference"] = outputs.result.reference_prealigned
    if outputs.result.stage1 is not None and not stage1_is_output:
        candidates["stage1"] = outputs.result.stage1
    candidates.update(baselines or {})
    scores = {}
    for name, image in candidates.items():
        array = sitk.GetArrayFromImage(image).astype("float32")
        scores[name] = {
            "mae_hu": mae(array, truth, mask),
            "psnr_db": psnr(array, truth, mask),
            "ssim": ssim(array, truth, mask),
            "bone_dice_threshold": bone_dice_by_threshold(array, truth, mask),
        }
    if outputs.bones is not None:
        scores["pseudo_ct"]["bone_dice_labels"] = dice(sitk.GetArrayFromImage(outputs.bones.labels), truth_bones)
    return scores


_TITLES = {"pseudo_ct": "pseudo-CT", "input_as_is": "CBCT as is", "rigid_reference": "rigid reference", "stage1": "Stage 1 alone",
           "syn": "ANTs SyN", "elastix": "elastix 40 mm"}  # fmt: skip


def _print_summary(scores: dict, outputs, out: Path, wall: float) -> None:
    names = list(scores)
    rows = [("", *(_TITLES.get(name, name) for name in names))]
    labels = {"mae_hu": "MAE in body (HU)", "psnr_db": "PSNR (dB)", "ssim": "SSIM", "bone_dice_threshold": "bone Dice (>200 HU)"}
    for key, label in labels.items():
        rows.append((label, *(f"{scores[name][key]:.3f}" for name in names)))
    if "bone_dice_labels" in scores["pseudo_ct"]:
        rows.append(("bone Dice (masks vs truth)", f"{scores['pseudo_ct']['bone_dice_labels']:.3f}", *("-" for _ in names[1:])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    print(f"\nresults in {out}/result: pseudo_ct.nii.gz, bones.seg.nrrd, overview.png, report.json")
    print(f"case data (with the truth ct_aligned.nii.gz) in {out}/data; scores in {out}/evaluation.json")
    print(f"demo wall time {wall:.1f} s")
