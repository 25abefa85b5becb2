"""The ``rbg`` command: one sub-module per sub-command, each with ``add_parser`` and ``run``.

Heavy imports (torch, SimpleITK) happen inside the sub-commands, so ``rbg --help`` is
instant. Errors a user can act on (:class:`~RegisterByGenerationLib.errors.RbgError`)
print one line, ``rbg: error: ...``, and exit with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rbg``; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="rbg: %(levelname)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except Cancelled as error:
        print(f"rbg: cancelled: {error}", file=sys.stderr)
        return 130
    except RbgError as error:
        print(f"rbg: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rbg: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
