"""EvaluateBaseAlone: roll a residual-RL module's frozen base out alone, on the seeds its rollouts use.

Base versus base + residual on the same seeds is the comparison residual RL is judged by. It cannot be a model
argument of ``test``: with ``--ckpt_path`` the LightningCLI replaces the model's arguments by the checkpoint's
(a Lightning behaviour), so a ``--model...`` switch would be dropped without a word. A callback is not:

    python -m lit_imit test --config configs/residual/transfer_cube.yaml --ckpt_path RUN/checkpoints/last.ckpt \
        --trainer.callbacks+=callbacks.residual.EvaluateBaseAlone

``ResidualPPOModule.select_action`` then executes the base's chunks with the same histories and sampling noise,
the residual left out; ``RolloutEvaluation`` reports the success rate as usual.
"""

from __future__ import annotations

import lightning.pytorch as pl


class EvaluateBaseAlone(pl.Callback):
    """Sets ``pl_module.residual_in_evaluation = False`` for the run (and back at its end)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "residual_in_evaluation"):
            raise TypeError(f"EvaluateBaseAlone needs a residual policy (ResidualPPOModule), got "
                            f"{type(pl_module).__name__}")
        pl_module.residual_in_evaluation = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.residual_in_evaluation = True
