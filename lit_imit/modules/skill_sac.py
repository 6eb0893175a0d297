"""SkillSACModule: SPiRL's reinforcement learning in the skill space of a trained skill prior (Pertsch et al.,
"Accelerating Reinforcement Learning with Learned Skill Priors", CoRL 2020), and flat SAC as its baseline.

* ``method: spirl_rl``: a high-level policy pi(z | s) chooses a skill z every H (= 10) env steps; the frozen
  skill decoder of a ``SkillPriorModule`` checkpoint (``prior_ckpt``) executes it, closed-loop pi(a | s, z) at
  every step (or the open-loop decoder's H actions). SAC trains pi and twin critics Q(s, z) on the skill-level
  transitions (the H rewards summed), with the entropy bonus replaced by the divergence KL(pi(.|s) || p(.|s))
  from the learned skill prior p(z | s) (``SkillPriorModule.skill_distribution``), weighted by a temperature
  alpha tuned automatically so that the divergence stays near a target delta (``lit_imit.rl.sac``). As SPiRL's
  ``LearnedPriorAugmentedPIPolicy``, pi starts as a copy of the prior network with its weights, and the skill
  is squashed, z = 2 tanh(u), u ~ pi; the KL is that of the Gaussians over u.
* ``method: sac``: the same learner on raw env actions (H = 1): a tanh-squashed Gaussian policy, entropy
  regularised with alpha tuned towards the entropy target -|A| (Haarnoja et al., 2018), states unnormalised
  (SPiRL's flat baseline, ``spirl/configs/rl/{maze,kitchen}/SAC``).

One training step is one decision of every env in this process's ``EnvDataModule.envs`` (a skill of up to H
steps, or one env step; ``lit_imit.rl.transitions``), the N transitions stored in the replay buffer
(``lit_imit.rl.replay``), then ``updates_per_decision`` x N gradient updates (``lit_imit.rl.sac.sac_update``,
manual optimisation with one Adam each for the policy, the critics and alpha). The first ``warmup_decisions``
decisions sample skills from the prior (SPiRL's warm-up acts with its prior-initialised policy) or uniform
actions (flat SAC) and train nothing. Lightning's ``global_step`` counts optimiser steps (three per update);
``train/updates``, ``train/decisions`` and ``train/env_steps`` count the rest. TensorBoard gets, per step, the
update's terms (``q_loss``, ``policy_loss``, ``alpha``, ``alpha_loss``, ``kl`` or ``log_prob``, ``q1``, ``q2``,
``q_target``), ``env_steps_per_s`` and ``update_s``, and per epoch the mean ``episode_return``,
``episode_success`` and ``episode_length`` of the training episodes that ended in it; ``RolloutEvaluation``
rolls the deterministic policy (the skill z = 2 tanh(mean)) out on held-out seeds.

Exact resume: every epoch starts with fresh resets of the envs (episodes cut at an epoch's end are truncated
and bootstrapped), and its episode seeds, the policy's sampling noise and the replay draws come from
generators seeded by (``seed``, rank, epoch). The weights, the target critics, alpha, the three optimisers,
the counters and the whole replay buffer (``checkpoint["replay_buffer"]``, tensors) are in every checkpoint,
so a run resumed from an end-of-epoch checkpoint makes exactly the updates of one that never stopped. The
checkpoint embeds the prior module (its spec and weights), so it runs without ``prior_ckpt``. One process
only: DDP would need a buffer per rank and is refused.

``lit_imit.modules.skild_rl.SkiLDRLModule`` extends this module to SkiLD's demonstration-guided RL (the same
learner, with a posterior, a discriminator and a second temperature).

Defaults are SPiRL's (clvrai/spirl: ``rl/agents/ac_agent.py``, ``rl/agents/prior_sac_agent.py``,
``rl/components/agent.py``, ``configs/hrl/maze/spirl_cl/conf.py``, ``configs/hrl/kitchen/spirl/conf.py``):
Adam (0.9, 0.999) at lr 3e-4 for policy, critics and alpha; alpha starts at 1 (log alpha = 0); batch 256;
discount 0.99 per decision; Polyak tau 5e-3; one-step targets (no n-step returns); one update per collected
transition; 5000 warm-up decisions (``n_warmup_steps``, which SPiRL's hierarchical sampler counts in
high-level transitions); skills squashed to +-2 (``max_action_range``); KL clamped at 100
(``max_divergence_range``); replay 1e5 transitions (maze), 1e6 (kitchen); target divergence 1 (maze), 5
(kitchen); critics of ``n_layers`` 2 (maze) or 5 (kitchen) x 256 (3 or 6 hidden layers here, ``lit_imit.nets.sac``).
Departures: the KL is analytic rather than SPiRL's 10-sample Monte-Carlo estimate (same expectation); a
time limit is bootstrapped rather than terminal; evaluation executes the policy's mean (SPiRL samples);
N envs per step with N updates keep SPiRL's update-to-data ratio.
"""

from __future__ import annotations

import contextvars
import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from lit_imit.modules.base import PolicyModule, require_all_rows
from lit_imit.modules.residual_ppo import TRAIN_SEEDS
from lit_imit.nets.sac import GaussianPolicy, TwinQ, frozen_copy
from lit_imit.nets.skills import ClosedLoopDecoder
from lit_imit.policies import build_policy, load_policy, policy_spec
from lit_imit.rl.replay import ReplayBuffer
from lit_imit.rl.sac import (
    SACSettings,
    prior_divergence,
    rsample,
    sac_update,
    squash,
    squashed_log_prob,
)
from lit_imit.rl.transitions import Decision, EnvRunner

METHODS = ("spirl_rl", "sac")
#: the random streams of one epoch, each seeded from (seed, rank, epoch, stream)
STREAMS = {"episodes": 0, "policy": 1, "replay": 2}


def stream_seed(seed: int, rank: int, epoch: int, stream: str) -> int:
    """A well-mixed 63-bit seed for one random stream of one epoch on one rank."""
    words = np.random.SeedSequence([seed, rank, epoch, STREAMS[stream]]).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 31 | int(words[1]) >> 1


def acting_spec(skills: PolicyModule) -> dict[str, Any]:
    """The prior module's spec for acting only: its weights (FIST's lookup buffers included) travel in this
    module's state, so the spec names no file (``init_from``, ``lookup_dir``) and its stage is the one that
    needs none; the execution mode (``policy``) stays."""
    spec = policy_spec(skills)
    hparams = dict(spec["hparams"])
    hparams.update(stage="skill_prior", policy=skills.policy, init_from=None, lookup_dir=None)
    return {**spec, "hparams": hparams}


@dataclass
class _Epoch:
    """What one epoch of collection runs on: its envs' episodes and its random streams."""

    index: int
    runner: EnvRunner
    policy_noise: torch.Generator
    replay_draws: torch.Generator


class SkillSACModule(PolicyModule):
    """SPiRL's prior-regularised SAC over skills, or flat SAC (see the module docstring).

    Args:
        method: ``"spirl_rl"`` (skill space, KL to the prior) or ``"sac"`` (raw actions, entropy).
        prior_ckpt: the ``SkillPriorModule`` checkpoint (spirl_rl): its decoder, prior and state statistics.
        prior_policy: filled in from ``prior_ckpt`` when the module is first built and saved with it; leave it
            out in configs.
        state_key: the observation key the policy reads (the skill envs' flat ``state``).
        state_dim, action_dim: sizes of the state and the action (flat SAC; spirl_rl takes the prior's).
        target_divergence: delta, the KL to the prior that alpha steers towards (SPiRL: 1 maze, 5 kitchen).
        max_divergence: the KL is clamped at this (SPiRL's ``max_divergence_range``, 100).
        skill_range: skills are squashed to +-skill_range (SPiRL's ``max_action_range``, 2: "prior is Gaussian
            with unit variance").
        init_policy_from_prior: start pi as a copy of the prior's network (SPiRL's PI policy).
        target_entropy: flat SAC's entropy target (None: -action_dim, SPiRL's default).
        policy_hidden, policy_layers: flat SAC's policy MLP (SPiRL: n_layers 2 maze / 5 kitchen -> 3 / 6).
        critic_hidden, critic_layers: the twin critics (SPiRL: 256 x n_layers 2 maze / 5 kitchen -> 3 / 6).
        init_alpha: the temperature's start (1).
        lr_policy, lr_critic, lr_alpha: Adam learning rates (3e-4 each).
        gamma, tau, batch_size: discount per decision, Polyak factor, replay batch.
        replay_capacity: transitions kept (SPiRL: 1e5 maze skills, 1e6 kitchen skills / maze flat, 1e5 kitchen flat).
        warmup_decisions: decisions collected with the prior (uniform actions for flat SAC) before any update.
        updates_per_decision: gradient updates per stored transition (SPiRL: 1).
        seed: seeds the episodes, the policy's noise and the replay draws (with the rank and the epoch).
    """

    def __init__(
        self,
        method: str = "spirl_rl",
        prior_ckpt: str | None = None,
        prior_policy: dict[str, Any] | None = None,
        state_key: str = "state",
        state_dim: int | None = None,
        action_dim: int | None = None,
        target_divergence: float = 1.0,
        max_divergence: float = 100.0,
        skill_range: float = 2.0,
        init_policy_from_prior: bool = True,
        target_entropy: float | None = None,
        policy_hidden: int = 256,
        policy_layers: int = 3,
        critic_hidden: int = 256,
        critic_layers: int = 3,
        init_alpha: float = 1.0,
        lr_policy: float = 3e-4,
        lr_critic: float = 3e-4,
        lr_alpha: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 5e-3,
        batch_size: int = 256,
        replay_capacity: int = 100_000,
        warmup_decisions: int = 5000,
        updates_per_decision: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if init_alpha <= 0 or skill_range <= 0 or batch_size < 1 or warmup_decisions < 0 or updates_per_decision < 0:
            raise ValueError("init_alpha and skill_range must be > 0, batch_size >= 1, warmup_decisions and "
                             "updates_per_decision >= 0")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.method = method
        if method == "spirl_rl":
            self.skills = self._frozen_prior(prior_ckpt, prior_policy)
            self.hparams["prior_policy"] = acting_spec(self.skills)
            hp = self.skills.hparams
            self.state_dim, self.decision_dim, self.horizon = int(hp.state_dim), int(hp.latent_dim), int(hp.horizon)
            self.action_dim, self.scale = int(hp.action_dim), float(skill_range)
            self.policy = self._prior_shaped_policy(init_policy_from_prior)
            self.penalty_target = float(target_divergence)
        else:
            if state_dim is None or action_dim is None:
                raise ValueError("flat SAC needs model.init_args.state_dim and action_dim")
            if prior_ckpt or prior_policy:
                raise ValueError("flat SAC (method: sac) acts on raw actions and takes no prior_ckpt")
            self.skills = None
            self.state_dim, self.decision_dim, self.horizon = int(state_dim), int(action_dim), 1
            self.action_dim, self.scale = int(action_dim), 1.0
            self.policy = GaussianPolicy(self.state_dim, self.decision_dim, policy_hidden, policy_layers)
            self.penalty_target = -(float(target_entropy) if target_entropy is not None else -float(action_dim))
        self._build_learner(critic_hidden, critic_layers, init_alpha, replay_capacity)

    def _build_learner(self, critic_hidden: int, critic_layers: int, init_alpha: float, replay_capacity: int) -> None:
        """What every variant learns and keeps once the policy and its sizes are set: the twin critics and their
        targets, log alpha, the replay buffer, the counters and the acting state (``SkiLDRLModule`` shares it)."""
        self.critic = TwinQ(self.state_dim, self.decision_dim, critic_hidden, critic_layers)
        self.target_critic = frozen_copy(self.critic)
        self.log_alpha = torch.nn.Parameter(torch.tensor(math.log(init_alpha)))
        self.replay = ReplayBuffer(replay_capacity, self.state_dim, self.decision_dim)
        for name in ("env_steps", "decisions", "updates", "episodes", "successes"):
            self.register_buffer(name, torch.zeros((), dtype=torch.long))
        self._epoch: _Epoch | None = None
        self._plan: dict[str, Tensor] | None = None
        self._step = 0

    # ---- building -----------------------------------------------------------------------------------------
    @staticmethod
    def _frozen_prior(prior_ckpt: str | None, prior_policy: dict[str, Any] | None) -> PolicyModule:
        """The skill prior module from its spec (weights loaded later with this module's) or ``prior_ckpt``, frozen.

        Built in a fresh ``contextvars`` context, as ``ResidualPPOModule`` builds its base: the LightningCLI hands
        this module's config to every ``save_hyperparameters()`` called while it is instantiated."""
        if prior_policy is None and not prior_ckpt:
            raise ValueError("spirl_rl needs the skill prior: set model.init_args.prior_ckpt (a SkillPriorModule "
                             "checkpoint, e.g. from configs/skills/maze_spirl_prior.yaml)")
        build = (lambda: build_policy(prior_policy)) if prior_policy is not None else (lambda: load_policy(prior_ckpt))
        skills = contextvars.Context().run(build)
        if not hasattr(skills, "skill_distribution") or not hasattr(skills, "decoder"):
            raise ValueError(f"{prior_ckpt} is a {type(skills).__name__}, not a skill prior (SkillPriorModule)")
        skills.requires_grad_(False)
        return skills.eval()

    def _prior_shaped_policy(self, from_prior: bool) -> torch.nn.Module:
        """pi(u | s): a trainable copy of the network behind the prior's ``skill_distribution`` (prior or posterior)."""
        source = self.skills.policy
        if source not in ("prior", "posterior"):
            if from_prior:
                raise ValueError(f"the prior's policy {source!r} has no single network to copy into pi: set "
                                 "init_policy_from_prior: false")
            source = "prior"
        policy = copy.deepcopy(getattr(self.skills, source))
        if not from_prior:
            for layer in policy.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        return policy.requires_grad_(True)

    def train(self, mode: bool = True) -> "SkillSACModule":
        """The prior module stays in eval mode whatever Lightning asks."""
        super().train(mode)
        if self.skills is not None:
            self.skills.eval()
        return self

    @property
    def settings(self) -> SACSettings:
        return SACSettings(gamma=self.hparams.gamma, tau=self.hparams.tau, penalty_target=self.penalty_target)

    # ---- the agent that lit_imit.rl.sac updates ----------------------------------------------------------------
    def critic_input(self, states: Tensor) -> Tensor:
        """Raw states as the networks read them: the prior's normalisation (spirl_rl), else as they are."""
        return self.skills.normalize_state(states) if self.skills is not None else states.float()

    def policy_sample(self, states: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """A reparameterised squashed sample (B, D) for raw states and its penalty (B,): the KL to the prior, or
        the sample's log-density (flat SAC)."""
        x = self.critic_input(states)
        mean, log_std = self.policy(x)
        u = rsample(mean, log_std, generator)
        if self.skills is None:
            return squash(u, self.scale), squashed_log_prob(u, mean, log_std, self.scale)
        with torch.no_grad():
            prior_mean, prior_log_std = self.skills.skill_distribution(x)
        return squash(u, self.scale), prior_divergence(mean, log_std, prior_mean, prior_log_std,
                                                       self.hparams.max_divergence)

    # ---- acting --------------------------------------------------------------------------------------------
    def _states(self, obs: Mapping[str, Any]) -> Tensor:
        key = self.hparams.state_key
        if key not in obs:
            raise KeyError(f"observations need a {key!r} entry (got {sorted(obs)}); set model.init_args.state_key")
        return self.obs_to_tensors({key: obs[key]})[key].float()

    def _choose(self, states: Tensor, generator: torch.Generator | None, mode: str) -> Tensor:
        """Decisions (N, D) for raw states: ``"sample"`` from pi, ``"mean"`` of pi, ``"warmup"`` (the prior's
        sample, or uniform actions for flat SAC)."""
        if mode == "warmup" and self.skills is None:
            return torch.rand(states.shape[0], self.decision_dim, generator=generator).to(states.device) * 2 - 1
        x = self.critic_input(states)
        mean, log_std = self.skills.skill_distribution(x) if mode == "warmup" else self.policy(x)
        return squash(mean if mode == "mean" else rsample(mean, log_std, generator), self.scale)

    def _plan_for(self, decisions: Tensor) -> dict[str, Tensor]:
        plan = {"z": decisions}
        if self.skills is not None and not isinstance(self.skills.decoder, ClosedLoopDecoder):
            plan["actions"] = self.skills.decoder(decisions)  # the open-loop decoder's H actions
        return plan

    def _execute(self, states: Tensor, plan: Mapping[str, Tensor], t: int) -> Tensor:
        """The env actions (N, A) at step t of the current decisions: the decoder's (clipped to the prior's action
        box), or the decision itself (flat SAC)."""
        if self.skills is None:
            return plan["z"]
        if "actions" in plan:
            action = plan["actions"][:, t]
        else:
            action = self.skills.decoder(self.skills.normalize_state(states), plan["z"])
        return action.clamp(self.skills.hparams.action_low, self.skills.hparams.action_high)

    def reset(self, env_ids: Sequence[int] | Tensor | None = None) -> None:
        """New evaluation episodes: all rows choose a skill at their next step."""
        require_all_rows(self, env_ids, None if self._plan is None else int(self._plan["z"].shape[0]))
        self._plan, self._step = None, 0

    def select_action(self, obs: Mapping[str, Any]) -> Tensor:
        """Raw actions (N, A) of the deterministic policy: pi's mean skill every H steps, decoded at each step."""
        with self.policy_mode():
            states = self._states(obs)
            if self._plan is None or self._plan["z"].shape[0] != states.shape[0] or self._step % self.horizon == 0:
                self._plan = self._plan_for(self._choose(states, None, "mean"))
            action = self._execute(states, self._plan, self._step % self.horizon)
            self._step += 1
            return action

    # ---- training ------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self._trainer is not None and self.trainer.world_size > 1:
            raise ValueError("SkillSACModule trains in one process (one replay buffer); run it without DDP")

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam (0.9, 0.999) each for the policy, the twin critics and log alpha (SPiRL's optimisers)."""
        hp = self.hparams
        return [torch.optim.Adam(self.policy.parameters(), lr=hp.lr_policy, betas=(0.9, 0.999)),
                torch.optim.Adam(self.critic.parameters(), lr=hp.lr_critic, betas=(0.9, 0.999)),
                torch.optim.Adam([self.log_alpha], lr=hp.lr_alpha, betas=(0.9, 0.999))]

    #: the optimisers of :meth:`configure_optimizers`, in order, by the names ``lit_imit.rl`` steps them with
    OPTIMIZER_NAMES: tuple[str, ...] = ("actor", "critic", "alpha")

    def _step_optimizer(self, name: str, loss: Tensor) -> None:
        optimizer = self.optimizers()[self.OPTIMIZER_NAMES.index(name)]
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()

    def _epoch_state(self) -> _Epoch:
        """This epoch's runner and generators, started (fresh seeded resets) at the epoch's first step."""
        epoch = int(self.current_epoch)
        if self._epoch is None or self._epoch.index != epoch:
            seed, rank = int(self.hparams.seed), int(self.global_rank)
            episode_rng = np.random.default_rng(stream_seed(seed, rank, epoch, "episodes"))
            seeds = iter(lambda: int(episode_rng.integers(*TRAIN_SEEDS)), None)
            data = self.trainer.datamodule
            self._epoch = _Epoch(
                index=epoch, runner=EnvRunner(data.envs, seeds, reward=data.reward),
                policy_noise=torch.Generator().manual_seed(stream_seed(seed, rank, epoch, "policy")),
                replay_draws=torch.Generator().manual_seed(stream_seed(seed, rank, epoch, "replay")))
        return self._epoch

    @torch.no_grad()
    def _collect(self, epoch: _Epoch, warmup: bool) -> Decision:
        """One decision of every env, its transitions stored in the replay buffer."""
        state: dict[str, Any] = {}

        def act(obs: dict[str, np.ndarray], t: int) -> np.ndarray:
            states = self._states(obs)
            if t == 0:
                state["z"] = self._choose(states, epoch.policy_noise, "warmup" if warmup else "sample")
                state["plan"] = self._plan_for(state["z"])
            return self._execute(states, state["plan"], t).float().cpu().numpy()

        decision = epoch.runner.decide(act, self.horizon)
        key = self.hparams.state_key
        self.replay.add(torch.as_tensor(decision.observations[key]), state["z"],
                        torch.as_tensor(decision.rewards), torch.as_tensor(decision.next_observations[key]),
                        torch.as_tensor(decision.terminals, dtype=torch.float32))
        return decision

    def _updates_due(self) -> int:
        """Updates owed after this step's decisions: ``updates_per_decision`` per decision past the warm-up."""
        learned = max(0, int(self.decisions) - int(self.hparams.warmup_decisions))
        return max(0, math.floor(learned * self.hparams.updates_per_decision) - int(self.updates))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One decision of every env, then the updates it makes due (see the module docstring)."""
        epoch = self._epoch_state()
        decision = self._collect(epoch, warmup=int(self.decisions) < self.hparams.warmup_decisions)
        self.decisions += len(decision.rewards)
        self.env_steps += decision.env_steps
        self.episodes += len(decision.episodes)
        self.successes += sum(e.success for e in decision.episodes)
        start, terms = time.perf_counter(), []
        for _ in range(self._updates_due()):
            terms.append(self._update(epoch))
            self.updates += 1
        self._log_step(decision, terms, time.perf_counter() - start)

    def _update(self, epoch: _Epoch) -> dict[str, float]:
        """One gradient update on a batch from the replay buffer; returns its terms for logging."""
        sample = self.replay.sample(self.hparams.batch_size, epoch.replay_draws, self.device)
        return sac_update(self, sample, self.settings, self._step_optimizer, epoch.policy_noise)

    def _log_step(self, decision: Decision, terms: list[dict[str, float]], update_seconds: float) -> None:
        """The updates' mean terms and the collection's numbers per step; the ended episodes' means per epoch."""
        keys = dict.fromkeys(key for t in terms for key in t)  # some terms only come with some updates
        metrics = {key: float(np.mean([t[key] for t in terms if key in t])) for key in keys}
        if "penalty" in metrics:
            metrics["kl" if self.skills is not None else "log_prob"] = metrics.pop("penalty")
        metrics.update({
            "env_steps": float(self.env_steps), "decisions": float(self.decisions), "updates": float(self.updates),
            "replay_size": float(len(self.replay)), "episodes": float(self.episodes),
            "env_steps_per_s": decision.env_steps / max(decision.seconds, 1e-9),
            "step_s": decision.seconds + update_seconds,
        })
        if terms:
            metrics["update_s"] = update_seconds / len(terms)
        for name, value in metrics.items():
            self.log(f"train/{name}", value, prog_bar=name in ("env_steps", "alpha"), on_step=True, on_epoch=False,
                     batch_size=1)
        if decision.episodes:
            n = len(decision.episodes)
            episode_means = {"episode_return": np.mean([e.episode_return for e in decision.episodes]),
                             "episode_success": np.mean([e.success for e in decision.episodes]),
                             "episode_length": np.mean([e.length for e in decision.episodes])}
            for name, value in episode_means.items():
                self.log(f"train/{name}", float(value), on_step=False, on_epoch=True, batch_size=n)

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The replay buffer travels with the weights (tensors only), for exact resume."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["replay_buffer"] = self.replay.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "replay_buffer" in checkpoint:
            self.replay.load_state_dict(checkpoint["replay_buffer"])
