"""Exact resume needs the random streams too: Lightning checkpoints do not carry them.

Dropout, the CVAE's reparameterisation and image augmentations draw from the global torch/numpy/python
generators. This callback stores them (per rank) at checkpoint time and puts them back when resumed training
starts (after the sanity check, before the first dataloader iterator draws its seed): where an uninterrupted
run stands in its streams after saving an end-of-epoch checkpoint.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from lit_imit.distributed import all_gather_objects, rank_and_world


def capture_rng() -> dict[str, Any]:
    """The global random states as weights-only-loadable objects (no numpy arrays)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RestoreRNG(pl.Callback):
    """Checkpoint and restore every rank's global RNG states (added by the CLI to every run)."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"per_rank": all_gather_objects(capture_rng())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict["per_rank"]
        rank, _ = rank_and_world()
        self._pending = per_rank[rank] if rank < len(per_rank) else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            restore_rng(self._pending)
            self._pending = None
