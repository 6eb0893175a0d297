"""The residual policy of residual RL (Ankile et al., "From Imitation to Refinement - Residual RL for Precise
Assembly", 2024): a per-step Gaussian actor and a value critic over [normalised obs || base action].

Both read the observation and the frozen base policy's action for this step, both in the base's normalised
space, and the actor proposes a correction: the executed (normalised) action is
``base + action_scale * residual`` (:func:`compose_action`). Sizes and initialisation follow the paper's code
(robust-rearrangement, ``config/actor/residual_diffusion.yaml``, ``src/models/residual.py``):

* actor and critic: two hidden layers of 256 ReLU units, Kaiming-normal hidden weights, zero hidden biases;
* actor head without bias, initialised with standard deviation 0 (all zeros): the mean residual is exactly 0,
  so training starts from the base policy, and only the exploration noise differs from it at first;
* fixed log standard deviation -1 (``learn_std: false``): sampled residuals have std e^-1 ~ 0.37, i.e. 0.037 in
  the base's normalised action units after the 0.1 scale;
* critic head: orthogonal weights with gain 0.25 and bias 0.25.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


def compose_action(base_action: Tensor, residual: Tensor, action_scale: float) -> Tensor:
    """The executed action in the base's normalised space: ``base + action_scale * residual``."""
    return base_action + action_scale * residual


def relu_mlp(in_dim: int, hidden: Sequence[int], out_dim: int, head_gain: float,
             head_bias: float | None) -> nn.Sequential:
    """Linear-ReLU layers (Kaiming-normal, zero bias) and a linear head (orthogonal with ``head_gain``; no bias
    when ``head_bias`` is None). A gain of 0 gives a zero head."""
    layers: list[nn.Module] = []
    width = in_dim
    for size in hidden:
        layer = nn.Linear(width, int(size))
        nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(layer.bias)
        layers += [layer, nn.ReLU()]
        width = int(size)
    head = nn.Linear(width, out_dim, bias=head_bias is not None)
    nn.init.orthogonal_(head.weight, gain=head_gain)
    if head_bias is not None:
        nn.init.constant_(head.bias, head_bias)
    layers.append(head)
    return nn.Sequential(*layers)


class ResidualActorCritic(nn.Module):
    """Gaussian residual actor and value critic; inputs are (B, obs_dim + action_dim) = [obs || base action].

    Args:
        obs_dim, action_dim: sizes of the normalised observation and of the action (residual = base action size).
        actor_hidden, critic_hidden: hidden widths (2 x 256 in the paper).
        init_log_std: log standard deviation of the residual (-1); learned only with ``learn_std``.
        actor_head_gain: initial scale of the actor head (0: the residual starts at exactly 0).
        critic_head_gain, critic_head_bias: initial critic head (0.25 and 0.25).
    """

    def __init__(self, obs_dim: int, action_dim: int, actor_hidden: Sequence[int] = (256, 256),
                 critic_hidden: Sequence[int] = (256, 256), init_log_std: float = -1.0, learn_std: bool = False,
                 actor_head_gain: float = 0.0, critic_head_gain: float = 0.25, critic_head_bias: float = 0.25) -> None:
        super().__init__()
        in_dim = obs_dim + action_dim
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.actor = relu_mlp(in_dim, actor_hidden, action_dim, actor_head_gain, head_bias=None)
        self.critic = relu_mlp(in_dim, critic_hidden, 1, critic_head_gain, head_bias=critic_head_bias)
        log_std = torch.full((action_dim,), float(init_log_std))
        if learn_std:
            self.log_std = nn.Parameter(log_std)
        else:  # a buffer, not a frozen parameter: DDP and the optimiser only see what is trained
            self.register_buffer("log_std", log_std)

    def inputs(self, obs: Tensor, base_action: Tensor) -> Tensor:
        """The networks' input: [normalised obs || the base's normalised action for this step]."""
        return torch.cat([obs, base_action], dim=-1)

    def mean(self, x: Tensor) -> Tensor:
        return self.actor(x)

    def value(self, x: Tensor) -> Tensor:
        return self.critic(x).squeeze(-1)

    def sample(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """A residual drawn from N(mean, std) and its log-probability (B,)."""
        mean = self.mean(x)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        action = mean + self.log_std.exp() * noise
        return action, self.log_prob(mean, action)

    def log_prob(self, mean: Tensor, action: Tensor) -> Tensor:
        """Sum over action dimensions of the diagonal Gaussian's log-density."""
        std = self.log_std.exp()
        z = (action - mean) / std
        return (-0.5 * z.square() - self.log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)

    def entropy(self, batch: int) -> Tensor:
        """(B,) entropy of the diagonal Gaussian (it does not depend on the input)."""
        per_dim = 0.5 + 0.5 * math.log(2 * math.pi) + self.log_std
        return per_dim.sum().expand(batch)

    def evaluate(self, x: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log-probability, entropy, value) of stored residuals under the current networks (PPO's update)."""
        return self.log_prob(self.mean(x), actions), self.entropy(x.shape[0]), self.value(x)
