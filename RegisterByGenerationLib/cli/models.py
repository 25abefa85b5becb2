"""``rbg models list|info NAME``: the installed models and their cards."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="list installed models or show one model's card",
        description="Models are folders with model.json and weights.safetensors, found in $RBG_MODELS_DIR (default ~/.RegisterByGeneration/models) and in the bundled Resources/Models.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="list installed models")
    info = actions.add_parser("info", help="show a model's card (model.json) and check its weights")
    info.add_argument("model", metavar="NAME|DIR")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..errors import ModelError
    from ..modelstore import file_sha256, find_model, list_models, user_models_dir

    if args.action == "list":
        models = list_models()
        if not models:
            print(f"no models installed (user folder: {user_models_dir()})")
            return 0
        rows = [(m.name, m.modality, m.summary()["stage1"], str(m.path)) for m in models]
        widths = [max(len(row[i]) for row in rows + [("name", "modality", "stage1", "path")]) for i in range(4)]
        for row in [("name", "modality", "stage1", "path")] + rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        return 0
    if args.action == "info":
        info = find_model(args.model)
        weights = info.path / info.metadata["weights"].get("file", "weights.safetensors")
        if not weights.is_file():
            raise ModelError(f"{weights}: weights file missing")
        status = "ok" if file_sha256(weights) == info.sha256 else "MISMATCH (corrupt or replaced file)"
        print(json.dumps(info.metadata, indent=2))
        print(f"weights: {weights} ({weights.stat().st_size / 2**20:.1f} MiB), sha256 {status}")
        return 0 if status == "ok" else ModelError.exit_code
    raise ValueError(f"unknown action {args.action!r}")
