"""Per-key normalisation statistics as one small module.

Every policy normalises its observation keys and its actions with statistics of the training data, and those
statistics must travel with the weights (a checkpoint, a DDP broadcast, an EMA copy) or a loaded policy acts
on the wrong scale. Keeping them as buffers of one ``nn.Module`` does that with no extra code, and gives the
statistics one home instead of a set of ``stat_<key>_<name>`` attributes spread over each method.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

STAT_NAMES = ("mean", "std", "min", "max")

#: the smallest (max - min) range a min-max normalisation divides by: a constant dimension maps to -1
MIN_RANGE = 1e-4


def buffer_name(key: str, name: str) -> str:
    """Buffer attribute of statistic ``name`` of ``key`` ("images/top" -> "images__top_mean")."""
    return f"{key.replace('/', '__')}_{name}"


class Normalizer(nn.Module):
    """mean/std/min/max buffers per key, filled from the DataModule's statistics (or a checkpoint).

    Until :meth:`load` runs, the buffers hold the identity statistics (mean 0, std 1, range [-1, 1]) and
    ``initialized`` is False, so a module can warn that it trains or acts on raw values.
    """

    def __init__(self, sizes: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.keys: tuple[str, ...] = ()
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        for key, dim in (sizes or {}).items():
            self.add_key(key, dim)

    def add_key(self, key: str, dim: int) -> None:
        """Identity statistics for a new key of ``dim`` features."""
        if key in self.keys:
            raise ValueError(f"normaliser already has statistics for {key!r}")
        self.keys = (*self.keys, key)
        self.register_buffer(buffer_name(key, "mean"), torch.zeros(dim))
        self.register_buffer(buffer_name(key, "std"), torch.ones(dim))
        self.register_buffer(buffer_name(key, "min"), -torch.ones(dim))
        self.register_buffer(buffer_name(key, "max"), torch.ones(dim))

    def stat(self, key: str, name: str) -> Tensor:
        """The buffer of one statistic; a KeyError names the keys this normaliser has."""
        if key not in self.keys or name not in STAT_NAMES:
            raise KeyError(f"no statistic {name!r} for {key!r} (keys: {list(self.keys)}, names: {STAT_NAMES})")
        return getattr(self, buffer_name(key, name))

    def load(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """Copy dataset statistics (per key, a dict of arrays/tensors per statistic) into the buffers."""
        for key in self.keys:
            if key not in stats:
                raise KeyError(f"dataset statistics have no entry for {key!r} (have {sorted(stats)})")
            for name in STAT_NAMES:
                value = torch.as_tensor(np.asarray(stats[key][name]), dtype=torch.float32)
                buf = self.stat(key, name)
                if value.shape != buf.shape:
                    raise ValueError(
                        f"statistics for {key!r}/{name} have shape {tuple(value.shape)}, the model expects "
                        f"{tuple(buf.shape)}: the data's dimension does not match the model's config"
                    )
                buf.copy_(value)
        self.initialized.fill_(True)

    def mean_std(self, key: str, x: Tensor) -> Tensor:
        return (x - self.stat(key, "mean")) / self.stat(key, "std")

    def un_mean_std(self, key: str, x: Tensor) -> Tensor:
        return x * self.stat(key, "std") + self.stat(key, "mean")

    def min_max(self, key: str, x: Tensor, min_range: float | None = None) -> Tensor:
        """To [-1, 1] over the data's range (Diffusion Policy's normalisation). ``min_range`` widens a narrower
        range about its midpoint (nearly constant inputs would otherwise be scaled up without bound)."""
        lo, hi = self.stat(key, "min"), self.stat(key, "max")
        if min_range is None:
            return 2.0 * (x - lo) / (hi - lo).clamp_min(MIN_RANGE) - 1.0
        return (x - 0.5 * (lo + hi)) / (0.5 * (hi - lo)).clamp_min(0.5 * min_range)

    def un_min_max(self, key: str, x: Tensor) -> Tensor:
        lo, hi = self.stat(key, "min"), self.stat(key, "max")
        return (x + 1.0) * 0.5 * (hi - lo).clamp_min(MIN_RANGE) + lo


def rename_legacy_stat_keys(state_dict: dict[str, Any], prefix: str, keys: tuple[str, ...]) -> None:
    """Map checkpoints written before the Normalizer existed (``stat_<key>_<name>``, ``stats_initialized``
    on the policy itself) onto ``normalizer.<key>_<name>`` / ``normalizer.initialized``, in place."""
    old_flag, new_flag = f"{prefix}stats_initialized", f"{prefix}normalizer.initialized"
    if old_flag in state_dict and new_flag not in state_dict:
        state_dict[new_flag] = state_dict.pop(old_flag)
    for key in keys:
        for name in STAT_NAMES:
            old = f"{prefix}stat_{buffer_name(key, name)}"
            if old in state_dict:
                state_dict[f"{prefix}normalizer.{buffer_name(key, name)}"] = state_dict.pop(old)
