"""Exponential moving average of a network's weights during training.

Single checkpoints of the short CPU schedules are noisy (several HU between epochs on the
same validation cases); the average of the recent weights is smoother and usually
better. torch's :class:`~torch.optim.swa_utils.AveragedModel` keeps the average; this
wrapper adds what the trainer needs: swapping it into the live network for validation and
saving it as the checkpoint's ``model`` (what the next phase and the export read).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """``average ← decay·average + (1 − decay)·weights`` after every optimiser step
    (the first step copies the weights); buffers are averaged too."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def update(self, model: torch.nn.Module) -> None:
        self.averaged.update_parameters(model)

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged weights under the live network's state-dict keys (on the CPU)."""
        return {k: v.detach().cpu().clone() for k, v in self.averaged.module.state_dict().items()}

    @contextmanager
    def swapped_into(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the block with the averaged weights in ``model``; the live ones come back after."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.averaged.module.state_dict(), strict=True)
        try:
            yield
        finally:
            model.load_state_dict(live, strict=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state, strict=True)
