"""Training of the dual-similarity registration network (``rbg train dual-similarity``).

The paper's loss (Eq. 2-4) on pre-aligned pairs: the network sees the input MR and the
reference CT only, and its field is scored within each modality,

    L = ½ (1 − NCC(CT paired to the MR, warped reference CT))
      + ½ (1 − NCC(input MR, warped MR paired to the reference CT))
      + λ₁ R(φ) + λ₂ ‖φ‖²,

so no inter-modality metric is needed. Optionally (``teacher_weight`` > 0, a departure
written into the card) a warm start adds ``teacher_weight · mean((φ − φ_demons)²)``: the
regression onto the field that mono-modal demons find between the two CTs of the pair
(the reference CT onto the CT of the input's anatomy, :func:`teacher_field`), which the
training computes itself from the same pairs, for the first ``teacher_fraction`` of the
epochs; the intra-modality terms then fine-tune alone.

Each case folder therefore holds, besides the input ``mr`` and the reference ``ct``, the
CT of the input's anatomy (``ct_aligned``) and the MR of the reference's anatomy
(``mr_reference``): ``rbg phantom --reference-mr`` writes both; for real data, two scans
of one patient, each an aligned MR/CT pair.

Departures, written into the model card: the field is a stationary velocity integrated
by scaling and squaring (diffeomorphic, :mod:`.network`); NCC is MONAI's local NCC
(``ncc_kernel`` coarse voxels) rather than one NCC per 68³ patch; the regulariser R is
MONAI's bending energy (all second derivatives, the Laplacian's among them); Adam
instead of SGD; the network works on a ~3 mm grid of the model canvas after our rigid
pre-alignment (the paper's affine FLIRT step).

Each epoch is ``steps_per_epoch`` batches of random coarse patches (the moving pair
shifted together by up to ``moving_shift_px`` coarse voxels: 0 by default, since a shift
taught the network to undo the shift rather than the anatomy's deformation,
``docs/benchmarks.md``; a left-right flip), then
whole-volume validation: the MAE (HU, in the body) of the warped reference CT against the
aligned CT, and the fraction of folded voxels. ``best.pt`` is the lowest validation MAE.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ... import __version__
from ...errors import InputError
from ...geometry import resample_onto
from ...io import atomic_path, check_writable_dir, read_image
from ...metrics import deformation_statistics, mae
from ...modelstore import ModelInfo, save_model
from ...preprocess import normalise_input, prepare_case
from ...training.config import default_normalization
from ...training.data import IMAGE_SUFFIXES, CaseFiles
from ...training.volume_runs import crop3d, load_config_file, model_card, read_run_for_export, run_method, split_run_cases, train_epochs
from .field import canvas_displacement, to_coarse
from .network import DualSimilarityConfig, DualSimilarityNet, coarse_factors

__all__ = [
    "DualSimilarityTrainingConfig", "PairedCase", "load_paired_case", "PairedPatchDataset", "DualSimilarityLoss",
    "train_dual_similarity", "export_dual_similarity", "load_training_config", "is_dual_similarity_run", "synthetic_pair",
]  # fmt: skip

#: Stem of the MR of the reference's anatomy in a case folder.
REFERENCE_MR = "mr_reference"


@dataclass
class DualSimilarityTrainingConfig:
    """Everything a dual-similarity training run depends on (saved in ``RUN/run.json``)."""

    modality: str = "mr"
    architecture: DualSimilarityConfig = field(default_factory=DualSimilarityConfig)
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)
    normalization: dict | None = None
    prealign: bool = True
    seed: int = 0
    val_cases: tuple[str, ...] = ()
    val_fraction: float = 0.15
    epochs: int = 20
    steps_per_epoch: int = 100
    batch_size: int = 2
    lr: float = 1e-3
    lr_milestones: tuple[float, ...] = (0.7, 0.9)
    lr_gamma: float = 0.3
    ct_weight: float = 0.5
    mr_weight: float = 0.5
    bending_weight: float = 5.0
    magnitude_weight: float = 0.01
    ncc_kernel: int = 9
    moving_shift_px: int = 0
    flip: bool = True
    teacher_weight: float = 0.0
    teacher_fraction: float = 1.0
    teacher_smoothing_mm: float = 4.5
    synthetic_fraction: float = 0.0
    synthetic_displacement_mm: float = 6.0
    synthetic_smoothness_mm: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.architecture, dict):
            self.architecture = DualSimilarityConfig.from_dict(self.architecture)
        if self.modality != "mr":
            raise InputError(f"dual-similarity trains on MR inputs (paired MR/CT); got modality {self.modality!r}")
        if self.normalization is None:
            self.normalization = default_normalization(self.modality)
        self.pixel_spacing_mm = tuple(float(s) for s in self.pixel_spacing_mm)
        self.val_cases, self.lr_milestones = tuple(self.val_cases), tuple(float(m) for m in self.lr_milestones)
        for name in ("epochs", "steps_per_epoch", "batch_size", "ncc_kernel"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.ncc_kernel % 2 == 0:
            raise InputError(f"ncc_kernel must be odd, got {self.ncc_kernel}")
        if min(self.ct_weight, self.mr_weight, self.bending_weight, self.magnitude_weight, self.moving_shift_px, self.teacher_weight) < 0:
            raise InputError("the loss weights and moving_shift_px must be non-negative")
        if not 0.0 <= self.teacher_fraction <= 1.0 or not self.teacher_smoothing_mm > 0:
            raise InputError(f"teacher_fraction must lie in [0, 1] and teacher_smoothing_mm be positive, got {self.teacher_fraction!r}, {self.teacher_smoothing_mm!r}")
        if not 0.0 <= self.synthetic_fraction <= 1.0 or min(self.synthetic_displacement_mm, self.synthetic_smoothness_mm) <= 0:
            raise InputError(f"synthetic_fraction must lie in [0, 1] and synthetic_displacement_mm, synthetic_smoothness_mm be positive, got "
                             f"{self.synthetic_fraction!r}, {self.synthetic_displacement_mm!r}, {self.synthetic_smoothness_mm!r}")  # fmt: skip
        if self.synthetic_fraction > 0 and self.teacher_weight <= 0:
            raise InputError("synthetic_fraction needs teacher_weight > 0: the synthetic pairs are learnt through their exact field, in the teacher term")
        if self.ct_weight + self.mr_weight <= 0:
            raise InputError("at least one of ct_weight and mr_weight must be positive (the similarity terms)")

    @property
    def teacher_epochs(self) -> int:
        """The epochs (from the first) whose loss has the warm-start term."""
        return round(self.teacher_fraction * self.epochs) if self.teacher_weight > 0 else 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["architecture"] = self.architecture.to_dict()
        return json.loads(json.dumps(data))


def load_training_config(path: str | os.PathLike | None, **overrides: Any) -> DualSimilarityTrainingConfig:
    """Defaults, then the JSON file at ``path`` (unknown keys refused), then ``overrides``."""
    return load_config_file(DualSimilarityTrainingConfig, path, **overrides)


@dataclass
class PairedCase:
    """One case on the canvas (``[Z, H, W]``, normalised) and on the coarse grid.

    ``x``/``y``: input MR and pre-aligned reference CT; ``paired_ct``: the CT of the
    input's anatomy; ``paired_mr``: the MR of the reference's anatomy, pre-aligned with
    the reference CT; ``truth_hu``/``mask``: the aligned CT in HU and the body, for
    validation; ``coarse``: the four images on the network's grid (``[z, y, x]``) and,
    with a teacher, its field ``teacher`` (``[3, z, y, x]``, coarse voxels along Z, Y, X).
    """

    case_id: str
    x: np.ndarray
    y: np.ndarray
    paired_ct: np.ndarray
    paired_mr: np.ndarray
    truth_hu: np.ndarray
    mask: np.ndarray
    lut: np.ndarray
    spacing_zyx: tuple[float, float, float]
    coarse: dict[str, np.ndarray] = field(default_factory=dict)

    def to_hu(self, values: np.ndarray) -> np.ndarray:
        return np.interp(values, self.lut[0], self.lut[1]).astype(np.float32)


def _reference_mr_path(files: CaseFiles) -> Path:
    for suffix in IMAGE_SUFFIXES:
        path = files.folder / f"{REFERENCE_MR}{suffix}"
        if path.is_file():
            return path
    raise InputError(f"{files.folder}: case {files.case_id} has no {REFERENCE_MR}.nii.gz (the MR of the reference CT's anatomy), "
                     "which dual-similarity training needs; `rbg phantom --reference-mr` writes it")  # fmt: skip


def load_paired_case(files: CaseFiles, config: DualSimilarityTrainingConfig, cache_dir: str | os.PathLike | None = None) -> PairedCase:
    """Preprocess one case as inference does (pre-alignment, canvas, normalisation), the
    paired MR through the reference's pre-alignment; cached as ``.npz``.

    Raises:
        InputError: no ``ct_aligned`` or ``mr_reference``, a reference MR off the reference
            CT's grid, or an unreadable file (messages name the case and the file).
    """
    if files.truth is None:
        raise InputError(f"{files.folder}: case {files.case_id} has no ct_aligned.nii.gz (the CT of the input's anatomy), which dual-similarity training needs")
    reference_mr_path = _reference_mr_path(files)
    key = json.dumps({"config": {k: v for k, v in config.to_dict().items() if k in ("pixel_spacing_mm", "normalization", "prealign", "seed")},
                      "architecture": config.architecture.coarse_spacing_mm, "version": __version__,
                      "files": [[str(p), p.stat().st_mtime_ns] for p in (files.input, files.reference, files.truth, reference_mr_path, files.mask)]},
                     sort_keys=True)  # fmt: skip
    cache = Path(cache_dir) / f"{files.case_id}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            case = PairedCase(files.case_id, *(stored[k] for k in ("x", "y", "paired_ct", "paired_mr", "truth_hu", "mask", "lut")),
                              tuple(float(s) for s in stored["spacing_zyx"]))  # fmt: skip
        return _with_coarse(case, config)
    input_image, reference = read_image(files.input), read_image(files.reference)
    truth, reference_mr = read_image(files.truth), read_image(reference_mr_path)
    if reference_mr.GetSize() != reference.GetSize():
        raise InputError(f"{reference_mr_path}: size {reference_mr.GetSize()} is not the reference CT's {reference.GetSize()}; it must be on the reference CT's grid")
    try:
        prepared = prepare_case(input_image, reference, modality="mr", pixel_spacing=config.pixel_spacing_mm, canvas=None,
                                normalization=config.normalization, prealign=config.prealign, seed=config.seed, multiple=1)  # fmt: skip
    except InputError as error:
        raise InputError(f"{files.folder}: case {files.case_id}: {error}") from error
    grid = prepared.grid
    mr_on_input = resample_onto(reference_mr, input_image, prepared.transform, default_value=0.0)
    paired_mr, _ = normalise_input(mr_on_input, grid, modality="mr", config=config.normalization["input"])
    truth_hu = grid.to_canvas(truth, default_value=-1024.0)
    mask = grid.to_canvas(read_image(files.mask), interpolator=sitk.sitkNearestNeighbor, default_value=0) > 0.5
    levels = np.linspace(-1.0, 1.0, 4097, dtype=np.float32)
    lut = np.stack([levels, np.asarray(prepared.ct_map.inverse(levels), dtype=np.float32)])
    case = PairedCase(files.case_id, prepared.x, prepared.y, np.asarray(prepared.ct_map.forward(truth_hu), np.float32),
                      np.asarray(paired_mr, np.float32), truth_hu, mask, lut, grid.spacing_zyx)  # fmt: skip
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as stream:
            np.savez(stream, x=case.x, y=case.y, paired_ct=case.paired_ct, paired_mr=case.paired_mr, truth_hu=truth_hu,
                     mask=mask, lut=lut, spacing_zyx=np.asarray(case.spacing_zyx))  # fmt: skip
    return _with_coarse(case, config)


def _with_coarse(case: PairedCase, config: DualSimilarityTrainingConfig) -> PairedCase:
    factors = coarse_factors(case.spacing_zyx, config.architecture.coarse_spacing_mm)
    names = {"x": case.x, "y": case.y, "paired_ct": case.paired_ct, "paired_mr": case.paired_mr, "mask": case.mask.astype(np.float32)}
    case.coarse = {k: to_coarse(v, factors, DualSimilarityNet.size_multiple)[0, 0].numpy() for k, v in names.items()}
    if config.teacher_weight > 0:
        spacing = tuple(s * f for s, f in zip(case.spacing_zyx, factors))
        case.coarse["teacher"] = teacher_field(case.to_hu(case.coarse["y"]), case.to_hu(case.coarse["paired_ct"]), spacing, config.teacher_smoothing_mm)
    return case


def teacher_field(moving_hu: np.ndarray, fixed_hu: np.ndarray, spacing_zyx: tuple[float, float, float], smoothing_mm: float) -> np.ndarray:
    """The displacement ``[3, z, y, x]`` (voxels along Z, Y, X; ``warped(i) = moving(i + φ(i))``,
    the network's convention) that mono-modal demons find from one CT onto another of the
    same grid: the warm-start target (:mod:`..refine`'s demons, CT onto CT)."""
    from ...refine import DemonsSettings, demons_field

    images = []
    for volume in (fixed_hu, moving_hu):
        image = sitk.GetImageFromArray(np.ascontiguousarray(volume, dtype=np.float32))
        image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
        images.append(image)
    settings = DemonsSettings(shrink_factors=(2, 1), iterations=(80, 40), smoothing_mm=smoothing_mm)
    field_mm = sitk.GetArrayFromImage(demons_field(images[0], images[1], settings))  # [z, y, x, (x, y, z)] in mm
    return (np.moveaxis(field_mm, -1, 0)[::-1] / np.asarray(spacing_zyx, dtype=np.float64)[:, None, None, None]).astype(np.float32)


@torch.no_grad()
def synthetic_pair(mr: np.ndarray, ct: np.ndarray, spacing_zyx: tuple[float, ...], rng: np.random.Generator,
                   displacement_mm: float, smoothness_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """A training pair with an exact field, made from one aligned MR/CT patch (a departure).

    A random smooth velocity ``v`` (white noise in mm, Gaussian-smoothed by
    ``smoothness_mm``, scaled to an RMS displacement drawn uniformly up to
    ``displacement_mm``) is integrated both ways by scaling and squaring; the CT and the MR
    warped by ``exp(−v)`` are the moving CT and its paired MR, and ``exp(v)`` — which
    brings them back onto the fixed MR, ``exp(−v)∘exp(v) = id`` — is the target (coarse
    voxels along Z, Y, X, the network's convention).

    Returns:
        ``(moving CT, its paired MR, target field [3, z, y, x])``, float32.
    """
    from monai.networks.blocks import DVF2DDF, Warp
    from scipy.ndimage import gaussian_filter

    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    velocity_mm = np.stack([gaussian_filter(rng.standard_normal(mr.shape), smoothness_mm / spacing) for _ in range(3)])
    rms = float(np.sqrt(np.mean(np.sum(velocity_mm**2, axis=0)))) or 1.0
    velocity = velocity_mm * (rng.uniform(0.0, displacement_mm) / rms) / spacing[:, None, None, None]
    integrate, warp = DVF2DDF(num_steps=7), Warp(mode="bilinear", padding_mode="border")
    v = torch.from_numpy(velocity.astype(np.float32))[None]
    forward, backward = integrate(v), integrate(-v)
    moving = warp(torch.from_numpy(np.stack([ct, mr]))[None].float(), backward)[0].numpy()
    return moving[0], moving[1], forward[0].numpy()


class PairedPatchDataset(torch.utils.data.Dataset):
    """Random coarse patches centred on body voxels: ``fixed`` (MR), ``moving`` (CT), their
    pairs ``paired_ct`` (fixed space) and ``paired_mr`` (moving space), each ``[1, z, y, x]``;
    item ``i`` of epoch ``e`` from ``default_rng([seed, e, i])``. A share
    ``synthetic_fraction`` of the items are :func:`synthetic_pair`\ s of the fixed patch,
    with their exact field as ``teacher``."""

    def __init__(self, cases: list[PairedCase], config: DualSimilarityTrainingConfig, length: int) -> None:
        self.cases, self.config, self.length, self.epoch = cases, config, int(length), 0
        factors = [coarse_factors(case.spacing_zyx, config.architecture.coarse_spacing_mm) for case in cases]
        self.spacing = [tuple(s * f for s, f in zip(case.spacing_zyx, f)) for case, f in zip(cases, factors)]
        self.body = [np.argwhere(case.coarse["mask"] > 0.5) for case in cases]
        empty = next((case.case_id for case, body in zip(cases, self.body) if len(body) == 0), None)
        if empty is not None:
            raise InputError(f"case {empty}: the body mask is empty on the coarse grid")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        config, patch = self.config, self.config.architecture.patch
        rng = np.random.default_rng([config.seed, self.epoch, int(index)])
        c = int(rng.integers(len(self.cases)))
        coarse = self.cases[c].coarse
        centre = self.body[c][rng.integers(len(self.body[c]))]
        corner = tuple(int(p) - s // 2 for p, s in zip(centre, patch))
        s = config.moving_shift_px
        shift = (int(rng.integers(-1, 2)), int(rng.integers(-s, s + 1)), int(rng.integers(-s, s + 1))) if s else (0, 0, 0)
        moved = tuple(a + b for a, b in zip(corner, shift))
        mr_pad = float(coarse["x"].min())
        fixed, paired_ct = crop3d(coarse["x"], corner, patch, mr_pad), crop3d(coarse["paired_ct"], corner, patch, -1.0)
        if rng.random() < config.synthetic_fraction:
            moving, paired_mr, target = synthetic_pair(fixed, paired_ct, self.spacing[c], rng, config.synthetic_displacement_mm, config.synthetic_smoothness_mm)
            sample = {"fixed": fixed, "paired_ct": paired_ct, "moving": moving, "paired_mr": paired_mr, "teacher": target}
        else:
            sample = {
                "fixed": fixed,
                "paired_ct": paired_ct,
                "moving": crop3d(coarse["y"], moved, patch, -1.0),
                "paired_mr": crop3d(coarse["paired_mr"], moved, patch, float(coarse["paired_mr"].min())),
            }
            if "teacher" in coarse:  # in the fixed (MR) space, like the field
                sample["teacher"] = np.stack([crop3d(component, corner, patch, 0.0) for component in coarse["teacher"]])
        if config.flip and rng.random() < 0.5:
            sample = {k: v[..., ::-1] for k, v in sample.items()}
            if "teacher" in sample:
                sample["teacher"] = sample["teacher"] * np.array([1, 1, -1], np.float32)[:, None, None, None]  # x flips its sign
        return {k: torch.from_numpy(np.ascontiguousarray(v if k == "teacher" else v[None])) for k, v in sample.items()}


class DualSimilarityLoss(torch.nn.Module):
    """``w_ct (1 − NCC(paired CT, warped CT)) + w_mr (1 − NCC(MR, warped paired MR))
    + w_bend · bending energy + w_mag · mean(φ²)`` (local NCC and bending energy: MONAI),
    plus ``w_teacher · mean((φ − φ_teacher)²)`` while ``teaching`` and the batch has one."""

    def __init__(self, config: DualSimilarityTrainingConfig) -> None:
        super().__init__()
        from monai.losses import BendingEnergyLoss, LocalNormalizedCrossCorrelationLoss

        self.config = config
        self.ncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=config.ncc_kernel)  # returns −NCC
        self.bending = BendingEnergyLoss()

    def forward(self, net: DualSimilarityNet, batch: dict[str, torch.Tensor], teaching: bool = True) -> dict[str, torch.Tensor]:
        config = self.config
        ddf = net(batch["fixed"], batch["moving"])["ddf"]
        with warnings.catch_warnings():  # MONAI's bending energy indexes with lists, which torch warns about at every step
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing", category=UserWarning)
            bending = self.bending(ddf)
        terms = {
            "ct": 1.0 + self.ncc(net.warp(batch["moving"], ddf), batch["paired_ct"]),
            "mr": 1.0 + self.ncc(net.warp(batch["paired_mr"], ddf), batch["fixed"]),
            "bending": bending,
            "magnitude": ddf.pow(2).mean(),
        }
        weights = {"ct": config.ct_weight, "mr": config.mr_weight, "bending": config.bending_weight, "magnitude": config.magnitude_weight}
        if "teacher" in batch:
            terms["teacher"] = (ddf - batch["teacher"]).pow(2).mean()
            weights["teacher"] = config.teacher_weight if teaching else 0.0
        terms["total"] = sum(weights[k] * v for k, v in terms.items())
        return terms


def coarse_field_image(ddf: np.ndarray, spacing_zyx: tuple[float, ...], factors: tuple[int, ...]) -> sitk.Image:
    """A canvas-aligned displacement in voxels ``[3, Z, H, W]`` as a vector image in mm
    along its own axes (identity direction), for :func:`~...metrics.deformation_statistics`."""
    vectors = np.moveaxis(ddf[::-1] * np.asarray(spacing_zyx[::-1], dtype=np.float64)[:, None, None, None], 0, -1)
    image = sitk.GetImageFromArray(vectors.astype(np.float64), isVector=True)
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    return image


def validate(net: DualSimilarityNet, cases: list[PairedCase], device: torch.device) -> dict[str, float]:
    """Whole-volume MAE (HU, body) of the warped reference CT against the aligned CT,
    the rigid reference's, and the fraction of folded canvas voxels."""
    net.eval()
    scores = []
    for case in cases:
        ddf, factors = canvas_displacement(net, case.x, case.y, case.spacing_zyx, device=device)
        warped = net.warp(torch.from_numpy(case.y)[None, None].to(device), torch.from_numpy(ddf)[None].to(device))[0, 0].cpu().numpy()
        folds = deformation_statistics(coarse_field_image(ddf, case.spacing_zyx, factors))["fold_fraction"]
        scores.append((mae(case.to_hu(warped), case.truth_hu, case.mask), mae(case.to_hu(case.y), case.truth_hu, case.mask), folds))
    net.train()
    mean = np.mean(scores, axis=0) if scores else [math.nan] * 3
    return {"val_mae": float(mean[0]), "val_rigid_mae": float(mean[1]), "val_fold_fraction": float(mean[2])}


def train_dual_similarity(config: DualSimilarityTrainingConfig, data_dir: str | os.PathLike, run_dir: str | os.PathLike, *,
                          device: str = "cpu", resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Train (or ``resume``) a run in ``run_dir``; returns the final checkpoint's summary.

    Raises:
        InputError: no cases, a case without its pairs, or a checkpoint exists without ``resume``.
    """
    from ...pipeline import select_device

    torch_device = select_device(device)
    train_files, val_files = split_run_cases(config, data_dir, run_dir, resume)  # bad data: refused before the run folder exists
    for case in train_files + val_files:
        if case.truth is None:
            raise InputError(f"{case.folder}: case {case.case_id} has no ct_aligned.nii.gz (the CT of the input's anatomy), which dual-similarity training needs")
        _reference_mr_path(case)
    run = check_writable_dir(run_dir)
    train_cases = [load_paired_case(f, config, run / "cache") for f in train_files]
    val_cases = [load_paired_case(f, config, run / "cache") for f in val_files]
    data = {"dir": str(Path(data_dir).resolve()), "modality": config.modality, "train": [f.case_id for f in train_files], "val": [f.case_id for f in val_files]}
    (run / "run.json").write_text(json.dumps({"library_version": __version__, "method": "dual-similarity", "config": config.to_dict(), "data": data}, indent=2) + "\n")

    torch.manual_seed(config.seed)
    net = DualSimilarityNet(config.architecture).to(torch_device)
    loss_fn = DualSimilarityLoss(config).to(torch_device)
    dataset = PairedPatchDataset(train_cases, config, config.steps_per_epoch * config.batch_size)
    return train_epochs("dual-similarity", net, config, dataset, run, device=torch_device, resume=resume, stop_after=stop_after,
                        terms_of=lambda batch: loss_fn(net, batch, teaching=dataset.epoch < config.teacher_epochs), validate=lambda: validate(net, val_cases, torch_device) if val_cases else {})  # fmt: skip


def is_dual_similarity_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` is a run of :func:`train_dual_similarity` (its ``run.json`` says so)."""
    return run_method(run_dir) == "dual-similarity"


def export_dual_similarity(run_dir: str | os.PathLike, model_dir: str | os.PathLike, *, name: str, checkpoint: str = "best",
                           description: str | None = None) -> ModelInfo:  # fmt: skip
    """Write the run's ``best`` (or ``last``) checkpoint as a model directory whose card
    names the method ``dual-similarity``, the paired supervision and the departures.

    Raises:
        InputError: not a dual-similarity run, no such checkpoint, or a bad name.
    """
    exported = read_run_for_export(run_dir, "dual-similarity", checkpoint, name)
    run, state, _ = exported
    config = DualSimilarityTrainingConfig(**run["config"])
    net = DualSimilarityNet(config.architecture)
    net.load_state_dict(state["model"], strict=True)
    departures = [
        f"a stationary velocity field integrated in {config.architecture.integration_steps} scaling-and-squaring steps (diffeomorphic; the paper predicts the displacement)"
        if config.architecture.integration_steps else "the network predicts the displacement itself, as in the paper (not diffeomorphic)",
        f"MONAI local NCC ({config.ncc_kernel}³ coarse voxels) instead of one NCC per 68³ patch",
        "MONAI bending energy (all second derivatives) instead of the squared Laplacian",
        "Adam instead of SGD; padded convolutions on whole volumes instead of valid convolutions on 68³ patches",
        f"the network runs on a ~{config.architecture.coarse_spacing_mm:g} mm grid of the model canvas, after our rigid pre-alignment (the paper: affine FLIRT)",
    ]  # fmt: skip
    if config.architecture.input_features == "mind":
        departures.append("the network reads each image's MIND descriptor (six self-similarity channels, contrast-independent) "
                          "instead of the MR and CT intensities")  # fmt: skip
    if config.architecture.norm == "instance":
        departures.append("instance normalisation instead of batch normalisation (the same statistics in training and inference)")
    if config.synthetic_fraction > 0:
        departures.append(f"{config.synthetic_fraction:.0%} of the training pairs are synthetic: an aligned MR/CT patch of a training case, its CT "
                          f"and MR warped by a random smooth diffeomorphism (RMS displacement up to {config.synthetic_displacement_mm:g} mm, "
                          f"smoothness {config.synthetic_smoothness_mm:g} mm), learnt through the teacher term with its exact inverse field")  # fmt: skip
    if config.teacher_weight > 0:
        departures.append(f"a warm start: for the first {config.teacher_epochs} of {config.epochs} epochs the loss adds "
                          f"{config.teacher_weight:g} × the mean squared distance to the field that mono-modal demons find between the pair's "
                          "two CTs (computed by the training from the same pairs); then the intra-modality similarity alone")  # fmt: skip
    supervision = ("intra-modality similarity on pre-aligned pairs (the CT of the input MR's anatomy, the MR of the reference CT's "
                   "anatomy); aligned CTs also scored the validation cases and picked the best epoch")
    metadata = model_card("dual-similarity", name, description or "Dual-similarity inter-modality registration (MR → reference CT warp)",
                          config, exported, checkpoint, departures, supervision=supervision)  # fmt: skip
    return save_model(net, model_dir, metadata)
