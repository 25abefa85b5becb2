"""The ``rbg`` command: one sub-module per sub-command, each with ``add_parser`` and ``run``.

Heavy imports (torch, SimpleITK) happen inside the sub-commands, so ``rbg --help`` is
instant. Errors a user can act on (:class:`~RegisterByGenerationLib.errors.RbgError`)
print one line, ``rbg: error: ...``, and exit with their class's status
(:data:`~RegisterByGenerationLib.errors.EXIT_CODES`); usage errors exit with 2, SIGINT
with 130 and SIGTERM with 143, after the same clean-up as a cancel (nothing written).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from .. import __version__
from ..errors import Cancelled, RbgError

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

#: Sub-command name -> module under ``RegisterByGenerationLib.cli``.
SUBCOMMANDS = {
    "demo": "demo",
    "run": "run",
    "batch": "batch",
    "evaluate": "evaluate",
    "phantom": "phantom",
    "train": "train",
    "models": "models",
    "methods": "methods",
    "benchmark": "benchmark",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rbg",
        description=(
            "Register by Generation: generate a pseudo-CT aligned with an MR or CBCT, "
            "keeping the texture of the patient's own (misaligned) reference CT."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        sub = module.add_parser(commands, name)
        sub.set_defaults(handler=module.run)
    return parser


class Terminated(BaseException):
    """SIGTERM arrived (a cluster's time limit, ``kill``): unwinds like Ctrl-C, so every
    ``except BaseException`` clean-up runs and no half-written output stays."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rbg``; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="rbg: %(levelname)s: %(message)s",
    )
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return int(args.handler(args) or 0)
    except Cancelled as error:
        print(f"rbg: cancelled: {error}", file=sys.stderr)
        return Cancelled.exit_code
    except RbgError as error:
        print(f"rbg: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("rbg: interrupted; nothing was written", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print("rbg: terminated; nothing was written", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
