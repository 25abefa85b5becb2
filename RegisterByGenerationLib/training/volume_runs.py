"""What the 3-D methods' training runs share (``rbg train stn-fusion``, ``dual-similarity``).

A run folder holds ``run.json`` (``{"method", "config", "data"}``), ``last.pt`` and
``best.pt``, ``log.csv`` (one row per epoch) and ``cache/`` (the preprocessed cases).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["crop3d", "append_csv", "load_config_file", "run_method"]


def crop3d(volume: np.ndarray, corner: tuple[int, int, int], size: tuple[int, ...], pad: float) -> np.ndarray:
    """``volume[corner : corner + size]``, padded with ``pad`` where it leaves the volume."""
    out = np.full(size, pad, dtype=np.float32)
    src = [slice(max(c, 0), min(c + s, n)) for c, s, n in zip(corner, size, volume.shape)]
    dst = [slice(a.start - c, a.stop - c) for a, c in zip(src, corner)]
    if all(a.stop > a.start for a in src):
        out[tuple(dst)] = volume[tuple(src)]
    return out


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append one epoch's row to ``log.csv`` (header on the first)."""
    new = not path.is_file()
    with open(path, "a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def load_config_file(cls: type, path: str | os.PathLike | None, **overrides: Any) -> Any:
    """``cls``'s defaults, then the JSON file at ``path`` (unknown keys refused), then ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: cannot read the configuration ({error})") from error
    data.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(data) - set(cls.__dataclass_fields__))
    if unknown:
        raise InputError(f"{path or 'config'}: unknown keys {', '.join(unknown)}")
    return cls(**data)


def run_method(run_dir: str | os.PathLike) -> str | None:
    """The method a 3-D training run in ``run_dir`` trains (its ``run.json`` says), or None."""
    try:
        return json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8")).get("method")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
