"""The CLIPort recipe (configs/cliport/put_block_in_bowl_cpu.yaml): registered with its config, its held-out
test on the test split, and the unseen-colours split (``Recipe.extra_tests``) written into the results row."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from lit_imit.envs.ravens import assets
from lit_imit.modules.cliport import CLIPortModule, tiny_config
from lit_imit.recipes import SELECTION_SEED, TEST_SEED, heldout_test_of_run, recipe, rollout_settings

REPO = Path(__file__).resolve().parents[1]
NAME = "cliport_put_block_in_bowl"
UNSEEN = "put-block-in-bowl-unseen-colors"


def test_cliport_recipe_is_registered_with_its_config(capsys):
    from lit_imit.cli import main

    rec = recipe(NAME)
    assert (rec.method, rec.task, rec.target, rec.preset) == ("cliport", "put-block-in-bowl-seen-colors", 0.50, "cpu")
    assert rec.config == "configs/cliport/put_block_in_bowl_cpu.yaml" and rec.demos <= 100
    assert rec.extra_tests == (UNSEEN,) and rec.test_env_kwargs == {"split": "test"}
    assert "0.96" in rec.reference and "0.47" in rec.reference
    config = yaml.safe_load((REPO / rec.config).read_text())
    assert config["data"]["init_args"]["generate_if_missing"] == rec.demos
    assert config["data"]["init_args"]["task"] == rec.task
    settings = rollout_settings(config)
    assert settings["seed"] >= SELECTION_SEED and settings["seed"] + settings["n_episodes"] <= TEST_SEED
    assert "split" not in (settings.get("env_kwargs") or {})  # selection on the seen task's own (train) colours
    with pytest.raises(SystemExit) as exit_info:  # a complete LightningCLI config (nothing instantiated)
        main(["fit", "--config", str(REPO / rec.config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lit_imit.modules.cliport.CLIPortModule"
    assert printed["model"]["init_args"]["clip_pretrained"] is None  # random CLIP: no weights can be fetched


def test_unseen_colours_appear_only_off_the_train_split():
    """Ravens' unseen-colours task draws its colours from the eval palette only when split != train: the
    recipe's held-out tests run on the test split, or the 'unseen' number would be a second seen one."""
    from lit_imit.envs.ravens.tasks import make_task

    for split, palette in (("train", assets.TRAIN_COLORS), ("test", assets.EVAL_COLORS)):
        task = make_task(UNSEEN, split)
        assert task.sample_colors(task.split, task.unseen) == palette
    assert set(assets.EVAL_COLORS) - set(assets.TRAIN_COLORS)  # colours the policy never saw named
    seen = make_task("put-block-in-bowl-seen-colors", "test")
    assert seen.sample_colors(seen.split, seen.unseen) == assets.TRAIN_COLORS


def fake_run(tmp_path: Path, config_path: Path) -> Path:
    """A finished run directory as ``fit`` leaves it: the run's config and a chosen checkpoint (a tiny
    CLIPort's weights, step 7), so that the held-out test's own code runs on it."""
    version = tmp_path / "run" / "lightning_logs" / "version_0"
    (version / "checkpoints").mkdir(parents=True)
    config = yaml.safe_load(config_path.read_text())
    config["data"]["init_args"]["data_dir"] = str(tmp_path / "store")  # an empty store: 0 demos counted
    (version / "config.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    module = CLIPortModule(**tiny_config(downsample=4, crop_size=32, n_rotations=1))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 7},
               version / "checkpoints" / "epoch0001.ckpt")
    return tmp_path / "run"


def test_heldout_test_writes_the_unseen_split_into_the_row(tmp_path):
    """The recipe's held-out test (real Ravens episodes, one per split here) fills ``extra_tests`` with the
    unseen-colours split, both on the test split, and the table shows it under the main figure."""
    from lit_imit.results import render_table

    rec = replace(recipe(NAME), test_n_envs=1, test_workers=0)
    run_dir = fake_run(tmp_path, REPO / rec.config)
    row = {"eval_seeds": f"{TEST_SEED}-{TEST_SEED}"}
    heldout_test_of_run(rec, run_dir, row, episodes=1, test_seed=TEST_SEED)
    assert row["train_steps"] == 7 and row["checkpoint"].endswith("epoch0001.ckpt")
    assert row["env_kwargs"]["split"] == "test"
    extra = row["extra_tests"][UNSEEN]
    assert extra["episodes"] == 1 and extra["successes"] in (0, 1) and extra["eval_seeds"] == row["eval_seeds"]
    assert extra["ci_low"] <= extra["success_rate"] <= extra["ci_high"]
    full = {"recipe": NAME, "method": "cliport", "task": rec.task, "obs": rec.obs, "demos": 0, "wall_minutes": 1.0,
            "device": "cpu", "episodes": 1, "commit": "abc", "command": "x", "target": 0.5, **row}
    assert f"{UNSEEN}: {extra['success_rate']:.2f} ({extra['successes']}/1," in render_table([full])


#: fit arguments that shrink the recipe to seconds: 1 demo, 2 steps, one 1-step validation rollout
TINY = ("--trainer.max_steps", "2", "--trainer.limit_train_batches", "2", "--data.init_args.generate_if_missing", "1",
        "--data.init_args.samples_per_epoch", "2", "--trainer.callbacks.init_args.n_episodes", "1",
        "--trainer.callbacks.init_args.n_envs", "1", "--trainer.callbacks.init_args.num_workers", "0",
        "--trainer.callbacks.init_args.every_n_epochs", "1", "--trainer.callbacks.init_args.max_steps", "1",
        "--trainer.callbacks.init_args.video", "false", "--checkpoint.every_n_epochs", "1")


def test_cliport_recipe_end_to_end_writes_both_splits(tmp_path):
    """The shipped recipe through run_recipe (demos -> ``python -m lit_imit fit`` -> held-out tests), shrunk by
    overrides: the row holds the seen split and, from the same checkpoint, the unseen one (~20 s on 2 cores)."""
    from lit_imit.recipes import run_recipe
    from lit_imit.results import read_rows

    rec = replace(recipe(NAME), overrides=TINY, test_n_envs=1, test_workers=0)
    row = run_recipe(rec, tmp_path / "runs", tmp_path / "r.jsonl", episodes=1)
    assert row["train_steps"] == 2 and row["demos"] == 1 and row["env_kwargs"]["split"] == "test"
    assert set(row["extra_tests"]) == {UNSEEN} and row["extra_tests"][UNSEEN]["episodes"] == 1
    assert read_rows(tmp_path / "r.jsonl")[-1]["extra_tests"] == row["extra_tests"]
