"""SkiLD's demonstration-guided SAC (SkiLDRLModule, lit_imit.rl.skild): the D-blended divergence, the discriminator
reward and its mixing, the two temperatures, the policy's start, the stage checks, a tiny CLI run that resumes
exactly, weights-only checkpoints, the configs and the recipes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lit_imit.cli import main
from lit_imit.data.episodes import EpisodeStore
from lit_imit.modules.skild_rl import SkiLDRLModule
from lit_imit.modules.skill_prior import SkillPriorModule
from lit_imit.rl.replay import ReplayBuffer
from lit_imit.rl.sac import prior_divergence
from lit_imit.rl.skild import (
    DISCRIMINATOR_REWARD_CLIP,
    SkiLDSettings,
    blended_divergence,
    discriminator_loss,
    discriminator_reward,
    mixed_reward,
    skild_update,
    weighted_alpha_loss,
)
from tests.conftest import ROOT
from tests.sac_toy import HORIZON, hand_made_prior
from tests.test_cli import _tags
from tests.test_policies import trainer_checkpoint
from tests.test_skill_sac import toy_config

SMALL = {"critic_hidden": 32, "critic_layers": 2, "batch_size": 32, "replay_capacity": 5000}
#: the hand-made posterior: mean -x (towards the toy task's goal), std 1/2
POSTERIOR_LOG_STD = math.log(0.5)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small networks on a shared CPU: one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- tiny stage checkpoints on the toy task (tests.sac_toy) ---------------------------------------------------
TOY_SIZES = dict(state_dim=2, action_dim=2, horizon=HORIZON, latent_dim=2, hidden_dim=8, n_layers=0, encoder_hidden=8,
                 prior_hidden=8, prior_layers=0, discriminator_hidden=8, discriminator_layers=0)


def set_linear(layer: torch.nn.Linear, weight: list[list[float]], bias: list[float]) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))


def make_stages(root: Path, demo_logit: float = 0.0) -> dict[str, str]:
    """The three SkiLD stages, chained as the configs chain them (each later stage loads the earlier parts frozen
    with ``init_from``), with hand-set weights: the prior is N(0, I) (tests.sac_toy), the posterior N(-x, 1/4 I)
    and D a constant sigmoid(demo_logit)."""
    root.mkdir(parents=True, exist_ok=True)
    prior = str(hand_made_prior(root / "prior.ckpt"))
    posterior = SkillPriorModule(stage="posterior", **TOY_SIZES, init_from=[
        {"ckpt": prior, "parts": ["skill_encoder", "decoder", "prior"]}])
    set_linear(posterior.posterior.net[0], [[-1, 0], [0, -1], [0, 0], [0, 0]], [0, 0, POSTERIOR_LOG_STD,
                                                                               POSTERIOR_LOG_STD])
    trainer_checkpoint(posterior, root / "posterior.ckpt")
    disc = SkillPriorModule(stage="discriminator", **TOY_SIZES, init_from=[
        {"ckpt": str(root / "posterior.ckpt"), "parts": ["skill_encoder", "decoder", "prior", "posterior"]}])
    set_linear(disc.discriminator.net[0], [[0, 0]], [demo_logit])
    trainer_checkpoint(disc, root / "discriminator.ckpt")
    return {"prior_ckpt": prior, "posterior_ckpt": str(root / "posterior.ckpt"),
            "discriminator_ckpt": str(root / "discriminator.ckpt")}


def make_demos(root: Path, episodes: int = 3, length: int = 12) -> str:
    """Demonstrations of the toy task: straight lines from a corner towards the origin."""
    store = EpisodeStore(root)
    for i in range(episodes):
        start = np.array([0.9, -0.8 + 0.4 * i])
        states = (start[None] * np.linspace(1.0, 0.0, length)[:, None]).astype(np.float32)
        store.add({"observations/state": states, "action": -np.sign(states).astype(np.float32)},
                  {"task": "toy", "source": "teacher"})
    return str(root)


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict[str, str]:
    return make_stages(tmp_path_factory.mktemp("stages"))


def module_with_d(root: Path, d: float, **kwargs) -> SkiLDRLModule:
    return SkiLDRLModule(**make_stages(root, demo_logit=math.log(d / (1 - d))), **SMALL, **kwargs)


# ---- the maths against hand-computed values --------------------------------------------------------------------
def test_blended_divergence_follows_the_posterior_where_d_is_high_and_the_prior_where_it_is_low():
    """pi = N((1, 0), I), prior p = N(0, 4 I), posterior q = N((1, 1), I): KL(pi || p) = (ln 2 + 2/8 - 1/2) +
    (ln 2 + 1/8 - 1/2), KL(pi || q) = 1/2; alpha = 0.5, alpha_q = 2 weigh them by 1 - D and D."""
    mean, log_std = torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2)
    kl_p = prior_divergence(mean, log_std, torch.zeros(1, 2), torch.full((1, 2), math.log(2.0)))
    kl_q = prior_divergence(mean, log_std, torch.ones(1, 2), torch.zeros(1, 2))
    expected_p = 2 * math.log(2) + 0.375 - 1.0
    assert float(kl_p) == pytest.approx(expected_p, rel=1e-6) and float(kl_q) == pytest.approx(0.5, rel=1e-6)
    for d, expected in ((0.0, 0.5 * expected_p), (1.0, 2 * 0.5), (0.3, 0.5 * 0.7 * expected_p + 2 * 0.3 * 0.5)):
        value = blended_divergence(kl_p, kl_q, torch.tensor([d]), alpha=0.5, alpha_q=2.0)
        assert float(value) == pytest.approx(expected, rel=1e-6), d


@pytest.mark.parametrize("d", [1e-4, 0.3, 1 - 1e-4])
def test_the_module_pays_the_blended_divergence_of_its_own_prior_and_posterior(tmp_path, d):
    """The same check through SkiLDRLModule with hand-made stages: at x = 0 the posterior is N(0, 1/4 I), the prior
    N(0, I); pi is shifted to mean (1, 0) and std 1, and D is the constant sigmoid of the discriminator's bias."""
    module = module_with_d(tmp_path, d, init_alpha=0.5, init_alpha_q=2.0)
    with torch.no_grad():
        module.policy.net[0].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))  # mean (1, 0), log std 0 at x = 0
    sample = module.skill_sample(torch.zeros(1, 2), torch.Generator().manual_seed(0))
    kl_p = 0.5 * 1.0  # KL(N(1, 1) || N(0, 1)) + KL(N(0, 1) || N(0, 1))
    kl_q = 2 * (math.log(0.5) + 1 / (2 * 0.25) - 0.5) + 1 / (2 * 0.25)  # both dims' variance term, dim 0's mean
    assert float(sample.kl_prior.detach()) == pytest.approx(kl_p, rel=1e-5)
    assert float(sample.kl_posterior.detach()) == pytest.approx(kl_q, rel=1e-5)
    _, penalty = module.policy_sample(torch.zeros(1, 2), torch.Generator().manual_seed(0))
    assert float(penalty.detach()) == pytest.approx(0.5 * (1 - d) * kl_p + 2.0 * d * kl_q, rel=1e-4)


def test_discriminator_reward_is_log_d_minus_log_one_minus_d_and_kappa_mixes_it():
    d = torch.tensor([0.8, 0.5, 0.1])
    reward = discriminator_reward(torch.log(d / (1 - d)))
    assert torch.allclose(reward, torch.tensor([math.log(4.0), 0.0, -math.log(9.0)]), atol=1e-6)
    assert discriminator_reward(torch.tensor([100.0, -100.0])).tolist() == pytest.approx(
        [DISCRIMINATOR_REWARD_CLIP, -DISCRIMINATOR_REWARD_CLIP])  # SkiLD's eps 1e-20 bounds it at ln(1e20)
    assert DISCRIMINATOR_REWARD_CLIP == pytest.approx(math.log(1e20))
    env = torch.tensor([1.0, 0.0, 2.0])
    assert torch.allclose(mixed_reward(env, reward, 0.01),
                          torch.tensor([0.99 + 0.01 * math.log(4), 0.0, 1.98 - 0.01 * math.log(9)]), atol=1e-6)
    assert torch.equal(mixed_reward(env, reward, 0.0), env) and torch.equal(mixed_reward(env, reward, 1.0), reward)
    # the discriminator learns demonstrations 1, policy states 0: BCE of logit 0 is ln 2 either way
    assert float(discriminator_loss(torch.zeros(3), torch.zeros(5))) == pytest.approx(math.log(2))


def test_the_update_relabels_rewards_with_the_current_discriminator(tmp_path):
    """D = 0.8 everywhere, kappa = 0.25: every relabelled reward is 0.75 r_env + 0.25 ln 4, and the soft target of
    a terminal transition is that reward alone."""
    module = module_with_d(tmp_path, 0.8)
    buffer = ReplayBuffer(100, 2, 2)
    rewards = torch.tensor([1.0, -2.0, 0.5, 0.0])
    buffer.add(torch.randn(4, 2), torch.rand(4, 2), rewards, torch.randn(4, 2), torch.ones(4))
    batch = buffer.sample(4, torch.Generator().manual_seed(1))
    terms = skild_update(module, batch, SkiLDSettings(kappa=0.25), lambda name, loss: None)
    expected = 0.75 * batch.rewards + 0.25 * math.log(4.0)
    assert terms["reward"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert terms["q_target"] == pytest.approx(float(expected.mean()), rel=1e-5)  # terminal: nothing bootstrapped
    assert terms["disc_reward"] == pytest.approx(math.log(4.0), rel=1e-5)
    assert terms["d_mean"] == pytest.approx(0.8, rel=1e-5)


def test_each_temperature_moves_towards_its_target_on_the_states_d_assigns_it():
    """d L / d log alpha = alpha mean(w (T - KL)): a divergence above its target raises the temperature, one below
    lowers it; states of weight 0 (D = 1 for alpha, D = 0 for alpha_q) teach it nothing."""
    log_alpha = torch.nn.Parameter(torch.tensor(math.log(2.0)))
    kl, d = torch.tensor([3.0, 5.0]), torch.tensor([0.3, 0.3])
    weighted_alpha_loss(log_alpha, kl, 1 - d, target=1.0).backward()  # alpha on the prior: weight 1 - D
    assert float(log_alpha.grad) == pytest.approx(2.0 * 0.7 * (1.0 - 4.0), rel=1e-6)  # < 0: gradient descent raises
    log_alpha.grad = None
    weighted_alpha_loss(log_alpha, kl, d, target=10.0).backward()  # alpha_q on the posterior: weight D, KL below
    assert float(log_alpha.grad) == pytest.approx(2.0 * 0.3 * (10.0 - 4.0), rel=1e-6)  # > 0: lowers it
    log_alpha.grad = None
    weighted_alpha_loss(log_alpha, kl, torch.zeros(2), target=1.0).backward()
    assert float(log_alpha.grad) == 0.0


def test_one_update_moves_alpha_and_alpha_q_towards_their_targets(tmp_path):
    """Through skild_update with Adam: KL to the prior far above a target of 0.01 raises alpha, KL to the posterior
    far below a target of 50 lowers alpha_q; with tuning off a temperature stays."""
    module = module_with_d(tmp_path, 0.5, target_divergence=0.01, target_divergence_q=50.0)
    with torch.no_grad():
        module.policy.net[0].bias.add_(torch.tensor([1.5, -1.5, 0.0, 0.0]))  # away from both
    optimizers = dict(zip(module.OPTIMIZER_NAMES, module.configure_optimizers()))

    def step(name, loss):
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()

    buffer = ReplayBuffer(100, 2, 2)
    buffer.add(torch.randn(16, 2), torch.rand(16, 2), torch.randn(16), torch.randn(16, 2), torch.zeros(16))
    batch = buffer.sample(16, torch.Generator().manual_seed(2))
    skild_update(module, batch, module.settings, step, torch.Generator().manual_seed(3))
    assert float(module.log_alpha) == pytest.approx(3e-4, rel=1e-3)  # Adam's first step: lr x sign
    assert float(module.log_alpha_q) == pytest.approx(-3e-4, rel=1e-3)
    fixed = SkiLDSettings(target_divergence=0.01, target_divergence_q=50.0, tune_alpha=False, tune_alpha_q=False)
    skild_update(module, batch, fixed, step, torch.Generator().manual_seed(3))
    assert float(module.log_alpha) == pytest.approx(3e-4, rel=1e-3)
    assert float(module.log_alpha_q) == pytest.approx(-3e-4, rel=1e-3)


def test_the_policy_starts_as_the_posterior(stages):
    """pi is a trainable copy of q(z | s): the same Gaussian at every state, KL(pi || q) = 0, and the first skill
    the deterministic policy picks is the squashed posterior mean 2 tanh(-x)."""
    module = SkiLDRLModule(**stages, **SMALL)
    x = torch.randn(6, 2)
    for mine, theirs in zip(module.policy(x), module.skills.posterior(x)):
        assert torch.equal(mine, theirs)
    assert {n for n, p in module.named_parameters() if p.requires_grad} >= {"policy.net.0.weight", "log_alpha_q"}
    assert not any(p.requires_grad for p in module.skills.parameters())
    assert not any(p.requires_grad for p in module.discriminator.parameters())  # frozen: discriminator_every 0
    sample = module.skill_sample(x, torch.Generator().manual_seed(0))
    assert torch.allclose(sample.kl_posterior, torch.zeros(6), atol=1e-6) and (sample.kl_prior > 0).all()
    module.reset()
    module.select_action({"state": x.numpy()})
    assert torch.allclose(module._plan["z"], 2 * torch.tanh(-x), atol=1e-6)
    from_prior = SkiLDRLModule(**stages, **SMALL, init_policy_from="prior")
    assert torch.equal(from_prior.policy(x)[0], from_prior.skills.prior(x)[0])


def test_the_stages_must_be_the_right_ones_and_chain(tmp_path, stages):
    with pytest.raises(ValueError, match="posterior_ckpt, discriminator_ckpt"):
        SkiLDRLModule(prior_ckpt=stages["prior_ckpt"])
    with pytest.raises(ValueError, match="stage 'posterior'"):
        SkiLDRLModule(**{**stages, "posterior_ckpt": stages["prior_ckpt"]})
    refitted = SkillPriorModule(stage="posterior", **TOY_SIZES, init_from=[  # the same prior, another posterior
        {"ckpt": stages["prior_ckpt"], "parts": ["skill_encoder", "decoder", "prior"]}])
    trainer_checkpoint(refitted, tmp_path / "refitted_posterior.ckpt")
    with pytest.raises(ValueError, match="the posterior of discriminator_ckpt .* is not the one of posterior_ckpt"):
        SkiLDRLModule(**{**stages, "posterior_ckpt": str(tmp_path / "refitted_posterior.ckpt")})
    other = make_stages(tmp_path / "other")  # another prior: its skill embedding is another random one
    with pytest.raises(ValueError, match="the skill_encoder of posterior_ckpt .* is not the one of prior_ckpt"):
        SkiLDRLModule(**{**stages, "prior_ckpt": other["prior_ckpt"]})
    with pytest.raises(ValueError, match="kappa"):
        SkiLDRLModule(**stages, kappa=1.5)
    with pytest.raises(ValueError, match="init_policy_from"):
        SkiLDRLModule(**stages, init_policy_from="demos")


# ---- a tiny run through the CLI: logs, checkpoints, exact resume --------------------------------------------------
def skild_config(root: Path, stages: dict[str, str], demos: str, version: int = 0, epochs: int = 2) -> dict:
    model = {**stages, **SMALL, "demo_dir": demos, "kappa": 0.5, "discriminator_every": 2, "warmup_decisions": 8,
             "batch_size": 16, "target_divergence": 2.0, "target_divergence_q": 0.5}
    cfg = toy_config(root, model, epochs=epochs, iterations=5)
    cfg["model"]["class_path"] = "lit_imit.modules.skild_rl.SkiLDRLModule"
    cfg["trainer"]["logger"]["init_args"]["version"] = version
    return cfg


def test_a_tiny_cli_run_resumes_exactly_and_its_checkpoint_runs_alone(tmp_path):
    """2 epochs of 5 decisions x 4 envs straight, against 1 epoch, stopped, then resumed from last.ckpt: the same
    weights (policy, critics, targets, both temperatures, the online discriminator), the five optimisers' states
    and the replay buffer. The checkpoint loads weights-only and acts without the stage files or the demos."""
    stages, demos = make_stages(tmp_path / "stages"), make_demos(tmp_path / "demos")
    straight = main({"fit": skild_config(tmp_path / "a", stages, demos)})
    stopped = skild_config(tmp_path / "b", stages, demos)
    stopped["trainer"]["callbacks"].append({"class_path": "tests.test_cli.StopAfterEpochs", "init_args": {"n": 1}})
    main({"fit": stopped})
    last = tmp_path / "b" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = main({"fit": {**skild_config(tmp_path / "b", stages, demos, version=1), "ckpt_path": str(last)}})

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert int(a["decisions"]) == 40 and int(a["updates"]) == 32 and a.keys() == b.keys()
    assert len(a["demo_states"]) == 36
    for key in a:
        assert torch.equal(a[key], b[key]), key
    initial = SkiLDRLModule(**stages, **SMALL)
    assert not torch.equal(a["discriminator.net.0.weight"], initial.discriminator.net[0].weight)  # it trained online
    assert float(a["log_alpha_q"]) != 0.0 and float(a["log_alpha"]) != 0.0
    assert len(straight.trainer.optimizers) == 5
    for opt_a, opt_b in zip(straight.trainer.optimizers, resumed.trainer.optimizers):
        assert opt_a.state_dict()["state"].keys() == opt_b.state_dict()["state"].keys()
        for idx, state in opt_a.state_dict()["state"].items():
            for name, value in state.items():
                assert torch.equal(value, opt_b.state_dict()["state"][idx][name]), (idx, name)
    buffers = [m.model.replay.state_dict() for m in (straight, resumed)]
    assert all(torch.equal(buffers[0][k], buffers[1][k]) for k in buffers[0])

    checkpoint = torch.load(tmp_path / "a" / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["policy_class"] == "lit_imit.modules.skild_rl.SkiLDRLModule"
    assert len(checkpoint["optimizer_states"]) == 5 and len(checkpoint["replay_buffer"]["rewards"]) == 40
    assert checkpoint["hyper_parameters"]["skills_policy"]["hparams"]["policy"] == "skild"
    for path in Path(tmp_path / "stages").glob("*.ckpt"):
        path.unlink()
    from lit_imit.policies import load_policy

    module = load_policy(tmp_path / "a" / "logs" / "version_0" / "checkpoints" / "last.ckpt")
    assert all(torch.equal(v, a[k]) for k, v in module.state_dict().items())
    module.reset()
    assert module.select_action({"state": np.zeros((3, 2), np.float32)}).shape == (3, 2)
    tags = _tags(tmp_path / "a" / "logs" / "version_0")
    assert {f"train/{name}" for name in ("q_loss", "policy_loss", "alpha", "alpha_q", "kl_prior", "kl_posterior",
                                         "d_mean", "disc_reward", "disc_loss", "reward", "env_reward")} <= tags


def test_a_short_run_improves_the_return(tmp_path):
    """320 decisions in 4 envs from pi = the N(0, I) prior (mean skill 0: held-out return about -15), D = 0.9 and the
    env's reward: the mean policy comes within reach of the best (about -3), as SPiRL's does on this task."""
    from tests.test_skill_sac import QUICK, heldout_return

    stages = make_stages(tmp_path / "stages", demo_logit=math.log(9.0))
    model = {**stages, **SMALL, **QUICK, "batch_size": 64, "warmup_decisions": 64, "kappa": 0.0,
             "init_policy_from": "prior", "init_alpha_q": 0.1, "target_divergence": 3.0, "target_divergence_q": 0.5}
    cfg = toy_config(tmp_path, model, epochs=2, iterations=40)
    cfg["model"]["class_path"] = "lit_imit.modules.skild_rl.SkiLDRLModule"
    cli = main({"fit": cfg})
    before = heldout_return(SkiLDRLModule(**stages, **SMALL, init_policy_from="prior"))
    after = heldout_return(cli.model)
    assert int(cli.model.updates) == 2 * (320 - 64) and after > before + 5.0, (before, after)


# ---- configs and recipes -----------------------------------------------------------------------------------------
SKILD_CONFIGS = {"maze_skild_rl": 0.1, "kitchen_skild_rl": 0.1, "maze_skild_imitation": 1.0}


def test_shipped_skild_configs_parse(capsys):
    shipped = {p.stem for p in (ROOT / "configs" / "skills").glob("*.yaml") if "SkiLDRLModule" in p.read_text()}
    assert shipped == set(SKILD_CONFIGS)
    for stem, kappa in SKILD_CONFIGS.items():
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(ROOT / "configs" / "skills" / f"{stem}.yaml"), "--print_config"])
        assert exit_info.value.code in (0, None)
        printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
        assert printed["kappa"] == kappa and printed["batch_size"] == 128, stem
        assert printed["lr_policy"] == printed["lr_critic"] == printed["lr_alpha"] == 3e-4
        assert (printed["discriminator_every"] > 0) == (kappa == 1.0), stem  # online D only when imitating
        assert all(printed[arg] for arg in ("prior_ckpt", "posterior_ckpt", "discriminator_ckpt")), stem


def test_skild_recipes_take_the_three_stage_checkpoints_in_order(stages):
    from lit_imit.recipes import RECIPES, _base_overrides

    rec = RECIPES["skild_rl_pointmaze"]
    assert rec.method == "skild_rl" and rec.config == "configs/skills/maze_skild_rl.yaml"
    paths = [stages[arg] for arg in ("prior_ckpt", "posterior_ckpt", "discriminator_ckpt")]
    overrides = _base_overrides(rec, paths)
    assert overrides == [item for arg, path in zip(rec.base_arg, paths)
                         for item in (f"--model.init_args.{arg}", str(Path(path).resolve()))]
    assert rec.base_arg == ("prior_ckpt", "posterior_ckpt", "discriminator_ckpt")
    with pytest.raises(ValueError, match="3 checkpoints"):
        _base_overrides(rec, paths[:1])
    with pytest.raises(ValueError, match="maze_skild_posterior"):
        _base_overrides(rec, None)
    assert RECIPES["skild_rl_kitchen"].base_arg == rec.base_arg
    from lit_imit.tools.reproduce import parse_args

    assert parse_args(["skild_rl_pointmaze", "--base-ckpt", *paths]).base_ckpt == paths
    # one-checkpoint recipes take a path or a list of one (reproduce.py's --base-ckpt), as before
    spirl = RECIPES["spirl_rl_pointmaze"]
    assert _base_overrides(spirl, paths[0]) == _base_overrides(spirl, [paths[0]]) == [
        "--model.init_args.prior_ckpt", str(Path(paths[0]).resolve())]
