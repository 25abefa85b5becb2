"""``rbg models list|info NAME|import-published CKPT...``: the installed models, their cards,
and the import of the authors' published RbG / RegistFormer checkpoints."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="list installed models, show one model's card, or import the published checkpoints",
        description="Models are folders with model.json and weights.safetensors, found in $RBG_MODELS_DIR (default ~/.RegisterByGeneration/models) and in the bundled Resources/Models.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="list installed models")
    info = actions.add_parser("info", help="show a model's card (model.json) and check its weights")
    info.add_argument("model", metavar="NAME|DIR")
    published = actions.add_parser(
        "import-published",
        help="convert the authors' published RbG / RegistFormer .ckpt files into a model folder",
        description=(
            "Reads the published Lightning checkpoints without executing anything from them (Stage 1: "
            "PAdaIN_synthesis.ckpt or munit_synthesis_epoch98.ckpt; registration: pretrained_Voxelmorph.ckpt or "
            "Voxelmorph_2D_CT_SynCT.ckpt; Stage 2: RbG_synthesis.ckpt or proposed_weight_2.ckpt), checks every key "
            "and shape, and writes model.json + weights.safetensors. See docs/import-published.md."
        ),
    )
    published.add_argument("checkpoints", nargs="+", metavar="CKPT", help="the published .ckpt files, in any order")
    published.add_argument("--name", help="model name (default published-rbg or published-registformer)")
    published.add_argument("--output", metavar="DIR", help="model folder to write (default: the user model folder / NAME)")
    published.add_argument("--force", action="store_true", help="replace an existing model folder")
    published.add_argument("--modality", choices=("mr", "cbct"), default="mr", help="input modality (the published models are MR; default mr)")
    published.add_argument("--pixel-spacing", type=float, default=1.25, metavar="MM",
                           help="in-plane spacing of the model canvas in mm (default 1.25; 0: each input's own)")  # fmt: skip
    published.add_argument("--slice-orientation", choices=("transposed", "canonical"), default="transposed",
                           help="published slices vs our axial slices (default transposed: rows right-left, columns anterior-posterior)")  # fmt: skip
    published.add_argument("--heads", type=int, default=2, help="DACA heads, not recorded in the files (published 2)")
    published.add_argument("--window", type=int, default=28, help="DACA window P, not recorded in the files (published 28)")
    published.add_argument("--integration-steps", type=int, default=7, help="VoxelMorph scaling-and-squaring steps (published 7)")
    published.add_argument("--noise", action="store_true", help="keep the published Stage 1 noise (random outputs; default off)")
    published.add_argument("--use-separate-on-mismatch", action="store_true",
                           help="when a Stage 2 file's embedded copies differ from the separate files, use the separate ones (as the authors' code does) instead of refusing")  # fmt: skip
    return parser


def run(args: argparse.Namespace) -> int:
    from ..errors import ModelError
    from ..modelstore import file_sha256, find_model, list_models, user_models_dir

    if args.action == "list":
        models = list_models()
        if not models:
            print(f"no models installed (user folder: {user_models_dir()})")
            return 0
        header = ("name", "method", "modality", "stage1", "path")
        rows = [(m.name, m.method, m.modality, m.summary()["stage1"], str(m.path)) for m in models]
        widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
        for row in [header] + rows:
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
    if args.action == "import-published":
        from ..published import import_published

        info = import_published(
            args.checkpoints,
            output=args.output,
            name=args.name,
            modality=args.modality,
            heads=args.heads,
            window=args.window,
            integration_steps=args.integration_steps,
            slice_orientation=args.slice_orientation,
            pixel_spacing=args.pixel_spacing or None,
            noise=args.noise,
            use_separate_on_mismatch=args.use_separate_on_mismatch,
            force=args.force,
        )
        for source in info.metadata["provenance"]["sources"]:
            print(f"{source['kind']}: {source['path']} (sha256 {source['sha256'][:12]}…)")
        print(f"imported {info.name} ({info.metadata['architecture']['source']}, pseudo-CT from {info.pseudo_ct_output}) into {info.path}")
        return 0
    raise ValueError(f"unknown action {args.action!r}")
