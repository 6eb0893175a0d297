"""EpochEndCheckpoint: the CLI's ``checkpoint`` group (see docs/architecture.md, "DDP and exact resume").

Lightning's ``ModelCheckpoint`` writes ``last.ckpt`` only in an epoch where it also saved a top-k
checkpoint, so a best-by-rollout setting (``every_n_epochs: 5``) left nothing to resume after a kill at
epoch 3 and a ``last.ckpt`` that went stale whenever ``max_epochs`` was not a multiple of ``every_n_epochs``.
It also raised when the monitored ``rollout/success_rate`` was missing, which it is in every epoch without
a rollout. This subclass keeps the two apart, both written at the end of the training epoch (after the
rollout and interactive callbacks):

* ``last.ckpt`` after **every** epoch, whatever the monitor says (what ``--ckpt_path`` resumes from; an
  interactive round is never left on disk without the checkpoint that knows about it);
* the best (or, without a monitor, the latest) ``epoch<NNNN>.ckpt`` every ``every_n_epochs`` epochs; an
  epoch that did not log the monitored metric is skipped. ``recipes.select_checkpoint`` picks the newest
  file not named ``last*``, so best checkpoints must not be named ``last*`` (the CLI refuses such a filename).

Ties go to the later checkpoint (``ties: latest``); ``ModelCheckpoint`` keeps the earlier one. With 20
validation episodes ties are common: an image policy at 0/20 at every rollout kept its first checkpoint, 1500
steps into a 6000-step run, and tested 0/50 held-out, while later checkpoints had a validation loss half as
large. The later of two equally scored checkpoints has trained longer and, on a decaying schedule, at a smaller
rate. ``ties: earliest`` is Lightning's rule.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: which of two equally scored checkpoints is the best: the later one (default) or the earlier (Lightning)
TIES = ("latest", "earliest")


class EpochEndCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes ``last.ckpt`` every epoch, tolerates epochs without the monitor and
    breaks ties in favour of the later checkpoint (``ties``)."""

    def __init__(self, *args, ties: str = "latest", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if ties not in TIES:
            raise ValueError(f"checkpoint ties must be one of {TIES}, got {ties!r}")
        self.ties = ties

    def check_monitor_top_k(self, trainer: pl.Trainer, current: Tensor | None = None) -> bool:
        """Lightning's test with ``>=`` (``<=`` for mode min) in place of ``>`` when ties go to the latest."""
        if self.ties == "earliest" or current is None or self.save_top_k == -1 \
                or len(self.best_k_models) < self.save_top_k:
            return super().check_monitor_top_k(trainer, current)
        monitor_op = {"min": torch.le, "max": torch.ge}[self.mode]
        better_or_equal = bool(monitor_op(current, self.best_k_models[self.kth_best_model_path]))
        return trainer.strategy.reduce_boolean_decision(better_or_equal)

    @property
    def state_key(self) -> str:
        """The key plain ``ModelCheckpoint`` used, so checkpoints of earlier runs restore their best scores."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning restores the best checkpoints and their scores only when the resumed callback's ``dirpath`` is
        the recorded string, but it records the directory it derived from the logger as a relative path
        (``./lightning_logs/version_0/checkpoints``) and makes a given one absolute. A fit resumed into that same
        directory (``scripts/reproduce.py --resume`` names it) would lose its best score, let a worse epoch
        replace the best file, and write ``last-v1.ckpt`` beside ``last.ckpt``: the recorded paths are re-spelled
        in this callback's ``dirpath`` when both name one directory."""
        recorded = state_dict.get("dirpath")
        if recorded and self.dirpath and recorded != self.dirpath \
                and os.path.realpath(recorded) == os.path.realpath(self.dirpath):
            state_dict = respelled_paths(state_dict, str(self.dirpath))
        super().load_state_dict(state_dict)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Forget the monitor's last value: Lightning keeps every metric ever logged in ``callback_metrics``, so an
        epoch without a rollout would otherwise be scored with the previous rollout's figure (a tie, which
        ``ties: latest`` would take)."""
        if self.monitor is not None:
            trainer.callback_metrics.pop(self.monitor, None)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip_saving_checkpoint(trainer) or not self._should_save_on_train_epoch_end(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        """Skip the best checkpoint in an epoch without the monitored metric (rollouts run every N epochs)."""
        if self.monitor is not None and self.save_top_k != 0 and self.monitor not in monitor_candidates:
            log.info("epoch %d logged no %r: no best checkpoint this epoch (last.ckpt is still written)",
                     trainer.current_epoch, self.monitor)
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)


def respelled_paths(state_dict: dict[str, Any], dirpath: str) -> dict[str, Any]:
    """``ModelCheckpoint``'s state with ``dirpath`` and every checkpoint path in it written under ``dirpath``
    (the file names kept)."""
    def moved(path: Any) -> Any:
        return os.path.join(dirpath, os.path.basename(path)) if isinstance(path, str) and path else path

    out = dict(state_dict, dirpath=dirpath)
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in out:
            out[key] = moved(out[key])
    if "best_k_models" in out:
        out["best_k_models"] = {moved(path): score for path, score in out["best_k_models"].items()}
    return out
