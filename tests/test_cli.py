"""The CLI end to end: help, fit -> TensorBoard + checkpoints, test with rollouts, exact resume, DDP."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from lit_imit.cli import main
from tests.conftest import ROOT, make_episode_arrays

TINY_ACT = {
    "class_path": "lit_imit.modules.act.ACTModule",
    "init_args": {
        "cameras": ["top"], "chunk_size": 10, "n_action_steps": 10, "dim_model": 32, "n_heads": 2,
        "dim_feedforward": 64, "n_encoder_layers": 1, "n_decoder_layers": 1, "n_vae_encoder_layers": 1,
        "latent_dim": 4, "lr": 1e-3, "lr_backbone": 1e-3,
    },
}


TINY_DIFFUSION = {
    "class_path": "lit_imit.modules.diffusion.DiffusionModule",
    "init_args": {
        "cameras": ["top"], "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "down_dims": [16, 32],
        "diffusion_step_embed_dim": 16, "num_keypoints": 4, "image_feature_dim": 8, "crop_shape": [40, 56],
        "num_inference_steps": 2, "warmup_steps": 2,
    },
}
DIFFUSION_DATA = {"chunk_size": 8, "n_obs_steps": 2, "action_offset": -1}
EMA = {"class_path": "callbacks.ema.EMA", "init_args": {}}
MODELS = {"act": (TINY_ACT, {}, []), "diffusion": (TINY_DIFFUSION, DIFFUSION_DATA, [EMA])}


def synthetic_store(root: Path, episodes: int = 4, hw=(48, 64)) -> str:
    from lit_imit.data import EpisodeStore

    store = EpisodeStore(root)
    for i in range(episodes):
        store.add(make_episode_arrays(30, hw=hw, seed=i), {"task": "transfer_cube", "source": "teacher"})
    return str(root)


def config(tmp_path: Path, data: dict, model: str = "act", **trainer) -> dict:
    module, data_args, callbacks = MODELS[model]
    trainer.setdefault("callbacks", [])
    trainer["callbacks"] = [*callbacks, *trainer["callbacks"]]
    return {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": 2, "limit_train_batches": 4,
            "limit_val_batches": 2, "log_every_n_steps": 1, "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(tmp_path), "name": "logs", "version": 0}},
            **trainer,
        },
        "model": module,
        "data": {"class_path": "lit_imit.data.EpisodeDataModule",
                 "init_args": {"chunk_size": 10, "batch_size": 4, "num_workers": 0, "val_episodes": 1,
                               **data_args, **data}},
    }


def test_help_commands_work():
    for args in (["--help"], ["fit", "--help"]):
        out = subprocess.run([sys.executable, "-m", "lit_imit", *args], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert "fit" in out.stdout and out.stdout.startswith("usage: lit_imit ")
        assert ("robot imitation learning" in out.stdout) == (args == ["--help"])  # our words, not Lightning's
        assert "predict" not in out.stdout.split("\n")[0]


def test_malformed_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: lit_imit.modules.act.ACTModule\n  init_args: {chunk_size: lots}\n")
    out = subprocess.run([sys.executable, "-m", "lit_imit", "fit", "--config", str(bad)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "chunk_size" in out.stderr


class StopAfterEpochs(pl.Callback):
    """Stops a run after ``n`` epochs, as if it had been killed right after saving that epoch's checkpoint."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.n:
            trainer.should_stop = True


def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("model", ["act", pytest.param("diffusion", marks=pytest.mark.slow)])
def test_exact_resume_matches_uninterrupted_run(tmp_path, model):
    data_dir = synthetic_store(tmp_path / "data")
    straight = main({"fit": config(tmp_path / "a", {"data_dir": data_dir}, model, max_epochs=4)})
    ckpt_dir = tmp_path / "b" / "logs" / "version_0" / "checkpoints"
    interrupted = config(tmp_path / "b", {"data_dir": data_dir}, model, max_epochs=4)
    interrupted["trainer"]["callbacks"].append({"class_path": "tests.test_cli.StopAfterEpochs", "init_args": {"n": 2}})
    main({"fit": interrupted})  # the same run, killed after epoch 2 (schedules still see 4 epochs)
    resumed_cfg = config(tmp_path / "b", {"data_dir": data_dir}, model, max_epochs=4)
    resumed_cfg["trainer"]["logger"]["init_args"]["version"] = 1
    resumed = main({"fit": {**resumed_cfg, "ckpt_path": str(ckpt_dir / "last.ckpt")}})
    assert straight.trainer.global_step == resumed.trainer.global_step == 16
    a, b = _params(straight.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    opt_a = straight.trainer.optimizers[0].state_dict()["state"]
    opt_b = resumed.trainer.optimizers[0].state_dict()["state"]
    for idx in opt_a:
        for name in opt_a[idx]:
            assert torch.equal(opt_a[idx][name], opt_b[idx][name]), (idx, name)


STATE_ACT = {**TINY_ACT, "init_args": {**TINY_ACT["init_args"], "cameras": []}}


def _interrupted_and_resumed(tmp_path: Path, make_cfg, stop_after: int, ckpt: str = "last.ckpt"):
    """The run of ``make_cfg(root)`` stopped after ``stop_after`` epochs, then resumed from ``ckpt``."""
    interrupted = make_cfg(tmp_path / "b")
    interrupted["trainer"]["callbacks"].append(
        {"class_path": "tests.test_cli.StopAfterEpochs", "init_args": {"n": stop_after}})
    main({"fit": interrupted})
    resumed_cfg = make_cfg(tmp_path / "b")
    resumed_cfg["trainer"]["logger"]["init_args"]["version"] = 1
    ckpt_dir = tmp_path / "b" / "logs" / "version_0" / "checkpoints"
    return main({"fit": {**resumed_cfg, "ckpt_path": str(ckpt_dir / ckpt)}})


STATE_DIFFUSION = {**TINY_DIFFUSION, "init_args": {**TINY_DIFFUSION["init_args"], "cameras": []}}


@pytest.mark.parametrize("model", ["act", "diffusion"])
def test_exact_resume_with_dataloader_workers(tmp_path, model):
    """With worker processes (the quickstart's ``num_workers: 2``) the loader is iterated, and its workers
    prefetch, before Lightning calls ``set_epoch``: the resumed epoch must still draw its own order. Diffusion
    adds its own random streams (noise, diffusion steps) and the EMA callback's state."""
    data_dir = synthetic_store(tmp_path / "data", episodes=3, hw=(8, 8))

    def make_cfg(root: Path) -> dict:
        cfg = config(root, {"data_dir": data_dir, "cameras": [], "num_workers": 2}, model=model, max_epochs=2,
                     limit_train_batches=2, limit_val_batches=0)
        cfg["model"] = STATE_ACT if model == "act" else STATE_DIFFUSION
        return cfg

    straight = main({"fit": make_cfg(tmp_path / "a")})
    resumed = _interrupted_and_resumed(tmp_path, make_cfg, stop_after=1)
    assert straight.trainer.global_step == resumed.trainer.global_step == 4
    a, b = _params(straight.model), _params(resumed.model)
    for key in a:
        assert torch.equal(a[key], b[key]), key


class Killed(RuntimeError):
    pass


class KillAtEpochStart(pl.Callback):
    """Kills a run when epoch ``n`` starts: unlike a graceful stop, nothing is saved on the way out."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.n:
            raise Killed(f"killed at the start of epoch {trainer.current_epoch}")


class FakeRollout(pl.Callback):
    """Logs ``rollout/success_rate`` (``rates[epoch]``) only in the epochs listed, as rollouts every N epochs do."""

    def __init__(self, rates: dict[int, float]) -> None:
        self.rates = {int(k): float(v) for k, v in rates.items()}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch in self.rates:
            pl_module.log("rollout/success_rate", self.rates[trainer.current_epoch], on_epoch=True)


def _state_only_cfg(root: Path, data_dir: str, checkpoint: dict, callbacks: list | None = None, **trainer) -> dict:
    cfg = config(root, {"data_dir": data_dir, "cameras": []}, limit_train_batches=1, limit_val_batches=1,
                 callbacks=callbacks or [], **trainer)
    cfg["model"] = STATE_ACT
    cfg["checkpoint"] = checkpoint
    return cfg


def _saved_epochs(ckpt_dir: Path) -> dict[str, int]:
    return {p.name: torch.load(p, weights_only=True)["epoch"] for p in sorted(ckpt_dir.glob("*.ckpt"))}


def test_last_checkpoint_is_written_every_epoch_whatever_every_n_epochs(tmp_path):
    """``every_n_epochs: 3`` spaces the epoch checkpoints only: a run killed after epoch 2 can resume, and a
    4-epoch run's last.ckpt is epoch 4's, not epoch 3's."""
    data_dir = synthetic_store(tmp_path / "data", episodes=3, hw=(8, 8))
    killed = _state_only_cfg(tmp_path / "killed", data_dir, {"every_n_epochs": 3}, max_epochs=4,
                             callbacks=[{"class_path": "tests.test_cli.KillAtEpochStart", "init_args": {"n": 2}}])
    with pytest.raises(Killed):
        main({"fit": killed})
    assert _saved_epochs(tmp_path / "killed" / "logs" / "version_0" / "checkpoints") == {"last.ckpt": 1}
    main({"fit": _state_only_cfg(tmp_path / "full", data_dir, {"every_n_epochs": 3}, max_epochs=4)})
    saved = _saved_epochs(tmp_path / "full" / "logs" / "version_0" / "checkpoints")
    assert saved == {"epoch0002.ckpt": 2, "last.ckpt": 3}


def test_best_checkpoint_skips_epochs_without_the_monitored_metric(tmp_path):
    """``--checkpoint.every_n_epochs 1`` with rollouts every 2 epochs: no crash after epoch 1, the best is
    chosen among the epochs that rolled out, last.ckpt follows every epoch and select_checkpoint finds the best."""
    from lit_imit.recipes import select_checkpoint

    data_dir = synthetic_store(tmp_path / "data", episodes=3, hw=(8, 8))
    rollout = {"class_path": "tests.test_cli.FakeRollout", "init_args": {"rates": {1: 0.5, 3: 0.25}}}
    checkpoint = {"monitor": "rollout/success_rate", "mode": "max", "save_top_k": 1, "every_n_epochs": 1}
    cli = main({"fit": _state_only_cfg(tmp_path, data_dir, checkpoint, callbacks=[rollout], max_epochs=4)})
    version_dir = tmp_path / "logs" / "version_0"
    assert _saved_epochs(version_dir / "checkpoints") == {"epoch0001.ckpt": 1, "last.ckpt": 3}
    assert select_checkpoint(version_dir).name == "epoch0001.ckpt"
    assert Path(cli.trainer.checkpoint_callback.best_model_path).name == "epoch0001.ckpt"
    # a newer stray file (copied in, left by another run) does not change the choice: last.ckpt records it
    stray = version_dir / "checkpoints" / "epoch0009.ckpt"
    stray.write_bytes((version_dir / "checkpoints" / "last.ckpt").read_bytes())
    assert select_checkpoint(version_dir).name == "epoch0001.ckpt"


@pytest.mark.parametrize("ties, chosen", [("latest", "epoch0003.ckpt"), ("earliest", "epoch0001.ckpt")])
def test_equal_rollout_scores_choose_the_later_checkpoint_unless_told_otherwise(tmp_path, ties, chosen):
    """Rollouts at epochs 1 and 3 score the same: by default the later checkpoint is the best (it trained longer),
    ``ties: earliest`` keeps Lightning's rule; a strictly worse later score never replaces the best."""
    from lit_imit.recipes import select_checkpoint

    data_dir = synthetic_store(tmp_path / "data", episodes=3, hw=(8, 8))
    rollout = {"class_path": "tests.test_cli.FakeRollout", "init_args": {"rates": {1: 0.0, 3: 0.0, 4: -0.1}}}
    checkpoint = {"monitor": "rollout/success_rate", "mode": "max", "save_top_k": 1, "every_n_epochs": 1,
                  "ties": ties}
    main({"fit": _state_only_cfg(tmp_path, data_dir, checkpoint, callbacks=[rollout], max_epochs=5)})
    version_dir = tmp_path / "logs" / "version_0"
    assert select_checkpoint(version_dir).name == chosen
    assert set(_saved_epochs(version_dir / "checkpoints")) == {chosen, "last.ckpt"}


def test_a_resumed_checkpoint_callback_keeps_its_best_when_its_directory_is_spelled_another_way(tmp_path,
                                                                                             monkeypatch):
    """Lightning records a logger-derived checkpoint directory as ``./lightning_logs/...`` and makes a given one
    absolute: resumed into the same directory, the best score and paths are restored (re-spelled), so a worse
    later epoch cannot replace the best and ``last.ckpt`` is overwritten, not joined by ``last-v1.ckpt``."""
    import torch

    from callbacks.checkpoint import EpochEndCheckpoint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck").mkdir()
    recorded = {"dirpath": "./ck", "best_model_score": torch.tensor(0.5), "best_model_path": "./ck/epoch0001.ckpt",
                "kth_best_model_path": "./ck/epoch0001.ckpt", "kth_value": torch.tensor(0.5),
                "best_k_models": {"./ck/epoch0001.ckpt": torch.tensor(0.5)}, "last_model_path": "./ck/last.ckpt"}
    same = EpochEndCheckpoint(dirpath=str(tmp_path / "ck"), monitor="rollout/success_rate", mode="max")
    same.load_state_dict(dict(recorded))
    assert float(same.best_model_score) == 0.5 and same.kth_value == 0.5
    assert same.best_model_path == same.kth_best_model_path == str(tmp_path / "ck" / "epoch0001.ckpt")
    assert same.last_model_path == str(tmp_path / "ck" / "last.ckpt")
    assert list(same.best_k_models) == [str(tmp_path / "ck" / "epoch0001.ckpt")]
    other = EpochEndCheckpoint(dirpath=str(tmp_path / "elsewhere"), monitor="rollout/success_rate", mode="max")
    with pytest.warns(UserWarning, match="dirpath has changed"):
        other.load_state_dict(dict(recorded))  # another directory: Lightning's rule, only best_model_path
    assert other.best_model_score is None and other.best_k_models == {}


def test_unknown_tie_rule_is_refused():
    from callbacks.checkpoint import EpochEndCheckpoint

    with pytest.raises(ValueError, match="ties must be one of"):
        EpochEndCheckpoint(ties="random")


@pytest.mark.parametrize("bad", [{"save_last": False}, {"save_last": "link"}, {"filename": "last_{epoch}"}])
def test_checkpoint_settings_that_would_lose_the_resume_point_are_refused(tmp_path, bad):
    cfg = _state_only_cfg(tmp_path, str(tmp_path / "data"), bad)
    with pytest.raises(ValueError, match="checkpoint"):
        main(cfg, run=False)


def _tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in log_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


@pytest.mark.slow
def test_fit_records_demos_trains_rolls_out_and_test_reports(tmp_path, caplog):
    rollout = {"class_path": "callbacks.rollout.RolloutEvaluation",
               "init_args": {"task": "transfer_cube", "n_episodes": 2, "n_envs": 2, "every_n_epochs": 2,
                             "max_steps": 60, "env_kwargs": {"cameras": ["top"], "image_size": [48, 64]}}}
    data = {"data_dir": str(tmp_path / "data"), "task": "transfer_cube", "generate_if_missing": 3,
            "image_size": [48, 64], "action_dim": 14}
    cfg = config(tmp_path, data, callbacks=[rollout])
    cfg["checkpoint"] = {"monitor": "rollout/success_rate", "mode": "max", "save_top_k": 1, "every_n_epochs": 2}
    cli = main({"fit": cfg})
    log_dir = tmp_path / "logs" / "version_0"
    tags = _tags(log_dir)
    for tag in ("train/loss", "train/l1", "train/kl", "val/loss", "rollout/success_rate", "rollout/return"):
        assert tag in tags, (tag, tags)
    ckpts = sorted(p.name for p in (log_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(name.startswith("epoch") for name in ckpts)
    assert (log_dir / "videos" / "epoch_0001.mp4").stat().st_size > 0
    assert len(os.listdir(tmp_path / "data")) >= 3
    test_cfg = config(tmp_path / "test", {**data, "test_loss": True}, callbacks=[rollout])
    with caplog.at_level(logging.INFO, logger="callbacks.rollout"):
        tested = main(["test", "--config", _write(tmp_path / "test.yaml", test_cfg),
                       "--ckpt_path", str(log_dir / "checkpoints" / "last.ckpt")])
    assert {"test/loss", "test/l1", "test/kl", "test/success_rate", "test/success_ci_low"} <= set(
        tested.trainer.callback_metrics)
    printed = caplog.text
    assert "test success rate" in printed and "95% CI" in printed
    assert cli.trainer.global_step == 8


def _write(path: Path, cfg: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("model", [pytest.param("act", marks=pytest.mark.slow), "diffusion"])
def test_ddp_two_cpu_processes_train_and_evaluate(tmp_path, model):
    data_dir = synthetic_store(tmp_path / "data")
    rollout = {"class_path": "callbacks.rollout.RolloutEvaluation",
               "init_args": {"task": "transfer_cube", "n_episodes": 2, "n_envs": 1, "every_n_epochs": 1,
                             "max_steps": 20, "video": True,
                             "env_kwargs": {"cameras": ["top"], "image_size": [48, 64]}}}
    # with a video: rank 0 writes it into the log directory, which Lightning resolves by a collective
    cfg = config(tmp_path, {"data_dir": data_dir}, model, callbacks=[rollout], devices=2, strategy="ddp",
                 max_epochs=1)
    path = _write(tmp_path / "ddp.yaml", cfg)
    out = subprocess.run([sys.executable, "-m", "lit_imit", "fit", "--config", path],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    tags = _tags(tmp_path / "logs" / "version_0")
    assert "rollout/success_rate" in tags and "train/loss" in tags
    assert (tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "logs" / "version_0" / "videos" / "epoch_0000.mp4").exists()


@pytest.mark.slow
def test_exact_resume_under_ddp_with_dataloader_workers(tmp_path):
    """Two DDP ranks with 2 loader workers each: stopped after epoch 1 and resumed from last.ckpt, the run
    ends with the weights and optimiser state of the uninterrupted one (each rank's shard of the sampler and
    its workers' prefetch must follow the resumed epoch)."""
    data_dir = synthetic_store(tmp_path / "data", episodes=4, hw=(8, 8))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on a shared two-core box

    def run(root: Path, version: int = 0, stop_after: int | None = None, ckpt: Path | None = None) -> Path:
        cfg = config(root, {"data_dir": data_dir, "cameras": [], "num_workers": 2}, model="act", max_epochs=2,
                     limit_train_batches=2, limit_val_batches=0, devices=2, strategy="ddp")
        cfg["model"] = STATE_ACT
        cfg["trainer"]["logger"]["init_args"]["version"] = version
        if stop_after is not None:
            cfg["trainer"]["callbacks"].append(
                {"class_path": "tests.test_cli.StopAfterEpochs", "init_args": {"n": stop_after}})
        path = _write(root / f"ddp{version}.yaml", cfg)
        args = [sys.executable, "-m", "lit_imit", "fit", "--config", path]
        if ckpt is not None:
            args += ["--ckpt_path", str(ckpt)]
        out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        return root / "logs" / f"version_{version}" / "checkpoints" / "last.ckpt"

    straight = torch.load(run(tmp_path / "a"), map_location="cpu", weights_only=True)
    stopped = run(tmp_path / "b", stop_after=1)
    resumed = torch.load(run(tmp_path / "b", version=1, ckpt=stopped), map_location="cpu", weights_only=True)
    assert straight["global_step"] == resumed["global_step"] == 4
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for idx, state in straight["optimizer_states"][0]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, resumed["optimizer_states"][0]["state"][idx][name]), (idx, name)


SHIPPED_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "skills")


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_parses(path, capsys):
    """Each shipped config is a complete LightningCLI config: it resolves, with its callbacks, model and data
    classes, and prints (nothing is instantiated). The skills configs have their own test."""
    import yaml

    from lit_imit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("lit_imit.modules.")
    assert printed["data"]["class_path"].startswith("lit_imit.data.")
    assert printed["checkpoint"]["save_on_train_epoch_end"] is True


PAPER_ALOHA_CONFIGS = ["act/transfer_cube.yaml", "act/insertion.yaml", "diffusion/transfer_cube.yaml",
                       "diffusion/insertion.yaml"]


@pytest.mark.parametrize("name", PAPER_ALOHA_CONFIGS)
def test_paper_aloha_configs_render_with_the_full_look(name, capsys):
    """The paper configs record their demos and roll out with shadows and multisampling (``fast_render``
    false), as the benchmark renders: a policy trained on one look and scored on another would be off."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / name), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["env_kwargs"]["fast_render"] is False  # the recorded demos
    callbacks = printed["trainer"]["callbacks"]
    rollouts = [cb for cb in callbacks if cb["class_path"] == "callbacks.rollout.RolloutEvaluation"]
    assert len(rollouts) == 1 and rollouts[0]["init_args"]["env_kwargs"]["fast_render"] is False
    assert "renders with" in (ROOT / "configs" / name).read_text().lower()  # and the header says so


def test_datamodule_records_demos_with_its_env_kwargs(tmp_path, monkeypatch):
    """``env_kwargs`` reach the recorder's env (how the paper configs get ``fast_render: false`` demos)."""
    import lit_imit.data.datamodule as datamodule
    from lit_imit.data import EpisodeDataModule

    calls = []
    monkeypatch.setattr(datamodule, "record_teacher_episodes", lambda *args, **kwargs: calls.append(kwargs))
    dm = EpisodeDataModule(str(tmp_path / "data"), task="transfer_cube", generate_if_missing=2,
                           env_kwargs={"fast_render": False})
    dm.prepare_data()
    assert len(calls) == 1 and calls[0]["env_kwargs"]["fast_render"] is False


POLICY_CONFIGS = [p for p in SHIPPED_CONFIGS
                  if p.parent.name in ("act", "diffusion", "vinn") or p.name == "quickstart.yaml"]


@pytest.mark.parametrize("path", POLICY_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_policy_configs_agree_with_their_data(path):
    """Model and DataModule of every shipped ACT/Diffusion/VINN config pass the check made when they meet
    (cameras, state keys, chunk/horizon, history, action size). Network widths are shrunk: they do not matter."""
    import importlib

    import yaml

    cfg = yaml.safe_load(path.read_text())

    def build(section, **shrink):
        module_name, _, cls_name = cfg[section]["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name)
        args = {**cfg[section].get("init_args", {}), **shrink}
        return cls(**{k: v for k, v in args.items() if k in cls.__init__.__code__.co_varnames})

    name = cfg["model"]["class_path"]
    shrink = ({"dim_model": 32, "n_heads": 4, "dim_feedforward": 32, "pretrained_backbone": None}
              if name.endswith("ACTModule") else {"down_dims": [16, 32, 64]})
    model, data = build("model", **shrink), build("data")
    data.adopt_model_settings(model)  # as fit does: what the data config leaves out comes from the model
    model.check_data_compatibility(data)


def test_model_and_data_mismatch_is_an_error_naming_both_keys(tmp_path):
    from lit_imit.data.datamodule import EpisodeDataModule
    from lit_imit.modules.act import ACTModule

    model = ACTModule(cameras=["top", "left_wrist"], chunk_size=20, n_action_steps=20, dim_model=32, n_heads=4,
                      dim_feedforward=32)
    data = EpisodeDataModule(str(tmp_path), cameras=["top"], chunk_size=10, action_dim=14)
    with pytest.raises(ValueError) as err:
        model.check_data_compatibility(data)
    message = str(err.value)
    assert "model.init_args.cameras=['top', 'left_wrist']" in message and "data.init_args.cameras" in message
    assert "model.init_args.chunk_size=20 needs data.init_args.chunk_size to be at least 20, got 10" in message
    model.check_data_compatibility(EpisodeDataModule(str(tmp_path), cameras=["top", "left_wrist"], chunk_size=20))


def test_rollout_image_size_must_match_the_training_frames(tmp_path):
    from callbacks.rollout import RolloutEvaluation
    from lit_imit.data.datamodule import EpisodeDataModule
    from lit_imit.data.episodes import EpisodeStore
    from lit_imit.data.recording import record_teacher_episodes

    store = EpisodeStore(tmp_path / "d", create=True)
    record_teacher_episodes("transfer_cube", 1, store, cameras=["top"], image_size=(24, 32))
    dm = EpisodeDataModule(str(tmp_path / "d"), cameras=["top"], chunk_size=5, val_episodes=0)
    dm.setup("fit")
    RolloutEvaluation("transfer_cube", env_kwargs={"cameras": ["top"], "image_size": [24, 32]}).check_view(dm)
    with pytest.raises(ValueError, match=r"image_size=\[12, 16\] but the training frames of 'images/top' are \[24, 32\]"):
        RolloutEvaluation("transfer_cube", env_kwargs={"cameras": ["top"], "image_size": [12, 16]}).check_view(dm)


def test_rollout_camera_fovy_must_match_the_recording(tmp_path):
    """Episodes recorded with a narrowed camera say so in their attrs; a rollout with another view is refused."""
    from callbacks.rollout import RolloutEvaluation
    from lit_imit.data.datamodule import EpisodeDataModule
    from lit_imit.data.episodes import EpisodeStore, read_attrs
    from lit_imit.data.recording import record_teacher_episodes

    store = EpisodeStore(tmp_path / "d", create=True)
    record_teacher_episodes("transfer_cube", 1, store, cameras=["top"], image_size=(24, 32),
                            env_kwargs={"camera_fovy": {"top": 40}})
    assert read_attrs(store.path(store.ids()[0]))["camera_fovy"] == {"top": 40.0}
    dm = EpisodeDataModule(str(tmp_path / "d"), cameras=["top"], chunk_size=5, val_episodes=0)
    dm.setup("fit")
    RolloutEvaluation("transfer_cube", env_kwargs={"image_size": [24, 32], "camera_fovy": {"top": 40}}).check_view(dm)
    with pytest.raises(ValueError, match=r"camera_fovy=None but the training frames were rendered with "
                                         r"camera_fovy=\{'top': 40.0\}"):
        RolloutEvaluation("transfer_cube", env_kwargs={"image_size": [24, 32]}).check_view(dm)


def test_ckpt_path_says_which_model_settings_the_checkpoint_overrides(tmp_path, monkeypatch):
    """Lightning replaces the config's model with the checkpoint's hyper-parameters; the CLI names each setting
    that was dropped that way (here a changed ``kl_weight``) instead of ignoring it silently."""
    import lit_imit.cli as cli

    data_dir = synthetic_store(tmp_path / "data")
    main({"fit": config(tmp_path / "a", {"data_dir": data_dir}, max_epochs=1)})
    ckpt = tmp_path / "a" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    warnings: list[str] = []
    monkeypatch.setattr(cli.log, "warning", lambda msg, *args: warnings.append(msg % args))
    changed = config(tmp_path / "a", {"data_dir": data_dir}, max_epochs=1)
    changed["model"] = {**TINY_ACT, "init_args": {**TINY_ACT["init_args"], "kl_weight": 3.5}}
    changed["trainer"]["logger"]["init_args"]["version"] = 1
    resumed = main({"fit": {**changed, "ckpt_path": str(ckpt)}})
    assert resumed.model.hparams.kl_weight != 3.5  # the checkpoint's value won
    assert len(warnings) == 1 and "model.kl_weight=3.5" in warnings[0], warnings
    assert "lr=" not in warnings[0]  # unchanged settings are not listed

    warnings.clear()
    same = config(tmp_path / "a", {"data_dir": data_dir}, max_epochs=1)
    same["trainer"]["logger"]["init_args"]["version"] = 2
    main({"fit": {**same, "ckpt_path": str(ckpt)}})
    assert warnings == []
