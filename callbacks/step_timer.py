"""StepTimer: the clock time at chosen training steps, written to a JSON file, so that the throughput of a real
``fit`` can be measured from outside the process without counting its start-up.

A ``fit`` spends its first seconds (or minutes) importing, building the model, computing the normalisation
statistics, starting the loader's workers and selecting kernels; its last step is followed by the final
checkpoint. Timing the whole process mixes all of that into the step rate. This callback stamps the end of given
optimizer steps (``trainer.global_step`` after the step, so step ``s`` means that ``s`` updates are done), and
:func:`lit_imit.benchmarking.steady_rate` turns two stamps into steps/s: everything between them (data loading,
logging, checkpoints every N steps, epoch boundaries) counts, the start-up before the first stamp does not.
``benchmarks.act_fit`` (``scripts/benchmark.py --only act_fit``) runs it inside ``python -m lit_imit fit``::

    trainer:
      callbacks:
        - class_path: callbacks.step_timer.StepTimer
          init_args: {path: step_times.json, steps: [10, 60]}

The file holds ``{"clock": "perf_counter", "steps": {"10": t10, "60": t60}, "unix": {...}}``: ``time.perf_counter``
seconds (differences are what count) and the same instants as Unix time (to set against a launch time taken in
another process). Stamps are taken before the checkpoint callbacks of the same step (Lightning runs
``ModelCheckpoint`` last), so a checkpoint written at step ``s`` falls in the interval after ``s``. On CUDA the
stamp waits for the queued kernels (``torch.cuda.synchronize``), at the chosen steps only, so the timed steps are
not slowed. Only rank 0 writes the file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch


class StepTimer(pl.Callback):
    """Records ``time.perf_counter()`` at the end of the optimizer steps ``steps`` and writes them to ``path``."""

    def __init__(self, path: str, steps: Sequence[int]) -> None:
        """
        Args:
            path: the JSON file to write (parent directories are created); written when training ends or
                stops with an exception (with the stamps taken so far), and replaced atomically.
            steps: global steps to stamp (>= 1): step s is stamped once the s-th optimizer update is done.
        """
        steps = sorted({int(s) for s in steps})
        if not steps or steps[0] < 1:
            raise ValueError(f"StepTimer.steps must be global steps >= 1, got {list(steps)!r}")
        self.path = Path(path)
        self.steps = steps
        self.perf: dict[int, float] = {}
        self.unix: dict[int, float] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step in self.steps and step not in self.perf:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            self.perf[step], self.unix[step] = time.perf_counter(), time.time()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.write(trainer)

    def write(self, trainer: pl.Trainer) -> None:
        """The stamps taken so far, as ``{"clock", "requested", "steps", "unix"}`` (keys of JSON objects are text)."""
        if not trainer.is_global_zero:
            return
        record = {"clock": "perf_counter", "requested": self.steps,
                  "steps": {str(k): v for k, v in sorted(self.perf.items())},
                  "unix": {str(k): v for k, v in sorted(self.unix.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.path)
