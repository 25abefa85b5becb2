"""STN against no STN ("MM") as the misalignment grows: where affine alignment stops helping.

For each case the reference CT is shifted by a known translation (its origin moved by
``d`` mm along a fixed diagonal direction) and both models run on it without our rigid
pre-alignment, so the network sees the phantom's own misalignment plus ``d``; the row
``prealigned`` is the default run (pre-alignment on, no shift). Also printed: the input
reference as it arrives on the input grid (what the STN starts from). MAE and bone Dice
are in the case's mask against ``ct_aligned``.

    .venv/bin/python benchmarks/stn_misalignment.py --data bench/cbct --stn models/stn-fusion-cbct-lite \
        --mm models/stn-fusion-cbct-mm --cases 2 --shifts 0 5 10 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from RegisterByGenerationLib.benchmark import find_cases
from RegisterByGenerationLib.io import read_image
from RegisterByGenerationLib.metrics import evaluate_images
from RegisterByGenerationLib.pipeline import Pipeline
from RegisterByGenerationLib.preprocess import prealign_reference

DIRECTION = np.array([1.0, 1.0, 0.5]) / np.linalg.norm([1.0, 1.0, 0.5])


def shifted(image: sitk.Image, mm: float) -> sitk.Image:
    out = sitk.Image(image)
    out.SetOrigin(tuple(np.asarray(image.GetOrigin()) + mm * DIRECTION))
    return out


def score(image: sitk.Image, truth: sitk.Image, mask: sitk.Image) -> tuple[float, float]:
    values = evaluate_images(sitk.Cast(image, sitk.sitkFloat32), truth=truth, mask=mask)
    return values["mae"], values["bone_dice"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--stn", required=True, help="stn-fusion model with the STN")
    parser.add_argument("--mm", required=True, help="the same recipe trained with --no-stn")
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--shifts", nargs="+", type=float, default=(0.0, 5.0, 10.0, 20.0))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    cases = [c for c in find_cases(args.data) if c.modality == "cbct"][: args.cases]
    models = {"stn": args.stn, "mm": args.mm}
    print("| case | misalignment | reference as given | MM (no STN) | STN | STN − MM |")
    print("|---|---|---|---|---|---|")
    totals: dict[str, list[tuple[float, float]]] = {}
    for case in cases:
        cbct, ct = read_image(case.input_path), read_image(case.folder / "ct.nii.gz")
        truth, mask = read_image(case.folder / "ct_aligned.nii.gz"), read_image(case.folder / "mask.nii.gz")
        for label, prealign, shift in [("prealigned", True, 0.0)] + [(f"+{d:g} mm, no pre-alignment", False, d) for d in args.shifts]:
            reference = shifted(ct, shift)
            given = score(prealign_reference(cbct, reference, modality="cbct", prealign=prealign)[1], truth, mask)
            scores = {name: score(Pipeline(model, modality="cbct", device="cpu", prealign=prealign).run(cbct, reference).pseudo_ct, truth, mask)
                      for name, model in models.items()}  # fmt: skip
            totals.setdefault(label, []).append((scores["mm"][0], scores["stn"][0]))
            print(f"| {case.case_id} | {label} | {given[0]:.1f} / {given[1]:.3f} | {scores['mm'][0]:.1f} / {scores['mm'][1]:.3f} | "
                  f"{scores['stn'][0]:.1f} / {scores['stn'][1]:.3f} | {scores['stn'][0] - scores['mm'][0]:+.1f} |", flush=True)  # fmt: skip
    print("\nmeans (MAE HU, MM / STN):")
    for label, pairs in totals.items():
        mm, stn = np.mean(pairs, axis=0)
        print(f"  {label}: {mm:.1f} / {stn:.1f} ({stn - mm:+.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
