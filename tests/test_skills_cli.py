"""The skill-prior family through the CLI: configs parse, exact resume, stage chaining, rollouts, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_imit.cli import main
from tests.conftest import ROOT
from tests.test_skills_data import make_store

#: the SkillPriorModule stages (the RL configs of the family, SkillSACModule, are tests/test_skill_sac.py's)
CONFIGS = sorted(p for p in (ROOT / "configs" / "skills").glob("*.yaml")
                 if "skill_prior.SkillPriorModule" in p.read_text())
TINY = {"state_dim": 4, "action_dim": 2, "horizon": 5, "latent_dim": 3, "hidden_dim": 16, "n_layers": 2,
        "encoder_hidden": 16, "prior_hidden": 16, "prior_layers": 2}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models on a shared CPU: one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(tmp_path: Path, model: dict, data: dict, **trainer) -> dict:
    return {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": 2, "limit_train_batches": 4, "limit_val_batches": 2,
            "log_every_n_steps": 1, "enable_progress_bar": False, "default_root_dir": str(tmp_path),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(tmp_path), "name": "logs", "version": 0}},
            **trainer,
        },
        "model": {"class_path": "lit_imit.modules.skill_prior.SkillPriorModule", "init_args": {**TINY, **model}},
        "data": {"class_path": "lit_imit.data.skills.SkillDataModule",
                 "init_args": {"horizon": 5, "batch_size": 16, "num_workers": 0, "val_episodes": 1, **data}},
    }


def _write(path: Path, cfg: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


QUICK = {"maze_fist_eval", "kitchen_fist_finetune", "kitchen_skild_discriminator"}


@pytest.mark.parametrize("path", [p if p.stem in QUICK else pytest.param(p, marks=pytest.mark.slow) for p in CONFIGS],
                         ids=[p.stem for p in CONFIGS])
def test_shipped_skill_configs_parse(path, capsys):
    subcommand = "test" if path.stem.endswith("_eval") else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lit_imit.modules.skill_prior.SkillPriorModule"
    assert printed["model"]["init_args"]["stage"] in ("skill_prior", "goal_conditioned", "posterior",
                                                       "discriminator", "contrastive")


def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_exact_resume_matches_uninterrupted_run(tmp_path):
    play = make_store(tmp_path / "play", episodes=4, length=40)
    demo = make_store(tmp_path / "demo", episodes=2, length=30, offset=3.0, seed=9)
    data = {"data_dir": str(play.root), "demo_dir": str(demo.root), "demo_fraction": 0.3}
    model = {"stage": "goal_conditioned", "use_distance": False}
    straight = main({"fit": config(tmp_path / "a", model, data, max_epochs=4)})
    main({"fit": config(tmp_path / "b", model, data, max_epochs=2)})
    resumed_cfg = config(tmp_path / "b", model, data, max_epochs=4)
    resumed_cfg["trainer"]["logger"]["init_args"]["version"] = 1
    ckpt = tmp_path / "b" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = main({"fit": {**resumed_cfg, "ckpt_path": str(ckpt)}})
    assert straight.trainer.global_step == resumed.trainer.global_step == 16
    a, b = _params(straight.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    opt_a = straight.trainer.optimizers[0].state_dict()["state"]
    opt_b = resumed.trainer.optimizers[0].state_dict()["state"]
    for idx in opt_a:
        for name in opt_a[idx]:
            assert torch.equal(torch.as_tensor(opt_a[idx][name]), torch.as_tensor(opt_b[idx][name])), (idx, name)
    assert resumed.datamodule.demo_train_ids == straight.datamodule.demo_train_ids
    torch.load(ckpt, weights_only=True)  # the whole checkpoint is plain data


@pytest.mark.slow
def test_chained_stages_through_the_cli_and_fist_rollout(tmp_path):
    """goal-conditioned prior -> contrastive -> FIST evaluation with `test` on the real maze task."""
    play = make_store(tmp_path / "play", episodes=3, length=40)
    demo_dir = tmp_path / "demos"
    first = main({"fit": config(tmp_path / "gc", {"stage": "goal_conditioned"}, {"data_dir": str(play.root)},
                                max_epochs=1)})
    gc_ckpt = tmp_path / "gc" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    main({"fit": config(tmp_path / "con", {"stage": "contrastive", "optimizer": "adam"}, {"data_dir": str(play.root)},
                        max_epochs=1)})
    con_ckpt = tmp_path / "con" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    rollout = {"class_path": "callbacks.rollout.RolloutEvaluation",
               "init_args": {"task": "pointmaze-medium-bottom", "n_episodes": 2, "n_envs": 2, "every_n_epochs": 0,
                             "max_steps": 30, "video": False, "env_kwargs": {"render_mode": None}}}
    model = {"stage": "goal_conditioned", "replan_every": 2, "lookup_dir": str(demo_dir),
             "init_from": [{"ckpt": str(gc_ckpt), "parts": ["skill_encoder", "decoder", "goal_prior"]},
                           {"ckpt": str(con_ckpt), "parts": ["distance"], "stats": False}]}
    data = {"data_dir": str(demo_dir), "task": "pointmaze-medium-bottom", "generate_if_missing": 2}
    cfg = config(tmp_path / "eval", model, data, callbacks=[rollout], limit_test_batches=1)
    cli = main(["test", "--config", _write(tmp_path / "eval.yaml", cfg)])
    module = cli.model
    assert len(module.lookup_states) > 0  # the recorded demonstrations are inside the module
    for key, value in first.model.goal_prior.state_dict().items():
        assert torch.equal(module.goal_prior.state_dict()[key], value)
    evaluation = next(c for c in cli.trainer.callbacks if type(c).__name__ == "RolloutEvaluation")
    assert evaluation.last_summary is not None and evaluation.last_summary["episodes"] == 2.0


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_a_skill_prior(tmp_path):
    play = make_store(tmp_path / "play", episodes=4, length=40)
    cfg = config(tmp_path, {"stage": "skill_prior"}, {"data_dir": str(play.root)}, devices=2, strategy="ddp",
                 max_epochs=1)
    out = subprocess.run([sys.executable, "-m", "lit_imit", "fit", "--config", _write(tmp_path / "ddp.yaml", cfg)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_a_staged_recipe_fits_its_stages_in_order_then_tests_the_last(tmp_path):
    """scripts/reproduce.py's path for FIST (recipe fist_kitchen): the stage configs fit first in the run
    directory, each to its own log and its checkpoints under a relative path; the recipe's config loads them
    from there, fits, and its checkpoint is rolled out on the held-out seeds."""
    from lit_imit.recipes import TEST_SEED, Recipe, run_recipe

    play = make_store(tmp_path / "play", episodes=3, length=40)
    demos = make_store(tmp_path / "demos", episodes=2, length=40, seed=5)
    stage_cfgs = []
    for name, model in (("gc", {"stage": "goal_conditioned"}), ("con", {"stage": "contrastive", "optimizer": "adam"})):
        cfg = config(tmp_path, model, {"data_dir": str(play.root)}, max_epochs=1)
        del cfg["trainer"]["logger"], cfg["trainer"]["default_root_dir"]  # the run directory's lightning_logs
        cfg["checkpoint"] = {"dirpath": f"checkpoints/{name}"}  # relative to the run directory, as shipped
        stage_cfgs.append(_write(tmp_path / f"{name}.yaml", cfg))
    rollout = {"class_path": "callbacks.rollout.RolloutEvaluation",
               "init_args": {"task": "pointmaze-medium-bottom", "n_episodes": 1, "n_envs": 1, "every_n_epochs": 1,
                             "max_steps": 20, "video": False, "env_kwargs": {"render_mode": None}}}
    model = {"stage": "goal_conditioned", "replan_every": 2, "lookup_dir": str(demos.root),
             "init_from": [{"ckpt": "checkpoints/gc/last.ckpt", "parts": ["skill_encoder", "decoder", "goal_prior"],
                            "freeze": False},
                           {"ckpt": "checkpoints/con/last.ckpt", "parts": ["distance"], "stats": False}]}
    final = config(tmp_path, model, {"data_dir": str(demos.root)}, callbacks=[rollout], max_epochs=1)
    del final["trainer"]["logger"], final["trainer"]["default_root_dir"]
    final["checkpoint"] = {"monitor": "rollout/success_rate", "mode": "max", "every_n_epochs": 1}
    staged = Recipe(name="tiny_fist", method="fist", task="pointmaze-medium-bottom",
                    config=_write(tmp_path / "final.yaml", final), obs="state", demos=2, expected_minutes=1,
                    stages=tuple(stage_cfgs), test_n_envs=1, test_workers=0)
    row = run_recipe(staged, tmp_path / "runs", tmp_path / "r.jsonl", episodes=2)
    run_dir = Path(row["run_dir"])
    assert (run_dir / "stage_gc.log").is_file() and (run_dir / "stage_con.log").is_file()
    assert (run_dir / "checkpoints" / "gc" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "con").is_dir()
    assert "lightning_logs/version_2" in row["checkpoint"]  # the last fit's own checkpoint was tested
    assert row["eval_seeds"] == f"{TEST_SEED}-{TEST_SEED + 1}" and 0.0 <= row["success_rate"] <= 1.0
    assert "subtasks_completed" not in row  # a maze row; kitchen target tasks carry the mean count out of 4
