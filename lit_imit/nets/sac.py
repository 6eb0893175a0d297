"""The networks of soft actor-critic: twin Q-functions and flat SAC's Gaussian policy.

SPiRL's MLPs (``spirl/rl/components/critic.py: MLPCritic``, ``spirl/rl/policies/mlp_policies.py: MLPPolicy``)
are an input layer, ``n_layers`` hidden layers of ``nz_mid`` and a linear head, with LeakyReLU(0.2) activations
and Xavier-initialised weights: ``n_layers: 2, nz_mid: 256`` is three hidden layers of 256 here
(``hidden_layers = n_layers + 1``). SPiRL's skill-space policy is instead a copy of the skill prior's network
(``lit_imit.nets.skills.GaussianMLP``), initialised with its weights.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from lit_imit.nets.skills import split_gaussian


def leaky_mlp(in_dim: int, hidden: int, out_dim: int, hidden_layers: int) -> nn.Sequential:
    """``hidden_layers`` (>= 1) Linear-LeakyReLU(0.2) layers of width ``hidden`` and a linear head, Xavier-uniform
    weights and zero biases (SPiRL's ``BaseProcessingNet`` with ``init_weights_xavier``)."""
    if hidden_layers < 1 or hidden < 1:
        raise ValueError(f"a critic needs hidden_layers >= 1 and hidden >= 1, got {hidden_layers} and {hidden}")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class TwinQ(nn.Module):
    """Two independent Q(s, a) MLPs over [state || action]; ``forward`` returns both, (2, B)."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int = 256, hidden_layers: int = 3) -> None:
        super().__init__()
        self.q1 = leaky_mlp(state_dim + action_dim, hidden, 1, hidden_layers)
        self.q2 = leaky_mlp(state_dim + action_dim, hidden, 1, hidden_layers)

    def forward(self, states: Tensor, actions: Tensor) -> Tensor:
        x = torch.cat([states, actions], dim=-1)
        return torch.stack([self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)])


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy without gradients (a target network, updated only by Polyak averaging)."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


class GaussianPolicy(nn.Module):
    """state -> (mean, log_std) of a diagonal Gaussian over the pre-squash action (SPiRL's ``MLPPolicy``)."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int = 256, hidden_layers: int = 3) -> None:
        super().__init__()
        self.net = leaky_mlp(state_dim, hidden, 2 * action_dim, hidden_layers)

    def forward(self, states: Tensor) -> tuple[Tensor, Tensor]:
        return split_gaussian(self.net(states))
