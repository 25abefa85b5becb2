"""Options shared by the sub-commands that run a model: device, precision, CPU threads."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_method_arguments", "add_compute_arguments", "compute_options"]

_PRECISIONS = ("auto", "float32", "bfloat16", "float16")  # pipeline.PRECISIONS, without importing torch


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """``--method`` and ``--model``."""
    from ..runner import METHODS  # torch-free, so --help stays fast

    parser.add_argument(
        "--method", choices=METHODS, metavar="NAME",
        help=f"how the pseudo-CT is made: {', '.join(METHODS)} (rbg methods describes them; default: the model's own method, "
        "that is rbg for the bundled models)",
    )  # fmt: skip
    parser.add_argument("--model", metavar="NAME|DIR", help="installed model name or model folder (default: the bundled model of --method and --modality; "
                        "rigid, syn and elastix take none)")  # fmt: skip


def add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--precision`` and ``--threads``."""
    parser.add_argument("--device", default="auto", help="auto (CUDA, else the CPU), cpu, cuda, cuda:N or mps (opt-in, unverified) (default: auto)")
    parser.add_argument(
        "--precision", choices=_PRECISIONS, default="auto",
        help="arithmetic of the networks' convolutions: auto (mixed bfloat16/float16 on CUDA, bfloat16 on a CPU with native bfloat16, float32 elsewhere), "
        "float32, bfloat16 or float16 (inputs, flows and the pseudo-CT are float32 in every case; default: auto)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=_positive_int, metavar="N",
        help="CPU threads for the networks and the pre-alignment (default: OMP_NUM_THREADS if set, else all cores)",
    )  # fmt: skip


def compute_options(args: argparse.Namespace) -> dict[str, Any]:
    """Set the thread count; return the ``device``, ``precision`` and ``threads`` keywords of :class:`~..pipeline.Pipeline`."""
    from ..threads import set_threads

    threads = set_threads(args.threads)
    return {"device": args.device, "precision": args.precision, "threads": threads}
