"""Soft actor-critic (Haarnoja et al., 2018) and SPiRL's prior-regularised SAC (Pertsch et al., CoRL 2020) as plain
torch functions.

Both are one algorithm with a different *penalty* P(s): what the policy pays for the action it samples in state s,
and what the temperature alpha is tuned on.

* SAC: P = log pi(a | s) of the tanh-squashed sample, tuned towards T = -target_entropy (-|A| by default);
* SPiRL: P = KL(pi(. | s) || p(. | s)), the divergence of the policy from the learned skill prior, tuned
  towards T = delta, the target divergence (SPiRL's ``ActionPriorSACAgent``).

With the penalty in place of the entropy term, the maths is SPiRL's (``spirl/rl/agents/ac_agent.py`` and
``prior_sac_agent.py``):

    soft Bellman target   y        = r + gamma (1 - d) [min_j Qbar_j(s', a') - alpha P(s')],   a' ~ pi(. | s')
    critic loss           L_Q      = sum_j 0.5 mean_batch (Q_j(s, a) - y)^2
    actor loss            L_pi     = mean_batch [alpha P(s) - min_j Q_j(s, a~)],              a~ ~ pi(. | s)
    temperature loss      L_alpha  = alpha * mean_batch (T - P(s))          (P detached; alpha = exp(log_alpha))

so d L_alpha / d log_alpha = alpha (T - mean P): alpha grows while the penalty is above its target and shrinks
below it. :func:`sac_update` takes one step in SPiRL's order: alpha first, then, with the new alpha (detached),
the actor loss, the target and the critic losses, all from the weights before this update, the actor and
critic steps, and the Polyak averaging of the target critics.

Nothing here knows Lightning: the caller passes ``step(name, loss)`` (zero the named optimiser's gradients,
back-propagate, step it: a LightningModule's manual optimisation, or plain optimisers in tests) and a
``torch.Generator`` for the policy's sampling noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_imit.nets.skills import gaussian_kl


@dataclass(frozen=True)
class SACSettings:
    """One update's hyper-parameters; defaults: SPiRL (``BaseAgent`` / ``SACAgent`` defaults)."""

    gamma: float = 0.99  # discount per decision (SPiRL: 0.99 at the skill level too)
    tau: float = 5e-3  # Polyak factor of the target critics (target_network_update_factor)
    penalty_target: float = 1.0  # T: SPiRL's target divergence delta, or -target_entropy for SAC


@dataclass
class ReplayBatch:
    """B transitions: raw states, the stored action, the summed reward, the next raw state, the terminal flag."""

    states: Tensor  # (B, S)
    actions: Tensor  # (B, A) what the critic reads (the squashed action / skill)
    rewards: Tensor  # (B,)
    next_states: Tensor  # (B, S)
    terminals: Tensor  # (B,) 1.0 where nothing is bootstrapped (the env terminated the episode)


class SACAgent(Protocol):
    """What :func:`sac_update` needs from an agent (``SkillSACModule`` is one)."""

    critic: nn.Module  # Q(s, a) -> (2, B): the twin critics
    target_critic: nn.Module  # their Polyak average
    log_alpha: Tensor  # the temperature's logarithm, a parameter

    def policy_sample(self, states: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(actions (B, A) sampled with the reparameterisation trick, penalty P (B,)) for raw states (B, S)."""

    def critic_input(self, states: Tensor) -> Tensor:
        """Raw states as the critics read them (normalised)."""


# ---- the policy's distribution ------------------------------------------------------------------------------
def squash(pre_tanh: Tensor, scale: float) -> Tensor:
    """``scale * tanh(u)``: the executed action (or skill) in [-scale, scale] (SPiRL's ``max_action_range``)."""
    return scale * torch.tanh(pre_tanh)


def squashed_log_prob(pre_tanh: Tensor, mean: Tensor, log_std: Tensor, scale: float) -> Tensor:
    """log-density (B,) of ``a = scale * tanh(u)``, u ~ N(mean, exp(log_std)), by the change of variables:
    log N(u) - sum_i [log scale + log(1 - tanh(u_i)^2)], with log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))
    (stable for large |u|). SPiRL adds log(scale) once rather than per dimension; this is the exact density."""
    gaussian = -0.5 * ((pre_tanh - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    log_det = math.log(scale) + 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
    return (gaussian - log_det).sum(dim=-1)


def rsample(mean: Tensor, log_std: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """u = mean + std * eps with eps from ``generator``: differentiable in mean and log_std."""
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu").to(mean.device)
    return mean + log_std.exp() * eps


def prior_divergence(mean: Tensor, log_std: Tensor, prior_mean: Tensor, prior_log_std: Tensor,
                     max_divergence: float | None = 100.0) -> Tensor:
    """KL(pi || p) (B,) of diagonal Gaussians over the (pre-squash) skill, summed over its dimensions and clamped
    at ``max_divergence`` (SPiRL's ``max_divergence_range``, 100). The prior is treated as a constant.

    SPiRL estimates this KL by Monte-Carlo with 10 reparameterised samples by default (``analytic_KL: False``);
    the analytic value has the same expectation and no variance."""
    kl = gaussian_kl(mean, log_std, prior_mean.detach(), prior_log_std.detach()).sum(dim=-1)
    return kl if max_divergence is None else kl.clamp(-max_divergence, max_divergence)


# ---- the losses -----------------------------------------------------------------------------------------------
def soft_target(rewards: Tensor, terminals: Tensor, next_q: Tensor, next_penalty: Tensor, alpha: Tensor | float,
                gamma: float) -> Tensor:
    """y = r + gamma (1 - d) (min_j Qbar_j(s', a') - alpha P(s')), all (B,); ``next_q`` is (2, B) or (B,)."""
    if next_q.ndim == 2:
        next_q = next_q.min(dim=0).values
    return rewards + gamma * (1.0 - terminals) * (next_q - alpha * next_penalty)


def critic_loss(q: Tensor, target: Tensor) -> Tensor:
    """sum over the critics of 0.5 mean (Q_j - y)^2 (SPiRL steps one Adam per critic on its own term; one Adam
    over both on the sum is the same update, their parameters being disjoint)."""
    return 0.5 * (q - target.detach().unsqueeze(0)).pow(2).mean(dim=-1).sum()


def actor_loss(q: Tensor, penalty: Tensor, alpha: Tensor | float) -> Tensor:
    """mean(alpha P(s) - min_j Q_j(s, a~)); ``q`` is (2, B) or (B,)."""
    if q.ndim == 2:
        q = q.min(dim=0).values
    return (alpha * penalty - q).mean()


def alpha_loss(log_alpha: Tensor, penalty: Tensor, target: float) -> Tensor:
    """alpha * mean(T - P), P detached: its gradient in log_alpha is alpha (T - mean P)."""
    return log_alpha.exp() * (target - penalty.detach()).mean()


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- tau * source + (1 - tau) * target, parameter by parameter."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.mul_(1.0 - tau).add_(s.detach(), alpha=tau)


# ---- one update ---------------------------------------------------------------------------------------------
def sac_update(agent: SACAgent, batch: ReplayBatch, settings: SACSettings, step: Callable[[str, Tensor], None],
               generator: torch.Generator | None = None) -> dict[str, float]:
    """One gradient step of alpha, the actor and the critics on ``batch`` (see the module docstring); returns the
    terms for logging (losses, alpha, the mean penalty, Q and target means)."""
    actions, penalty = agent.policy_sample(batch.states, generator)
    loss_alpha = alpha_loss(agent.log_alpha, penalty, settings.penalty_target)
    step("alpha", loss_alpha)
    alpha = agent.log_alpha.detach().exp()

    states = agent.critic_input(batch.states)
    loss_actor = actor_loss(agent.critic(states, actions), penalty, alpha)
    with torch.no_grad():
        next_actions, next_penalty = agent.policy_sample(batch.next_states, generator)
        next_q = agent.target_critic(agent.critic_input(batch.next_states), next_actions)
        target = soft_target(batch.rewards, batch.terminals, next_q, next_penalty, alpha, settings.gamma)
    q = agent.critic(states, batch.actions)
    loss_critic = critic_loss(q, target)

    step("actor", loss_actor)
    step("critic", loss_critic)
    polyak_update(agent.target_critic, agent.critic, settings.tau)
    return {
        "alpha": float(alpha), "alpha_loss": float(loss_alpha.detach()), "policy_loss": float(loss_actor.detach()),
        "q_loss": float(loss_critic.detach()), "penalty": float(penalty.detach().mean()),
        "q1": float(q[0].detach().mean()), "q2": float(q[1].detach().mean()), "q_target": float(target.mean()),
    }
