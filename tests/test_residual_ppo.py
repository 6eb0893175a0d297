"""Residual RL (ResidualPPOModule): PPO's maths by hand, the action composition, the frozen base's chunks,
learning on a toy task, checkpoints, exact resume and DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from lit_imit.cli import main
from lit_imit.envs import make_env
from lit_imit.evaluation import evaluate_module, summarize
from lit_imit.modules.chunking import ObservationHistory
from lit_imit.modules.residual_ppo import FrozenBase, ResidualPPOModule
from lit_imit.rl.ppo import (
    PPOBatch,
    PPOSettings,
    RunningMeanStd,
    approx_kl,
    clipped_surrogate_loss,
    generalized_advantages,
    ppo_update,
    scale_rewards,
    value_loss,
)
from lit_imit.rl.rollout import PolicyStep, collect_rollout
from tests.conftest import ROOT
from tests.residual_toy import TOY_TASK, biased_base
from tests.test_cli import _tags
from tests.test_policies import trainer_checkpoint

STATE_KEYS, STATE_DIMS, ACTION_DIM = ["qpos", "env_state"], [14, 7], 14
SMALL_NETS = {"actor_hidden": [64, 64], "critic_hidden": [64, 64]}


# ---- PPO's maths against hand-computed values ---------------------------------------------------------------
def test_gae_matches_a_hand_computed_rollout():
    """T=3, N=2, gamma 0.9, lambda 0.8; env 1's episode ends at t=1, so nothing flows back across it."""
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    values = torch.tensor([[0.5, 0.2], [0.4, 0.3], [0.1, 0.6]])
    ends = torch.tensor([[False, False], [False, True], [False, False]])
    next_value = torch.tensor([0.3, 0.7])
    advantages, returns = generalized_advantages(rewards, values, ends, next_value, gamma=0.9, gae_lambda=0.8)
    # env 0: deltas 2 + .9*.3 - .1 = 2.17, 0 + .9*.1 - .4 = -.31, 1 + .9*.4 - .5 = .86; A_t = delta_t + .72 A_t+1
    # env 1: deltas 0 + .9*.7 - .6 = .03, 1 - .3 = .7 (episode end: no bootstrap, no carry), 0 + .9*.3 - .2 = .07
    expected = torch.tensor([[0.86 + 0.72 * (-0.31 + 0.72 * 2.17), 0.07 + 0.72 * 0.7],
                             [-0.31 + 0.72 * 2.17, 0.7],
                             [2.17, 0.03]])
    assert torch.allclose(advantages, expected, atol=1e-6)
    assert torch.allclose(returns, expected + values, atol=1e-6)
    # an episode ending with the rollout's last step ignores the bootstrap value
    last_end = torch.tensor([[False], [True]])
    adv, _ = generalized_advantages(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.2], [0.5]]), last_end,
                                    torch.tensor([100.0]), gamma=0.9, gae_lambda=0.8)
    assert torch.allclose(adv, torch.tensor([[0.9 * 0.5 - 0.2 + 0.72 * 0.5], [0.5]]), atol=1e-6)


def test_clipped_surrogate_and_its_gradient_match_hand_computed_values():
    """Ratios 1.5, 0.5, 1.1, 0.7 with advantages +1, +1, -1, -1 and clip 0.2: per sample max(-A r, -A clip(r))
    = -1.2 (clipped), -0.5, 1.1, 0.8 (clipped); the clipped samples get no gradient."""
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.7])
    old = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    logprob = (old + ratios.log()).requires_grad_(True)
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss = clipped_surrogate_loss(logprob, old, advantages, clip=0.2)
    assert math.isclose(float(loss.detach()), (-1.2 - 0.5 + 1.1 + 0.8) / 4, abs_tol=1e-6)
    loss.backward()
    # d/dlogprob of -A r / 4 is -A r / 4 where the unclipped term is the max, 0 where the clip is
    assert torch.allclose(logprob.grad, torch.tensor([0.0, -0.5 / 4, 1.1 / 4, 0.0]), atol=1e-6)
    log_ratio = ratios.log()
    assert math.isclose(float(approx_kl(logprob.detach(), old)), float((ratios - 1 - log_ratio).mean()), abs_tol=1e-6)
    assert math.isclose(float(value_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))), 0.5 * (1 + 4) / 2)


def test_running_reward_scale_pools_batches_as_one_stream():
    stats, pooled = RunningMeanStd(), RunningMeanStd()
    a, b = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 2.0])
    stats.update(a)
    stats.update(b)
    pooled.update(torch.cat([a, b]))
    assert torch.allclose(stats.var, pooled.var) and torch.allclose(stats.mean, pooled.mean)
    # the initial count 1e-4 (var 1) barely weighs: the variance is that of the five rewards
    assert math.isclose(float(stats.var), float(torch.cat([a, b]).double().var(unbiased=False)), rel_tol=1e-3)
    scaled = scale_rewards(torch.tensor([1.0, 100.0]), stats, clip=5.0)
    assert math.isclose(float(scaled[0]), 1 / math.sqrt(float(stats.var) + 1e-8), rel_tol=1e-5)
    assert float(scaled[1]) == 5.0


def test_ppo_update_stops_once_the_kl_passes_its_target():
    torch.manual_seed(0)
    from lit_imit.nets.residual import ResidualActorCritic

    agent = ResidualActorCritic(3, 2, [8], [8], actor_head_gain=1.0)
    obs, actions = torch.randn(64, 5), torch.randn(64, 2)
    with torch.no_grad():
        logprobs = agent.log_prob(agent.mean(obs), actions)
    batch = PPOBatch(obs, actions, logprobs, advantages=torch.randn(64), returns=torch.randn(64))
    optimizer = torch.optim.SGD(agent.parameters(), lr=0.5)

    def apply(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    terms = ppo_update(agent, batch, PPOSettings(update_epochs=50, target_kl=1e-3), apply, torch.Generator())
    assert terms["early_stop"] == 1.0 and terms["gradient_steps"] < 50 and terms["approx_kl"] > 1e-3


# ---- the base, the residual and their composition -----------------------------------------------------------
def tiny_diffusion(seed: int = 0):
    from lit_imit.modules.diffusion import DiffusionModule

    torch.manual_seed(seed)
    module = DiffusionModule(cameras=[], state_keys=STATE_KEYS, state_dim=STATE_DIMS, action_dim=ACTION_DIM,
                             n_obs_steps=2, horizon=8, n_action_steps=4, down_dims=[16, 32],
                             diffusion_step_embed_dim=16, inference_scheduler="ddim", num_inference_steps=3, seed=5)
    module.load_stats({key: {"mean": np.zeros(d), "std": np.ones(d), "min": -2 * np.ones(d), "max": 2 * np.ones(d)}
                       for key, d in zip([*STATE_KEYS, "action"], [*STATE_DIMS, ACTION_DIM])})
    return module


def tiny_act():
    from lit_imit.modules.act import ACTModule

    torch.manual_seed(0)
    module = ACTModule(cameras=[], state_keys=STATE_KEYS, state_dim=STATE_DIMS, action_dim=ACTION_DIM, chunk_size=6,
                       n_action_steps=3, dim_model=16, n_heads=2, dim_feedforward=32, n_encoder_layers=1,
                       n_vae_encoder_layers=1, latent_dim=4)
    module.load_stats({key: {"mean": np.full(d, 0.5), "std": np.full(d, 2.0), "min": -np.ones(d), "max": np.ones(d)}
                       for key, d in zip([*STATE_KEYS, "action"], [*STATE_DIMS, ACTION_DIM])})
    return module


def tiny_act_ensembled():
    """ACT as its recipes run it: a query every step, the chunks' predictions for a step averaged."""
    from lit_imit.modules.act import ACTModule

    torch.manual_seed(0)
    module = ACTModule(cameras=[], state_keys=STATE_KEYS, state_dim=STATE_DIMS, action_dim=ACTION_DIM, chunk_size=6,
                       n_action_steps=1, temporal_ensemble_coeff=0.01, dim_model=16, n_heads=2, dim_feedforward=32,
                       n_encoder_layers=1, n_vae_encoder_layers=1, latent_dim=4)
    module.load_stats({key: {"mean": np.full(d, 0.5), "std": np.full(d, 2.0), "min": -np.ones(d), "max": np.ones(d)}
                       for key, d in zip([*STATE_KEYS, "action"], [*STATE_DIMS, ACTION_DIM])})
    return module


BASES = {"diffusion": tiny_diffusion, "act": tiny_act, "act_ensembled": tiny_act_ensembled}


@pytest.fixture(params=sorted(BASES))
def base_ckpt(request, tmp_path):
    path = tmp_path / f"{request.param}.ckpt"
    trainer_checkpoint(BASES[request.param](), path)
    return path


def fake_obs(n: int, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {key: rng.normal(size=(n, d)).astype(np.float32) for key, d in zip(STATE_KEYS, STATE_DIMS)}


def test_zero_initial_residual_reproduces_the_base(base_ckpt):
    """At initialisation the residual's mean is exactly 0: evaluation executes the base's own actions (the
    same chunks, histories and sampling noise as the base's select_action), and sampled training actions
    stay within the small exploration noise of them."""
    from lit_imit.policies import load_policy

    module, base = ResidualPPOModule(base_ckpt=str(base_ckpt)), load_policy(base_ckpt)
    module.reset()
    base.reset()
    for step in range(9):  # three chunks of Diffusion's 4 (ACT's 3) actions
        obs = fake_obs(3, step)
        ours, theirs = module.select_action(obs), base.select_action(obs)
        assert torch.allclose(ours, theirs, atol=1e-6), step
    starts = np.ones(3, dtype=bool)
    sampled = module.rollout_step(fake_obs(3, 0), starts, module._generators(0))
    assert torch.equal(module.agent.mean(sampled.inputs), torch.zeros(3, ACTION_DIM))
    base_action = sampled.inputs[:, -ACTION_DIM:]
    executed = module.base.normalize("action", torch.as_tensor(sampled.env_actions))
    assert torch.allclose(executed - base_action, 0.1 * sampled.actions, atol=1e-5)
    assert float((executed - base_action).abs().max()) < 0.1 * 5 * math.exp(-1.0)  # 5 std of the noise


@pytest.mark.parametrize("make_base", [tiny_diffusion, tiny_act], ids=["min_max", "mean_std"])
def test_actions_compose_in_the_base_normalised_space(tmp_path, make_base):
    """executed raw action = unnormalise(base_normalised + 0.1 * residual), with the base's own scheme:
    Diffusion's [-1, 1] over [min, max] = [-2, 2], ACT's mean 0.5 / std 2."""
    path = tmp_path / "base.ckpt"
    trainer_checkpoint(make_base(), path)
    module = ResidualPPOModule(base_ckpt=str(path))
    base_action, residual = torch.full((1, ACTION_DIM), 0.5), torch.full((1, ACTION_DIM), -1.0)
    raw = module.executed_action(base_action, residual)
    normalised = 0.5 + 0.1 * -1.0
    expected = normalised * 2.0 if make_base is tiny_diffusion else normalised * 2.0 + 0.5
    assert torch.allclose(raw, torch.full((1, ACTION_DIM), expected), atol=1e-6)


def test_residual_observation_is_the_base_normalised_state_clamped(tmp_path):
    """[qpos, env_state] through the base's min-max (range [-2, 2]), clamped to +-3: a state far outside the
    demos' range cannot blow the residual's input up."""
    path = tmp_path / "base.ckpt"
    trainer_checkpoint(tiny_diffusion(), path)
    module = ResidualPPOModule(base_ckpt=str(path))
    obs = {"qpos": torch.full((1, 14), 1.0), "env_state": torch.full((1, 7), 100.0)}
    x = module.residual_obs(obs)
    assert x.shape == (1, 21) and torch.allclose(x[0, :14], torch.full((14,), 0.5)) and x[0, 14:].eq(3.0).all()


def test_residual_recipe_needs_the_checkpoint_of_its_base_recipe(tmp_path):
    from lit_imit.recipes import RECIPES, _base_overrides, run_recipe

    rec = RECIPES["residual_ppo_transfer_cube_state"]
    assert rec.base_recipe == "diffusion_transfer_cube_state" and rec.method == "residual_ppo"
    with pytest.raises(ValueError, match="diffusion_transfer_cube_state"):
        run_recipe(rec, tmp_path / "runs", None)
    base = biased_base(tmp_path / "base.ckpt")
    assert _base_overrides(rec, base) == ["--model.init_args.base_ckpt", str(base.resolve())]
    with pytest.raises(ValueError, match="no base checkpoint"):
        _base_overrides(RECIPES["act_transfer_cube_state"], base)


class ScriptedChunks:
    """A stand-in base whose chunk for a query is (query number, step): it records the rows it is asked for."""

    state_keys, hparams, n_obs_steps, cameras = ["qpos"], SimpleNamespace(n_action_steps=3), 2, []

    def __init__(self) -> None:
        self.queries: list[int] = []
        self.histories: list[torch.Tensor] = []

    def plan_normalized(self, obs, generator=None):
        self.queries.append(len(obs["qpos"]))
        self.histories.append(obs["qpos"].clone())
        k = len(self.queries)
        return torch.tensor([[[k, i] for i in range(3)]] * len(obs["qpos"]), dtype=torch.float32)


def test_frozen_base_runs_each_env_s_chunks_on_its_own_clock():
    """Env 1 restarts at step 1 (it succeeded): it alone queries a fresh chunk with a fresh history, env 0
    keeps executing its chunk."""
    base = ScriptedChunks()
    runner = FrozenBase(base)
    obs = [{"qpos": torch.tensor([[float(t)], [10.0 + t]])} for t in range(4)]
    actions = [runner.step(obs[0], torch.tensor([True, True]), torch.Generator())]
    actions.append(runner.step(obs[1], torch.tensor([False, True]), torch.Generator()))
    actions += [runner.step(obs[t], torch.tensor([False, False]), torch.Generator()) for t in (2, 3)]
    assert base.queries == [2, 1, 1]  # both at t=0, env 1 at its restart (t=1), env 0 after 3 steps (t=3)
    assert [a[0].tolist() for a in actions] == [[1, 0], [1, 1], [1, 2], [3, 0]]
    assert [a[1].tolist() for a in actions] == [[1, 0], [2, 0], [2, 1], [2, 2]]
    assert base.histories[1].flatten().tolist() == [11.0, 11.0]  # the restarted row: its first frame twice
    assert base.histories[2].flatten().tolist() == [2.0, 3.0]


def test_observation_history_restarts_rows_independently():
    history = ObservationHistory(3)
    history.push({"x": torch.tensor([[1.0], [5.0]])}, torch.tensor([True, True]))
    out = history.push({"x": torch.tensor([[2.0], [6.0]])}, torch.tensor([False, True]))
    assert out["x"][:, :, 0].tolist() == [[1.0, 1.0, 2.0], [6.0, 6.0, 6.0]]


# ---- the rollout -----------------------------------------------------------------------------------------
def test_rollout_resets_on_success_and_ends_the_episode_there():
    """A policy that heads straight for the disk: every env succeeds, gets reward 1 on that step, the step is
    an episode end, the env restarts from the next seed and the policy is told so at the next step."""
    envs = [make_env(TOY_TASK) for _ in range(3)]
    seen_starts = []

    def policy(obs, starts):
        seen_starts.append(starts)
        x = torch.as_tensor(obs["qpos"])
        return PolicyStep(env_actions=(-x).numpy(), inputs=x, actions=-x, logprobs=torch.zeros(3),
                          values=torch.zeros(3))

    seeds = iter(range(100, 200))
    rollout = collect_rollout(envs, policy, num_steps=12, seeds=seeds)
    assert next(seeds) == 100 + 3 + rollout.episodes  # one seed per reset: 3 initial, one per ended episode
    assert rollout.successes == rollout.episodes > 3
    assert torch.equal(rollout.rewards.bool(), rollout.ends)
    for t, row in zip(*torch.nonzero(rollout.ends, as_tuple=True)):
        assert seen_starts[t + 1][row]
    assert seen_starts[0].all() and rollout.env_steps == 36


# ---- PPO improves a deliberately biased base -----------------------------------------------------------------
def toy_config(root: Path, base: Path, epochs: int = 1, iterations: int = 5, model: dict | None = None,
               **trainer) -> dict:
    return {
        "seed_everything": 3,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": epochs, "enable_progress_bar": False,
                    "log_every_n_steps": 1, "enable_model_summary": False, "default_root_dir": str(root),
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(root), "name": "logs", "version": 0}},
                    "callbacks": [], **trainer},
        "model": {"class_path": "lit_imit.modules.residual_ppo.ResidualPPOModule",
                  "init_args": {"base_ckpt": str(base), "num_steps": 30, **SMALL_NETS, **(model or {})}},
        "data": {"class_path": "lit_imit.data.rollouts.EnvDataModule",
                 "init_args": {"task": TOY_TASK, "num_envs": 32, "num_workers": 0, "iterations_per_epoch": iterations}},
    }


def heldout_success(module, residual: bool, episodes: int = 200) -> float:
    module.residual_in_evaluation = residual
    envs = [make_env(TOY_TASK) for _ in range(50)]
    return summarize(evaluate_module(module, envs, list(range(episodes)), seed=5000))["success_rate"]


def test_ppo_learns_to_correct_a_biased_base(tmp_path):
    """Five PPO iterations (32 envs x 30 steps, the paper's 50 update epochs; 2 x 64 networks for speed) take
    the biased linear base from ~1/3 held-out success to nearly all: the residual learned to cancel its bias."""
    cli = main({"fit": toy_config(tmp_path, biased_base(tmp_path / "base.ckpt"))})
    assert int(cli.model.iteration) == 5 and int(cli.model.env_steps) == 5 * 32 * 30
    base_rate, tuned_rate = heldout_success(cli.model, residual=False), heldout_success(cli.model, residual=True)
    assert base_rate < 0.5, base_rate
    assert tuned_rate > 0.9, (base_rate, tuned_rate)
    tags = _tags(tmp_path / "logs")
    assert {"train/env_steps_per_s", "train/success_rate", "train/approx_kl", "train/value_loss"} <= tags


# ---- checkpoints, test, exact resume -----------------------------------------------------------------------
def test_checkpoint_loads_weights_only_runs_without_the_base_file_and_tests(tmp_path):
    from lit_imit.policies import load_policy

    base = biased_base(tmp_path / "base.ckpt")
    cfg = toy_config(tmp_path, base, epochs=1, iterations=2, model={"update_epochs": 2})
    main({"fit": cfg})
    last = tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["policy_class"] == "lit_imit.modules.residual_ppo.ResidualPPOModule"
    assert checkpoint["hyper_parameters"]["base_policy"]["class_path"] == "lit_imit.modules.bc.BCModule"
    base.unlink()  # the checkpoint embeds its base
    module = load_policy(last)
    assert int(module.iteration) == 2 and module.base.model.net[0].bias.tolist() == pytest.approx([0.04, 0.0])
    rollout = {"class_path": "callbacks.rollout.RolloutEvaluation",
               "init_args": {"task": TOY_TASK, "n_episodes": 8, "n_envs": 4, "every_n_epochs": 0, "video": False}}
    cfg["trainer"]["callbacks"] = [rollout]
    cfg["trainer"]["logger"]["init_args"]["version"] = 1
    cli = main({"test": {**cfg, "ckpt_path": str(last)}})
    from callbacks.rollout import RolloutEvaluation

    summary = next(cb for cb in cli.trainer.callbacks if isinstance(cb, RolloutEvaluation)).last_summary
    assert summary["episodes"] == 8
    assert summary["success_ci_low"] <= summary["success_rate"] <= summary["success_ci_high"]
    tags = _tags(tmp_path / "logs" / "version_1")
    assert {"test/success_rate", "test/success_ci_low", "test/success_ci_high"} <= tags
    # the base alone on the same seeds: a callback, since --ckpt_path replaces the model's arguments
    cfg["trainer"]["callbacks"].append({"class_path": "callbacks.residual.EvaluateBaseAlone"})
    cfg["trainer"]["logger"]["init_args"]["version"] = 2
    cli = main({"test": {**cfg, "ckpt_path": str(last)}})
    base_alone = next(cb for cb in cli.trainer.callbacks if isinstance(cb, RolloutEvaluation)).last_summary
    module.residual_in_evaluation = False
    expected = summarize(evaluate_module(module, [make_env(TOY_TASK) for _ in range(4)], list(range(8)), 100_000))
    assert base_alone["success_rate"] == expected["success_rate"] and cli.model.residual_in_evaluation


def test_exact_resume_matches_uninterrupted_run(tmp_path):
    """Stopped after epoch 1 of 2 and resumed from last.ckpt: the same weights, optimiser state, reward
    statistics and counters as the run that never stopped (episode seeds and noise follow the iteration)."""
    base = biased_base(tmp_path / "base.ckpt")

    def cfg(root: Path, version: int = 0) -> dict:
        c = toy_config(root, base, epochs=2, iterations=2, model={"update_epochs": 3, "num_steps": 12})
        c["trainer"]["logger"]["init_args"]["version"] = version
        return c

    straight = main({"fit": cfg(tmp_path / "a")})
    stopped = cfg(tmp_path / "b")
    stopped["trainer"]["callbacks"].append({"class_path": "tests.test_cli.StopAfterEpochs", "init_args": {"n": 1}})
    main({"fit": stopped})
    last = tmp_path / "b" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert int(torch.load(last, weights_only=True)["state_dict"]["iteration"]) == 2
    resumed = main({"fit": {**cfg(tmp_path / "b", version=1), "ckpt_path": str(last)}})
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert int(a["iteration"]) == int(b["iteration"]) == 4 and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    opt_a, opt_b = (m.trainer.optimizers[0].state_dict() for m in (straight, resumed))
    for idx, state in opt_a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, opt_b["state"][idx][name]), (idx, name)
    assert opt_a["param_groups"][0]["lr"] == opt_b["param_groups"][0]["lr"]


# ---- DDP ----------------------------------------------------------------------------------------------------
class RankAgreement(pl.Callback):
    """At the end of fit, every rank's weights, reward statistics and counters, gathered to a JSON file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lit_imit.distributed import all_gather_objects

        state = {key: float(value.double().sum()) for key, value in pl_module.state_dict().items()
                 if not key.startswith("base.")}
        cube = trainer.datamodule.envs[0].unwrapped.object_poses()["box"][:2].tolist()  # where its last episode put it
        parts = all_gather_objects({"rank": trainer.global_rank, "state": state, "world": trainer.world_size,
                                    "cube": cube})
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps(parts))


@pytest.mark.slow
def test_ddp_two_cpu_processes_step_their_own_envs_and_agree(tmp_path):
    """Two ranks (gloo on CPU), each with its own transfer-cube envs: gradients, reward statistics and the
    KL stop are reduced, so both end with identical weights; env steps count both ranks."""
    base = tmp_path / "base.ckpt"
    trainer_checkpoint(tiny_diffusion(), base)
    agreement = tmp_path / "ranks.json"
    cfg = {
        "seed_everything": 1,
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_epochs": 1,
                    "enable_progress_bar": False, "log_every_n_steps": 1, "default_root_dir": str(tmp_path),
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path), "name": "logs", "version": 0}},
                    "callbacks": [{"class_path": "tests.test_residual_ppo.RankAgreement",
                                   "init_args": {"path": str(agreement)}}]},
        "model": {"class_path": "lit_imit.modules.residual_ppo.ResidualPPOModule",
                  "init_args": {"base_ckpt": str(base), "num_steps": 10, "update_epochs": 3, "target_kl": None,
                                **SMALL_NETS}},
        "data": {"class_path": "lit_imit.data.rollouts.EnvDataModule",
                 "init_args": {"task": "transfer_cube", "num_envs": 2, "num_workers": 0, "iterations_per_epoch": 2,
                               "reward": "staged"}},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "lit_imit", "fit", "--config", str(path)], capture_output=True,
                         text=True, cwd=ROOT, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = json.loads(agreement.read_text())
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["world"] == 2
    assert ranks[0]["cube"] != ranks[1]["cube"]  # each rank stepped episodes of its own seeds...
    assert ranks[0]["state"] == ranks[1]["state"]  # ...and yet both hold the same weights and statistics
    assert ranks[0]["state"]["env_steps"] == 2 * 2 * 2 * 10  # iterations x ranks x envs x steps
    assert ranks[0]["state"]["reward_stats.count"] > 2 * 2 * 2 * 10  # both ranks' rewards (+ the initial 1e-4)
    assert "train/env_steps_per_s" in _tags(tmp_path / "logs")
