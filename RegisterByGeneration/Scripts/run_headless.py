"""Generate a pseudo-CT in a headless Slicer, through the module's logic.

Usage (``--`` keeps Slicer from reading the options that follow as its own)::

    Slicer --no-splash --no-main-window --python-script run_headless.py -- \\
        --input mr.nii.gz --reference ct.nii.gz --output pseudo_ct.nrrd \\
        [--bones bones.seg.nrrd] [--modality MR|CBCT] [--model NAME|DIR] \\
        [--device auto|cuda|cpu] [--bone-method auto|totalsegmentator|threshold|none] [--no-prealign]

Loads the two volumes into the scene, runs ``RegisterByGenerationLogic.process`` with
``waitForCompletion=True``, saves the pseudo-CT (and the bone segmentation when
``--bones`` is given), and exits Slicer with status 0 on success, 1 when the processing
or saving failed, 2 for bad arguments or unreadable inputs. Without ``slicer.util.exit``
a ``--python-script`` run would leave Slicer running, so every path ends in it.
"""

import argparse
import logging
import os
import sys


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="run_headless.py", description="Register by Generation in a headless 3D Slicer.")
    parser.add_argument("--input", required=True, help="MR or CBCT volume file")
    parser.add_argument("--reference", required=True, help="reference CT of the same patient (need not be aligned)")
    parser.add_argument("--output", required=True, help="pseudo-CT file to write (.nrrd, .nii.gz, ...)")
    parser.add_argument("--bones", help="bone segmentation file to write (.seg.nrrd)")
    parser.add_argument("--modality", default="MR", type=str.upper, choices=("MR", "CBCT"))
    parser.add_argument("--model", help="installed model name or model folder (default: the bundled model)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--bone-method", default="auto", choices=("auto", "totalsegmentator", "threshold", "none"))
    parser.add_argument("--no-prealign", dest="prealign", action="store_false", help="skip the rigid pre-alignment")
    if argv and argv[0] == "--":
        argv = argv[1:]
    args = parser.parse_args(argv)
    if args.bones and args.bone_method == "none":
        parser.error("--bones needs a bone method other than 'none'")
    return args


def main(argv):
    """Returns the exit status; never raises."""
    import slicer

    try:
        args = parse_arguments(argv)
    except SystemExit as stop:  # argparse already printed the usage and the problem
        return 2 if stop.code else 0
    for path in (args.input, args.reference):
        if not os.path.exists(path):
            print(f"run_headless: error: {path}: file not found", file=sys.stderr)
            return 2
    for path in (args.output, args.bones):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            print(f"run_headless: error: {path}: output folder does not exist", file=sys.stderr)
            return 2
    try:
        inputVolume = slicer.util.loadVolume(args.input)
        referenceVolume = slicer.util.loadVolume(args.reference)
    except RuntimeError as error:
        print(f"run_headless: error: cannot load the inputs: {error}", file=sys.stderr)
        return 2

    import RegisterByGeneration

    def report(fraction, stage, message):
        print(f"{fraction * 100:5.1f}%  {stage}: {message}", flush=True)

    logic = RegisterByGeneration.RegisterByGenerationLogic()
    try:
        result = logic.process(inputVolume, referenceVolume, modality=args.modality, model=args.model, device=args.device,
                               prealign=args.prealign, boneMethod=args.bone_method, waitForCompletion=True, progressCallback=report)
    except (ValueError, RuntimeError) as error:
        print(f"run_headless: error: {error}", file=sys.stderr)
        return 1
    saved = [(result.outputVolume, args.output)]
    if args.bones:
        if result.boneSegmentation is None:
            print("run_headless: error: no bone segmentation was produced (see the log above)", file=sys.stderr)
            return 1
        saved.append((result.boneSegmentation, args.bones))
    for node, path in saved:
        if not slicer.util.saveNode(node, path):
            print(f"run_headless: error: {path}: could not be written", file=sys.stderr)
            return 1
        print(f"wrote {path}", flush=True)
    print(f"done in {result.seconds:.1f} s on {result.device or 'unknown device'}", flush=True)
    return 0


if __name__ == "__main__":
    import slicer

    try:
        status = main(sys.argv[1:])
    except BaseException:  # an unexpected error must still end the Slicer process with a failure
        logging.exception("run_headless: unexpected error")
        status = 1
    slicer.util.exit(status)
