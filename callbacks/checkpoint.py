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
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

log = logging.getLogger(__name__)


class EpochEndCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes ``last.ckpt`` every epoch and tolerates epochs without the monitor."""

    @property
    def state_key(self) -> str:
        """The key plain ``ModelCheckpoint`` used, so checkpoints of earlier runs restore their best scores."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

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
