"""Residual RL on a frozen BC policy (Ankile et al., "From Imitation to Refinement - Residual RL for Precise
Assembly", 2024, "ResiP"): PPO trains a small per-step Gaussian correction of a behaviour-cloned policy.

* **The base** is any of our BC checkpoints that exposes its action chunks (``PolicyModule.plan_normalized``:
  Diffusion, ACT, BC), loaded with ``lit_imit.policies.load_policy`` and frozen. Its chunks run as the base
  itself runs them (Diffusion: ``n_action_steps`` actions of each denoised window open loop, from an
  observation history of ``n_obs_steps``; an ACT or BC configured with temporal ensembling: a query every
  step, averaged), one queue, ensembler and history per env (:class:`FrozenBase`).
* **The residual** (``lit_imit.nets.residual``) sees [the base's normalised state keys || the base's
  normalised action for this step] and the executed action is ``base + action_scale * residual`` in the
  base's normalised action space, un-normalised for the env. Its mean starts at exactly 0, so the first
  rollouts are the base policy plus small exploration noise.
* **PPO** (``lit_imit.rl.ppo``): GAE, clipped surrogate, value loss, early stop at ``target_kl``, rewards
  divided by their running standard deviation and clipped, advantages normalised per minibatch.

One training step is one PPO iteration, with manual optimisation: collect a rollout of ``num_steps`` steps
in this rank's envs (``EnvDataModule.envs``; ``lit_imit.rl.rollout``, every env reset at the rollout's start
and again whenever its episode ends), then ``update_epochs`` passes of ``num_minibatches`` gradient steps.
Lightning's ``global_step`` counts those gradient steps (fewer after a KL stop), so bound a run with
``max_epochs`` (x the data's ``iterations_per_epoch``), which the learning-rate cosine also spans.
``train/env_steps_per_s`` is the rollouts' throughput over all ranks (simulation and policy together).
Under DDP each rank steps its own envs, gradients are averaged by ``manual_backward``, and the reward
statistics, the KL early stop and the logged numbers are reduced over ranks, so every rank holds the same
weights, optimiser and statistics.

Exact resume: the weights, the optimiser and its schedule, the reward statistics and the iteration counter
are in the checkpoint; every random stream of an iteration (episode seeds, the base's sampling noise, the
residual's exploration noise, the minibatch order) is seeded from (``seed``, rank, iteration), and a
rollout starts from fresh resets, so a run resumed from an end-of-epoch checkpoint collects the same episodes
and makes the same updates as one that never stopped. The checkpoint also embeds the base (its weights and a
``policy_spec``), so it runs alone: ``load_policy`` / ``test`` need no base file.

Evaluation (``select_action``, the ``RolloutEvaluation`` callback, ``test``) executes base + the residual's
*mean*; with ``residual_in_evaluation = False`` (an attribute, set by ``callbacks.residual.EvaluateBaseAlone``
or in Python) it executes the base alone through the same chunk execution and with the same sampling
noise, for a base-vs-residual comparison on the same seeds.

Defaults follow Ankile et al. (robust-rearrangement ``config/base_residual_rl.yaml`` and
``config/actor/residual_diffusion.yaml``): 700 steps per rollout, 50 update epochs of 1 minibatch, actor lr
3e-4 and critic lr 5e-3 (AdamW, eps 1e-5, weight decay 1e-6, cosine schedule over the iterations with 5
warm-up iterations), gamma 0.999, GAE lambda 0.95, clip 0.2, value coefficient 1, no entropy bonus,
target KL 0.1, gradient norm clipped at 1, reward normalisation clipped at 5, action scale 0.1, 2 x 256
actor and critic, log std -1 fixed, the residual's normalised observation clamped to +-3. Their 1024 envs
are the data's ``num_envs``. Named departures:

* ``num_steps`` in the shipped ALOHA configs is 400, the tasks' episode length (700 is the length of the
  paper's one_leg task): with a reset at every rollout's start, a rollout is one episode per env.
* Reward statistics are updated once per rollout with all of its rewards (the paper updates them at every
  env step): one all-reduce per iteration under DDP instead of one per step.
* ``base_inference_steps`` may shorten a Diffusion base's sampler (the paper's code sets 4 DDIM steps for
  speed); by default the base samples as it was configured.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from lit_imit.modules.base import PolicyModule
from lit_imit.modules.chunking import ChunkExecutor, ObservationHistory, env_mask
from lit_imit.modules.schedules import warmup_cosine
from lit_imit.nets.residual import ResidualActorCritic, compose_action
from lit_imit.policies import build_policy, load_policy, policy_cameras, policy_spec
from lit_imit.rl.ppo import (
    PPOBatch,
    PPOSettings,
    RunningMeanStd,
    explained_variance,
    generalized_advantages,
    ppo_update,
    scale_rewards,
)
from lit_imit.rl.rollout import PolicyStep, Rollout, collect_rollout

#: training episode seeds are drawn from [2^31, 2^62): never an evaluation seed (selection 100000+, test 1000000+)
TRAIN_SEEDS = (2**31, 2**62)
#: the random streams of one iteration, each seeded from (seed, rank, iteration, stream)
STREAMS = {"episodes": 0, "base": 1, "residual": 2, "minibatches": 3}


def stream_seed(seed: int, rank: int, iteration: int, stream: str) -> int:
    """A well-mixed 63-bit seed for one random stream of one iteration on one rank."""
    words = np.random.SeedSequence([seed, rank, iteration, STREAMS[stream]]).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 31 | int(words[1]) >> 1


def episode_seeds(seed: int, rank: int, iteration: int) -> Iterator[int]:
    """The env seeds of one iteration's resets, in the order the rollout asks for them."""
    rng = np.random.default_rng(stream_seed(seed, rank, iteration, "episodes"))
    while True:
        yield int(rng.integers(*TRAIN_SEEDS))


class FrozenBase:
    """A frozen policy's chunks executed per env as the policy itself executes them: observation history, then
    open-loop queues, or ACT's temporal ensembling where the base was configured with it (an ACT evaluated with
    ensembling loses most of its success when its chunks' first actions run alone), with row resets.

    ``step`` returns the base's *normalised* action for this step of every env; rows flagged in ``starts``
    begin an episode (fresh history, queue and ensembling buffers, so they query a new chunk). With queues only
    the rows whose queue is empty query the policy, so envs that reset at different times each run their own
    chunks; with ensembling every row queries every step.
    """

    def __init__(self, policy: PolicyModule) -> None:
        self.policy = policy
        self.keys = [*policy.state_keys, *(f"images/{cam}" for cam in policy_cameras(policy))]
        self.history = ObservationHistory(int(policy.n_obs_steps))
        hp = policy.hparams
        self.ensemble_coeff = getattr(hp, "temporal_ensemble_coeff", None)
        n_action_steps = int(hp.n_action_steps)
        chunk_size = int(hp.chunk_size) if self.ensemble_coeff is not None else n_action_steps
        self.execution = ChunkExecutor(chunk_size, n_action_steps, self.ensemble_coeff)

    def reset(self) -> None:
        self.history.reset()
        self.execution.reset()

    def _plan(self, obs: Mapping[str, Tensor], generator: torch.Generator) -> Tensor:
        """Normalised chunks: the whole chunk for ensembling, else the ``n_action_steps`` that run open loop."""
        if self.ensemble_coeff is None:
            return self.policy.plan_normalized(obs, generator).float()
        return self.policy.normalizer.mean_std("action", self.policy.predict_chunk(obs)).float()

    def step(self, obs: Mapping[str, Tensor], starts: Tensor, generator: torch.Generator) -> Tensor:
        histories = self.history.push({key: obs[key] for key in self.keys}, starts)
        if bool(starts.any()):
            self.execution.reset(starts)

        def query(rows: Tensor | None) -> tuple[Tensor, None]:
            sub = histories if rows is None else {key: value[rows] for key, value in histories.items()}
            return self._plan(sub, generator), None

        return self.execution.step(starts.shape[0], starts.device, query)[0].clone()


class ResidualPPOModule(PolicyModule):
    """PPO on a per-step residual policy over a frozen BC base (see the module docstring).

    Args:
        base_ckpt: the BC checkpoint to start from (any ``PolicyModule`` with ``plan_normalized``).
        base_policy: filled in from ``base_ckpt`` when the module is first built and saved with it (the base's
            class and hyper-parameters): a checkpoint of this module rebuilds its base without the base file.
            Leave it out in configs.
        base_inference_steps: denoising steps of a Diffusion base's sampler (None: as the base was trained).
        action_scale: scale of the residual in the base's normalised action space (0.1).
        obs_clip: the residual's normalised observation is clamped to +-obs_clip (3, as the paper's code).
        actor_hidden, critic_hidden, init_log_std, learn_std, critic_head_bias: the networks
            (``lit_imit.nets.residual.ResidualActorCritic``).
        num_steps: env steps per rollout (per env).
        update_epochs, num_minibatches, clip_coef, vf_coef, ent_coef, target_kl, normalize_advantages: PPO
            (``lit_imit.rl.ppo.PPOSettings``).
        lr_actor, lr_critic: AdamW learning rates; both follow a cosine over ``total_iterations`` (None:
            max_epochs x the data's ``iterations_per_epoch``) after ``warmup_iterations``.
        gamma, gae_lambda: discount and GAE lambda.
        max_grad_norm: gradient clipping (norm over actor and critic together).
        normalize_reward, reward_clip: divide rewards by their running std, clip to +-reward_clip.
        seed: seeds every random stream of training (with the rank and the iteration).
    """

    def __init__(
        self,
        base_ckpt: str | None = None,
        base_policy: dict[str, Any] | None = None,
        base_inference_steps: int | None = None,
        action_scale: float = 0.1,
        obs_clip: float = 3.0,
        actor_hidden: list[int] = [256, 256],  # noqa: B006 - jsonargparse shows list defaults; never mutated
        critic_hidden: list[int] = [256, 256],  # noqa: B006
        init_log_std: float = -1.0,
        learn_std: bool = False,
        critic_head_bias: float = 0.25,
        num_steps: int = 700,
        update_epochs: int = 50,
        num_minibatches: int = 1,
        lr_actor: float = 3e-4,
        lr_critic: float = 5e-3,
        warmup_iterations: int = 5,
        total_iterations: int | None = None,
        gamma: float = 0.999,
        gae_lambda: float = 0.95,
        clip_coef: float = 0.2,
        vf_coef: float = 1.0,
        ent_coef: float = 0.0,
        target_kl: float | None = 0.1,
        max_grad_norm: float = 1.0,
        normalize_reward: bool = True,
        reward_clip: float = 5.0,
        normalize_advantages: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.base = self._frozen_base(base_ckpt, base_policy, base_inference_steps)
        self.hparams["base_policy"] = policy_spec(self.base)
        self.cameras = policy_cameras(self.base)  # what the envs must render and the base reads
        self.state_keys = list(self.base.state_keys)
        action_dim = int(self.base.hparams.action_dim)
        obs_dim = sum(int(self.base.normalizer.stat(key, "mean").numel()) for key in self.state_keys)
        self.agent = ResidualActorCritic(obs_dim, action_dim, actor_hidden, critic_hidden, init_log_std, learn_std,
                                         critic_head_bias=critic_head_bias)
        self.reward_stats = RunningMeanStd()
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.register_buffer("env_steps", torch.zeros((), dtype=torch.long))
        self.runner = FrozenBase(self.base)
        self._eval_generator = torch.Generator()
        self._eval_starts: Tensor | None = None
        #: evaluate base + residual mean (True) or the base alone (False). Not a hyper-parameter: ``test
        #: --ckpt_path`` replaces those by the checkpoint's (``callbacks.residual.EvaluateBaseAlone`` sets it)
        self.residual_in_evaluation = True

    @staticmethod
    def _frozen_base(base_ckpt: str | None, base_policy: dict[str, Any] | None,
                     inference_steps: int | None) -> PolicyModule:
        """The base from its spec (a checkpoint of this module, weights loaded later) or from ``base_ckpt``.

        Built in a fresh ``contextvars`` context: while the LightningCLI instantiates this module it hands the
        *outer* config to every ``save_hyperparameters()`` through a context variable, and the base would
        record this module's arguments as its own hyper-parameters."""
        if base_policy is None and not base_ckpt:
            raise ValueError("ResidualPPOModule needs the BC checkpoint to start from: set model.init_args.base_ckpt")
        build = (lambda: build_policy(base_policy)) if base_policy is not None else (lambda: load_policy(base_ckpt))
        base = contextvars.Context().run(build)
        if inference_steps is not None and hasattr(base, "use_sampler"):
            base.use_sampler(base.hparams.inference_scheduler, inference_steps)
        base.requires_grad_(False)
        return base.eval()

    def train(self, mode: bool = True) -> "ResidualPPOModule":
        """Train the residual; the base stays in eval mode (no dropout, no augmentation) whatever Lightning asks."""
        super().train(mode)
        self.base.eval()
        return self

    @property
    def settings(self) -> PPOSettings:
        hp = self.hparams
        return PPOSettings(update_epochs=hp.update_epochs, num_minibatches=hp.num_minibatches, clip_coef=hp.clip_coef,
                           vf_coef=hp.vf_coef, ent_coef=hp.ent_coef, target_kl=hp.target_kl,
                           normalize_advantages=hp.normalize_advantages)

    # ---- acting --------------------------------------------------------------------------------------------
    def residual_obs(self, obs: Mapping[str, Tensor]) -> Tensor:
        """The base's state keys at this step, in the base's normalised space, concatenated and clamped to
        +-``obs_clip``: (N, obs_dim). The clamp (the paper's code clamps at 3) matters: a min-max normalised
        dimension that barely moved in the demos (a cube's quaternion) maps a small excursion to hundreds."""
        obs = torch.cat([self.base.normalize(key, obs[key].float()) for key in self.state_keys], dim=-1)
        return obs.clamp(-self.hparams.obs_clip, self.hparams.obs_clip)

    def _inputs(self, obs: Mapping[str, Any], starts: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(the networks' input, the base's normalised action) for one step of N envs."""
        tensors = self.obs_to_tensors({key: obs[key] for key in self.runner.keys})
        base_action = self.runner.step(tensors, starts, generator)
        return self.agent.inputs(self.residual_obs(tensors), base_action), base_action

    def executed_action(self, base_action: Tensor, residual: Tensor) -> Tensor:
        """Raw env actions: ``base + action_scale * residual`` composed in the base's normalised space, then
        un-normalised with the base's statistics."""
        return self.base.unnormalize("action", compose_action(base_action, residual, self.hparams.action_scale))

    @torch.no_grad()
    def rollout_step(self, obs: dict[str, np.ndarray], starts: np.ndarray, generators: Mapping[str, torch.Generator]
                     ) -> PolicyStep:
        """One training step of N envs: sample a residual around the base's action (``lit_imit.rl.rollout``)."""
        start = torch.as_tensor(starts, device=self.device)
        if bool(start.all()):
            self.runner.reset()
        x, base_action = self._inputs(obs, start, generators["base"])
        residual, logprob = self.agent.sample(x, generators["residual"])
        env_actions = self.executed_action(base_action, residual).float().cpu().numpy()
        return PolicyStep(env_actions=env_actions, inputs=x, actions=residual, logprobs=logprob,
                          values=self.agent.value(x))

    def reset(self, env_ids: Sequence[int] | Tensor | None = None) -> None:
        """New evaluation episodes: those rows start afresh; a full reset re-seeds the base's sampling noise
        with the base's own seed, as ``DiffusionModule.reset`` does, so base and base + residual see the same noise."""
        if env_ids is None or self._eval_starts is None:
            self.runner.reset()
            self._eval_starts = None
            self._eval_generator.manual_seed(int(self.base.hparams.get("seed", 0)))
            return
        self._eval_starts = self._eval_starts | env_mask(env_ids, len(self._eval_starts), self._eval_starts.device)

    def select_action(self, obs: Mapping[str, Any]) -> Tensor:
        """Raw actions (N, A): the base's chunk step plus the residual's mean (or the base alone, see the class)."""
        with self.policy_mode():
            n = len(obs[self.runner.keys[0]])
            starts = self._eval_starts if self._eval_starts is not None else torch.ones(n, dtype=torch.bool,
                                                                                          device=self.device)
            x, base_action = self._inputs(obs, starts, self._eval_generator)
            self._eval_starts = torch.zeros(n, dtype=torch.bool, device=self.device)
            residual = self.agent.mean(x) if self.residual_in_evaluation else torch.zeros_like(base_action)
            return self.executed_action(base_action, residual)

    # ---- training ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """One AdamW with an actor and a critic group (the paper's two AdamWs with eps 1e-5, weight decay
        1e-6, stepped together), each on the warm-up cosine, stepped once per iteration."""
        hp = self.hparams
        actor = [*self.agent.actor.parameters(), *([self.agent.log_std] if hp.learn_std else [])]
        critic = list(self.agent.critic.parameters())
        optimizer = torch.optim.AdamW([{"params": actor, "lr": hp.lr_actor}, {"params": critic, "lr": hp.lr_critic}],
                                      eps=1e-5, weight_decay=1e-6)
        schedule = warmup_cosine(optimizer, hp.warmup_iterations, self._total_iterations())
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def _total_iterations(self) -> int | None:
        """The iterations the cosine spans: ``total_iterations``, else ``max_epochs`` x the data's
        ``iterations_per_epoch`` (None, a constant rate after the warm-up, for an endless run)."""
        if self.hparams.total_iterations is not None:
            return int(self.hparams.total_iterations)
        trainer = self._trainer
        per_epoch = getattr(getattr(trainer, "datamodule", None), "iterations_per_epoch", None)
        if per_epoch is None or trainer.max_epochs is None or trainer.max_epochs < 0:
            return None
        return int(trainer.max_epochs) * int(per_epoch)

    def _generators(self, iteration: int) -> dict[str, torch.Generator]:
        return {name: torch.Generator().manual_seed(stream_seed(self.hparams.seed, self.global_rank, iteration, name))
                for name in STREAMS if name != "episodes"}

    def _reduce(self, value: Tensor, op: str) -> Tensor:
        """``value`` reduced over ranks with ``op`` ("sum", "mean", "max"); the value itself in one process."""
        return self.trainer.strategy.reduce(value, reduce_op=op) if self._trainer is not None else value

    def _apply_gradients(self, loss: Tensor) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One PPO iteration: a rollout in this rank's envs, then the update (see the module docstring)."""
        iteration = int(self.iteration)
        generators = self._generators(iteration)
        rollout = self._collect(iteration, generators)
        advantages, returns = self._advantages(rollout)
        terms = self._update(rollout.batch(advantages, returns), generators["minibatches"])
        terms["explained_variance"] = explained_variance(rollout.values.flatten(), returns.flatten())
        self.iteration += 1
        self._log_iteration(rollout, terms)

    def _collect(self, iteration: int, generators: Mapping[str, torch.Generator]) -> Rollout:
        """``num_steps`` steps of this rank's envs (``EnvDataModule.envs``) from fresh, seeded resets."""
        data = self.trainer.datamodule
        return collect_rollout(data.envs, lambda obs, starts: self.rollout_step(obs, starts, generators),
                               self.hparams.num_steps, episode_seeds(self.hparams.seed, self.global_rank, iteration),
                               reward=data.reward)

    def _advantages(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """GAE advantages and returns of the rollout's rewards, scaled by their running std when asked (the
        statistics take every rank's rewards, so all ranks scale alike)."""
        hp = self.hparams
        rewards = rollout.rewards
        if hp.normalize_reward:
            self.reward_stats.update(rewards, lambda t: self._reduce(t, "sum"))
            rewards = scale_rewards(rewards, self.reward_stats, hp.reward_clip)
        return generalized_advantages(rewards, rollout.values, rollout.ends, rollout.next_value, hp.gamma,
                                      hp.gae_lambda)

    def _update(self, batch: PPOBatch, generator: torch.Generator) -> dict[str, float]:
        """The PPO epochs on this rank's batch (gradients averaged over ranks), then one schedule step."""
        start = time.perf_counter()
        groups = self.optimizers().optimizer.param_groups
        rates = {"lr_actor": groups[0]["lr"], "lr_critic": groups[1]["lr"]}  # the rates this update uses
        terms = ppo_update(self.agent, batch, self.settings, self._apply_gradients, generator,
                           mean_over_ranks=lambda t: self._reduce(t, "mean"))
        self.lr_schedulers().step()
        return {**terms, **rates, "update_s": time.perf_counter() - start}

    def _log_iteration(self, rollout: Rollout, terms: dict[str, float]) -> None:
        """``train/<term>`` of the update, and the rollout's numbers summed over ranks (env steps, env-steps/s,
        episodes, successes, success rate)."""
        counts = [rollout.env_steps, rollout.episodes, rollout.successes, float(rollout.rewards.sum())]
        totals = self._reduce(torch.tensor(counts, dtype=torch.float64, device=self.device), "sum")
        slowest = self._reduce(torch.tensor(rollout.seconds, dtype=torch.float64, device=self.device), "max")
        steps, episodes, successes, reward_sum = (float(v) for v in totals)
        self.env_steps += int(steps)
        metrics = {
            **terms,
            "env_steps": float(self.env_steps), "env_steps_per_s": steps / max(float(slowest), 1e-9),
            "rollout_s": float(slowest), "episodes": episodes, "successes": successes,
            "success_rate": successes / episodes if episodes else 0.0,
            "return_per_env": reward_sum * rollout.rewards.shape[0] / max(steps, 1.0),  # unscaled, per rollout
            "iteration": float(self.iteration),
        }
        for name, value in metrics.items():
            self.log(f"train/{name}", float(value), prog_bar=name in ("success_rate", "env_steps_per_s"),
                     on_step=True, on_epoch=False, batch_size=1)
