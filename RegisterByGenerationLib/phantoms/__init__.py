"""Synthetic pelvis phantoms with ground truth (the ``rbg phantom`` command).

Each case is an MR or CBCT input, a misaligned reference CT of the same phantom patient
on its own grid, and the truth on the input grid: the aligned CT, the bone labels and
the body mask, plus the true misalignment in ``phantom.json``. See :mod:`.dataset`.

Modules: :mod:`.shapes` (implicit shapes), :mod:`.anatomy` (the pelvis and its
variation), :mod:`.contrast` (tissue intensities, MR and CBCT effects),
:mod:`.render` (painting at points), :mod:`.deformation` (the true misalignment),
:mod:`.dataset` (cases and files).
"""

from __future__ import annotations

from .dataset import MODALITIES, PHANTOM_VERSION, PhantomCase, case_id, generate_case, write_case, write_phantom_dataset

__all__ = [
    "MODALITIES",
    "PHANTOM_VERSION",
    "PhantomCase",
    "case_id",
    "generate_case",
    "write_case",
    "write_phantom_dataset",
]
