"""``rbg train``: self-supervised training of the three phases, and export of a run.

::

    rbg train stage1|registration|stage2|all --data DIR --out RUN [--config FILE] [--preset P]
              [--resume] [--device D] [--modality mr|cbct] [--vgg-weights FILE]
    rbg train all ... --export MODEL_DIR --name NAME
    rbg train export RUN -o MODEL_DIR --name NAME

Multi-GPU: ``torchrun --nproc_per_node N -m RegisterByGenerationLib train all ...``.
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["add_parser", "run"]

_PHASE_HELP = {
    "stage1": "train Stage 1 (synthesis with PAdaIN): PatchNCE + contextual + LSGAN",
    "registration": "train the registration network on (frozen Stage 1 output, reference) pairs",
    "stage2": "train Stage 2 (DACA refinement) with Stage 1 and registration frozen",
    "all": "train stage1, registration and stage2 in order (optionally export the model)",
}


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="train the networks self-supervised on paired scans (SynthRAD2023 layout) or export a run",
        description=(
            "Self-supervised training of Register by Generation: no aligned CT is needed. DATA holds one "
            "folder per patient: mr.nii.gz or cbct.nii.gz, ct.nii.gz (the misaligned reference CT) and "
            "mask.nii.gz (body mask on the input grid). See docs/training.md."
        ),
    )
    phases = parser.add_subparsers(dest="phase", metavar="PHASE", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", required=True, metavar="DIR", help="dataset folder (SynthRAD2023 layout)")
    common.add_argument("--out", required=True, metavar="RUN", help="run folder: checkpoints, logs, cache (created)")
    common.add_argument("--config", metavar="FILE", help="training config JSON (any subset of the fields; see docs/training.md)")
    common.add_argument("--preset", choices=("tiny", "lite", "full"), help="base configuration (default: the run's, else lite; full = the published recipe, for a GPU)")
    common.add_argument("--modality", choices=("mr", "cbct"), help="input modality (default: from the config, else from the data)")
    common.add_argument("--vgg-weights", metavar="FILE", help="local torchvision VGG-19 state dict (ImageNet) for the feature losses; default: fixed random VGG-19")
    common.add_argument("--epochs", type=int, metavar="N", help="epochs of every phase (overrides the config)")
    common.add_argument("--seed", type=int, metavar="N", help="seed of the run (split, initialisation, crops)")
    common.add_argument("--resume", action="store_true", help="continue a phase from its last checkpoint (exactly)")
    common.add_argument("--device", default="auto", help="auto (CUDA, else the CPU), cpu, cuda, cuda:N or mps (opt-in, unverified) (default: auto)")
    common.add_argument("--threads", type=int, metavar="N", help="torch CPU threads per process (default: torch's choice; on a busy shared machine 1 is often fastest)")
    common.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    for phase, text in _PHASE_HELP.items():
        sub = phases.add_parser(phase, parents=[common], help=text, description=text)
        if phase == "all":
            sub.add_argument("--export", metavar="MODEL_DIR", help="after training, export the model directory here")
            sub.add_argument("--name", help="name of the exported model (with --export)")
    stn = phases.add_parser("stn-fusion", help="train the STN + early-fusion 3-D network (method stn-fusion), supervised on aligned CTs",
                            description="Train method stn-fusion (docs/training.md): 3-D patches of the cases' canvases, the "
                                        "target each case's ct_aligned.nii.gz.")  # fmt: skip
    stn.add_argument("--data", required=True, metavar="DIR", help="dataset folder (SynthRAD2023 layout, with ct_aligned.nii.gz)")
    stn.add_argument("--out", required=True, metavar="RUN", help="run folder: checkpoints, log, cache (created)")
    stn.add_argument("--config", metavar="FILE", help="config JSON (any subset of the fields; e.g. Resources/Training/stn-fusion-cbct.json)")
    stn.add_argument("--no-stn", dest="stn", action="store_false", default=None, help="the paper's MM ablation: the same U-Net without the spatial transformer")
    dual = phases.add_parser("dual-similarity", help="train the dual-similarity registration network (method dual-similarity) on pre-aligned MR/CT pairs",
                             description="Train method dual-similarity (docs/training.md): the field from the input MR and the reference CT, "
                                         "scored within each modality against the case's ct_aligned.nii.gz and mr_reference.nii.gz "
                                         "(rbg phantom --reference-mr writes both).")  # fmt: skip
    dual.add_argument("--data", required=True, metavar="DIR", help="dataset folder (SynthRAD2023 layout, with ct_aligned.nii.gz and mr_reference.nii.gz)")
    dual.add_argument("--out", required=True, metavar="RUN", help="run folder: checkpoints, log, cache (created)")
    dual.add_argument("--config", metavar="FILE", help="config JSON (any subset of the fields; e.g. Resources/Training/dual-similarity-mr.json)")
    gan = phases.add_parser("mr-gan", help="train MR-GAN (methods mr-gan and registration-by-synthesis): MR<->CT synthesis from paired and unpaired data",
                            description="Train method mr-gan (docs/training.md): both synthesis networks on 2-D crops; --variant paired "
                                        "(pix2pix), unpaired (CycleGAN) or combined (MR-GAN, the default).")  # fmt: skip
    gan.add_argument("--data", required=True, metavar="DIR", help="dataset folder (SynthRAD2023 layout; paired cases need ct_aligned.nii.gz)")
    gan.add_argument("--out", required=True, metavar="RUN", help="run folder: checkpoints, log, cache (created)")
    gan.add_argument("--config", metavar="FILE", help="config JSON (any subset of the fields; e.g. Resources/Training/mr-gan-mr.json)")
    gan.add_argument("--variant", choices=("paired", "unpaired", "combined"), help="which of the paper's systems (overrides the config)")
    for sub in (stn, dual, gan):
        sub.add_argument("--epochs", type=int, metavar="N", help="epochs (overrides the config)")
        sub.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint (exactly)")
        sub.add_argument("--device", default="auto", help="auto (CUDA, else the CPU), cpu, cuda or cuda:N (default: auto)")
        sub.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    export = phases.add_parser("export", help="write a trained run as a model directory (model.json + weights.safetensors)")
    export.add_argument("run_dir", metavar="RUN", help="the training run folder")
    export.add_argument("-o", "--output", required=True, metavar="MODEL_DIR", help="model directory to write (replaced if it exists)")
    export.add_argument("--name", required=True, help="model name")
    export.add_argument("--checkpoint", choices=("best", "last"), default="best", help="Stage 2 checkpoint to export (default: best)")
    export.add_argument("--description", help="one-line description for `rbg models list`")
    export.add_argument("--pseudo-ct-output", choices=("stage1", "stage2"), default="stage2",
                        help="which output is the pseudo-CT: stage2 (RbG) or stage1 when validation shows it better (default: stage2)")
    export.add_argument("--valid-input-spacing", nargs=4, type=float, metavar=("IN_LO", "IN_HI", "SLICE_LO", "SLICE_HI"),
                        help="in-plane and slice spacings (mm) the model was validated on; runs outside them warn in report.json")  # fmt: skip
    export.add_argument("--test-time-flip", action="store_true",
                        help="with --pseudo-ct-output stage1: the pipeline averages Stage 1 with its left-right mirror (Stage 1 runs twice per slice)")  # fmt: skip
    return parser


def _config(args: argparse.Namespace):
    """The run's config when the run exists and nothing overrides it; else file/preset + options.

    The modality comes from ``--modality``, else the config file, else the data.
    """
    from pathlib import Path

    from ..errors import InputError
    from ..training import TrainingConfig, find_cases, load_config, read_run
    from ..training.config import read_config_file

    overrides = {"modality": args.modality, "vgg_weights": args.vgg_weights, "seed": args.seed}
    if (Path(args.out) / "run.json").is_file() and not any([args.config, args.preset, args.epochs, *overrides.values()]):
        return TrainingConfig.from_dict(read_run(args.out)["config"])
    data = read_config_file(args.config) if args.config else {}
    if overrides["modality"] is None and "modality" not in data:
        overrides["modality"], _ = find_cases(args.data)
    config = load_config(args.config, preset=args.preset, **overrides)
    if args.epochs is not None:
        if args.epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {args.epochs}")
        for phase in ("stage1", "registration", "stage2"):
            config.phase(phase).epochs = args.epochs
    return config


def run(args: argparse.Namespace) -> int:
    logging.getLogger("RegisterByGenerationLib.training").setLevel(logging.INFO)
    if args.phase in ("stn-fusion", "dual-similarity", "mr-gan"):
        return _train_own_method(args)
    if args.phase == "export":
        from ..methods.dual_similarity.training import export_dual_similarity, is_dual_similarity_run
        from ..methods.mr_gan.training import export_mr_gan, is_mr_gan_run
        from ..methods.stn_fusion.training import export_stn_fusion, is_stn_fusion_run
        from ..training import export_run

        spacing = args.valid_input_spacing
        valid = None if spacing is None else {"in_plane": spacing[:2], "slice": spacing[2:]}
        if is_stn_fusion_run(args.run_dir):
            info = export_stn_fusion(args.run_dir, args.output, name=args.name, checkpoint=args.checkpoint, description=args.description,
                                     valid_input_spacing_mm=valid)  # fmt: skip
            print(f"model {info.name!r} (method stn-fusion) written to {info.path}", file=sys.stderr)
            return 0
        if is_dual_similarity_run(args.run_dir):
            info = export_dual_similarity(args.run_dir, args.output, name=args.name, checkpoint=args.checkpoint, description=args.description)
            print(f"model {info.name!r} (method dual-similarity) written to {info.path}", file=sys.stderr)
            return 0
        if is_mr_gan_run(args.run_dir):
            info = export_mr_gan(args.run_dir, args.output, name=args.name, checkpoint=args.checkpoint, description=args.description)
            print(f"model {info.name!r} (methods mr-gan and registration-by-synthesis) written to {info.path}", file=sys.stderr)
            return 0
        info = export_run(args.run_dir, args.output, name=args.name, checkpoint=args.checkpoint, description=args.description,
                          pseudo_ct_output=args.pseudo_ct_output, valid_input_spacing_mm=valid, test_time_flip=args.test_time_flip)  # fmt: skip
        print(f"model {info.name!r} written to {info.path}", file=sys.stderr)
        return 0

    from ..errors import InputError
    from ..training import Trainer, export_run
    from ..training.distributed import shutdown

    if args.phase == "all" and bool(args.export) != bool(args.name):
        raise InputError("--export and --name go together")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    config = _config(args)
    trainer = Trainer(config, args.data, args.out, device=args.device, progress=args.progress)
    try:
        results = trainer.train_all(resume=args.resume) if args.phase == "all" else [trainer.train(args.phase, resume=args.resume)]
        if trainer.context.is_main:
            for result in results:
                value = "n/a" if result.best_value is None else f"{result.best_value:.4g}"
                print(f"{result.phase}: {result.epochs} epochs in {result.wall_time_s:.0f} s; best {result.best_metric} {value} at epoch {result.best_epoch}", file=sys.stderr)
            if args.phase == "all" and args.export:
                info = export_run(args.out, args.export, name=args.name)
                print(f"model {info.name!r} written to {info.path}", file=sys.stderr)
    finally:
        shutdown(trainer.context)
    return 0


def _train_own_method(args: argparse.Namespace) -> int:
    """``rbg train stn-fusion``, ``dual-similarity`` and ``mr-gan``: those methods' own trainers."""
    import dataclasses

    import torch

    from ..errors import InputError

    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.epochs is not None and args.epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {args.epochs}")
    if args.phase == "stn-fusion":
        from ..methods.stn_fusion.training import load_training_config, train_stn_fusion as train
    elif args.phase == "dual-similarity":
        from ..methods.dual_similarity.training import load_training_config, train_dual_similarity as train
    else:
        from ..methods.mr_gan.training import load_training_config, train_mr_gan as train
    config = load_training_config(args.config, epochs=args.epochs, variant=getattr(args, "variant", None))
    if getattr(args, "stn", None) is False:
        config.architecture = dataclasses.replace(config.architecture, stn=False)
    summary = train(config, args.data, args.out, device=args.device, resume=args.resume)
    print(f"{args.phase}: {summary['epoch']} epochs in {summary['wall_time_s']:.0f} s; best val_mae {summary['best_value']:.4g} at epoch {summary['best_epoch']}", file=sys.stderr)
    return 0
