"""``overview.png``: one picture to check a run at a glance.

Two rows (an axial and a coronal slice) and five columns: the input (MR/CBCT), the
reference CT after rigid pre-alignment, the pseudo-CT, the input's edges drawn on the
pseudo-CT (alignment: the edges must follow the pseudo-CT's outlines), and the bone
labels on the pseudo-CT. Images are shown in physical proportions (mm, so thick slices
do not squash the coronal view) in radiological convention (patient's right on the
left, anterior or superior at the top), with orientation letters, a 5 cm scale bar and
windows suited to each image: CT [-250, 750] HU (soft tissue and bone together; cortical
bone saturates), MR and CBCT from their 5th and 99.5th percentiles inside the body mask. The axial slice goes
through the middle of the bones, the coronal one through the femoral heads.

Drawn with matplotlib's Agg canvas on a private figure (no pyplot state, safe in
threads and without a display) and written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .bone_labels import BONE_COLORS, BONE_LABELS
from .errors import OutputError
from .geometry import to_axial
from .io import atomic_path, same_geometry
from .mask import coarse_body_mask

__all__ = ["CT_WINDOW_HU", "OVERVIEW_FILE", "render_overview"]

#: Display window of CT images (HU): soft tissue and bone in one view.
CT_WINDOW_HU = (-250.0, 750.0)
OVERVIEW_FILE = "overview.png"
_EDGE_COLOR = (1.0, 0.85, 0.0)  # amber: visible on grey, distinct from the bone colours


def render_overview(
    input_image: sitk.Image,
    reference_prealigned: sitk.Image,
    pseudo_ct: sitk.Image,
    bones: sitk.Image | None = None,
    path: str | os.PathLike = OVERVIEW_FILE,
    *,
    modality: str = "mr",
    title: str | None = None,
) -> Path:
    """Draw the overview of a run and write it as a PNG.

    Args:
        input_image: the MR or CBCT.
        reference_prealigned: the reference CT resampled onto the input grid.
        pseudo_ct: the generated CT on the input grid (HU).
        bones: bone label map on the input grid (:data:`BONE_LABELS` values), or None.
        path: output file (``.png``).
        modality: ``"mr"`` or ``"cbct"`` (the input's window and column title).
        title: a line above the panels (e.g. case and model name).

    Returns:
        ``path``.

    Raises:
        ValueError: an image is not 3D or not on the input's grid, or unknown modality.
        OutputError: the file cannot be written.
    """
    if modality not in ("mr", "cbct"):
        raise ValueError(f"modality must be 'mr' or 'cbct', got {modality!r}")
    named = {"reference_prealigned": reference_prealigned, "pseudo_ct": pseudo_ct, "bones": bones}
    if input_image.GetDimension() != 3:
        raise ValueError(f"input_image must be 3D, got {input_image.GetDimension()}D")
    for name, image in named.items():
        if image is not None and not same_geometry(image, input_image, tolerance=1e-4):
            raise ValueError(f"{name} must be on the input's grid (size {input_image.GetSize()}, spacing {input_image.GetSpacing()}), got size {image.GetSize()}, spacing {image.GetSpacing()}")
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path}: output folder {path.parent} does not exist")

    volumes = {
        "input": _array(input_image),
        "reference": _array(reference_prealigned),
        "pseudo_ct": _array(pseudo_ct),
    }
    labels = None if bones is None else _array(bones).astype(np.uint8)
    spacing = to_axial(pseudo_ct).GetSpacing()  # x, y, z of the canonical arrays
    z, y = _slices(volumes["pseudo_ct"], labels)
    input_window = _percentile_window(volumes["input"], _array(coarse_body_mask(input_image, modality=modality)) > 0)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    sx, sy, sz = spacing
    views = {
        "Axial": (lambda v: v[z], (sx, sy), ("R", "L", "A", "P")),
        "Coronal": (lambda v: v[:, y][::-1], (sx, sz), ("R", "L", "S", "I")),
    }
    heights = [views["Axial"][0](volumes["input"]).shape[0] * sy, views["Coronal"][0](volumes["input"]).shape[0] * sz]
    width_mm = volumes["input"].shape[2] * sx
    columns = [f"Input ({modality.upper()})", "Reference CT, pre-aligned", "Pseudo-CT", "Input edges on pseudo-CT", "Bones on pseudo-CT"]
    panel_width = 3.2
    fig = Figure(figsize=(panel_width * len(columns), panel_width * sum(heights) / width_mm + 1.4), facecolor="black")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(columns), height_ratios=heights, hspace=0.08, wspace=0.03, left=0.03, right=0.995, top=0.9, bottom=0.08)
    for row, (row_name, (cut, (du, dv), letters)) in enumerate(views.items()):
        shown = {key: cut(volume) for key, volume in volumes.items()}
        extent = (0, shown["input"].shape[1] * du, 0, shown["input"].shape[0] * dv)
        edges = _edges(shown["input"], input_window)
        for col, column in enumerate(columns):
            ax = fig.add_subplot(grid[row, col])
            ax.set_facecolor("black")
            if col == 0:
                ax.imshow(shown["input"], cmap="gray", vmin=input_window[0], vmax=input_window[1], extent=extent, origin="upper", interpolation="bilinear")
            elif col == 1:
                ax.imshow(shown["reference"], cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], extent=extent, origin="upper", interpolation="bilinear")
            else:
                ax.imshow(shown["pseudo_ct"], cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], extent=extent, origin="upper", interpolation="bilinear")
            if col == 3:
                overlay = np.zeros((*edges.shape, 4))
                overlay[edges] = (*_EDGE_COLOR, 1.0)
                ax.imshow(overlay, extent=extent, origin="upper", interpolation="nearest")
            if col == 4 and labels is not None:
                ax.imshow(_label_rgba(cut(labels)), extent=extent, origin="upper", interpolation="nearest")
            _decorate(ax, letters, extent, scale_bar=(row, col) == (0, 0))
            if row == 0:
                ax.set_title(column, color="white", fontsize=10)
            if col == 0:
                ax.set_ylabel(row_name, color="white", fontsize=10)
    if labels is not None:
        present = [value for value in BONE_LABELS if (labels == value).any()]
        handles = [Patch(facecolor=BONE_COLORS[v], edgecolor="none", label=BONE_LABELS[v].replace("_", " ")) for v in present]
        if handles:
            fig.legend(handles=handles, loc="lower right", ncol=len(handles), frameon=False, fontsize=8, labelcolor="white", bbox_to_anchor=(0.995, 0.0))
    else:
        fig.text(0.995, 0.02, "no bone segmentation", color="white", ha="right", fontsize=8)
    fig.text(0.03, 0.02, f"Windows: CT {CT_WINDOW_HU[0]:.0f} to {CT_WINDOW_HU[1]:.0f} HU; {modality.upper()} {input_window[0]:.4g} to {input_window[1]:.4g} (5th-99.5th percentile in the body). Edges: Canny on the input.", color="white", fontsize=8)
    if title:
        fig.suptitle(title, color="white", fontsize=12, y=0.985)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, facecolor=fig.get_facecolor())
    except OSError as error:
        raise OutputError(f"{path}: cannot be written ({error.strerror or error})") from error
    return path


def _array(image: sitk.Image) -> np.ndarray:
    """Voxels of ``image`` in canonical axial order [z (I→S), y (A→P), x (R→L)]."""
    return sitk.GetArrayFromImage(to_axial(image))


def _slices(pseudo_ct: np.ndarray, labels: np.ndarray | None) -> tuple[int, int]:
    """Axial index z through the middle of the labelled bones and coronal index y
    through the femoral heads (the middle of the femurs and hips): the planes where a
    misalignment of the pelvis shows best. Without labels, voxels above 200 HU stand
    in; without those, the middle of the volume."""
    bone = labels > 0 if labels is not None and labels.any() else pseudo_ct > 200
    if not bone.any():
        return pseudo_ct.shape[0] // 2, pseudo_ct.shape[1] // 2
    z = int(np.median(np.nonzero(bone)[0]))
    limbs = np.isin(labels, [v for v, name in BONE_LABELS.items() if name.startswith(("femur", "hip"))]) if labels is not None else bone
    y = int(np.median(np.nonzero(limbs if limbs.any() else bone)[1]))
    return z, y


def _percentile_window(volume: np.ndarray, body: np.ndarray) -> tuple[float, float]:
    """5th and 99.5th percentile of the voxels inside the body (all voxels if it is
    empty): gas in the bowel and dark cortical bone go black rather than compressing the
    soft-tissue contrast."""
    values = volume[body] if body.any() else volume.ravel()
    values = values[:: max(1, values.size // 1_000_000)].astype(np.float64)
    low, high = np.percentile(values, [5, 99.5])
    return (float(low), float(high)) if high > low else (float(low), float(low) + 1.0)


def _edges(slice_2d: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Canny edges (scikit-image, sigma 2 px; hysteresis 0.1/0.25 of the window) of a
    windowed input slice: the strong outlines (skin, bone, organs), not every fascia."""
    from skimage.feature import canny

    scaled = np.clip((slice_2d.astype(np.float64) - window[0]) / (window[1] - window[0]), 0.0, 1.0)
    return canny(scaled, sigma=2.0, low_threshold=0.1, high_threshold=0.25)


def _label_rgba(labels_2d: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*labels_2d.shape, 4))
    for value, colour in BONE_COLORS.items():
        rgba[labels_2d == value] = (*colour, 0.55)
    return rgba


def _decorate(ax, letters: tuple[str, str, str, str], extent: tuple[float, ...], *, scale_bar: bool) -> None:
    """Orientation letters (left, right, top, bottom), no ticks, optional 5 cm scale bar."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    from matplotlib import patheffects

    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    style = {"color": "white", "fontsize": 8, "fontweight": "bold", "transform": ax.transAxes, "path_effects": outline}
    left, right, top, bottom = letters
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    if scale_bar and extent[1] > 60:
        x0, y0 = extent[1] - 55.0, extent[3] * 0.06
        ax.plot([x0, x0 + 50.0], [y0, y0], color="white", linewidth=2, path_effects=outline)
        ax.text(x0 + 25.0, y0 + extent[3] * 0.02, "5 cm", color="white", fontsize=7, ha="center", va="bottom", path_effects=outline)
