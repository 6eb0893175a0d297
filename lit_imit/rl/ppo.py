"""Proximal policy optimisation (Schulman et al., 2017) as plain torch functions.

The pieces are those of CleanRL's continuous-action PPO, which the residual RL of Ankile et al. ("From
Imitation to Refinement - Residual RL for Precise Assembly", 2024; robust-rearrangement,
``src/train/residual_ppo.py``) follows:

* :func:`generalized_advantages`: GAE(gamma, lambda) over a (T, N) rollout, bootstrapped from the value of the
  observation after the last step unless that step ended its episode;
* :func:`clipped_surrogate_loss`, :func:`value_loss`, :func:`approx_kl`, :func:`clip_fraction`: the per-minibatch
  terms (policy loss clipped at 1 +- clip, 0.5 * squared value error, Schulman's k3 KL estimate);
* :class:`RunningMeanStd` and :func:`scale_rewards`: the reward normalisation (divide by the running standard
  deviation of the rewards, clip);
* :func:`ppo_update`: ``update_epochs`` passes over the rollout in ``num_minibatches`` shuffled minibatches,
  stopped early once the approximate KL exceeds ``target_kl``.

Nothing here knows Lightning or DDP: the caller passes ``apply_gradients`` (zero, backward, clip, step: a
LightningModule's manual optimisation, or a plain optimizer in tests) and ``mean_over_ranks`` /
``sum_over_ranks`` (all-reduces under DDP, the identity in one process), so every rank takes the same
early-stopping decision and keeps the same reward statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor, nn


def identity(x: Tensor) -> Tensor:
    """The reduction over ranks in a single process."""
    return x


# ---- advantages -------------------------------------------------------------------------------------------
def generalized_advantages(rewards: Tensor, values: Tensor, ends: Tensor, next_value: Tensor, gamma: float,
                           gae_lambda: float) -> tuple[Tensor, Tensor]:
    """GAE advantages and value targets (returns) of a (T, N) rollout (Schulman et al., 2016).

    ``ends[t]`` is True where step t ended its episode (success, failure or a time limit treated as the end,
    as Ankile et al.'s ``truncation_as_done``): nothing is bootstrapped across it. ``next_value`` (N,) is the
    value of the observation after step T-1, used unless that step ended its episode.

        delta_t = r_t + gamma * (1 - end_t) * V_{t+1} - V_t
        A_t     = delta_t + gamma * lambda * (1 - end_t) * A_{t+1},   returns_t = A_t + V_t
    """
    if not (rewards.shape == values.shape == ends.shape) or next_value.shape != rewards.shape[1:]:
        raise ValueError(f"rewards, values and ends must be (T, N) and next_value (N,), got {tuple(rewards.shape)}, "
                         f"{tuple(values.shape)}, {tuple(ends.shape)}, {tuple(next_value.shape)}")
    continues = 1.0 - ends.to(values.dtype)
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(next_value, dtype=values.dtype)
    following_value = next_value.to(values.dtype)
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * continues[t] * following_value - values[t]
        running = delta + gamma * gae_lambda * continues[t] * running
        advantages[t] = running
        following_value = values[t]
    return advantages, advantages + values


def normalize_advantages(advantages: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit standard deviation within a minibatch (CleanRL's ``norm_adv``, on in Ankile et al.)."""
    return (advantages - advantages.mean()) / (advantages.std() + eps)


# ---- per-minibatch losses ---------------------------------------------------------------------------------
def clipped_surrogate_loss(logprob: Tensor, old_logprob: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """PPO's clipped policy loss, to minimise: mean(max(-A r, -A clip(r, 1 - clip, 1 + clip))), r = pi/pi_old."""
    ratio = (logprob - old_logprob).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    return torch.max(unclipped, clipped).mean()


def value_loss(values: Tensor, returns: Tensor) -> Tensor:
    """0.5 * mean squared error of the critic (unclipped: Ankile et al.'s ``clip_vloss: false``)."""
    return 0.5 * (values - returns).square().mean()


def approx_kl(logprob: Tensor, old_logprob: Tensor) -> Tensor:
    """KL(pi_old || pi) estimated from samples of pi_old as mean((r - 1) - log r) (Schulman's k3, unbiased, >= 0)."""
    log_ratio = logprob - old_logprob
    return ((log_ratio.exp() - 1.0) - log_ratio).mean()


def clip_fraction(logprob: Tensor, old_logprob: Tensor, clip: float) -> Tensor:
    """Share of samples whose probability ratio left [1 - clip, 1 + clip] (a diagnostic)."""
    return ((logprob - old_logprob).exp().sub(1.0).abs() > clip).float().mean()


def explained_variance(values: Tensor, returns: Tensor) -> float:
    """1 - Var(returns - values) / Var(returns): how much of the returns the critic predicts (nan if constant)."""
    var = returns.var(unbiased=False)
    if float(var) == 0.0:
        return float("nan")
    return float(1.0 - (returns - values).var(unbiased=False) / var)


# ---- reward normalisation ---------------------------------------------------------------------------------
class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches (Chan et al.'s parallel update), kept as buffers.

    Buffers so that checkpoints carry them and a resumed run scales rewards exactly as before. ``count``
    starts at ``epsilon`` and ``var`` at 1, as gym's and Ankile et al.'s normalisers do, so the first batch is
    not divided by a variance of 0. Float64: the count grows to billions of env steps.
    """

    def __init__(self, epsilon: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("var", torch.ones((), dtype=torch.float64))
        self.register_buffer("count", torch.tensor(float(epsilon), dtype=torch.float64))

    def update(self, x: Tensor, sum_over_ranks: Callable[[Tensor], Tensor] = identity) -> None:
        """Fold in every element of ``x`` (on all ranks: ``sum_over_ranks`` all-reduces the sums)."""
        x = x.detach().to(torch.float64).flatten()
        sums = sum_over_ranks(torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device),
                                           x.sum(), x.square().sum()]))
        count, total, total_sq = sums.to(self.mean.device).unbind()
        if float(count) == 0.0:
            return
        batch_mean = total / count
        batch_var = (total_sq / count - batch_mean.square()).clamp_min(0.0)
        self._merge(batch_mean, batch_var, count)

    def _merge(self, batch_mean: Tensor, batch_var: Tensor, batch_count: Tensor) -> None:
        delta = batch_mean - self.mean
        total = self.count + batch_count
        m2 = self.var * self.count + batch_var * batch_count + delta.square() * self.count * batch_count / total
        self.mean.add_(delta * batch_count / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)


def scale_rewards(rewards: Tensor, stats: RunningMeanStd, clip: float, eps: float = 1e-8) -> Tensor:
    """Rewards divided by their running standard deviation (not centred), clipped to [-clip, clip].

    Ankile et al.'s ``RunningMeanStdClip`` (``normalize_reward: true``, ``clip_reward: 5``): a sparse success
    reward becomes large while successes are rare and shrinks as they become common.
    """
    scale = (stats.var + eps).sqrt().to(rewards.dtype)
    return (rewards / scale).clamp(-clip, clip)


# ---- the update -----------------------------------------------------------------------------------------
class ActorCritic(Protocol):
    def evaluate(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log-probability (B,), entropy (B,), value (B,)) of ``actions`` under the current policy."""


@dataclass(frozen=True)
class PPOSettings:
    """The hyper-parameters of one update; defaults: Ankile et al. (``config/base_residual_rl.yaml``)."""

    update_epochs: int = 50
    num_minibatches: int = 1
    clip_coef: float = 0.2
    vf_coef: float = 1.0
    ent_coef: float = 0.0
    target_kl: float | None = 0.1
    normalize_advantages: bool = True


@dataclass
class PPOBatch:
    """A rollout flattened to B = T * N samples, with its advantages and value targets."""

    obs: Tensor  # (B, D) the policy's input
    actions: Tensor  # (B, A) the sampled actions
    logprobs: Tensor  # (B,) their log-probability when sampled
    advantages: Tensor  # (B,)
    returns: Tensor  # (B,)

    def __len__(self) -> int:
        return int(self.obs.shape[0])


def minibatch_indices(size: int, num_minibatches: int, generator: torch.Generator) -> list[Tensor]:
    """A shuffled partition of range(size) into ``num_minibatches`` nearly equal parts."""
    if not 1 <= num_minibatches <= size:
        raise ValueError(f"num_minibatches must be in [1, {size}] (the rollout's samples), got {num_minibatches}")
    return list(torch.randperm(size, generator=generator).tensor_split(num_minibatches))


def ppo_update(agent: ActorCritic, batch: PPOBatch, settings: PPOSettings,
               apply_gradients: Callable[[Tensor], None], generator: torch.Generator,
               mean_over_ranks: Callable[[Tensor], Tensor] = identity) -> dict[str, float]:
    """Epochs of minibatch gradient steps on ``batch``; returns the last minibatch's terms and the step count.

    After every step the approximate KL of that minibatch (averaged over ranks, so all ranks stop together)
    is compared with ``target_kl``, and the update stops once it is exceeded, as in Ankile et al.'s loop.
    ``apply_gradients(loss)`` zeroes the gradients, back-propagates, clips and steps the optimiser.
    """
    s = settings
    terms: dict[str, Tensor] = {}
    steps = 0
    device = batch.obs.device
    for _ in range(s.update_epochs):
        for idx in minibatch_indices(len(batch), s.num_minibatches, generator):
            idx = idx.to(device)
            logprob, entropy, value = agent.evaluate(batch.obs[idx], batch.actions[idx])
            old = batch.logprobs[idx]
            advantages = batch.advantages[idx]
            if s.normalize_advantages:
                advantages = normalize_advantages(advantages)
            policy = clipped_surrogate_loss(logprob, old, advantages, s.clip_coef)
            critic = value_loss(value, batch.returns[idx])
            entropy_mean = entropy.mean()
            loss = policy - s.ent_coef * entropy_mean + s.vf_coef * critic
            apply_gradients(loss)
            steps += 1
            with torch.no_grad():
                kl = mean_over_ranks(approx_kl(logprob, old).detach())
                terms = {"loss": loss.detach(), "policy_loss": policy.detach(), "value_loss": critic.detach(),
                         "entropy": entropy_mean.detach(), "approx_kl": kl,
                         "clip_fraction": clip_fraction(logprob, old, s.clip_coef)}
            if s.target_kl is not None and float(kl) > s.target_kl:
                return {**{k: float(v) for k, v in terms.items()}, "gradient_steps": float(steps), "early_stop": 1.0}
    return {**{k: float(v) for k, v in terms.items()}, "gradient_steps": float(steps), "early_stop": 0.0}
