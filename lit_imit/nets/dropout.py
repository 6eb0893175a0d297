"""Dropout whose masks are cheap to draw on the CPU.

``torch.nn.Dropout`` on a CPU tensor draws one Bernoulli sample per element from the default generator's
Mersenne Twister. At ACT's LeRobot shape (batch 8, 302 tokens, feed-forward 3200) those draws alone took 8% of
a training step (38 masks per step, ~60 ms for the largest on one thread), and on the small CPU ACT a third of a
step. Here each 64-bit word of ``torch.randint`` gives four 16-bit uniforms, compared straight into the
mask's dtype: at that shape a forward costs 14-21 ms of CPU time against ``F.dropout``'s 60-62, a forward and
backward 20-39 ms against 56-78 (bf16-fp32; measured on a busy box).

The one difference from ``torch.nn.Dropout``: the drop probability is ``p`` rounded to a multiple of 1/65536
(0.1 becomes 0.100006), and the kept values are scaled by the exact inverse of the keep probability, so the
layer stays unbiased. Masks come from the default generator, so ``torch.manual_seed`` reproduces them. On other
devices (CUDA draws masks with Philox, fast already) this is ``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: uniforms per mask element: 16 bits, so p is resolved to 1/65536
_LEVELS = 1 << 16


def quantised_drop_probability(p: float) -> float:
    """The drop probability the mask really has: ``p`` rounded to a multiple of 1/65536."""
    return round(p * _LEVELS) / _LEVELS


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> Tensor:
    """1 where an element is kept, 0 (with probability ``quantised_drop_probability(p)``) where it is dropped, as
    a tensor of ``shape`` and ``dtype`` (0 and 1 are exact in every dtype).

    Four 16-bit uniforms come from each random 64-bit word: a signed 16-bit value v is uniform on
    [-32768, 32767], and v < -32768 + round(p * 65536) has exactly the quantised probability. The comparison
    writes its result into a tensor of ``dtype`` (``torch.ge(..., out=)``: one call; torch still converts from a
    boolean internally, which a profile shows as a copy).
    """
    n = 1
    for size in shape:
        n *= size
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    uniforms = words.view(torch.int16)[:n].view(shape)
    mask = torch.empty(shape, dtype=dtype, device=device)
    return torch.ge(uniforms, round(p * _LEVELS) - _LEVELS // 2, out=mask)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout(x, p, training)`` with the cheap CPU masks of this module (see its docstring).

    The kept values are scaled after the masking (float32 arithmetic, one rounding to ``x``'s dtype), so a bf16
    ``x`` is not multiplied by a scale already rounded to bf16 (a 0.2% bias at p = 0.1).
    """
    if not training or p == 0.0:
        return x
    p_exact = quantised_drop_probability(p)
    if x.device.type != "cpu" or not 0.0 < p_exact < 1.0:
        return F.dropout(x, p, training)
    return torch.mul(x, keep_mask(x.shape, p, x.dtype, x.device)).mul_(1.0 / (1.0 - p_exact))


class FastDropout(nn.Module):
    """Drop-in for ``nn.Dropout`` (same ``p``, same train/eval behaviour) drawing its CPU masks cheaply."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
