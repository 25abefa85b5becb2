"""``rbg methods``: the methods ``--method`` chooses from, with their families and default models."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help="list the methods --method chooses from (RbG, RegistFormer, STN fusion, classical registrations)",
                                 description="Each method makes the pseudo-CT its own way; see docs/method.md.")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from ..methods import METHODS
    from ..modelstore import list_models

    installed = {info.name for info in list_models()}
    for name, cls in METHODS.items():
        if not cls.needs_model:
            model = "no model"
        elif cls.default_models:
            model = ", ".join(f"{modality}: {model}" + ("" if model in installed else " (not installed)")
                              for modality, model in cls.default_models.items())  # fmt: skip
        else:
            model = "no default model (--model)"
        print(f"{name:13} {cls.family:15} {model}\n{'':13} {cls.summary}")
    return 0
