"""Compare RbG with what users would run instead, on cases with ground truth (``rbg benchmark``).

Methods, each giving a CT in HU on the input's exact grid:

- ``input``, ``rigid``, ``syn``, ``elastix``: the CBCT as it is (CBCT cases only) and the
  classical registrations, exactly as :mod:`.methods.classical.registration` describes and
  runs them (``rbg run --method`` runs the same);
- ``stage1``: our Stage 1 output alone; ``rbg``: the full pipeline (one pipeline run gives
  both, so they share its wall time and memory);
- ``refined``: the pipeline with ``refine="demons"`` (the pre-aligned reference
  registered onto the generated CT by mono-modal demons, :mod:`.refine`);
- ``registformer``: the pipeline with an installed model whose Stage 1 is ``adain``;
- ``stn-fusion``, ``dual-similarity``, ``mr-gan``, ``registration-by-synthesis``: the
  methods with their own models (the STN + early-fusion network; the dual-similarity
  registration network; MR-GAN's MR→CT synthesis alone; MR-GAN's CT→MR synthesis then
  mono-modal demons), each its default model of the modality, or the one
  ``method_models`` names.

Methods that warp the reference with a field (``dual-similarity``, ``registration-by-synthesis``,
``syn``, ``elastix``) also
report the fraction of voxels where the field folds (Jacobian determinant ≤ 0,
``fold_fraction``); the field's computation is inside the method's wall time.

Each (case, method) runs in a fresh worker process (``python -m
RegisterByGenerationLib.benchmark``) with ``threads`` threads for torch, ITK, ANTs and
elastix (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, set before ITK loads: elastix's own
``number_of_threads`` crashes with the B-spline map, ITKElastix issue #160). The worker
reports the method's wall time (model loading excluded) and its peak memory: the growth of
the process's peak RSS (``ru_maxrss``) over the RSS just before the method, so imports
and data loading do not count. Metrics come from
:func:`~RegisterByGenerationLib.metrics.evaluate_images` inside the case's ``mask.nii.gz``
(bones: ``HU > 200`` on both the output and the truth).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import InputError, ModelError
from .io import atomic_path, check_writable_dir, read_image, write_image
from .methods.classical.registration import AIR_HU, ELASTIX_FINAL_GRID_MM, ants_to_sitk, missing_extra, run_baseline, run_baseline_with_field, sitk_to_ants
from .runner import MODELS_OF_OTHER_METHODS

__all__ = [
    "METHODS",
    "MODEL_METHODS",
    "METRICS",
    "BenchmarkCase",
    "find_cases",
    "missing_extra",
    "run_baseline",
    "run_benchmark",
    "read_results",
    "write_results",
    "markdown_tables",
    "sitk_to_ants",
    "ants_to_sitk",
]

logger = logging.getLogger(__name__)

METHODS = ("input", "rigid", "syn", "elastix", "stage1", "rbg", "refined", "registformer", "stn-fusion", "dual-similarity", "mr-gan",
           "registration-by-synthesis")  # fmt: skip
#: Methods with their own models (``rbg run --method NAME``), chosen by ``method_models``.
OWN_MODEL_METHODS = ("stn-fusion", "dual-similarity", "mr-gan", "registration-by-synthesis")
MODEL_METHODS = ("stage1", "rbg", "refined", "registformer", *OWN_MODEL_METHODS)
METRICS = ("mae", "psnr", "ssim", "bone_dice", "bone_hd95", "gradient_correlation", "nmi", "sharpness", "tv_z")
COLUMNS = ("case", "kind", "modality", "method", *METRICS, "fold_fraction", "wall_s", "peak_mem_mb", "threads", "note")


@dataclass
class BenchmarkCase:
    """A case folder in the SynthRAD layout with truth (``rbg phantom`` or ``--make-real-case``)."""

    case_id: str
    folder: Path
    modality: str
    kind: str  # "phantom" or "real"

    @property
    def input_path(self) -> Path:
        return self.folder / ("mr.nii.gz" if self.modality == "mr" else "cbct.nii.gz")


def find_cases(data_dir: str | os.PathLike, cases: int | None = None) -> list[BenchmarkCase]:
    """Case folders under ``data_dir`` (any depth) holding input, ``ct``, ``ct_aligned`` and ``mask``.

    Cases are sorted by folder name; ``cases`` keeps the first N of each modality.

    Raises:
        InputError: ``data_dir`` is not a folder or holds no complete case.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"--data {root}: not a folder")
    if cases is not None and cases < 1:
        raise InputError(f"--cases must be >= 1, got {cases}")
    found: list[BenchmarkCase] = []
    for truth in sorted(root.rglob("ct_aligned.nii.gz")):
        folder = truth.parent
        for modality, name in (("mr", "mr.nii.gz"), ("cbct", "cbct.nii.gz")):
            if (folder / name).exists() and (folder / "ct.nii.gz").exists() and (folder / "mask.nii.gz").exists():
                kind = "phantom" if (folder / "phantom.json").exists() else "real"
                found.append(BenchmarkCase(folder.name, folder, modality, kind))
    if not found:
        raise InputError(f"--data {root}: no case folder with mr.nii.gz or cbct.nii.gz, ct.nii.gz, ct_aligned.nii.gz and mask.nii.gz")
    if cases is not None:
        kept, counts = [], {}
        for case in found:
            key = (case.kind, case.modality)
            counts[key] = counts.get(key, 0) + 1
            if counts[key] <= cases:
                kept.append(case)
        found = kept
    return found


# --- the worker: one (case, method group) in a fresh process ----------------------------

def _current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (see :func:`_run_job`); write the output images; return timings."""
    import torch

    torch.set_num_threads(job["threads"])
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(job["threads"])
    input_image = read_image(job["input"])
    reference_ct = read_image(job["reference"])
    method, out_dir = job["method"], Path(job["out_dir"])
    pipeline = None
    if method in MODEL_METHODS:
        from .pipeline import Pipeline

        refine = "demons" if method == "refined" else "none"
        pipeline = Pipeline(job["model"], method=method if method in OWN_MODEL_METHODS else None, modality=job["modality"], device="cpu",
                            seed=job["seed"], refine=refine)  # fmt: skip
    baseline_mb = _current_rss_mb()
    start = time.perf_counter()
    folds = math.nan
    if pipeline is not None:
        result = pipeline.run(input_image, reference_ct, keep_intermediate=True)
        outputs = {key: result.stage1 if key == "stage1" else result.pseudo_ct for key in job["outputs"]}
        folds = result.deformation.get("fold_fraction", math.nan)
    else:
        image, field = run_baseline_with_field(method, input_image, reference_ct, modality=job["modality"], seed=job["seed"])
        outputs = {method: image}
        if field is not None:
            from .metrics import deformation_statistics

            folds = deformation_statistics(field)["fold_fraction"]
    wall = time.perf_counter() - start
    peak = max(_peak_rss_mb() - baseline_mb, 0.0)
    for name, image in outputs.items():
        write_image(image, out_dir / f"{name}.nii.gz")
    return {"wall_s": wall, "peak_mem_mb": peak, "fold_fraction": folds}


def _run_job(job: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    env = dict(os.environ)
    threads = str(job["threads"])
    env.update(ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    process = subprocess.run([sys.executable, "-m", __name__, json.dumps(job)], env=env, capture_output=True, text=True, timeout=timeout)
    if process.returncode != 0:
        tail = (process.stderr or process.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{job['method']} failed (exit {process.returncode}): {' | '.join(tail)}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def _evaluate(output: sitk.Image, case: BenchmarkCase, input_image: sitk.Image, truth: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    from .metrics import evaluate_images

    output = sitk.Cast(output, sitk.sitkFloat32)
    values = evaluate_images(output, truth=truth, input_image=input_image, mask=mask)
    return {key: float(values.get(key, math.nan)) for key in METRICS}


def _registformer_model(modality: str) -> str | None:
    from .modelstore import list_models

    for info in list_models():
        if info.modality == modality and info.summary()["stage1"] == "adain":
            return str(info.path)
    return None


def _method_model(method: str, model: str | None, modality: str) -> str | None:
    """The model folder ``method`` runs on ``modality`` cases: ``model`` (which must be one
    of the method's), else the method's default, else None (not installed)."""
    from .methods import get_method, resolve

    if model is None and modality not in get_method(method).default_models:
        return None
    try:
        return str(resolve(method, model, modality)[1].path)
    except ModelError:
        if model is not None:
            raise
        return None  # the default model is not installed


def run_benchmark(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    methods: tuple[str, ...] = METHODS,
    cases: int | None = None,
    threads: int = 2,
    models: dict[str, str] | None = None,
    method_models: dict[str, str] | None = None,
    seed: int = 0,
    keep_images: bool = False,
    timeout_s: float | None = 3600.0,
    progress=print,
) -> list[dict[str, Any]]:
    """Run ``methods`` on every case under ``data_dir``; write ``results.csv``, ``results.md``, ``figure.png``.

    Args:
        data_dir: folder with case folders (see :func:`find_cases`).
        out_dir: output folder (created); outputs are replaced atomically.
        methods: subset of :data:`METHODS`. ``stage1``, ``rbg`` and ``refined`` use the
            modality's model; ``registformer`` is skipped (with a note) when no
            installed model of that modality has an ``adain`` Stage 1.
        cases: keep the first N cases of each (kind, modality).
        threads: threads of every method (torch, ITK, ANTs, elastix).
        models: modality -> model name or folder for ``stage1``/``rbg`` (default: the
            default model of each modality).
        method_models: method of :data:`OWN_MODEL_METHODS` -> model name or folder (default:
            the method's default model of each modality; skipped with a note where there
            is none).
        seed: seed of every method's random sampling.
        keep_images: also keep every method's output image under ``out_dir/images``.
        timeout_s: per-job time limit in seconds.
        progress: called with one line per finished job.

    Returns:
        The rows of ``results.csv`` (dicts with :data:`COLUMNS`).

    Raises:
        InputError: unknown method, bad argument, no case, or a baseline's package missing.
        ModelError: ``stage1``/``rbg`` requested but the modality's model is not installed.
    """
    methods = tuple(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"--methods: choose from {', '.join(METHODS)}; got {', '.join(unknown) or 'none'}")
    if threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    for method in methods:
        reason = missing_extra(method)
        if reason:
            raise InputError(reason)
    found = find_cases(data_dir, cases)
    from .modelstore import default_model_name, find_model

    model_for: dict[tuple[str, str], str | None] = {}
    for modality in sorted({case.modality for case in found}):
        if {"stage1", "rbg", "refined"} & set(methods):
            name = (models or {}).get(modality) or default_model_name(modality)
            info = find_model(name)  # ModelError when absent
            if info.modality != modality:
                raise ModelError(f"model {info.name!r} is for {info.modality.upper()} input; the {modality.upper()} cases need a {modality.upper()} model (--{modality}-model)")
            model_for[("rbg", modality)] = str(info.path)
        if "registformer" in methods:
            model_for[("registformer", modality)] = _registformer_model(modality)
        for method in OWN_MODEL_METHODS:
            if method in methods:
                model_for[(method, modality)] = _method_model(method, (method_models or {}).get(method), modality)
    out = check_writable_dir(out_dir)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rbg-benchmark-") as scratch:
        for case in found:
            input_image, truth = read_image(case.input_path), read_image(case.folder / "ct_aligned.nii.gz")
            mask = read_image(case.folder / "mask.nii.gz")
            case_dir = Path(scratch) / case.case_id
            case_dir.mkdir()
            groups = _job_groups(methods)
            for group in groups:
                base = {"case": case.case_id, "kind": case.kind, "modality": case.modality, "threads": threads}
                model = model_for.get((group[0] if group[0] in ("registformer", *OWN_MODEL_METHODS) else "rbg", case.modality))
                if group == ("input",) and case.modality != "cbct":
                    continue  # an MR is no CT: nothing to compare
                if group == ("registformer",) and model is None:
                    rows.append({**base, "method": "registformer", "note": f"skipped: no installed {case.modality} model with an adain Stage 1"})
                    progress(f"{case.case_id} registformer: skipped (no adain model)")
                    continue
                if group[0] in OWN_MODEL_METHODS and model is None:
                    kind = MODELS_OF_OTHER_METHODS.get(group[0], group[0])
                    rows.append({**base, "method": group[0], "note": f"skipped: no {case.modality} {kind} model installed (--{kind}-model)"})
                    progress(f"{case.case_id} {group[0]}: skipped (no model)")
                    continue
                job = {"method": group[0], "outputs": list(group), "input": str(case.input_path), "reference": str(case.folder / "ct.nii.gz"),
                       "modality": case.modality, "threads": threads, "seed": seed, "model": model, "out_dir": str(case_dir)}
                try:
                    timing = _run_job(job, timeout_s)
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    for method in group:
                        rows.append({**base, "method": method, "note": f"failed: {error}"})
                    progress(f"{case.case_id} {'+'.join(group)}: FAILED {error}")
                    continue
                for method in group:
                    output = read_image(case_dir / f"{method}.nii.gz")
                    values = _evaluate(output, case, input_image, truth, mask)
                    note = "timed together with rbg (one pipeline run)" if method == "stage1" and "rbg" in group else ""
                    if method in MODEL_METHODS:
                        note = (note + "; " if note else "") + f"model {Path(model).name}"
                    elif method == "elastix":
                        note = f"B-spline final grid {ELASTIX_FINAL_GRID_MM:g} mm"
                    rows.append({**base, "method": method, **values, **timing, "note": note})
                    progress(f"{case.case_id} {method}: MAE {values['mae']:.1f} HU, bone Dice {values['bone_dice']:.3f}, {timing['wall_s']:.1f} s")
                    if keep_images:
                        write_image(output, check_writable_dir(out / "images" / case.case_id) / f"{method}.nii.gz")
            write_results(rows, out)
        _figure(found, rows, Path(scratch), out)
    return rows


def _job_groups(methods: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Jobs in order; ``stage1`` and ``rbg`` share one pipeline run."""
    groups: list[tuple[str, ...]] = []
    model_group = tuple(m for m in ("stage1", "rbg") if m in methods)
    for method in methods:
        if method in ("stage1", "rbg"):
            if model_group and model_group not in groups:
                groups.append(model_group)
        else:
            groups.append((method,))
    return groups


def write_results(rows: list[dict[str, Any]], out_dir: str | os.PathLike) -> None:
    """Write ``results.csv`` and ``results.md`` atomically into ``out_dir`` (created)."""
    out = check_writable_dir(out_dir)
    with atomic_path(out / "results.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({key: _format(row.get(key, "")) for key in COLUMNS})
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(markdown_tables(rows), encoding="utf-8")


def read_results(paths: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """Rows of one or more ``results.csv`` (numbers back to float), e.g. to merge two runs.

    Raises:
        InputError: a file is missing or is not a benchmark ``results.csv``.
    """
    rows: list[dict[str, Any]] = []
    for path in paths:
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                if tuple(reader.fieldnames or ()) not in (COLUMNS, tuple(c for c in COLUMNS if c != "fold_fraction")):
                    raise InputError(f"{path}: not a results.csv of rbg benchmark (columns differ)")
                for row in reader:
                    parsed: dict[str, Any] = dict(row)
                    if row["mae"] != "":
                        for key in (*METRICS, "fold_fraction", "wall_s", "peak_mem_mb"):
                            parsed[key] = float(row[key]) if row.get(key, "") != "" else math.nan
                    else:
                        for key in (*METRICS, "fold_fraction", "wall_s", "peak_mem_mb"):
                            parsed.pop(key, None)
                    rows.append(parsed)
        except OSError as error:
            raise InputError(f"{path}: cannot read ({error.strerror})") from error
    return rows


def _format(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


_SHOWN = (("mae", "MAE HU", 1), ("psnr", "PSNR dB", 2), ("ssim", "SSIM", 3), ("bone_dice", "bone Dice", 3), ("bone_hd95", "bone HD95 mm", 1),
          ("gradient_correlation", "GC", 3), ("nmi", "NMI", 3), ("sharpness", "sharpness HU²", 0), ("tv_z", "TV-z HU", 1),
          ("fold_fraction", "folded fraction", 4), ("wall_s", "wall s", 1), ("peak_mem_mb", "peak MB", 0))


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    """Per (kind, modality) group: mean ± sd of each method; then every case."""
    lines = []
    groups = sorted({(row["kind"], row["modality"]) for row in rows})
    header = "| method | n | " + " | ".join(title for _, title, _ in _SHOWN) + " |"
    rule = "|---|---|" + "---|" * len(_SHOWN)
    for kind, modality in groups:
        lines += [f"### {kind} {modality.upper()} (mean ± sd over cases)", "", header, rule]
        for method in METHODS:
            chosen = [row for row in rows if (row["kind"], row["modality"], row["method"]) == (kind, modality, method) and "mae" in row]
            if not chosen:
                continue
            cells = []
            for key, _, digits in _SHOWN:
                values = np.array([row.get(key, math.nan) for row in chosen], dtype=float)
                values = values[np.isfinite(values)]
                cells.append("n/a" if values.size == 0 else f"{values.mean():.{digits}f} ± {values.std(ddof=1) if values.size > 1 else 0.0:.{digits}f}")
            lines.append(f"| {method} | {len(chosen)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### Every case", "", "| case | method | " + " | ".join(title for _, title, _ in _SHOWN) + " | note |", "|---|---|" + "---|" * (len(_SHOWN) + 1)]
    for row in rows:
        cells = ["" if not isinstance(row.get(key), float) or not math.isfinite(row[key]) else f"{row[key]:.{digits}f}" for key, _, digits in _SHOWN]
        lines.append(f"| {row['case']} | {row['method']} | " + " | ".join(cells) + f" | {row.get('note', '')} |")
    return "\n".join(lines) + "\n"


def _figure(found: list[BenchmarkCase], rows: list[dict[str, Any]], scratch: Path, out: Path) -> None:
    """One case (the real one when present), every method: axial and coronal, input edges in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.feature import canny

    from .metrics import robust_unit_scale

    case = next((c for c in found if c.kind == "real"), found[0])
    done = [row["method"] for row in rows if row["case"] == case.case_id and "mae" in row]
    panels = [("input", case.input_path), ("truth", case.folder / "ct_aligned.nii.gz"), ("reference CT (unaligned)", case.folder / "ct.nii.gz")]
    panels += [(method, scratch / case.case_id / f"{method}.nii.gz") for method in done]
    input_lps = sitk.DICOMOrient(read_image(case.input_path), "LPS")
    grid = input_lps
    spacing = grid.GetSpacing()
    mask = sitk.GetArrayFromImage(sitk.DICOMOrient(read_image(case.folder / "mask.nii.gz"), "LPS")) > 0
    inp = robust_unit_scale(sitk.GetArrayFromImage(input_lps).astype(np.float32), mask)
    zc = int(np.argmax(mask.sum(axis=(1, 2))))
    yc = int(np.argmax(mask.sum(axis=(0, 2))))
    edges_ax = canny(inp[zc], sigma=1.5)
    edges_co = canny(inp[:, yc, :], sigma=1.0)
    fig, axes = plt.subplots(2, len(panels), figsize=(2.6 * len(panels), 5.6), squeeze=False)
    for column, (title, path) in enumerate(panels):
        image = sitk.Resample(read_image(path), grid, sitk.Transform(), sitk.sitkLinear, AIR_HU) if path != case.input_path else input_lps
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        is_input = path == case.input_path
        window = dict(cmap="gray", vmin=0, vmax=1) if is_input else dict(cmap="gray", vmin=-400, vmax=600)
        shown = inp if is_input else array
        axes[0, column].imshow(shown[zc], aspect=spacing[1] / spacing[0], **window)
        axes[1, column].imshow(shown[:, yc, :], aspect=spacing[2] / spacing[0], origin="lower", **window)
        for row_index, edges in ((0, edges_ax), (1, edges_co)):
            overlay = np.zeros((*edges.shape, 4))
            overlay[edges] = (1.0, 0.2, 0.2, 0.8)
            axes[row_index, column].imshow(overlay, aspect=axes[row_index, column].get_aspect(), origin="lower" if row_index else "upper")
            axes[row_index, column].set_axis_off()
        mae_text = next((f"\nMAE {row['mae']:.0f} HU" for row in rows if row["case"] == case.case_id and row["method"] == title and "mae" in row), "")
        axes[0, column].set_title(title + mae_text, fontsize=9)
    fig.suptitle(f"{case.case_id} ({case.kind} {case.modality.upper()}): axial (top), coronal (bottom); red = input edges (Canny)", fontsize=10)
    fig.tight_layout()
    with atomic_path(out / "figure.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _main(argv: list[str]) -> int:
    """Worker entry point: ``python -m RegisterByGenerationLib.benchmark '<job json>'``."""
    if len(argv) != 1:
        raise SystemExit("usage: python -m RegisterByGenerationLib.benchmark '<job json>' (internal worker of rbg benchmark)")
    print(json.dumps(_worker(json.loads(argv[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
