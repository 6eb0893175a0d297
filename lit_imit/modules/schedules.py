"""Learning-rate schedules shared by the methods (stepped once per optimizer step)."""

from __future__ import annotations

import math
from typing import Any

import torch


class WarmupCosine:
    """LR factor: linear warm-up over ``warmup`` steps, then half a cosine down to 0 at ``total`` steps.

    A callable object rather than a closure so that LambdaLR saves (and resume restores) its plain-int state.
    ``total=None`` keeps the rate constant after the warm-up.
    """

    def __init__(self, warmup: int, total: int | None) -> None:
        self.warmup = int(warmup)
        self.total = None if total is None else int(total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.total is None:
            return 1.0
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int | None, trainer: Any = None) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` entry for :class:`WarmupCosine`, stepped every optimizer step.

    ``total``: the steps the cosine spans; None takes ``trainer.estimated_stepping_batches`` when finite (an
    endless run keeps the rate constant after the warm-up).
    """
    if total is None and trainer is not None:
        estimated = trainer.estimated_stepping_batches
        total = int(estimated) if math.isfinite(estimated) else None
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
    return {"scheduler": schedule, "interval": "step", "frequency": 1}
