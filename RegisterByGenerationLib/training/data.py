"""Training data: SynthRAD2023-layout case folders → cached canvas volumes → random crops.

A dataset folder holds one folder per patient (the SynthRAD2023 layout; our phantom
sets use it too)::

    DATA/1PA001/mr.nii.gz     (Task 1; Task 2 has cbct.nii.gz)   the input
    DATA/1PA001/ct.nii.gz                                        the reference CT
    DATA/1PA001/mask.nii.gz                                      body mask on the input grid
    DATA/1PA001/ct_aligned.nii.gz                                optional: the aligned CT
                                                                 (phantoms), validation only

``.nii``, ``.mha`` and ``.nrrd`` are accepted too. Folders holding none of these files
(SynthRAD2023's ``overview``) are skipped. Each case is preprocessed by
:func:`RegisterByGenerationLib.preprocess.prepare_case`, the code inference runs, and
cached as ``.npz`` keyed by the files and the preprocessing settings.

``ct_aligned`` scores validation slices; a training loss sees it only when the config asks
for it (``pixel_target = "aligned"``: supervised training on phantoms, a departure the
model card states).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .. import __version__
from ..errors import InputError
from ..io import atomic_path, read_image, same_geometry
from ..preprocess import AIR_HU, prepare_case
from .config import AugmentSettings, TrainingConfig

__all__ = ["IMAGE_SUFFIXES", "CaseFiles", "CachedCase", "find_cases", "split_cases", "load_case", "SliceCropDataset", "validation_slices"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
_STEMS = ("mr", "cbct", "ct", "mask", "ct_aligned")
_LUT_SIZE = 4097  # samples of the CT normalisation's inverse on [-1, 1]


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case (one patient)."""

    case_id: str
    folder: Path
    input: Path
    reference: Path
    mask: Path
    truth: Path | None = None


def _find_file(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def find_cases(root: str | os.PathLike, modality: str | None = None) -> tuple[str, list[CaseFiles]]:
    """The cases under ``root`` and their modality.

    Args:
        root: the dataset folder.
        modality: ``"mr"`` or ``"cbct"``; None infers it from the files (all cases must agree).

    Returns:
        ``(modality, cases sorted by ID)``.

    Raises:
        InputError: no such folder, no case, a case missing a file (the message names the
            case and the file), or cases of mixed modality.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    if modality not in (None, "mr", "cbct"):
        raise InputError(f"modality: must be 'mr' or 'cbct', got {modality!r}")
    found: list[tuple[str, Path, dict[str, Path | None]]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = {stem: _find_file(folder, stem) for stem in _STEMS}
        if not any(files.values()):
            logger.info("%s: no image files, not a case; skipped", folder)
            continue
        found.append((folder.name, folder, files))
    if not found:
        raise InputError(f"{root}: no case folders found (expected <ID>/mr.nii.gz or cbct.nii.gz, ct.nii.gz and mask.nii.gz)")
    if modality is None:
        kinds = {case_id: [m for m in ("mr", "cbct") if files[m]] for case_id, _, files in found}
        for case_id, folder, _ in found:
            if len(kinds[case_id]) == 0:
                raise InputError(f"{folder}: case {case_id} has no input image (mr.nii.gz or cbct.nii.gz)")
            if len(kinds[case_id]) == 2:
                raise InputError(f"{folder}: case {case_id} has both mr and cbct; choose one with --modality")
        modality = kinds[found[0][0]][0]
        for case_id, folder, _ in found:
            if kinds[case_id][0] != modality:
                raise InputError(f"{folder}: case {case_id} is {kinds[case_id][0].upper()} but {found[0][0]} is {modality.upper()}; one dataset must hold one modality")
    cases = []
    for case_id, folder, files in found:
        names = {modality: f"{modality}.nii.gz (the input)", "ct": "ct.nii.gz (the reference CT)", "mask": "mask.nii.gz (the body mask)"}
        for stem, description in names.items():
            if files[stem] is None:
                raise InputError(f"{folder}: case {case_id} is missing {description}")
        cases.append(CaseFiles(case_id, folder, files[modality], files["ct"], files["mask"], files["ct_aligned"]))
    return modality, cases


def split_cases(cases: Sequence[CaseFiles], *, val_fraction: float, seed: int, val_cases: Sequence[str] = ()) -> tuple[list[CaseFiles], list[CaseFiles]]:
    """Split by patient (one case folder = one patient) into training and validation.

    ``val_cases`` names the validation cases explicitly; otherwise ``round(val_fraction
    * n)`` cases (at least one when there are two or more cases and the fraction is
    positive) are drawn with ``seed``.

    Raises:
        InputError: a named validation case does not exist, or nothing is left to train on.
    """
    by_id = {case.case_id: case for case in cases}
    if val_cases:
        unknown = [name for name in val_cases if name not in by_id]
        if unknown:
            raise InputError(f"val_cases: {', '.join(unknown)} not in the dataset ({', '.join(by_id)})")
        chosen = set(val_cases)
    else:
        count = round(val_fraction * len(cases))
        if val_fraction > 0 and len(cases) >= 2:
            count = max(1, count)
        order = np.random.default_rng(seed).permutation(len(cases))
        chosen = {cases[i].case_id for i in order[: min(count, len(cases) - 1)]}
    train = [case for case in cases if case.case_id not in chosen]
    val = [case for case in cases if case.case_id in chosen]
    if not train:
        raise InputError("no training cases left after the validation split")
    return train, val


@dataclass
class CachedCase:
    """One preprocessed case on the model canvas.

    Attributes:
        case_id: the case folder's name.
        x: input ``[Z, H, W]`` float32 in [-1, 1].
        y: reference CT ``[Z, H, W]`` float32 in [-1, 1] (pre-aligned, on the input grid).
        mask: body mask ``[Z, H, W]`` bool.
        truth_hu: aligned CT ``[Z, H, W]`` float32 HU, or None (validation only).
        lut: ``[2, K]``: normalised values and their HU (the CT map's inverse, sampled).
        y_target: the pixel target when ``pixel_target`` is not ``reference``
            (``[Z, H, W]`` in [-1, 1]): the reference registered onto the input by a
            classical method (``registered``) or the aligned CT (``aligned``); else None.
    """

    case_id: str
    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    truth_hu: np.ndarray | None
    lut: np.ndarray
    y_target: np.ndarray | None = None

    def to_hu(self, values: np.ndarray) -> np.ndarray:
        """Normalised CT values → HU (the inverse of the case's CT normalisation)."""
        return np.interp(values, self.lut[0], self.lut[1]).astype(np.float32)

    def body_slices(self, min_fraction: float) -> np.ndarray:
        """Indices of slices whose body covers at least ``min_fraction`` of the canvas."""
        fraction = self.mask.reshape(self.mask.shape[0], -1).mean(axis=1)
        return np.flatnonzero((fraction >= min_fraction) & (fraction > 0))


def _cache_key(files: CaseFiles, config: TrainingConfig, target: str | None) -> str:
    stats = []
    for path in (files.input, files.reference, files.mask, files.truth):
        if path is not None:
            stat = path.stat()
            stats.append([path.name, stat.st_size, stat.st_mtime_ns])
    settings = {
        "files": stats,
        "modality": config.modality,
        "pixel_spacing_mm": config.to_dict()["pixel_spacing_mm"],
        "normalization": config.normalization,
        "prealign": config.prealign,
        "seed": config.seed,
        "multiple": config.model.size_multiple,
        "target": target,
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _read_on_input_grid(path: Path, input_image: sitk.Image, case_id: str, what: str) -> sitk.Image:
    image = read_image(path)
    if not same_geometry(image, input_image, tolerance=1e-4):
        raise InputError(f"{path}: case {case_id}: the {what} is not on the input's grid (size {image.GetSize()} vs {input_image.GetSize()})")
    return image


def load_case(files: CaseFiles, config: TrainingConfig, cache_dir: str | os.PathLike | None = None, *, pixel_target: bool = True) -> CachedCase:
    """Preprocess one case as inference does, or read it from ``cache_dir``.

    ``pixel_target=False`` skips the pixel target (validation cases need none, and a
    classical registration takes a minute per case).

    Raises:
        InputError: an unreadable file, a mask or ``ct_aligned`` off the input's grid,
            images that do not overlap, or no ``ct_aligned`` for the ``aligned`` pixel
            target (messages name the file and the case).
    """
    target_kind = {"reference": None, "registered": config.target_registration, "aligned": "aligned"}[config.pixel_target]
    target_kind = target_kind if pixel_target else None
    if target_kind == "aligned" and files.truth is None:
        raise InputError(f"{files.folder}: case {files.case_id} has no ct_aligned.nii.gz, which pixel_target 'aligned' needs")
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{files.case_id}-{_cache_key(files, config, target_kind)}.npz"
        if cache.is_file():
            with np.load(cache) as stored:
                truth = stored["truth_hu"] if stored["has_truth"] else None
                target = stored["y_target"] if stored["y_target"].size else None
                return CachedCase(files.case_id, stored["x"], stored["y"], stored["mask"], truth, stored["lut"], target)
    input_image = read_image(files.input)
    reference = read_image(files.reference)
    mask = _read_on_input_grid(files.mask, input_image, files.case_id, "mask")
    truth = _read_on_input_grid(files.truth, input_image, files.case_id, "aligned CT") if files.truth else None
    try:
        prepared = prepare_case(
            input_image, reference, modality=config.modality, pixel_spacing=config.pixel_spacing_mm, canvas=None,
            normalization=config.normalization, prealign=config.prealign, seed=config.seed, multiple=config.model.size_multiple,
        )  # fmt: skip
    except InputError as error:
        raise InputError(f"{files.folder}: case {files.case_id}: {error}") from error
    grid = prepared.grid
    mask_canvas = grid.to_canvas(mask, interpolator=sitk.sitkNearestNeighbor, default_value=0) > 0.5
    truth_hu = grid.to_canvas(truth, default_value=AIR_HU) if truth is not None else None
    levels = np.linspace(-1.0, 1.0, _LUT_SIZE, dtype=np.float32)
    lut = np.stack([levels, np.asarray(prepared.ct_map.inverse(levels), dtype=np.float32)])
    target = None
    if target_kind == "aligned":
        target = prepared.ct_map.forward(truth_hu)
    elif target_kind is not None:
        target = prepared.ct_map.forward(grid.to_canvas(_registered_reference(files, input_image, reference, config), default_value=AIR_HU))
    case = CachedCase(files.case_id, prepared.x, prepared.y, mask_canvas, truth_hu, lut, target)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as stream:
            np.savez(stream, x=case.x, y=case.y, mask=case.mask, lut=lut, has_truth=truth_hu is not None,
                     truth_hu=truth_hu if truth_hu is not None else np.zeros(0, np.float32),
                     y_target=target if target is not None else np.zeros(0, np.float32))  # fmt: skip
    return case


def _registered_reference(files: CaseFiles, input_image: sitk.Image, reference: sitk.Image, config: TrainingConfig) -> sitk.Image:
    """The reference registered onto the input by ``config.target_registration`` (HU, input grid)."""
    from ..methods.classical.registration import run_baseline

    logger.info("%s: registering the reference onto the input (%s) for the pixel target", files.case_id, config.target_registration)
    try:
        return run_baseline(config.target_registration, input_image, reference, modality=config.modality, seed=config.seed)
    except InputError as error:
        raise InputError(f"pixel_target 'registered': {error}") from error


def validation_slices(case: CachedCase, count: int | None, min_fraction: float) -> np.ndarray:
    """``count`` slice indices spread evenly over the body slices (all when None)."""
    body = case.body_slices(min_fraction)
    if body.size == 0:
        body = np.arange(case.x.shape[0])
    if count is None or count >= body.size:
        return body
    return body[np.round(np.linspace(0, body.size - 1, count)).astype(int)]


class SliceCropDataset(torch.utils.data.Dataset):
    """Random ``crop × crop`` patches of body slices drawn across all training volumes.

    Item ``i`` of epoch ``e`` is a slice (``i`` modulo the number of usable slices) with
    a crop centred on a random body pixel, its randomness drawn from
    ``default_rng([seed, e, i])``: the same (seed, epoch, index) gives the same crop on
    any process, which makes distributed sampling and exact resumption simple.

    Each item is a dict of ``[1, crop, crop]`` float32 tensors: ``x`` (input), ``y``
    (reference at the same place) and ``y_shifted`` (the reference cropped up to
    ``reference_shift`` pixels away, for Stage 2's contextual loss, RbG §IV-B-3), and,
    when the cases have it, ``y_target`` (the pixel target at the same
    place; flipped with the others but never moved by the reference augmentation).

    Args:
        cases: the training cases.
        crop: crop side in pixels; slices smaller than that are padded (air).
        seed: the run's seed.
        length: items per epoch; None = one per usable slice.
        min_body_fraction: slices with less body than this fraction are not used.
        reference_shift: maximum shift of ``y_shifted``, pixels.
        augment: TorchIO augmentation settings (None or disabled = none).
        modality: ``"mr"`` enables the MR bias field augmentation.
    """

    def __init__(
        self,
        cases: Sequence[CachedCase],
        crop: int,
        *,
        seed: int = 0,
        length: int | None = None,
        min_body_fraction: float = 0.05,
        reference_shift: int = 0,
        augment: AugmentSettings | None = None,
        modality: str = "mr",
    ) -> None:
        if crop <= 0:
            raise ValueError(f"crop must be positive, got {crop}")
        self.cases = list(cases)
        self.crop = int(crop)
        self.seed = int(seed)
        self.reference_shift = int(reference_shift)
        self.slices = [(c, int(z)) for c, case in enumerate(self.cases) for z in case.body_slices(min_body_fraction)]
        if not self.slices:
            raise InputError(f"no training slice has a body mask covering {100 * min_body_fraction:g} % of the canvas")
        self.length = len(self.slices) if length is None else int(length)
        self.epoch = 0
        self.augmentation = _build_augmentation(augment, modality)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        case_index, z = self.slices[int(index) % len(self.slices)]
        case = self.cases[case_index]
        body = np.argwhere(case.mask[z])
        cy, cx = body[rng.integers(len(body))]
        top, left = self._corner(cy, case.x.shape[1]), self._corner(cx, case.x.shape[2])
        shift = rng.integers(-self.reference_shift, self.reference_shift + 1, size=2) if self.reference_shift else (0, 0)
        x = _crop(case.x[z], top, left, self.crop, pad=float(case.x[z].min()))
        y = _crop(case.y[z], top, left, self.crop, pad=-1.0)
        y_shifted = _crop(case.y[z], top + int(shift[0]), left + int(shift[1]), self.crop, pad=-1.0)
        sample = {"x": x, "y": y, "y_shifted": y_shifted}
        if case.y_target is not None:
            sample["y_target"] = _crop(case.y_target[z], top, left, self.crop, pad=-1.0)
        if self.augmentation is not None:
            sample = self.augmentation(sample, int(rng.integers(2**62)))
        return {key: torch.from_numpy(np.ascontiguousarray(value[None], dtype=np.float32)) for key, value in sample.items()}

    def _corner(self, centre: int, size: int) -> int:
        """Top/left index of a crop around ``centre``, kept inside the slice when it fits."""
        start = int(centre) - self.crop // 2
        return int(np.clip(start, 0, size - self.crop)) if size >= self.crop else (size - self.crop) // 2


def _crop(image: np.ndarray, top: int, left: int, size: int, pad: float) -> np.ndarray:
    """``image[top:top+size, left:left+size]`` with ``pad`` outside the image."""
    out = np.full((size, size), pad, dtype=np.float32)
    h, w = image.shape
    r0, r1 = max(top, 0), min(top + size, h)
    c0, c1 = max(left, 0), min(left + size, w)
    if r1 > r0 and c1 > c0:
        out[r0 - top : r1 - top, c0 - left : c1 - left] = image[r0:r1, c0:c1]
    return out


class _Augmentation:
    """TorchIO transforms on a 2D crop (as a ``[1, H, W, 1]`` volume), seeded per item."""

    def __init__(self, settings: AugmentSettings, modality: str) -> None:
        import torchio as tio

        self.tio = tio
        spatial = []
        if settings.flip_lr:
            spatial.append(tio.RandomFlip(axes=(1,), flip_probability=0.5))
        self.spatial = tio.Compose(spatial) if spatial else None
        reference = []
        if settings.reference_degrees > 0 or settings.reference_translation_px > 0:
            t = float(settings.reference_translation_px)
            reference.append(tio.RandomAffine(
                scales=0, degrees=(0, 0, 0, 0, -settings.reference_degrees, settings.reference_degrees),
                translation=(-t, t, -t, t, 0, 0), isotropic=True, default_pad_value="minimum", image_interpolation="linear",
            ))  # fmt: skip
        self.reference = tio.Compose(reference) if reference else None
        intensity = []
        if modality == "mr" and settings.input_bias_field > 0:
            intensity.append(tio.RandomBiasField(coefficients=settings.input_bias_field, order=3))
        if settings.input_gamma > 0:
            intensity.append(tio.RandomGamma(log_gamma=(-settings.input_gamma, settings.input_gamma)))
        self.intensity = tio.Compose(intensity) if intensity else None
        self.random_contrast = settings.input_random_contrast

    def __call__(self, sample: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
        tio = self.tio
        # TorchIO draws its parameters from torch's global generator: fork it and seed
        # it from the item's seed, so augmentation is reproducible and leaves the
        # training loop's random state alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            volume = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None, :, :, None]  # noqa: E731
            subject = tio.Subject({key: tio.ScalarImage(tensor=volume(value)) for key, value in sample.items()})
            if self.spatial is not None:
                subject = self.spatial(subject)
            result = {key: subject[key].data[0, :, :, 0].numpy() for key in sample}
            if self.reference is not None:
                for key in ("y", "y_shifted"):
                    result[key] = self.reference(tio.ScalarImage(tensor=volume(result[key]))).data[0, :, :, 0].numpy()
            if self.intensity is not None:
                # Gamma and bias field act on positive intensities: map [-1, 1] → [0, 1] and back.
                # (TorchIO's gamma keeps the sign of the few values below the 0.5th percentile.)
                unit = (result["x"] + 1.0) / 2.0
                unit = self.intensity(tio.ScalarImage(tensor=volume(unit))).data[0, :, :, 0].numpy()
                result["x"] = unit * 2.0 - 1.0
        if self.random_contrast > 0:
            result["x"] = random_contrast(result["x"], np.random.default_rng(seed), self.random_contrast)
        return result


#: Knots of :func:`random_contrast`'s curve over the input's [-1, 1] range.
CONTRAST_KNOTS = 8


def random_contrast(x: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
    """With ``probability``, ``x`` (in [-1, 1]) through a random piecewise-linear curve:
    values at :data:`CONTRAST_KNOTS` even knots drawn uniformly in [-1, 1], except -1 ↦ -1
    (air stays dark, so the body outline is kept). Not monotone: tissues swap order, as
    between MR sequences. TorchIO and MONAI offer only monotone remappings (gamma,
    histogram shift), hence this function."""
    if rng.random() >= probability:
        return x
    knots = np.linspace(-1.0, 1.0, CONTRAST_KNOTS)
    values = np.concatenate([[-1.0], rng.uniform(-1.0, 1.0, CONTRAST_KNOTS - 1)])
    return np.interp(x, knots, values).astype(x.dtype)


def _build_augmentation(settings: AugmentSettings | None, modality: str) -> _Augmentation | None:
    if settings is None or not settings.enabled:
        return None
    return _Augmentation(settings, modality)
