"""Policy directories: config.json + model.safetensors + README card, loaded into the checkpoint's policy.

The policies are tiny and untrained, with random (non-identity) normalisation statistics, so a weight or a
statistic that the directory lost would change the actions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lit_imit.modules.base import PolicyModule
from lit_imit.policies import PolicyLoadError, export_policy, load_policy, save_policy
from tests.test_policies import trainer_checkpoint

HW = (48, 64)
TINY = {
    "act": ("lit_imit.modules.act.ACTModule", dict(
        cameras=["top"], state_dim=7, action_dim=7, chunk_size=10, n_action_steps=10, dim_model=32, n_heads=2,
        dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=4,
        pretrained_backbone=None)),
    "diffusion": ("lit_imit.modules.diffusion.DiffusionModule", dict(
        cameras=["top"], state_dim=7, action_dim=7, n_obs_steps=2, horizon=8, n_action_steps=4, down_dims=[16, 32],
        diffusion_step_embed_dim=16, num_keypoints=4, image_feature_dim=8, crop_shape=[40, 56],
        num_inference_steps=2)),
    "bc": ("lit_imit.modules.bc.BCModule", dict(state_dim=7, action_dim=7, hidden_dims=(16,))),
}


def tiny_policy(kind: str) -> PolicyModule:
    from lit_imit.policies import import_class

    path, kwargs = TINY[kind]
    torch.manual_seed(0)
    module = import_class(path)(**kwargs)
    rng = np.random.default_rng(1)
    module.load_stats({key: {"mean": rng.normal(size=7), "std": rng.uniform(0.5, 2, 7),
                             "min": -rng.uniform(1, 2, 7), "max": rng.uniform(1, 2, 7)} for key in ("qpos", "action")})
    return module


def observations(module: PolicyModule, steps: int = 12, rows: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    obs = []
    for _ in range(steps):
        o = {"qpos": rng.normal(size=(rows, 7)).astype(np.float32)}
        for cam in getattr(module, "cameras", None) or []:
            o[f"images/{cam}"] = rng.integers(0, 255, (rows, *HW, 3), dtype=np.uint8)
        obs.append(o)
    return obs


def actions(module: PolicyModule, obs: list[dict[str, np.ndarray]]) -> list[torch.Tensor]:
    module.reset()
    return [module.select_action(o) for o in obs]


@pytest.mark.parametrize("kind", ["act", "diffusion", "bc"])
def test_a_policy_directory_acts_exactly_as_its_checkpoint(tmp_path, kind):
    original = tiny_policy(kind)
    trainer_checkpoint(original, tmp_path / "policy.ckpt")
    out = export_policy(tmp_path / "policy.ckpt", tmp_path / "policy")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["policy_class"] == TINY[kind][0] and config["init_args"]["action_dim"] == 7

    from safetensors.torch import load_file

    saved = load_file(out / "model.safetensors")
    assert saved.keys() == original.state_dict().keys()  # every weight and buffer, nothing else (no optimiser)
    assert {"normalizer.qpos_mean", "normalizer.action_std", "normalizer.initialized"} <= saved.keys()

    from_checkpoint, from_directory = load_policy(tmp_path / "policy.ckpt"), load_policy(out)
    assert type(from_directory) is type(original) and not from_directory.training
    for key, value in from_checkpoint.state_dict().items():
        assert torch.equal(from_directory.state_dict()[key], value), key
    obs = observations(original)
    for a, b in zip(actions(from_checkpoint, obs), actions(from_directory, obs)):
        assert torch.equal(a, b)


def test_save_policy_refuses_what_it_cannot_round_trip(tmp_path):
    from lit_imit.modules.bc import BCModule

    with pytest.raises(PolicyLoadError, match="no normalisation statistics"):
        save_policy(BCModule(state_dim=7, action_dim=7, hidden_dims=(16,)), tmp_path / "nostats")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty and not a policy directory"):
        save_policy(tiny_policy("bc"), tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    save_policy(tiny_policy("bc"), tmp_path / "bc")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_policy(tiny_policy("bc"), tmp_path / "bc")
    save_policy(tiny_policy("bc"), tmp_path / "bc", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bc", "notes"]  # no staging directory left


def test_damaged_policy_directories_are_one_line_naming_the_file(tmp_path):
    save_policy(tiny_policy("bc"), tmp_path / "bc")
    with pytest.raises(PolicyLoadError, match="without config.json"):
        load_policy(tmp_path)
    weights = tmp_path / "bc" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(PolicyLoadError, match="cannot read .*model.safetensors"):
        load_policy(tmp_path / "bc")
    (tmp_path / "bc" / "config.json").write_text('{"format": "something else"}')
    with pytest.raises(PolicyLoadError, match="not a lit_imit policy config"):
        load_policy(tmp_path / "bc")


def test_export_records_the_training_data_and_the_results_row(tmp_path, capsys):
    """A real (two-step) fit, so the checkpoint holds its DataModule; the results file names the checkpoint."""
    import lightning.pytorch as pl

    from lit_imit.data import EpisodeDataModule, EpisodeStore
    from lit_imit.results import append_row
    from lit_imit.tools import export_policy as script
    from tests.conftest import make_episode_arrays

    store = EpisodeStore(tmp_path / "demos")
    for i in range(4):
        store.add(make_episode_arrays(20, dim=7, cameras=(), seed=i), {"source": "teacher"})
    dm = EpisodeDataModule(str(store.root), task="transfer_cube", cameras=[], num_workers=0, batch_size=4,
                           val_episodes=1)
    module = tiny_policy("bc")
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(module, dm)
    ckpt = tmp_path / "bc.ckpt"
    trainer.save_checkpoint(ckpt)
    row = {"recipe": "bc_transfer_cube_state", "method": "bc", "task": "transfer_cube", "obs": "state", "demos": 4,
           "train_steps": 2, "wall_minutes": 1.0, "device": "test", "successes": 3, "episodes": 4,
           "success_rate": 0.75, "ci_low": 0.3, "ci_high": 0.95, "eval_seeds": "1000000-1000003", "commit": "abc",
           "command": "python scripts/reproduce.py bc_transfer_cube_state", "checkpoint": str(ckpt)}
    append_row(tmp_path / "results.jsonl", row)

    assert script.main([str(ckpt), str(tmp_path / "bc"), "--results", str(tmp_path / "results.jsonl")]) == 0
    training = json.loads((tmp_path / "bc" / "config.json").read_text())["training"]
    assert training["global_step"] == 2 and training["data_dir"] == str(store.root.resolve())
    assert training["task"] == "transfer_cube" and sorted(training["train_ids"] + training["val_ids"]) == [0, 1, 2, 3]
    card = (tmp_path / "bc" / "README.md").read_text()
    assert str(store.root.resolve()) in card and "3 training episodes" in card and "1 validation episode" in card
    assert "trained for 2 optimiser steps" in card and "**0.75** (3/4, CI 0.30–0.95)" in card
    assert load_policy(tmp_path / "bc").trained_steps == 2
    assert script.main([str(ckpt), str(tmp_path / "bc")]) == 1  # exists: not replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_deploy_runs_a_policy_directory_on_the_twin(tmp_path, capsys):
    from lit_imit.tools import deploy

    save_policy(tiny_policy("act"), tmp_path / "act")
    rc = deploy.main(["--policy", str(tmp_path / "act"), "--robot", "twin", "--steps", "5", "--out",
                      str(tmp_path / "logs"), "--twin-size", "48x64", "--device", "cpu"])
    assert rc == 0 and "twin success rate 0.000 (0/1)" in capsys.readouterr().out
