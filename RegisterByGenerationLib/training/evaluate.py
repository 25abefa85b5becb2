"""Evaluate a model on held-out phantom cases against their ground truth.

For every phantom seed the case is generated afresh, the model runs through the
inference :class:`~RegisterByGenerationLib.pipeline.Pipeline` (pre-alignment included),
and three images are scored against ``ct_aligned`` inside the phantom's body mask, on
the input's own grid:

- ``rigid``: the reference CT after the rigid pre-alignment (the baseline any user has),
- ``stage1``: Stage 1 alone,
- ``pseudo_ct``: the model's output.

Metrics: MAE (HU) and bone Dice with a HU threshold on both images
(:func:`~RegisterByGenerationLib.metrics.bone_dice_by_threshold`, 200 HU). The floors of
the demo models (issue 4) are checked: MAE ≤ 0.6 × the rigid MAE, MAE below Stage 1's,
bone Dice ≥ 0.85.

Usage::

    python -m RegisterByGenerationLib.training.evaluate MODEL --modality mr \\
        --seeds 9000 9001 9002 9003 9004 --size 128 96 32 --json eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..metrics import bone_dice_by_threshold, mae

__all__ = ["FLOORS", "evaluate_phantoms", "markdown_table", "main"]

#: The acceptance floors of the demo models (issue 4).
FLOORS = {"mae_vs_rigid": 0.6, "bone_dice": 0.85}
_IMAGES = ("rigid", "stage1", "pseudo_ct")


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float32)


def evaluate_phantoms(
    model: str,
    *,
    modality: str,
    seeds: Sequence[int],
    size: Sequence[int],
    device: str = "cpu",
) -> dict[str, Any]:
    """Score ``model`` on the phantom cases of ``seeds``.

    Args:
        model: model directory or installed name.
        modality: ``"mr"`` or ``"cbct"``.
        seeds: phantom seeds; they must not be among the model's training or validation
            seeds (read from its card).
        size: phantom input size (x, y, z).
        device: the inference device.

    Returns:
        ``{"cases": [...], "mean": {...}, "floors": {...}, ...}`` (JSON-ready).

    Raises:
        InputError: a seed was used in training, or a bad argument.
    """
    from ..phantoms import generate_case
    from ..pipeline import Pipeline

    pipeline = Pipeline(model, modality=modality, device=device)
    used = pipeline.info.metadata.get("training", {}).get("data", {}).get("phantom_seeds", {})
    overlap = sorted(set(seeds) & (set(used.get("train", [])) | set(used.get("val", []))))
    if overlap:
        raise InputError(f"seeds {overlap} were used to train or validate {pipeline.info.name}; pick held-out seeds")
    rows = []
    for seed in seeds:
        case = generate_case(int(seed), modality, size=tuple(size))
        start = time.perf_counter()
        result = pipeline.run(case.input, case.reference_ct, keep_intermediate=True)
        seconds = time.perf_counter() - start
        truth, inside = _array(case.ct_aligned), _array(case.mask) > 0
        images = {"rigid": result.reference_prealigned, "stage1": result.stage1, "pseudo_ct": result.pseudo_ct}
        row: dict[str, Any] = {"case": case.case_id, "seed": int(seed), "seconds": round(seconds, 1)}
        for name, image in images.items():
            values = _array(image)
            row[f"mae_{name}"] = mae(values, truth, inside)
            row[f"bone_dice_{name}"] = bone_dice_by_threshold(values, truth, inside)
        rows.append(row)
    mean = {key: float(np.mean([row[key] for row in rows])) for key in rows[0] if key.startswith(("mae_", "bone_dice_"))}
    floors = {
        "mae_at_most_0.6_x_rigid": mean["mae_pseudo_ct"] <= FLOORS["mae_vs_rigid"] * mean["mae_rigid"],
        "mae_below_stage1": mean["mae_pseudo_ct"] < mean["mae_stage1"],
        "bone_dice_at_least_0.85": mean["bone_dice_pseudo_ct"] >= FLOORS["bone_dice"],
    }
    return {
        "model": pipeline.info.name,
        "modality": modality,
        "phantom_size": list(size),
        "seeds": [int(s) for s in seeds],
        "device": str(pipeline.device),
        "metrics": "MAE (HU) and bone Dice (HU > 200 on both) inside the phantom body mask, vs ct_aligned, on the input grid",
        "cases": rows,
        "mean": mean,
        "floors": floors,
    }


def markdown_table(evaluation: dict[str, Any]) -> str:
    """The evaluation as a Markdown table (one row per case, then the mean)."""
    lines = [
        "| case | MAE rigid (HU) | MAE Stage 1 (HU) | MAE pseudo-CT (HU) | Dice rigid | Dice Stage 1 | Dice pseudo-CT |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in [*evaluation["cases"], {"case": "**mean**", **evaluation["mean"]}]:
        cells = [f"{row[f'mae_{n}']:.1f}" for n in _IMAGES] + [f"{row[f'bone_dice_{n}']:.3f}" for n in _IMAGES]
        lines.append(f"| {row['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m RegisterByGenerationLib.training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model directory or installed name")
    parser.add_argument("--modality", choices=("mr", "cbct"), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="held-out phantom seeds")
    parser.add_argument("--size", type=int, nargs=3, default=(128, 96, 32), metavar=("X", "Y", "Z"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="FILE", help="also write the evaluation as JSON")
    args = parser.parse_args(argv)
    evaluation = evaluate_phantoms(args.model, modality=args.modality, seeds=args.seeds, size=args.size, device=args.device)
    print(markdown_table(evaluation))
    print(json.dumps(evaluation["floors"]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(evaluation, stream, indent=2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
