"""What a person sees of a run: rollout frames scaled up and captioned, the video playing in TensorBoard, and
the whole run configuration in the HPARAMS tab with no constant ``hp_metric``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lit_imit.cli import main
from lit_imit.tensorboard import encode_gif, flatten_config, settings_that_matter
from lit_imit.video import caption, captioned, watchable
from tests.test_cli import _state_only_cfg, synthetic_store


def test_small_frames_are_scaled_up_by_an_integer_factor_and_captioned():
    frame = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    big = watchable(frame)
    assert big.shape == (240, 320, 3)
    np.testing.assert_array_equal(big[::10, ::10], frame)  # nearest neighbour: every pixel kept, none invented
    assert watchable(np.zeros((480, 640, 3), np.uint8)).shape == (480, 640, 3)  # large enough already

    gray = np.full((96, 128, 3), 128, np.uint8)
    labelled = captioned(gray, caption(12, 2.0, 5.0, True))
    assert labelled.shape == (288, 384, 3)
    band = labelled[:20]
    assert band.max() == 255 and band.min() < 128  # white text on a darkened band
    assert (labelled[40:] == 128).all()  # the picture itself untouched
    assert caption(12, 2.0, 5.0, True) == "step 12  reward 2  return 5  SUCCESS"
    assert caption(0, None, 0.0, False) == "step 0  reward -  return 0"


def test_gif_holds_every_frame_at_the_given_rate():
    frames = [np.full((8, 10, 3), v, np.uint8) for v in (0, 100, 200)]
    gif = Image.open(io.BytesIO(encode_gif(frames, fps=10)))
    assert gif.n_frames == 3 and gif.size == (10, 8) and gif.info["duration"] == 100


def test_flatten_config_joins_keys_and_drops_init_args_levels():
    flat = flatten_config({"model": {"class_path": "M", "init_args": {"lr": 1e-3, "cameras": ["top"]}},
                           "trainer": {"max_steps": 5, "logger": None}})
    assert flat == {"model.class_path": "M", "model.lr": 1e-3, "model.cameras": '["top"]',
                    "trainer.max_steps": 5, "trainer.logger": "None"}


def test_the_hparams_table_keeps_model_and_data_settings_and_drops_plumbing():
    flat = {"checkpoint.dirpath": "None", "checkpoint.monitor": "rollout/success_rate", "model.pretrained_backbone":
            "None", "model.lr": 1e-3, "data.env_kwargs": "None", "trainer.max_steps": 5, "trainer.min_steps": "None",
            "trainer.logger.flush_secs": 120, "seed_everything": 1}
    assert settings_that_matter(flat) == {"checkpoint.monitor": "rollout/success_rate", "model.pretrained_backbone":
                                          "None", "model.lr": 1e-3, "data.env_kwargs": "None",
                                          "trainer.max_steps": 5, "seed_everything": 1}


def _hparams(accumulator: EventAccumulator) -> tuple[set[str], set[str]]:
    content = accumulator.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    return set(session.session_start_info.hparams), {m.name.tag for m in experiment.metric_infos}


def test_fit_logs_the_configuration_a_captioned_video_and_no_hp_metric(tmp_path, monkeypatch):
    """The CLI's own logger (no logger in the config): HPARAMS holds model, data and trainer settings with
    the success rate and losses as its metrics; the rollout video is an animated image of captioned frames."""
    monkeypatch.chdir(tmp_path)
    data_dir = synthetic_store(tmp_path / "data", episodes=3, hw=(8, 8))
    rollout = {"class_path": "callbacks.rollout.RolloutEvaluation",
               "init_args": {"task": "transfer_cube", "n_episodes": 1, "n_envs": 1, "every_n_epochs": 1,
                             "max_steps": 5, "video_fps": 10, "env_kwargs": {"image_size": [24, 32]}}}
    cfg = _state_only_cfg(tmp_path, data_dir, {}, callbacks=[rollout], max_epochs=1)
    del cfg["trainer"]["logger"], cfg["trainer"]["default_root_dir"]
    main({"fit": cfg})
    run = tmp_path / "lightning_logs" / "version_0"
    accumulator = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    assert "hp_metric" not in accumulator.Tags()["scalars"] and "epoch" not in accumulator.Tags()["scalars"]
    assert "train/loss" in accumulator.Tags()["scalars"]
    names, metrics = _hparams(accumulator)
    assert {"model.class_path", "model.lr", "data.batch_size", "data.data_dir", "trainer.max_epochs",
            "checkpoint.monitor", "seed_everything"} <= names
    # no plumbing columns before the settings that matter (TensorBoard sorts them by name)
    assert not {"checkpoint.dirpath", "checkpoint.auto_insert_metric_name", "trainer.logger.flush_secs",
                "trainer.profiler", "ckpt_path"} & names
    assert sorted(names)[0] == "checkpoint.mode" and sorted(names)[3].startswith("data.")
    assert {"rollout/success_rate", "val/loss", "train/loss"} <= metrics
    (video,) = accumulator.Images("rollout/video")
    gif = Image.open(io.BytesIO(video.encoded_image_string))
    assert gif.format == "GIF" and gif.n_frames == 5 and gif.size == (320, 240)
    assert (run / "videos" / "epoch_0000.mp4").stat().st_size > 0
