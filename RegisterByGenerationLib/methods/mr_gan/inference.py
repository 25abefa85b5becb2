"""One MR-GAN synthesis network over a stack of canvas slices, batch by batch."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["translate"]


def translate(generator: torch.nn.Module, slices: np.ndarray, *, device: torch.device, autocast_dtype: torch.dtype | None = None,
              batch_size: int = 4, before_batch: Callable[[int, int], None] | None = None) -> np.ndarray:  # fmt: skip
    """``generator`` on ``slices`` ``[Z, H, W]`` (normalised; H, W multiples of its
    ``size_multiple``) → ``[Z, H, W]`` float32; ``before_batch(done, total)`` is called
    before each batch (progress, cancel)."""
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    parts = []
    was_training = generator.training
    generator.eval()
    try:
        for start in range(0, len(slices), batch_size):
            if before_batch is not None:
                before_batch(start, len(slices))
            batch = torch.from_numpy(np.ascontiguousarray(slices[start : start + batch_size, None], dtype=np.float32)).to(device)
            with torch.inference_mode(), autocast:
                parts.append(generator(batch)[:, 0].float().cpu().numpy())
    finally:
        generator.train(was_training)
    return np.concatenate(parts) if parts else np.zeros_like(slices, dtype=np.float32)
