"""Whole-volume inference of :class:`~.network.STNFusionNet`: MONAI sliding windows.

The canvas volume ``[Z, H, W]`` is padded to the window where it is smaller and covered
by overlapping windows of the model's patch size, blended with Gaussian weights
(``monai.inferers.sliding_window_inference``). Each window runs the whole network (the
STN predicts one affine per window, as in training). Progress is reported per window and
a cancel request stops between windows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from .network import STNFusionNet

__all__ = ["predict_volume", "window_count", "OVERLAP"]

#: Overlap of neighbouring windows (fraction of the window in every axis).
OVERLAP = 0.25


def window_count(shape: tuple[int, ...], window: tuple[int, ...], overlap: float = OVERLAP) -> int:
    """How many windows MONAI's sliding window lays over ``shape`` (its own interval rule)."""
    count = 1
    for size, roi in zip(shape, window):
        size = max(size, roi)  # smaller axes are padded to the window
        interval = max(int(roi * (1 - overlap)), 1)
        count *= 1 if size == roi else math.ceil((size - roi) / interval) + 1
    return count


@torch.inference_mode()
def predict_volume(
    net: STNFusionNet,
    x: np.ndarray,
    y: np.ndarray,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    batch_size: int = 1,
    progress: Callable[[float, str], None] | None = None,
    checkpoint: Callable[[str], None] | None = None,
) -> np.ndarray:
    """The synthetic CT ``[Z, H, W]`` (normalised units, float32) of canvas volumes ``x``, ``y``.

    ``checkpoint(what)`` is called before every window batch; it raises to stop (a
    cancelled run: :class:`~RegisterByGenerationLib.errors.Cancelled`).
    """
    window = tuple(net.config.patch)
    total = math.ceil(window_count(x.shape, window) / batch_size)
    done = [0]

    def predictor(inputs: torch.Tensor) -> torch.Tensor:
        if checkpoint is not None:
            checkpoint("the next window")
        if progress is not None:
            progress(min(done[0] / total, 1.0), f"window batch {done[0] + 1} of {total}")
        done[0] += 1
        with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext():
            return net(inputs[:, :1], inputs[:, 1:])["output"].float()

    stacked = torch.from_numpy(np.stack([x, y])[None].astype(np.float32)).to(device)
    output = sliding_window_inference(stacked, window, batch_size, predictor, overlap=OVERLAP, mode="gaussian", padding_mode="replicate")
    return output[0, 0].float().cpu().numpy()

