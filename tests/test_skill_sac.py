"""SPiRL's prior-regularised SAC and flat SAC (SkillSACModule): the maths by hand, the replay buffer, decisions over
envs, learning on a trivial task, checkpoints, exact resume and the shipped configs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lit_imit.cli import main
from lit_imit.envs import make_env
from lit_imit.evaluation import evaluate_module, summarize
from lit_imit.modules.skill_sac import SkillSACModule
from lit_imit.rl.replay import ReplayBuffer
from lit_imit.rl.sac import (
    SACSettings,
    actor_loss,
    alpha_loss,
    critic_loss,
    polyak_update,
    prior_divergence,
    sac_update,
    soft_target,
    squashed_log_prob,
)
from lit_imit.rl.transitions import EnvRunner
from tests.conftest import ROOT
from tests.sac_toy import HORIZON, TOY_TASK, hand_made_prior
from tests.test_cli import _tags

SMALL = {"critic_hidden": 32, "critic_layers": 2, "policy_hidden": 32, "policy_layers": 2, "batch_size": 64,
         "replay_capacity": 5000}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small networks on a shared CPU: one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prior_ckpt(tmp_path_factory) -> str:
    return str(hand_made_prior(tmp_path_factory.mktemp("prior") / "prior.ckpt"))


# ---- the maths against hand-computed values --------------------------------------------------------------------
def test_soft_bellman_target_with_the_divergence_in_place_of_the_entropy():
    """y = r + gamma (1 - d) (min_j Qbar_j(s', a') - alpha KL(s')): transition 0 bootstraps from the smaller target
    Q (1.5) less alpha x its divergence; transition 1 is terminal."""
    rewards, terminals = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    next_q = torch.tensor([[2.0, 3.0], [1.5, 4.0]])  # (critic, transition)
    next_kl = torch.tensor([0.4, 2.0])
    y = soft_target(rewards, terminals, next_q, next_kl, alpha=0.5, gamma=0.9)
    assert torch.allclose(y, torch.tensor([1.0 + 0.9 * (1.5 - 0.5 * 0.4), 0.5]))  # [2.17, 0.5]
    q = torch.tensor([[2.0, 0.0], [2.5, 1.0]])
    expected = 0.5 * ((2.0 - 2.17) ** 2 + 0.5**2) / 2 + 0.5 * ((2.5 - 2.17) ** 2 + 0.5**2) / 2  # 0.15945
    assert math.isclose(float(critic_loss(q, y)), expected, rel_tol=1e-5)
    # the actor pays alpha x its divergence and gains the smaller critic's value of its own sample
    q_pi, kl = torch.tensor([[1.0, 2.0], [0.5, 3.0]]), torch.tensor([1.0, 3.0])
    assert math.isclose(float(actor_loss(q_pi, kl, alpha=0.5)), ((0.5 - 0.5) + (1.5 - 2.0)) / 2, abs_tol=1e-6)


def test_alpha_moves_towards_the_target_divergence():
    """L = alpha (delta - mean KL): alpha = 2, divergences 0.5 and 1.5 under delta = 3 give L = 4 and dL/dlog alpha
    = 4, so Adam's first step (lr x sign of the gradient) lowers log alpha by lr; above the target it rises."""
    log_alpha = torch.nn.Parameter(torch.tensor(math.log(2.0)))
    loss = alpha_loss(log_alpha, torch.tensor([0.5, 1.5]), target=3.0)
    assert math.isclose(float(loss.detach()), 4.0, rel_tol=1e-6)
    loss.backward()
    assert math.isclose(float(log_alpha.grad), 4.0, rel_tol=1e-6)
    optimizer = torch.optim.Adam([log_alpha], lr=3e-4)
    optimizer.step()
    assert math.isclose(float(log_alpha), math.log(2.0) - 3e-4, abs_tol=1e-7)
    optimizer.zero_grad()
    alpha_loss(log_alpha, torch.tensor([5.0, 5.0]), target=3.0).backward()  # KL above delta: alpha grows
    assert float(log_alpha.grad) < 0
    # flat SAC is the same formula with the log-density as penalty and -target_entropy as its target
    log_alpha.grad = None
    alpha_loss(log_alpha, torch.tensor([-1.0]), target=2.0).backward()  # log pi = -1, entropy target -2
    assert float(log_alpha.grad) == pytest.approx(float(log_alpha.exp()) * 3.0)


def test_prior_regularisation_is_the_kl_to_the_prior_clamped_and_only_moves_the_policy():
    """KL(N(1, 1) || N(0, 2^2)) = ln 2 + 2/8 - 1/2 and KL(N(0, 1) || N(0, 2^2)) = ln 2 + 1/8 - 1/2, summed over the
    skill's dimensions; its gradient reaches the policy's mean and log std, never the prior."""
    mean = torch.tensor([[1.0, 0.0]], requires_grad=True)
    log_std = torch.zeros(1, 2, requires_grad=True)
    prior_mean = torch.zeros(1, 2, requires_grad=True)
    prior_log_std = torch.full((1, 2), math.log(2.0), requires_grad=True)
    kl = prior_divergence(mean, log_std, prior_mean, prior_log_std)
    expected = (math.log(2) + 0.25 - 0.5) + (math.log(2) + 0.125 - 0.5)
    assert math.isclose(float(kl), expected, rel_tol=1e-6)
    kl.sum().backward()
    assert torch.allclose(mean.grad, torch.tensor([[0.25, 0.0]]))  # (mu - mu_p) / sigma_p^2
    assert torch.allclose(log_std.grad, torch.full((1, 2), -0.75))  # -1 + sigma^2 / sigma_p^2
    assert prior_mean.grad is None and prior_log_std.grad is None
    assert float(prior_divergence(mean, log_std, prior_mean, prior_log_std, max_divergence=0.5)) == 0.5


def test_squashed_log_density_matches_torch_distributions():
    mean, log_std = torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([[-0.5, 0.2, 0.0]])
    base = torch.distributions.Normal(mean, log_std.exp())
    squashed = torch.distributions.TransformedDistribution(
        base, [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(0.0, 2.0)])
    u = torch.tensor([[0.1, -2.5, 4.0]])
    expected = squashed.log_prob(2.0 * torch.tanh(u)).sum(-1)
    assert torch.allclose(squashed_log_prob(u, mean, log_std, scale=2.0), expected, atol=1e-4)


def test_one_update_takes_alpha_first_then_actor_and_critics_from_the_old_weights(prior_ckpt):
    """With SGD: log alpha moves by -lr x alpha (delta - mean KL); the reported target is the soft Bellman target of
    the target critics before the update, the critics move along that loss's gradient, and the target critics
    are the Polyak average of the old targets and the new critics."""
    torch.manual_seed(0)
    module = SkillSACModule(method="spirl_rl", prior_ckpt=prior_ckpt, target_divergence=0.5, init_alpha=0.5,
                            **SMALL)
    with torch.no_grad():  # a policy away from the prior, so that the divergence is not 0
        module.policy.net[0].bias.add_(0.7)
    batch = ReplayBuffer(100, 2, 2)
    batch.add(torch.randn(8, 2), torch.rand(8, 2), torch.randn(8), torch.randn(8, 2), torch.tensor([0.0, 1.0] * 4))
    sample = batch.sample(8, torch.Generator().manual_seed(1))
    optimizers = {"actor": torch.optim.SGD(module.policy.parameters(), lr=0.1),
                  "critic": torch.optim.SGD(module.critic.parameters(), lr=0.1),
                  "alpha": torch.optim.SGD([module.log_alpha], lr=0.1)}

    def step(name, loss):
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()

    old_target, old_critic = (
        {k: v.clone() for k, v in m.state_dict().items()} for m in (module.target_critic, module.critic))
    noise = torch.Generator().manual_seed(5)
    with torch.no_grad():  # the same draws as the update's: the current states, then the next states
        replay = torch.Generator().manual_seed(5)
        _, kl = module.policy_sample(sample.states, replay)
        next_z, next_kl = module.policy_sample(sample.next_states, replay)
    terms = sac_update(module, sample, SACSettings(gamma=0.9, tau=0.1, penalty_target=0.5), step, noise)
    alpha = 0.5 * math.exp(-0.1 * 0.5 * (0.5 - float(kl.mean())))
    assert terms["penalty"] == pytest.approx(float(kl.mean()), rel=1e-5) and float(kl.mean()) > 0.5
    assert terms["alpha"] == pytest.approx(alpha, rel=1e-5)
    old = SkillSACModule(method="spirl_rl", prior_ckpt=prior_ckpt, **SMALL)
    old.target_critic.load_state_dict(old_target)
    with torch.no_grad():
        next_q = old.target_critic(module.critic_input(sample.next_states), next_z)
    y = soft_target(sample.rewards, sample.terminals, next_q, next_kl, alpha, gamma=0.9)
    assert terms["q_target"] == pytest.approx(float(y.mean()), rel=1e-5)
    old.critic.load_state_dict(old_critic)
    loss = critic_loss(old.critic(module.critic_input(sample.states), sample.actions), y)
    assert terms["q_loss"] == pytest.approx(float(loss), rel=1e-5)
    loss.backward()
    for (name, new), p in zip(module.critic.named_parameters(), old.critic.parameters()):
        assert torch.allclose(new, p.detach() - 0.1 * p.grad, atol=1e-6), name
        assert torch.allclose(module.target_critic.state_dict()[name], 0.9 * old_target[name] + 0.1 * new, atol=1e-6)


def test_polyak_update():
    target, source = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        target.weight.fill_(1.0), source.weight.fill_(3.0)
    polyak_update(target, source, tau=0.25)
    assert float(target.weight) == pytest.approx(1.5)


# ---- the replay buffer and the decisions -----------------------------------------------------------------------
def test_replay_buffer_grows_wraps_and_round_trips_through_a_weights_only_checkpoint(tmp_path):
    buffer = ReplayBuffer(capacity=1500, state_dim=2, action_dim=1)
    for start in range(0, 2000, 400):  # 5 x 400 rows into 1500: grows 1024 -> 1500, then overwrites the oldest
        rows = torch.arange(start, start + 400, dtype=torch.float32)
        buffer.add(rows[:, None].expand(-1, 2), rows[:, None], rows, rows[:, None].expand(-1, 2) + 1, rows * 0)
    assert len(buffer) == 1500 and buffer.position == 2000 % 1500
    assert buffer.data["rewards"][:500].tolist() == list(range(1500, 2000))  # the newest overwrote rows 0-499
    assert buffer.data["rewards"][500:].tolist() == list(range(500, 1500))
    torch.save({"replay_buffer": buffer.state_dict()}, tmp_path / "r.ckpt")
    restored = ReplayBuffer(capacity=1500, state_dim=2, action_dim=1)
    restored.load_state_dict(torch.load(tmp_path / "r.ckpt", weights_only=True)["replay_buffer"])
    a, b = (x.sample(64, torch.Generator().manual_seed(3)) for x in (buffer, restored))
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("states", "actions", "rewards", "next_states"))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(capacity=99, state_dim=2, action_dim=1).load_state_dict(buffer.state_dict())


def test_a_decision_runs_h_steps_and_an_episode_end_cuts_it():
    """21-step episodes in decisions of 4: five full decisions, then one of a single step that ends the episode
    (a time limit: not terminal); its transition keeps the episode's last observation and the env restarts. An
    env that terminates (the goal reached) is terminal."""
    seeds = iter(range(100, 200))
    runner = EnvRunner([make_env(TOY_TASK), make_env(TOY_TASK)], seeds, reward="env")
    decisions = [runner.decide(lambda obs, t: np.zeros((2, 2)), horizon=4) for _ in range(6)]
    assert [d.env_steps for d in decisions] == [8] * 5 + [2]
    last = decisions[-1]
    assert last.ended.all() and not last.terminals.any() and len(last.episodes) == 2
    start = decisions[0].observations["state"]
    assert np.allclose(last.next_observations["state"], start)  # zero actions: the ball never moved
    assert np.allclose(decisions[0].rewards, -4 * np.linalg.norm(start, axis=1), atol=1e-5)
    assert not np.allclose(runner.observations()["state"], start)  # reset with fresh seeds
    assert next(seeds) == 104
    assert last.episodes[0].length == 21 and last.episodes[0].episode_return == pytest.approx(
        -21 * float(np.linalg.norm(start[0])), rel=1e-5)

    runner = EnvRunner([make_env(TOY_TASK, terminate=True)], iter(range(10)))
    home = runner.decide(lambda obs, t: np.clip(-5 * obs["state"], -1, 1), horizon=50)
    assert home.terminals.all() and home.ended.all() and home.episodes[0].success and home.env_steps < 21


# ---- learning on the trivial task ------------------------------------------------------------------------------
def toy_config(root: Path, model: dict, epochs: int = 2, iterations: int = 40, **trainer) -> dict:
    return {
        "seed_everything": 3,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": epochs, "enable_progress_bar": False,
                    "log_every_n_steps": 1, "enable_model_summary": False, "default_root_dir": str(root),
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(root), "name": "logs", "version": 0}},
                    "callbacks": [], **trainer},
        "model": {"class_path": "lit_imit.modules.skill_sac.SkillSACModule", "init_args": model},
        "data": {"class_path": "lit_imit.data.rollouts.EnvDataModule",
                 "init_args": {"task": TOY_TASK, "num_envs": 4, "reward": "env", "iterations_per_epoch": iterations}},
    }


#: faster learning on the toy task than SPiRL's defaults: higher rates, a short horizon's discount, a small alpha,
#: two updates per transition
QUICK = {"lr_policy": 1e-3, "lr_critic": 1e-3, "lr_alpha": 1e-3, "gamma": 0.9, "init_alpha": 0.1,
         "updates_per_decision": 2}


def heldout_return(module, episodes: int = 40) -> float:
    envs = [make_env(TOY_TASK) for _ in range(20)]
    return summarize(evaluate_module(module, envs, list(range(episodes)), seed=5000))["return"]


@pytest.mark.parametrize("method", ["sac", "spirl_rl"])
def test_a_short_run_improves_the_return(tmp_path, prior_ckpt, method):
    """320 decisions in 4 envs, 512 updates: the held-out return of the mean policy rises well above the untrained
    one's (about -15: flat SAC's initial mean barely moves, SPiRL's policy starts as the N(0, I) prior, whose mean
    skill is 0; the best possible is about -3)."""
    model = {"method": method, **SMALL, **QUICK, "warmup_decisions": 64}
    model.update({"prior_ckpt": prior_ckpt, "target_divergence": 3.0} if method == "spirl_rl"
                 else {"state_dim": 2, "action_dim": 2})
    cli = main({"fit": toy_config(tmp_path, model)})
    fresh = SkillSACModule(**{k: v for k, v in cli.model.hparams.items() if not k.startswith("_")})
    before, after = heldout_return(fresh), heldout_return(cli.model)
    assert int(cli.model.decisions) == 320 and int(cli.model.updates) == 2 * (320 - 64)
    assert int(cli.model.env_steps) == 320 * (HORIZON if method == "spirl_rl" else 1)
    assert after > before + 3.0, (before, after)


# ---- checkpoints, test, exact resume ---------------------------------------------------------------------------
def test_checkpoint_runs_without_the_prior_file_tests_and_logs(tmp_path):
    prior = hand_made_prior(tmp_path / "prior.ckpt")
    model = {"method": "spirl_rl", "prior_ckpt": str(prior), **SMALL, "warmup_decisions": 8}
    cfg = toy_config(tmp_path, model, epochs=1, iterations=8)
    main({"fit": cfg})
    last = tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["policy_class"] == "lit_imit.modules.skill_sac.SkillSACModule"
    assert len(checkpoint["replay_buffer"]["rewards"]) == 32
    assert checkpoint["hyper_parameters"]["prior_policy"]["hparams"]["horizon"] == HORIZON
    prior.unlink()  # the checkpoint embeds its prior
    from lit_imit.policies import load_policy

    module = load_policy(last)
    assert int(module.decisions) == 32 and module.skills.decoder.net[0].weight[:, 2:].equal(torch.eye(2))
    rollout = {"class_path": "callbacks.rollout.RolloutEvaluation",
               "init_args": {"task": TOY_TASK, "n_episodes": 6, "n_envs": 3, "every_n_epochs": 0, "video": False}}
    cfg["trainer"]["callbacks"] = [rollout]
    cfg["trainer"]["logger"]["init_args"]["version"] = 1
    cli = main({"test": {**cfg, "ckpt_path": str(last)}})
    summary = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "RolloutEvaluation").last_summary
    assert summary["episodes"] == 6 and summary["success_ci_low"] <= summary["success_rate"]
    expected = summarize(evaluate_module(module, [make_env(TOY_TASK) for _ in range(3)], list(range(6)), 100_000))
    assert summary["return"] == pytest.approx(expected["return"])
    tags = _tags(tmp_path / "logs" / "version_0")
    assert {"train/kl", "train/alpha", "train/alpha_loss", "train/q_loss", "train/policy_loss", "train/q_target",
            "train/env_steps_per_s", "train/env_steps", "train/episode_return", "train/episode_success"} <= tags


def test_exact_resume_matches_uninterrupted_run(tmp_path, prior_ckpt):
    """Stopped after epoch 1 of 2 and resumed from last.ckpt: the same weights, target critics, alpha, optimisers,
    counters and replay buffer as the run that never stopped (each epoch restarts its seeded episodes)."""
    model = {"method": "spirl_rl", "prior_ckpt": prior_ckpt, **SMALL, "batch_size": 16, "warmup_decisions": 12}

    def cfg(root: Path, version: int = 0) -> dict:
        c = toy_config(root, model, epochs=2, iterations=6)
        c["trainer"]["logger"]["init_args"]["version"] = version
        return c

    straight = main({"fit": cfg(tmp_path / "a")})
    stopped = cfg(tmp_path / "b")
    stopped["trainer"]["callbacks"].append({"class_path": "tests.test_cli.StopAfterEpochs", "init_args": {"n": 1}})
    main({"fit": stopped})
    last = tmp_path / "b" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert int(torch.load(last, weights_only=True)["state_dict"]["decisions"]) == 24
    resumed = main({"fit": {**cfg(tmp_path / "b", version=1), "ckpt_path": str(last)}})
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert int(a["decisions"]) == 48 and int(a["updates"]) == 36 and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for opt_a, opt_b in zip(straight.trainer.optimizers, resumed.trainer.optimizers):
        for idx, state in opt_a.state_dict()["state"].items():
            for name, value in state.items():
                assert torch.equal(value, opt_b.state_dict()["state"][idx][name]), (idx, name)
    buffers = [m.model.replay.state_dict() for m in (straight, resumed)]
    assert all(torch.equal(buffers[0][k], buffers[1][k]) for k in buffers[0])


# ---- configuration ---------------------------------------------------------------------------------------------
SHIPPED = sorted(p for p in (ROOT / "configs" / "skills").glob("*.yaml") if "skill_sac.SkillSACModule" in p.read_text())


def test_shipped_rl_configs_parse(capsys):
    assert {p.stem for p in SHIPPED} == {"maze_spirl_rl", "maze_sac", "kitchen_spirl_rl", "kitchen_sac"}
    for path in SHIPPED:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(path), "--print_config"])
        assert exit_info.value.code in (0, None)
        printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
        assert printed["method"] == ("spirl_rl" if "spirl" in path.stem else "sac"), path
        assert printed["lr_policy"] == printed["lr_critic"] == printed["lr_alpha"] == 3e-4  # SPiRL's defaults
        assert printed["batch_size"] == 256 and printed["gamma"] == 0.99 and printed["tau"] == 5e-3


def test_configuration_errors_are_clear(prior_ckpt):
    with pytest.raises(ValueError, match="prior_ckpt"):
        SkillSACModule(method="spirl_rl")
    with pytest.raises(ValueError, match="state_dim"):
        SkillSACModule(method="sac")
    with pytest.raises(ValueError, match="method"):
        SkillSACModule(method="ppo")
    with pytest.raises(ValueError, match="no prior_ckpt"):
        SkillSACModule(method="sac", state_dim=2, action_dim=2, prior_ckpt=prior_ckpt)
    flat = SkillSACModule(method="sac", state_dim=3, action_dim=4)
    assert flat.penalty_target == 4.0 and flat.horizon == 1  # entropy target -|A|
    spirl = SkillSACModule(method="spirl_rl", prior_ckpt=prior_ckpt, target_divergence=5.0)
    assert spirl.penalty_target == 5.0 and spirl.horizon == HORIZON
    for name, value in spirl.policy.state_dict().items():  # pi starts as the prior
        assert torch.equal(value, spirl.skills.prior.state_dict()[name]), name
    z, kl = spirl.policy_sample(torch.randn(5, 2), torch.Generator().manual_seed(0))
    assert z.abs().max() < 2.0 and torch.allclose(kl, torch.zeros(5))


def test_skill_rl_recipes_take_the_prior_checkpoint(prior_ckpt):
    from lit_imit.recipes import RECIPES, _base_overrides

    rec = RECIPES["spirl_rl_pointmaze"]
    assert rec.method == "spirl_rl" and rec.config == "configs/skills/maze_spirl_rl.yaml"
    assert _base_overrides(rec, prior_ckpt) == ["--model.init_args.prior_ckpt", str(Path(prior_ckpt).resolve())]
    with pytest.raises(ValueError, match="maze_spirl_prior"):
        _base_overrides(rec, None)
    assert _base_overrides(RECIPES["sac_pointmaze"], None) == [] and RECIPES["sac_pointmaze"].method == "sac"
