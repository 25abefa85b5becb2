"""CPU threads of a run: PyTorch's intra-op pool and ITK's (pre-alignment, resampling).

Default: ``OMP_NUM_THREADS`` when set (a cluster job's allocation), else every core the
process may use. Both libraries get the same number, so ``--threads 2`` means two busy
cores, not two for PyTorch plus all of them for ITK.
"""

from __future__ import annotations

import os

import SimpleITK as sitk
import torch

from .errors import InputError

__all__ = ["default_threads", "set_threads"]


def default_threads() -> int:
    """``OMP_NUM_THREADS`` if it is a positive integer, else the cores this process may use."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads in PyTorch and ITK (None: :func:`default_threads`).

    Returns:
        The number set.

    Raises:
        InputError: ``threads`` below 1.
    """
    count = default_threads() if threads is None else threads
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InputError(f"threads must be a positive integer, got {threads!r}")
    torch.set_num_threads(count)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    return count
