"""``rbg benchmark``: RbG against rigid, ANTs SyN and elastix B-spline on cases with truth."""

from __future__ import annotations

import argparse
import time

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
Compare, on the same cases with ground truth, each method's CT in the input's frame:
rigid (our rigid pre-alignment of the reference CT), syn (ANTsPy SyN, Mattes MI
defaults), elastix (itk-elastix rigid + B-spline, AdvancedMattesMutualInformation,
final grid 40 mm: the default 10 mm fails in the pelvis), stage1 (our Stage 1 alone),
rbg (the full pipeline), registformer (only when a model with an adain Stage 1 is
installed), stn-fusion (the STN + early-fusion 3-D network), dual-similarity (the
dual-similarity registration network; its folded fraction too), mr-gan (MR-GAN's MR->CT
synthesis alone) and registration-by-synthesis (MR-GAN's CT->MR synthesis, then MR-MR
demons; its folded fraction too), each when a model is installed. DIR holds case folders in the SynthRAD layout with truth, as written by
`rbg phantom` or `rbg benchmark --make-real-case`. Writes OUT_DIR/results.csv,
results.md (mean ± sd per method, and every case) and figure.png. Each method runs in
its own process with --threads threads; wall time excludes model loading; peak memory
is the growth of peak RSS during the method. syn and elastix need the benchmark extra:
pip install -e .[benchmark]
"""


#: Same as ``RegisterByGenerationLib.benchmark.METHODS`` (kept here so ``rbg --help`` stays instant).
METHODS = ("input", "rigid", "syn", "elastix", "stage1", "rbg", "refined", "registformer", "stn-fusion", "dual-similarity", "mr-gan",
           "registration-by-synthesis")  # fmt: skip


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help="compare RbG with rigid, ANTs SyN and elastix on cases with ground truth",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", metavar="DIR", help="folder of case folders (searched recursively)")
    parser.add_argument("-o", "--output", metavar="OUT_DIR", help="output folder (created if needed)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD",
                        help=f"methods to run (default: all of {', '.join(METHODS)})")
    parser.add_argument("--cases", type=int, metavar="N", help="first N cases of each kind and modality (default: all)")
    parser.add_argument("--threads", type=int, default=2, metavar="N", help="threads of every method (default: 2)")
    parser.add_argument("--mr-model", metavar="MODEL", help="model for MR cases (default: the default MR model)")
    parser.add_argument("--cbct-model", metavar="MODEL", help="model for CBCT cases (default: the default CBCT model)")
    for method in ("stn-fusion", "dual-similarity", "mr-gan"):
        parser.add_argument(f"--{method}-model", metavar="MODEL", help=f"model of method {method} (default: its default model of each modality)"
                            + (" and of registration-by-synthesis, which runs MR-GAN models" if method == "mr-gan" else ""))
    parser.add_argument("--seed", type=int, default=0, help="seed of every method's sampling (default: 0)")
    parser.add_argument("--keep-images", action="store_true", help="also write every output image to OUT_DIR/images")
    parser.add_argument("--make-real-case", metavar="CT", nargs="?", const="../shared/data/example_ct_pelvis.nii.gz",
                        help="instead: build the real-anatomy case from CT (a CBCT- or MR-like input, a smoothly deformed "
                             "reference, the CT as truth) and write it to OUT_DIR/<id>/ (default CT: %(const)s)")
    parser.add_argument("--real-modality", choices=("cbct", "mr"), default="cbct",
                        help="with --make-real-case: the simulated input, cbct (case 2RC<seed>) or a T2-like mr (1RC<seed>) (default: cbct)")
    parser.add_argument("--merge", nargs="+", metavar="CSV",
                        help="instead: merge results.csv files of earlier runs into OUT_DIR/results.csv and results.md")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError

    if args.output is None:
        raise InputError("-o/--output is required")
    if args.make_real_case is not None:
        from ..io import read_image
        from ..simulate import make_real_case, write_real_case

        case = make_real_case(read_image(args.make_real_case), seed=args.seed, modality=args.real_modality)
        folder = write_real_case(case, args.output)
        print(f"rbg benchmark: wrote the real-anatomy case {folder} (mean deformation {case.parameters['deformation']['mean_displacement_mm']:.1f} mm)")
        return 0
    if args.merge:
        from ..benchmark import read_results, write_results
        from ..io import check_writable_dir

        rows = read_results(args.merge)
        write_results(rows, check_writable_dir(args.output))
        print(f"rbg benchmark: merged {len(rows)} rows -> {args.output}/results.csv, results.md")
        return 0
    if args.data is None:
        raise InputError("--data is required (or use --make-real-case)")
    from ..benchmark import run_benchmark

    models = {key: value for key, value in (("mr", args.mr_model), ("cbct", args.cbct_model)) if value}
    given = (("stn-fusion", args.stn_fusion_model), ("dual-similarity", args.dual_similarity_model), ("mr-gan", args.mr_gan_model),
             ("registration-by-synthesis", args.mr_gan_model))  # fmt: skip
    method_models = {key: value for key, value in given if value}
    start = time.perf_counter()
    rows = run_benchmark(args.data, args.output, methods=tuple(args.methods), cases=args.cases, threads=args.threads,
                         models=models, method_models=method_models, seed=args.seed, keep_images=args.keep_images,
                         progress=lambda line: print(line, flush=True))
    print(f"rbg benchmark: {len(rows)} rows in {time.perf_counter() - start:.0f} s -> {args.output}/results.csv, results.md, figure.png")
    return 0
