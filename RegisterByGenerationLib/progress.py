"""Progress reporting: a terminal bar for people, JSON lines for programs.

Every long-running function takes ``progress: ProgressCallback | None``, called as
``progress(fraction, stage, message)`` with ``fraction`` in [0, 1] never decreasing.
``rbg run --progress json`` prints one JSON object per line on stdout
(``{"fraction": 0.42, "stage": "generate", "message": "slices 20-27 of 48"}``), which is
the contract the Slicer module parses (:func:`parse_progress_line`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TextIO

__all__ = ["ProgressCallback", "JsonLinesProgress", "TerminalProgress", "SubProgress", "parse_progress_line", "make_progress"]

ProgressCallback = Callable[[float, str, str], None]


class JsonLinesProgress:
    """Writes ``{"fraction", "stage", "message"}`` objects, one per line, flushed at once."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, fraction: float, stage: str, message: str = "") -> None:
        record = {"fraction": round(float(fraction), 4), "stage": stage, "message": message}
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Nothing to release; present so all reporters close alike."""


class TerminalProgress:
    """A tqdm bar on stderr showing the current stage and message."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1000, file=stream or sys.stderr, bar_format="{l_bar}{bar}| {elapsed}<{remaining}", leave=True)

    def __call__(self, fraction: float, stage: str, message: str = "") -> None:
        self.bar.set_description_str(f"{stage}: {message}" if message else stage, refresh=False)
        self.bar.update(max(0, round(fraction * 1000) - self.bar.n))

    def close(self) -> None:
        self.bar.close()


class SubProgress:
    """Maps a sub-task's [0, 1] progress onto ``[start, end]`` of a parent callback."""

    def __init__(self, parent: ProgressCallback | None, start: float, end: float) -> None:
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"need 0 <= start <= end <= 1, got start={start}, end={end}")
        self.parent, self.start, self.end = parent, start, end

    def __call__(self, fraction: float, stage: str, message: str = "") -> None:
        if self.parent is not None:
            clipped = min(max(fraction, 0.0), 1.0)
            self.parent(self.start + (self.end - self.start) * clipped, stage, message)


def parse_progress_line(line: str) -> tuple[float, str, str] | None:
    """``(fraction, stage, message)`` from one ``--progress json`` line; None for other lines."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
        return float(record["fraction"]), str(record["stage"]), str(record.get("message", ""))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def make_progress(mode: str) -> JsonLinesProgress | TerminalProgress | None:
    """Reporter for ``--progress auto|bar|json|none`` (auto: a bar when stderr is a terminal)."""
    if mode == "json":
        return JsonLinesProgress()
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        return TerminalProgress()
    if mode in ("none", "auto"):
        return None
    raise ValueError(f"progress mode must be auto, bar, json or none, got {mode!r}")
