"""SkiLD's demonstration-guided SAC in skill space (Pertsch et al., "Demonstration-Guided Reinforcement Learning with
Learned Skills", CoRL 2021) as plain torch functions.

SkiLD is SPiRL's prior-regularised SAC (:mod:`lit_imit.rl.sac`) with two changes, both driven by a demonstration
discriminator D(s) in [0, 1] (the probability that s lies in the support of the target-task demonstrations):

* the divergence the policy pays is blended by D: where the state looks like the demonstrations, the policy is
  pulled towards the demonstration skill posterior q(z | s); elsewhere towards the task-agnostic skill prior
  p(z | s). Each half has its own temperature, tuned on its own target (weighted by the same D, so that the
  posterior's temperature only learns from demonstration-like states and the prior's from the others)::

      P(s)       = alpha (1 - D(s)) KL(pi(.|s) || p(.|s)) + alpha_q D(s) KL(pi(.|s) || q(.|s))
      L_pi       = mean_batch [P(s) - min_j Q_j(s, z~)],                        z~ ~ pi(. | s)
      y          = r~ + gamma (1 - d) [min_j Qbar_j(s', z') - P(s')],          z' ~ pi(. | s')
      L_alpha    = mean_batch (1 - D(s)) alpha   (delta   - KL_p(s))           (KL detached)
      L_alpha_q  = mean_batch D(s)       alpha_q (delta_q - KL_q(s))

  (P(s') weighs the next state's divergences by D(s'); SkiLD's code reuses D(s) of the transition's first state.)

* the reward mixes the env's with the GAIL reward of the discriminator, computed from the *current*
  discriminator when a batch is drawn (SkiLD relabels sampled batches):

      r~(s, z, s') = (1 - kappa) r_env + kappa [log D(s) - log(1 - D(s))]

  log D - log(1 - D) is the discriminator's logit itself; SkiLD evaluates it through D with an epsilon of 1e-20,
  which bounds it at +-ln(1e20) ~ 46, so the logit is clamped there.

:func:`skild_update` takes one step in SPiRL's order (the temperatures first, then the actor and critic losses from
the weights before this update with the new temperatures, the two steps, the Polyak average). The discriminator
itself may keep training online (SkiLD's imitation setting, GAIL-style): :func:`discriminator_loss` is the BCE of
demonstration states (label 1) against the policy's replay states (label 0).

Nothing here knows Lightning; the agent (``lit_imit.modules.skild_rl.SkiLDRLModule``) provides the networks, as
``lit_imit.rl.sac``'s agents do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_imit.rl.sac import ReplayBatch, actor_loss, critic_loss, polyak_update, soft_target

#: SkiLD's epsilon (1e-20) inside log D - log(1 - D) bounds the reward at +-ln(1e20)
DISCRIMINATOR_REWARD_CLIP = 20 * math.log(10.0)


@dataclass(frozen=True)
class SkiLDSettings:
    """One update's hyper-parameters (SkiLD's maze values by default; see the module's docstring)."""

    gamma: float = 0.99
    tau: float = 5e-3
    target_divergence: float = 10.0  # delta: KL to the prior where D is low (SkiLD maze: td 10)
    target_divergence_q: float = 1.0  # delta_q: KL to the posterior where D is high (SkiLD maze: tdq 1)
    kappa: float = 0.1  # weight of the discriminator reward; 1 - kappa weighs the env's
    tune_alpha: bool = True  # False: alpha stays at its initial value (SkiLD kitchen: fixed 0.1)
    tune_alpha_q: bool = True


@dataclass
class SkillSample:
    """A reparameterised skill for each state and the two divergences of the policy that drew it."""

    skills: Tensor  # (B, nz) squashed
    kl_prior: Tensor  # (B,) KL(pi || p), clamped
    kl_posterior: Tensor  # (B,) KL(pi || q), clamped


class SkiLDAgent(Protocol):
    """What :func:`skild_update` needs (``SkiLDRLModule`` is one)."""

    critic: nn.Module
    target_critic: nn.Module
    log_alpha: Tensor
    log_alpha_q: Tensor

    def skill_sample(self, states: Tensor, generator: torch.Generator | None) -> SkillSample:
        """Skills drawn from pi for raw states, with both divergences (differentiable in pi)."""

    def discriminator_logits(self, states: Tensor) -> Tensor:
        """The current discriminator's logits (B,) for raw states."""

    def critic_input(self, states: Tensor) -> Tensor:
        """Raw states as the critics read them."""


# ---- the pieces, each checkable by hand ------------------------------------------------------------------------
def discriminator_reward(logits: Tensor) -> Tensor:
    """log D(s) - log(1 - D(s)) for D = sigmoid(logits): the logit, clamped as SkiLD's epsilon clamps it."""
    return logits.clamp(-DISCRIMINATOR_REWARD_CLIP, DISCRIMINATOR_REWARD_CLIP)


def mixed_reward(env_reward: Tensor, disc_reward: Tensor, kappa: float) -> Tensor:
    """(1 - kappa) r_env + kappa r_D: kappa = 0 is the env's reward alone, kappa = 1 pure imitation (GAIL)."""
    return (1.0 - kappa) * env_reward + kappa * disc_reward


def blended_divergence(kl_prior: Tensor, kl_posterior: Tensor, demo_probability: Tensor, alpha: Tensor | float,
                       alpha_q: Tensor | float) -> Tensor:
    """alpha (1 - D) KL_p + alpha_q D KL_q, per state: the posterior's pull where D says "demonstration", the
    prior's elsewhere. D is a constant here (no gradient reaches the discriminator through the policy loss)."""
    d = demo_probability.detach()
    return alpha * (1.0 - d) * kl_prior + alpha_q * d * kl_posterior


def weighted_alpha_loss(log_alpha: Tensor, divergence: Tensor, weight: Tensor, target: float) -> Tensor:
    """mean(w alpha (T - KL)), KL and w detached: d/d log alpha = alpha mean(w (T - KL)), so alpha grows while the
    weighted divergence is above its target, shrinks below it, and learns nothing from states of weight 0."""
    return (weight.detach() * log_alpha.exp() * (target - divergence.detach())).mean()


def discriminator_loss(demo_logits: Tensor, policy_logits: Tensor) -> Tensor:
    """BCE of demonstration states (1) against the policy's states (0), over both batches together."""
    logits = torch.cat([demo_logits, policy_logits])
    labels = torch.cat([torch.ones_like(demo_logits), torch.zeros_like(policy_logits)])
    return F.binary_cross_entropy_with_logits(logits, labels)


# ---- one update --------------------------------------------------------------------------------------------
def _update_temperatures(agent: SkiLDAgent, sample: SkillSample, d: Tensor, settings: SkiLDSettings,
                         step: Callable[[str, Tensor], None]) -> dict[str, float]:
    """alpha on the prior's KL where D is low, alpha_q on the posterior's where D is high (a fixed one stays)."""
    loss_alpha = weighted_alpha_loss(agent.log_alpha, sample.kl_prior, 1.0 - d, settings.target_divergence)
    loss_alpha_q = weighted_alpha_loss(agent.log_alpha_q, sample.kl_posterior, d, settings.target_divergence_q)
    if settings.tune_alpha:
        step("alpha", loss_alpha)
    if settings.tune_alpha_q:
        step("alpha_q", loss_alpha_q)
    return {"alpha_loss": float(loss_alpha.detach()), "alpha_q_loss": float(loss_alpha_q.detach())}


def skild_update(agent: SkiLDAgent, batch: ReplayBatch, settings: SkiLDSettings,
                 step: Callable[[str, Tensor], None], generator: torch.Generator | None = None) -> dict[str, float]:
    """One gradient step of the temperatures, the actor and the critics on ``batch`` (see the module docstring);
    ``batch.rewards`` are the env's, relabelled here with the current discriminator. Returns the logged terms."""
    sample = agent.skill_sample(batch.states, generator)
    with torch.no_grad():
        logits = agent.discriminator_logits(batch.states)
        d = torch.sigmoid(logits)
        next_d = torch.sigmoid(agent.discriminator_logits(batch.next_states))
        disc_reward = discriminator_reward(logits)
        rewards = mixed_reward(batch.rewards, disc_reward, settings.kappa)
    terms = _update_temperatures(agent, sample, d, settings, step)
    alpha, alpha_q = agent.log_alpha.detach().exp(), agent.log_alpha_q.detach().exp()

    states = agent.critic_input(batch.states)
    penalty = blended_divergence(sample.kl_prior, sample.kl_posterior, d, alpha, alpha_q)
    loss_actor = actor_loss(agent.critic(states, sample.skills), penalty, 1.0)
    with torch.no_grad():
        following = agent.skill_sample(batch.next_states, generator)
        next_penalty = blended_divergence(following.kl_prior, following.kl_posterior, next_d, alpha, alpha_q)
        next_q = agent.target_critic(agent.critic_input(batch.next_states), following.skills)
        target = soft_target(rewards, batch.terminals, next_q, next_penalty, 1.0, settings.gamma)
    q = agent.critic(states, batch.actions)
    loss_critic = critic_loss(q, target)

    step("actor", loss_actor)
    step("critic", loss_critic)
    polyak_update(agent.target_critic, agent.critic, settings.tau)
    return {
        **terms, "alpha": float(alpha), "alpha_q": float(alpha_q), "policy_loss": float(loss_actor.detach()),
        "q_loss": float(loss_critic.detach()), "kl_prior": float(sample.kl_prior.detach().mean()),
        "kl_posterior": float(sample.kl_posterior.detach().mean()), "d_mean": float(d.mean()),
        "disc_reward": float(disc_reward.mean()), "env_reward": float(batch.rewards.mean()),
        "reward": float(rewards.mean()), "q1": float(q[0].detach().mean()), "q2": float(q[1].detach().mean()),
        "q_target": float(target.mean()),
    }
