"""What TensorBoard shows of a run besides the scalars: the whole run configuration in the HPARAMS tab (model,
data and trainer settings, not just the module's arguments), tied to the metrics that matter, and rollout
videos that play in the browser.

Lightning's own hparams entry holds only the LightningModule's arguments and a constant ``hp_metric`` of -1;
the CLI turns that off (``default_hp_metric: false``) and writes this one instead.
"""

from __future__ import annotations

import io
import json
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger

#: the metrics the HPARAMS tab lists next to each run's settings (TensorBoard reads their latest values from
#: the scalars of the same tags; a run that never logs one leaves its cell empty)
HPARAM_METRICS = ("rollout/success_rate", "test/success_rate", "val/loss", "train/loss")


class RunLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger without the ``epoch`` scalar that Lightning adds to every logged batch
    of metrics: TensorBoard sorts cards by name, so its staircase was the first chart a run opened on (seen in
    a headless-browser screenshot), above the rollout success. Epochs stay in the checkpoints and their names.
    """

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """``{"model": {"init_args": {"lr": 1e-3}}}`` -> ``{"model.lr": 1e-3}``: nested keys joined by dots
    (``init_args`` levels dropped: they only say "arguments of the class above"), lists and other values as
    JSON text, None as "None" (TensorBoard's hparams take booleans, numbers and strings only)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = prefix if key == "init_args" else (f"{prefix}.{key}" if prefix else str(key))
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, name))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is None:
            flat[name] = "None"
        else:
            flat[name] = json.dumps(value, default=str, sort_keys=True)
    return flat


#: settings that say how a run was plumbed, not what it learned: left out of the HPARAMS table, where
#: TensorBoard sorts columns by name and ~130 of them buried the model's and data's settings behind
#: ``checkpoint.auto_insert_metric_name`` (seen in a headless-browser screenshot). ``config.yaml`` beside the
#: events file keeps everything.
PLUMBING = (
    "checkpoint.", "trainer.logger", "trainer.profiler", "trainer.plugins", "trainer.enable_",
    "trainer.default_root_dir", "trainer.model_registry", "trainer.barebones", "trainer.fast_dev_run",
    "trainer.detect_anomaly", "trainer.inference_mode", "trainer.use_distributed_sampler",
    "trainer.reload_dataloaders_every_n_epochs", "trainer.num_sanity_val_steps", "ckpt_path", "weights_only",
)
#: plumbing exceptions: how the checkpoint that a run's results come from was chosen
SELECTION = ("checkpoint.monitor", "checkpoint.mode", "checkpoint.save_top_k")


def settings_that_matter(flat: Mapping[str, bool | int | float | str]) -> dict[str, bool | int | float | str]:
    """The HPARAMS columns: every model and data setting (None included: "no pretrained weights" is a
    setting), the trainer's and the run's other set values, how the checkpoint was chosen; no plumbing."""
    kept = {}
    for name, value in flat.items():
        if name in SELECTION or name.startswith(("model.", "data.")):
            kept[name] = value
        elif value != "None" and not name.startswith(PLUMBING):
            kept[name] = value
    return kept


def write_hparams(experiment: Any, params: Mapping[str, bool | int | float | str],
                  metrics: Iterable[str] = HPARAM_METRICS) -> None:
    """One HPARAMS entry for this run: its settings, and the metric tags TensorBoard fills in from the
    scalars (no placeholder metric value is logged)."""
    from torch.utils.tensorboard.summary import hparams

    exp, session_start, session_end = hparams(dict(params), {name: 0.0 for name in metrics})
    writer = experiment._get_file_writer()
    for summary in (exp, session_start, session_end):
        writer.add_summary(summary)


def encode_gif(frames: Sequence[np.ndarray], fps: float) -> bytes:
    """An animated GIF of ``frames`` (H x W x 3 uint8): TensorBoard's image tab plays it."""
    from PIL import Image

    images = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, int(round(1000 / fps))), loop=0)
    return buffer.getvalue()


def write_video(experiment: Any, tag: str, frames: Sequence[np.ndarray], step: int, fps: float) -> None:
    """A rollout video in TensorBoard, as the animated GIF that ``SummaryWriter.add_video`` would make
    (without its moviepy dependency)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width = np.asarray(frames[0]).shape[:2]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=encode_gif(frames, fps))
    experiment._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
