"""Exponential moving average of the weights, as a Lightning callback for any LightningModule.

Diffusion Policy evaluates and deploys an EMA of its weights (Chi et al., RSS 2023; diffusion_policy) with the warm-up schedule of
its ``EMAModel``: the n-th update (n = 0, 1, ...) uses

    decay(n) = 0                                              if n - update_after_step - 1 <= 0
             = clip(1 - (1 + s / inv_gamma) ** -power, min_decay, max_decay),   s = n - update_after_step - 1

so the average starts as a copy of the weights and forgets ever more slowly (power 0.75: 0.999 after ~10k
updates, capped at 0.9999 after ~215k). One update follows every optimizer step. Floating-point
parameters are averaged; buffers (normalisation statistics, norm-layer running stats) are always the live
ones — average-free, like Diffusion Policy, which copies BatchNorm state rather than averaging it.

Where the averaged weights are used:

* validation, test and predict: swapped into the module for the duration of the loop (``evaluate_averaged``);
* other callbacks (the rollout evaluator): ``with ema.averaged(pl_module): ...`` swaps them in and restores
  the training weights afterwards, whatever happens inside;
* checkpoints: ``checkpoint["state_dict"]`` holds the **averaged** weights, so a checkpoint loaded alone
  (``load_from_checkpoint``, ``test --ckpt_path``) runs the averaged policy; the raw training weights and
  the average travel in this callback's state, and on ``fit`` resume ``on_load_checkpoint`` puts the raw
  weights back into the module, so training continues bit-exactly. The averaged tensors are the same
  objects in both places, so ``torch.save`` writes them once (a checkpoint holds two copies of the
  weights, not three).

Limits: plain single-device or DDP training (every rank holds the full weights and updates the same
average); not for sharded strategies (FSDP, DeepSpeed ZeRO-3). ``ModelCheckpoint(save_weights_only=True)``
skips callback hooks, so such checkpoints hold the raw weights.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor


def ema_decay(
    num_updates: int, power: float = 0.75, inv_gamma: float = 1.0, min_decay: float = 0.0,
    max_decay: float = 0.9999, update_after_step: int = 0,
) -> float:
    """Decay used by the update that follows ``num_updates`` earlier updates (Diffusion Policy's EMAModel)."""
    step = max(0, num_updates - update_after_step - 1)
    if step <= 0:
        return 0.0
    value = 1.0 - (1.0 + step / inv_gamma) ** -power
    return max(min_decay, min(value, max_decay))


class EMA(Callback):
    """Keeps an exponential moving average of a module's floating-point parameters (see module doc).

    Args:
        decay_power: ``power`` of the warm-up schedule (0.75 in Diffusion Policy).
        inv_gamma: ``inv_gamma`` of the schedule (1.0).
        min_decay, max_decay: clip of the decay (0, 0.9999).
        update_after_step: updates before the average starts to lag (0).
        evaluate_averaged: swap the average in during validation, test and predict loops.
        save_averaged: write the average into ``checkpoint["state_dict"]``.
    """

    def __init__(
        self,
        decay_power: float = 0.75,
        inv_gamma: float = 1.0,
        min_decay: float = 0.0,
        max_decay: float = 0.9999,
        update_after_step: int = 0,
        evaluate_averaged: bool = True,
        save_averaged: bool = True,
    ) -> None:
        super().__init__()
        self.decay_power = decay_power
        self.inv_gamma = inv_gamma
        self.min_decay = min_decay
        self.max_decay = max_decay
        self.update_after_step = update_after_step
        self.evaluate_averaged = evaluate_averaged
        self.save_averaged = save_averaged
        self.num_updates = 0
        self.decay = 0.0  # decay of the last update, for inspection/logging
        self._ema: dict[str, Tensor] | None = None
        self._backup: dict[str, Tensor] | None = None  # training weights while the average is swapped in
        self._module: pl.LightningModule | None = None
        self._last_global_step = 0
        self._loop_swapped = False

    # ---- schedule and update ---------------------------------------------------------------------------
    def decay_at(self, num_updates: int) -> float:
        return ema_decay(
            num_updates, self.decay_power, self.inv_gamma, self.min_decay, self.max_decay, self.update_after_step
        )

    @property
    def initialized(self) -> bool:
        return self._ema is not None

    @property
    def averaged_weights(self) -> dict[str, Tensor]:
        """The averaged parameters by name (empty before the first fit)."""
        return dict(self._ema or {})

    @staticmethod
    def _parameters(pl_module: pl.LightningModule) -> dict[str, Tensor]:
        return {name: p for name, p in pl_module.named_parameters() if p.dtype.is_floating_point}

    def _initialize(self, pl_module: pl.LightningModule) -> None:
        self._ema = {name: p.detach().clone() for name, p in self._parameters(pl_module).items()}

    def _align(self, pl_module: pl.LightningModule) -> None:
        """Check the average matches the module's parameters and lives on their device/dtype."""
        assert self._ema is not None
        params = self._parameters(pl_module)
        if params.keys() != self._ema.keys():
            missing, extra = sorted(params.keys() - self._ema.keys()), sorted(self._ema.keys() - params.keys())
            raise RuntimeError(f"EMA state does not match the module: missing {missing[:5]}, unexpected {extra[:5]}")
        for name, p in params.items():
            if self._ema[name].device != p.device or self._ema[name].dtype != p.dtype:
                self._ema[name] = self._ema[name].to(device=p.device, dtype=p.dtype)

    @torch.no_grad()
    def update(self, pl_module: pl.LightningModule) -> None:
        """One EMA step towards the module's current parameters."""
        assert self._ema is not None
        decay = self.decay_at(self.num_updates)
        params = self._parameters(pl_module)
        averaged = [self._ema[name] for name in params]
        live = [p.detach() for p in params.values()]
        if decay == 0.0:
            torch._foreach_copy_(averaged, live)
        else:
            torch._foreach_lerp_(averaged, live, 1.0 - decay)
        self.decay = decay
        self.num_updates += 1

    # ---- swapping ----------------------------------------------------------------------------------------
    @contextmanager
    def averaged(self, pl_module: pl.LightningModule) -> Iterator[None]:
        """Run the block with the averaged weights in ``pl_module``; a no-op before the first fit or if nested."""
        if self._ema is None or self._backup is not None:
            yield
            return
        self._swap_in(pl_module)
        try:
            yield
        finally:
            self._swap_out(pl_module)

    @torch.no_grad()
    def _swap_in(self, pl_module: pl.LightningModule) -> None:
        assert self._ema is not None and self._backup is None
        self._align(pl_module)
        params = self._parameters(pl_module)
        self._backup = {name: p.detach().clone() for name, p in params.items()}
        for name, p in params.items():
            p.copy_(self._ema[name])

    @torch.no_grad()
    def _swap_out(self, pl_module: pl.LightningModule) -> None:
        assert self._backup is not None
        for name, p in self._parameters(pl_module).items():
            p.copy_(self._backup[name])
        self._backup = None

    def _loop_start(self, pl_module: pl.LightningModule) -> None:
        if self.evaluate_averaged and self._ema is not None and self._backup is None:
            self._swap_in(pl_module)
            self._loop_swapped = True

    def _loop_end(self, pl_module: pl.LightningModule) -> None:
        if self._loop_swapped:
            self._swap_out(pl_module)
            self._loop_swapped = False

    # ---- Lightning hooks --------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._module = pl_module

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._ema is None:
            self._initialize(pl_module)
        self._align(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_global_step = trainer.global_step  # after any checkpoint restore

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # global_step counts optimizer steps, so gradient accumulation updates once per real step
        if trainer.global_step > self._last_global_step:
            self._last_global_step = trainer.global_step
            self.update(pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loop_start(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loop_end(pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loop_start(pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loop_end(pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loop_start(pl_module)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loop_end(pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._loop_end(pl_module)  # never leave the average in the module after a crash inside a loop

    # ---- checkpointing -----------------------------------------------------------------------------------
    def _live_weights(self) -> dict[str, Tensor]:
        if self._backup is not None:
            return dict(self._backup)
        assert self._module is not None
        return {name: p.detach() for name, p in self._parameters(self._module).items()}

    def state_dict(self) -> dict[str, Any]:
        """Plain ints/floats and tensors only (checkpoints load with ``weights_only=True``)."""
        state: dict[str, Any] = {"num_updates": int(self.num_updates), "decay": float(self.decay)}
        if self._ema is not None:
            state["ema"] = dict(self._ema)
            if self._module is not None:
                state["live"] = self._live_weights()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_updates = int(state_dict["num_updates"])
        self.decay = float(state_dict.get("decay", 0.0))
        if "ema" in state_dict:
            # clone: the loaded tensors share storage with checkpoint["state_dict"]
            self._ema = {name: t.detach().clone() for name, t in state_dict["ema"].items()}

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self.save_averaged or self._ema is None:
            return
        weights = checkpoint["state_dict"]
        for name, tensor in self._ema.items():
            if name in weights:
                weights[name] = tensor

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Resuming a fit: the module was just loaded with the average; put the raw training weights back."""
        state = (checkpoint.get("callbacks") or {}).get(self.state_key)
        if not state or "live" not in state or trainer.state.fn != TrainerFn.FITTING:
            return
        params = self._parameters(pl_module)
        with torch.no_grad():
            for name, tensor in state["live"].items():
                if name in params:
                    params[name].copy_(tensor)


def ema_weights_if_any(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """A context that puts the EMA weights in ``pl_module`` when ``trainer`` has an :class:`EMA` callback
    (evaluations roll out the averaged policy, as its checkpoints hold it), and does nothing otherwise."""
    ema = next((cb for cb in trainer.callbacks if isinstance(cb, EMA)), None)
    return ema.averaged(pl_module) if ema is not None else nullcontext()
