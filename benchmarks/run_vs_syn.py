"""Wall time of a whole ``rbg run`` against ANTs SyN on the same case, side by side in one run.

Both run as fresh processes with the same thread count, alternating, ``--repeats`` times
each; the script prints every time, the medians, their ratio and the per-stage split of
``rbg run`` (from its ``report.json``). The case defaults to a 384×320×100 MR phantom
(seed 7900, never used in training):

    .venv/bin/python benchmarks/run_vs_syn.py --threads 2 --repeats 2

``--precision bfloat16`` runs ``rbg run`` under CPU bfloat16 autocast, and float32 beside
it, and prints how far the two pseudo-CTs are apart in the body (mean |difference|, share
of voxels more than 10 HU apart): the speed of reduced precision with its cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=Path, help="case folder (mr.nii.gz or cbct.nii.gz, ct.nii.gz); default: a new phantom")
    parser.add_argument("--modality", choices=("mr", "cbct"), default="mr")
    parser.add_argument("--size", nargs=3, type=int, default=(384, 320, 100))
    parser.add_argument("--model", help="model (default: the bundled model of the modality)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32", help="of rbg run (bfloat16: float32 is run beside it)")
    args = parser.parse_args()
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": threads}
    with tempfile.TemporaryDirectory(prefix="rbg-speed-") as scratch:
        case = args.case
        if case is None:
            from RegisterByGenerationLib.phantoms import generate_case, write_case

            case = write_case(generate_case(7900, args.modality, size=tuple(args.size)), Path(scratch) / "data")
        image = case / ("mr.nii.gz" if args.modality == "mr" else "cbct.nii.gz")
        def rbg_run(precision: str) -> list[str]:
            argv = [sys.executable, "-m", "RegisterByGenerationLib", "run", str(image), str(case / "ct.nii.gz"), "-o", str(Path(scratch) / precision),
                    "--modality", args.modality, "--device", "cpu", "--threads", threads, "--bones", "threshold", "--progress", "none",
                    "--precision", precision]  # fmt: skip
            return argv + (["--model", args.model] if args.model else [])

        precisions = [args.precision] + (["float32"] if args.precision != "float32" else [])
        out = Path(scratch) / args.precision
        job = {"method": "syn", "outputs": ["syn"], "input": str(image), "reference": str(case / "ct.nii.gz"), "modality": args.modality,
               "threads": args.threads, "seed": 0, "model": None, "out_dir": scratch}  # fmt: skip
        syn = [sys.executable, "-m", "RegisterByGenerationLib.benchmark", json.dumps(job)]
        names = {p: "rbg run" if p == args.precision else f"rbg run ({p})" for p in precisions}
        times: dict[str, list[float]] = {**{names[p]: [] for p in precisions}, "ANTs SyN": []}
        for _ in range(args.repeats):
            for precision in precisions:
                times[names[precision]].append(timed(rbg_run(precision), env))
            times["ANTs SyN"].append(timed(syn, env))
        report = json.loads((out / "report.json").read_text())
        if len(precisions) > 1:
            print(_difference(Path(scratch), precisions, case))
    print(f"case {image} (size {report['inputs']['input'].get('size')}), {args.threads} threads, model {report['model']['name']}")
    for name, values in times.items():
        print(f"{name:9}: " + ", ".join(f"{v:.1f}" for v in values) + f" s (median {statistics.median(values):.1f} s)")
    for precision in precisions:
        ratio = statistics.median(times[names[precision]]) / statistics.median(times["ANTs SyN"])
        print(f"ratio rbg run ({precision}) / SyN: {ratio:.2f}")
    print("rbg run stages (last run): " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in report["timings_s"].items()))
    return 0


def _difference(scratch: Path, precisions: list[str], case: Path) -> str:
    """How far the pseudo-CTs of two precisions are apart inside the case's body mask."""
    import numpy as np
    import SimpleITK as sitk

    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(scratch / p / "pseudo_ct.nii.gz"))).astype(np.float32) for p in precisions)
    body = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "mask.nii.gz"))) > 0
    difference = np.abs(a - b)[body]
    return f"pseudo-CT {precisions[0]} vs {precisions[1]} in the body: mean |difference| {difference.mean():.2f} HU, {100 * np.mean(difference > 10):.2f} % of voxels > 10 HU apart"


if __name__ == "__main__":
    raise SystemExit(main())
