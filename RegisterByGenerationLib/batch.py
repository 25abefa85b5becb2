"""Many cases in one go: every case folder of a SynthRAD2023-layout folder.

Each case gets the files of ``rbg run`` (:func:`~RegisterByGenerationLib.case.process_case`).
Layout (SynthRAD2023 Task 1 / Task 2, one anatomy folder)::

    DATA_DIR/<ID>/mr.nii.gz  or  cbct.nii.gz     the input
    DATA_DIR/<ID>/ct.nii.gz                      the reference CT
    DATA_DIR/<ID>/mask.nii.gz                    optional body mask (input grid)
    DATA_DIR/<ID>/ct_aligned.nii.gz              optional truth: the CT aligned with the input
    DATA_DIR/<ID>/bones.nii.gz                   optional truth: bone labels on the input grid

The model is loaded once. A case whose ``OUT_DIR/<ID>/pseudo_ct.nii.gz`` exists is
skipped (so an interrupted batch resumes where it stopped); a case that fails is recorded
and the batch goes on. ``OUT_DIR/summary.csv`` (rewritten atomically after every case)
has one row per case: status, seconds, the error if any, and the metrics that need no
truth (and MAE, PSNR, SSIM, bone Dice vs ``ct_aligned.nii.gz`` when present, bone Dice
per label vs ``bones.nii.gz``).

On a cluster, ``shard=(K, N)`` processes every N-th case starting at the K-th (of the
cases sorted by name), so an array job's N workers share one folder with no
coordination; each writes ``summary.shard-K-of-N.csv``, and :func:`merge_shards` joins
them into ``summary.csv`` once all have finished.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Cancelled, InputError, RbgError
from .io import atomic_path, check_writable_dir
from .progress import ProgressCallback, SubProgress
from .runner import BONE_METHODS

__all__ = [
    "Case",
    "CaseResult",
    "find_cases",
    "run_batch",
    "parse_shard",
    "shard_summary_file",
    "merge_shards",
    "write_summary",
    "read_summary",
    "SUMMARY_FILE",
    "SUMMARY_COLUMNS",
]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.csv"
#: Fixed leading columns of the summary; metric columns follow in :data:`_METRIC_ORDER`.
SUMMARY_COLUMNS = ("case", "status", "seconds", "error", "metrics_mask")
#: ``metrics_mask`` of a case without ``mask.nii.gz``: the metrics are inside this mask instead.
AUTOMATIC_MASK = "automatic: body mask of the pseudo-CT"
_METRIC_ORDER = ("mae", "psnr", "ssim", "bone_dice", "bone_hd95", "gradient_correlation", "nmi", "sharpness", "tv_z")
_INPUT_FILES = {"mr": "mr.nii.gz", "cbct": "cbct.nii.gz"}
REFERENCE_FILE = "ct.nii.gz"
TRUTH_FILE = "ct_aligned.nii.gz"
MASK_FILE = "mask.nii.gz"
TRUTH_BONES_FILE = "bones.nii.gz"
DONE_FILE = "pseudo_ct.nii.gz"


@dataclass(frozen=True)
class Case:
    """One case folder; ``truth``/``mask`` are None when the folder has none."""

    case_id: str
    input_path: Path
    reference_path: Path
    truth_path: Path | None = None
    mask_path: Path | None = None
    truth_bones_path: Path | None = None


@dataclass
class CaseResult:
    """One row of the summary. ``status`` is ``done``, ``skipped`` or ``failed``;
    ``metrics_mask`` says inside which mask the metrics were computed (empty: none)."""

    case_id: str
    status: str
    seconds: float = 0.0
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_mask: str = ""

    def row(self) -> dict[str, str]:
        values = {"case": self.case_id, "status": self.status, "seconds": f"{self.seconds:.2f}", "error": self.error, "metrics_mask": self.metrics_mask}
        values.update({name: _format_number(value) for name, value in self.metrics.items()})
        return values


def _format_number(value: float) -> str:
    return str(value) if isinstance(value, float) and not math.isfinite(value) else f"{value:.6g}"


def find_cases(data_dir: str | os.PathLike, modality: str | None = None) -> tuple[str, list[Case | CaseResult]]:
    """The case folders of ``data_dir``, sorted by name, and the modality.

    A sub-folder is a case when it holds an input (``mr.nii.gz``/``cbct.nii.gz``) or a
    ``ct.nii.gz``; other sub-folders (e.g. SynthRAD's ``overview``) are ignored. A case
    missing one of its two files comes back as a failed :class:`CaseResult`.

    Args:
        data_dir: the folder of case folders.
        modality: ``"mr"`` or ``"cbct"``; None infers it from the files present.

    Returns:
        ``(modality, cases)``.

    Raises:
        InputError: ``data_dir`` is not a folder, holds no case, holds both MR and CBCT
            inputs with ``modality`` None, or ``modality`` is unknown.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: not a folder")
    if modality is not None and modality not in _INPUT_FILES:
        raise InputError(f"modality must be 'mr' or 'cbct', got {modality!r}")
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if modality is None:
        found = {m for m, name in _INPUT_FILES.items() if any((f / name).exists() for f in folders)}
        if len(found) > 1:
            raise InputError(f"{data_dir}: has both mr.nii.gz and cbct.nii.gz cases; choose one with --modality")
        modality = found.pop() if found else "mr"
    input_name = _INPUT_FILES[modality]
    cases: list[Case | CaseResult] = []
    for folder in folders:
        input_path, reference_path = folder / input_name, folder / REFERENCE_FILE
        if not input_path.exists() and not reference_path.exists():
            continue
        missing = [p.name for p in (input_path, reference_path) if not p.exists()]
        if missing:
            cases.append(CaseResult(folder.name, "failed", error=f"{folder}: missing {' and '.join(missing)}"))
            continue
        optional = [folder / name for name in (TRUTH_FILE, MASK_FILE, TRUTH_BONES_FILE)]
        cases.append(Case(folder.name, input_path, reference_path, *(p if p.exists() else None for p in optional)))
    if not cases:
        raise InputError(f"{data_dir}: no case folders (<ID>/{input_name} with <ID>/{REFERENCE_FILE})")
    return modality, cases


def run_batch(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    modality: str | None = None,
    model: str | os.PathLike | None = None,
    method: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    prealign: bool = True,
    bones: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    on_case: Callable[[CaseResult], None] | None = None,
    shard: tuple[int, int] | None = None,
) -> list[CaseResult]:
    """Generate the pseudo-CT of every case of ``data_dir`` into ``out_dir/<ID>/``.

    Args:
        data_dir: folder of case folders (see the module docstring).
        out_dir: output root; ``out_dir/<ID>/`` gets the files of ``rbg run``.
        modality: ``"mr"``, ``"cbct"`` or None (inferred from the files).
        model, method, device, precision, threads, prealign: as for :class:`~RegisterByGenerationLib.pipeline.Pipeline`.
        bones: bone segmentation method, as ``rbg run --bones`` (``none`` skips it).
        progress: overall progress callback (each case gets an equal share).
        cancel: set it to stop after the current slice batch; the summary is written.
        on_case: called with each case's result as soon as it is known.
        shard: ``(K, N)``: only the cases ``K-1, K-1+N, K-1+2N, ...`` of the sorted list,
            summarised in ``out_dir/summary.shard-K-of-N.csv`` (see :func:`parse_shard`).

    Returns:
        One :class:`CaseResult` per case, in case order (also in ``out_dir/summary.csv``,
        or the shard's summary).

    Raises:
        InputError: no cases, or ``data_dir`` is unusable.
        ModelError: the model cannot be loaded, or ``bones="totalsegmentator"`` and it is
            not usable (nothing is processed).
        ValueError: unknown ``bones`` method.
        Cancelled: ``cancel`` was set (the summary of the cases so far is written first).
    """
    if bones not in BONE_METHODS:
        raise ValueError(f"bones must be one of {BONE_METHODS}, got {bones!r}")
    modality, cases = find_cases(data_dir, modality)
    if shard is not None:
        index, count = _check_shard(shard)
        cases = cases[index - 1 :: count]
    if bones == "totalsegmentator":  # fail once, before any case, rather than in every case
        from .bones.totalsegmentator import check_totalsegmentator

        check_totalsegmentator()
    out_dir = check_writable_dir(out_dir)
    summary_path = out_dir / (SUMMARY_FILE if shard is None else shard_summary_file(*shard))
    earlier = {row["case"]: row for row in read_summary(summary_path)} if summary_path.exists() else {}
    report = progress or (lambda fraction, stage, message="": None)
    pipeline = None
    results: list[CaseResult] = []
    try:
        for index, case in enumerate(cases):
            share = SubProgress(report, index / len(cases), (index + 1) / len(cases))
            if isinstance(case, CaseResult):
                result = case
            elif (out_dir / case.case_id / DONE_FILE).exists():
                result = _skipped(case.case_id, earlier.get(case.case_id))
            else:
                if pipeline is None:
                    from .pipeline import Pipeline

                    pipeline = Pipeline(model, method=method, modality=modality, device=device, precision=precision, threads=threads, prealign=prealign)
                result = _run_case(pipeline, case, out_dir / case.case_id, bones, share, cancel)
            results.append(result)
            share(1.0, "case", f"{result.case_id}: {result.status}")
            if on_case is not None:
                on_case(result)
            write_summary(results, summary_path)
    finally:
        if results:
            write_summary(results, summary_path)
    return results


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N, e.g. ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``) as ``(K, N)``."""
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise InputError(f"--shard must be K/N with whole numbers (e.g. 3/8), got {text!r}") from None
    return _check_shard((index, count))


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    index, count = shard
    if not 1 <= index <= count:
        raise InputError(f"--shard K/N needs 1 <= K <= N, got {index}/{count}")
    return index, count


def shard_summary_file(index: int, count: int) -> str:
    """The name of shard ``index`` of ``count``'s summary in OUT_DIR."""
    return f"summary.shard-{index}-of-{count}.csv"


def merge_shards(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, modality: str | None = None) -> list[dict[str, str]]:
    """Join the shards' summaries of ``out_dir`` into ``out_dir/summary.csv``.

    Every case of ``data_dir`` must have a row in exactly one shard summary, all of one
    shard count N; the rows come back (and are written) in case order.

    Raises:
        InputError: no shard summary, summaries of different N, a missing shard, or a
            case of ``data_dir`` that no shard (or more than one) has processed.
    """
    _, cases = find_cases(data_dir, modality)
    out_dir = Path(out_dir)
    found = {}
    for path in sorted(out_dir.glob("summary.shard-*-of-*.csv")):
        parts = path.name[len("summary.shard-") : -len(".csv")].split("-of-")
        if len(parts) == 2 and all(part.isdigit() for part in parts):
            found[int(parts[0]), int(parts[1])] = path
    if not found:
        raise InputError(f"{out_dir}: no shard summaries (summary.shard-K-of-N.csv) to merge")
    counts = sorted({count for _, count in found})
    if len(counts) > 1:
        raise InputError(f"{out_dir}: shard summaries of different shard counts ({', '.join(map(str, counts))}); remove the stale ones")
    missing = [str(k) for k in range(1, counts[0] + 1) if (k, counts[0]) not in found]
    if missing:
        raise InputError(f"{out_dir}: shards {', '.join(missing)} of {counts[0]} have no summary yet")
    rows: dict[str, dict[str, str]] = {}
    for path in found.values():
        for row in read_summary(path):
            if row.get("case") in rows:
                raise InputError(f"{path}: case {row['case']} is also in another shard's summary")
            rows[row["case"]] = row
    ids = [case.case_id for case in cases]
    absent = [case_id for case_id in ids if case_id not in rows]
    if absent:
        raise InputError(f"{out_dir}: cases {', '.join(absent)} of {data_dir} are in no shard summary (a shard still running or stopped early?)")
    merged = [rows[case_id] for case_id in ids]
    _write_rows(merged, out_dir / SUMMARY_FILE)
    return merged


def _skipped(case_id: str, earlier_row: dict[str, str] | None) -> CaseResult:
    """A case done in an earlier run keeps that run's seconds and metrics."""
    result = CaseResult(case_id, "skipped")
    if earlier_row:
        result.metrics_mask = earlier_row.get("metrics_mask") or ""
        try:
            result.seconds = float(earlier_row.get("seconds") or 0.0)
        except ValueError:
            result.seconds = 0.0
        for name, value in earlier_row.items():
            if name in SUMMARY_COLUMNS or value in ("", None):
                continue
            try:
                result.metrics[name] = float(value)
            except ValueError:
                logger.warning("%s: earlier %s value %r is not a number; dropped", case_id, name, value)
    return result


def _run_case(pipeline, case: Case, case_dir: Path, bones: str, progress: SubProgress, cancel: threading.Event | None) -> CaseResult:
    """Run one case with :func:`~RegisterByGenerationLib.case.process_case` (the same files
    as ``rbg run``); any error except a cancel becomes a failed result. A failed case
    writes nothing, so no ``pseudo_ct.nii.gz`` makes the next run skip it."""
    from .case import process_case
    from .io import read_image

    start = time.perf_counter()
    try:
        outputs = process_case(pipeline, case.input_path, case.reference_path, case_dir, bones=bones, progress=_prefixed(progress, case.case_id), cancel=cancel)
        bone_labels = outputs.bones.labels if outputs.bones is not None else None
        metrics, mask = _metrics(outputs.result.pseudo_ct, read_image(case.input_path), case, bone_labels)
    except Cancelled:
        raise
    except RbgError as error:
        return CaseResult(case.case_id, "failed", time.perf_counter() - start, error=str(error))
    except Exception as error:  # a bug or an unforeseen library error must not stop the batch
        logger.exception("case %s failed unexpectedly", case.case_id)
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return CaseResult(case.case_id, "failed", time.perf_counter() - start, error=f"{type(error).__name__}: {message}")
    return CaseResult(case.case_id, "done", time.perf_counter() - start, metrics=metrics, metrics_mask=mask)


def _prefixed(progress: SubProgress, case_id: str) -> ProgressCallback:
    def report(fraction: float, stage: str, message: str = "") -> None:
        progress(fraction, stage, f"{case_id}: {message}" if message else case_id)

    return report


def _metrics(pseudo_ct, input_image, case: Case, bone_labels=None) -> tuple[dict[str, float], str]:
    """Metrics without truth, plus truth metrics when the case has ``ct_aligned.nii.gz``
    (and per-bone Dice when it has ``bones.nii.gz`` and bones were segmented), and the
    mask they were computed in (the case's ``mask.nii.gz`` or :data:`AUTOMATIC_MASK`).

    A truth or mask that is not on the input's grid is left out with a warning; the case
    itself succeeded.
    """
    try:
        from .metrics import evaluate_images
    except ImportError:  # the metrics need scikit-image; the pseudo-CT is still valid
        logger.warning("metrics unavailable (cannot import RegisterByGenerationLib.metrics)")
        return {}, ""
    from .io import read_image, same_geometry

    extra = {}
    truths = [("truth", case.truth_path), ("mask", case.mask_path)]
    if bone_labels is not None:
        truths.append(("truth_bones", case.truth_bones_path))
    for key, path in truths:
        if path is None:
            continue
        try:
            image = read_image(path, validate=key == "truth")
        except RbgError as error:
            logger.warning("left out of the metrics: %s", error)
            continue
        if not same_geometry(image, pseudo_ct, tolerance=1e-4):
            logger.warning("%s: not on the input's grid; left out of the metrics", path)
            continue
        extra[key] = image
    if "truth_bones" in extra:
        extra["pred_bones"] = bone_labels
    try:
        metrics = evaluate_images(pseudo_ct, input_image=input_image, **extra)
    except InputError as error:
        logger.warning("%s: metrics skipped (%s)", case.case_id, error)
        return {}, ""
    return metrics, str(case.mask_path) if "mask" in extra else AUTOMATIC_MASK


def write_summary(results: list[CaseResult], path: str | os.PathLike) -> Path:
    """Write the per-case rows as CSV, atomically (a reader never sees half a file)."""
    return _write_rows([result.row() for result in results], path)


def _write_rows(rows: list[dict[str, str]], path: str | os.PathLike) -> Path:
    """Summary rows as CSV, atomically: the fixed columns, then the metrics present in order."""
    path = Path(path)
    metric_names = {name for row in rows for name, value in row.items() if name not in SUMMARY_COLUMNS}
    ordered = [name for name in _METRIC_ORDER if name in metric_names] + sorted(metric_names - set(_METRIC_ORDER))
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=[*SUMMARY_COLUMNS, *ordered], restval="")
            writer.writeheader()
            writer.writerows(rows)
    return path


def read_summary(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a summary CSV (empty list for an unreadable file: it is rewritten anyway)."""
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            return list(csv.DictReader(stream))
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        logger.warning("%s: earlier summary unreadable (%s); it will be rewritten", path, error)
        return []
