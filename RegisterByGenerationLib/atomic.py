"""Atomic file writing with the standard library only.

Kept free of NumPy and SimpleITK so that code running inside Slicer's own process (the
module, the runner, the model store) can use it without loading the engine.

Temporary files and folders are created with ``os.open``/``os.mkdir`` and the plain
permissions (0o666, 0o777), so the kernel applies the process's umask itself: reading the
umask means setting it, a race with every other thread (Slicer's included).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "fsync_file", "new_sibling_dir"]

_ATTEMPTS = 100


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success flush it to disk
    and rename it to ``path``, so a crash leaves either the old file or the new one.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith((".nii.gz", ".seg.nrrd")) else path.suffix
    tmp = _new_sibling(path, f".part{suffix}", lambda name: os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        yield tmp
        fsync_file(tmp)  # the data is on disk before the name points at it
        os.replace(tmp, path)
        if os.name == "posix":  # the rename itself (Windows cannot open a folder)
            _fsync(path.parent, os.O_RDONLY)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_sibling_dir(path: str | os.PathLike) -> Path:
    """A new, empty hidden folder beside ``path`` with the permissions of a plain
    ``mkdir`` (a staging folder that is renamed to ``path`` once complete)."""
    path = Path(path)
    return _new_sibling(path, "", lambda name: os.mkdir(name, 0o777))


def _new_sibling(path: Path, suffix: str, create) -> Path:
    for _ in range(_ATTEMPTS):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{path.parent}: no free temporary name after {_ATTEMPTS} attempts")


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s data to disk (opened read-write: Windows refuses read-only)."""
    _fsync(Path(path), os.O_RDWR)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
