"""Networks of the skill-prior family (SPiRL, FIST, SkiLD): plain nn.Modules, no Lightning.

* :class:`SkillEncoder` q(z | a_{1:H}[, s_{1:H}]): an LSTM over the skill's actions (and states in the
  closed-loop variant), its last output mapped to a diagonal Gaussian (SPiRL's inference net).
* :class:`ClosedLoopDecoder` pi(a_t | s_t, z): an MLP applied at every step (SPiRL-cl, FIST).
* :class:`OpenLoopDecoder` p(a_{1:H} | z): an LSTM unrolled H steps on [previous action, z] from a learned
  initial input (SPiRL's original "hierarchical" decoder).
* :class:`GaussianMLP`: an MLP to a diagonal Gaussian, used for the skill prior p(z | s), FIST's
  goal-conditioned prior p(z | s_t, s_{t+H}) and SkiLD's skill posterior q(z | s).
* :class:`ContrastiveDistance`: FIST's state encoder (state -> 128 -> 128 -> 32) with a bilinear score
  f(s)^T W f(s'), trained with InfoNCE.
* :class:`StateDiscriminator`: SkiLD's D(s) (3 layers of width 32), a logit.

Gaussians are (mean, log_std) pairs with log_std clamped to a sane range; the helpers below compute KL
divergences, negative log-likelihoods and the weighted product used by SkiLD's policy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

LOG_STD_MIN, LOG_STD_MAX = -10.0, 4.0


def mlp(in_dim: int, hidden: int, out_dim: int, n_hidden: int, activation: type[nn.Module] = nn.LeakyReLU) -> nn.Sequential:
    """``n_hidden`` hidden layers of width ``hidden`` (>= 0), then a linear output layer."""
    if n_hidden < 0 or hidden < 1:
        raise ValueError(f"an MLP needs n_hidden >= 0 and hidden >= 1, got {n_hidden} and {hidden}")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(n_hidden):
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def split_gaussian(params: Tensor) -> tuple[Tensor, Tensor]:
    """(..., 2*nz) -> mean, log_std (clamped)."""
    mean, log_std = params.chunk(2, dim=-1)
    return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


def gaussian_kl(mean_q: Tensor, log_std_q: Tensor, mean_p: Tensor, log_std_p: Tensor) -> Tensor:
    """KL(q || p) of diagonal Gaussians, per dimension (same shape as the inputs)."""
    var_q, var_p = (2 * log_std_q).exp(), (2 * log_std_p).exp()
    return log_std_p - log_std_q + (var_q + (mean_q - mean_p) ** 2) / (2 * var_p) - 0.5


def standard_normal_kl(mean: Tensor, log_std: Tensor) -> Tensor:
    """KL(q || N(0, I)) per dimension."""
    return 0.5 * (mean**2 + (2 * log_std).exp() - 1.0) - log_std


def gaussian_nll(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """-log N(x; mean, std) per dimension."""
    return 0.5 * ((x - mean) / log_std.exp()) ** 2 + log_std + 0.5 * math.log(2 * math.pi)


def weighted_product(mean_a: Tensor, log_std_a: Tensor, weight_a: Tensor, mean_b: Tensor, log_std_b: Tensor,
                     weight_b: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised N_a^{w_a} N_b^{w_b} with w_a + w_b = 1, a Gaussian: the minimiser over pi of
    w_a KL(pi || N_a) + w_b KL(pi || N_b). Weights broadcast against the means, e.g. (B, 1)."""
    prec_a, prec_b = (-2 * log_std_a).exp() * weight_a, (-2 * log_std_b).exp() * weight_b
    precision = (prec_a + prec_b).clamp_min(1e-8)
    mean = (prec_a * mean_a + prec_b * mean_b) / precision
    return mean, -0.5 * precision.log()


class SkillEncoder(nn.Module):
    """q(z | a_{1:H}[, s_{1:H}]) as an LSTM; its output at the last step parametrises the Gaussian."""

    def __init__(self, action_dim: int, state_dim: int, latent_dim: int, hidden_dim: int = 128,
                 closed_loop: bool = True) -> None:
        super().__init__()
        self.closed_loop = closed_loop
        in_dim = action_dim + (state_dim if closed_loop else 0)
        self.embed = nn.Linear(in_dim, hidden_dim)
        self.lstm = nn.LSTM(hidden_dim, hidden_dim, batch_first=True)
        self.head = nn.Linear(hidden_dim, 2 * latent_dim)

    def forward(self, actions: Tensor, states: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """actions (B, H, A), states (B, H, S) when closed-loop -> mean, log_std (B, nz)."""
        if self.closed_loop:
            if states is None or states.shape[:2] != actions.shape[:2]:
                raise ValueError("the closed-loop skill encoder needs states aligned with the actions (B, H, S)")
            x = torch.cat([actions, states], dim=-1)
        else:
            x = actions
        out, _ = self.lstm(self.embed(x))
        return split_gaussian(self.head(out[:, -1]))


class ClosedLoopDecoder(nn.Module):
    """pi(a_t | s_t, z): the skill's low-level policy, queried at every step."""

    def __init__(self, state_dim: int, latent_dim: int, action_dim: int, hidden_dim: int = 128,
                 n_layers: int = 5) -> None:
        super().__init__()
        self.net = mlp(state_dim + latent_dim, hidden_dim, action_dim, n_layers)

    def forward(self, states: Tensor, z: Tensor) -> Tensor:
        """states (..., S), z (..., nz) broadcastable on the leading dims -> actions (..., A)."""
        z = z.expand(*states.shape[:-1], z.shape[-1])
        return self.net(torch.cat([states, z], dim=-1))


class OpenLoopDecoder(nn.Module):
    """p(a_{1:H} | z): an LSTM fed [previous action, z], starting from a learned first input."""

    def __init__(self, latent_dim: int, action_dim: int, horizon: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.first_action = nn.Parameter(torch.zeros(action_dim))
        self.init_hidden = nn.Linear(latent_dim, 2 * hidden_dim)
        self.cell = nn.LSTMCell(action_dim + latent_dim, hidden_dim)
        self.head = nn.Linear(hidden_dim, action_dim)

    def forward(self, z: Tensor) -> Tensor:
        """z (B, nz) -> actions (B, H, A)."""
        h, c = torch.tanh(self.init_hidden(z)).chunk(2, dim=-1)
        prev = self.first_action.expand(z.shape[0], -1)
        out = []
        for _ in range(self.horizon):
            h, c = self.cell(torch.cat([prev, z], dim=-1), (h, c))
            prev = self.head(h)
            out.append(prev)
        return torch.stack(out, dim=1)


class GaussianMLP(nn.Module):
    """An MLP from its input to a diagonal Gaussian over the skill latent."""

    def __init__(self, in_dim: int, latent_dim: int, hidden_dim: int = 128, n_layers: int = 6) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden_dim, 2 * latent_dim, n_layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return split_gaussian(self.net(x))


class ContrastiveDistance(nn.Module):
    """FIST's reachability model: encoder f (state -> 128 -> 128 -> 32, ReLU) and a bilinear score."""

    def __init__(self, state_dim: int, hidden_dim: int = 128, feature_dim: int = 32) -> None:
        super().__init__()
        self.encoder = mlp(state_dim, hidden_dim, feature_dim, 2, activation=nn.ReLU)
        self.W = nn.Parameter(torch.randn(feature_dim, feature_dim) * 0.01)

    def features(self, states: Tensor) -> Tensor:
        return self.encoder(states)

    def logits(self, anchors: Tensor, positives: Tensor) -> Tensor:
        """(B, B) scores f(s_i)^T W f(s'_j), each row shifted by its max (numerical stability)."""
        scores = self.features(anchors) @ self.W @ self.features(positives).T
        return scores - scores.max(dim=1, keepdim=True).values.detach()


class StateDiscriminator(nn.Module):
    """D(s) as a logit: demonstration-like states high, task-agnostic states low."""

    def __init__(self, state_dim: int, hidden_dim: int = 32, n_layers: int = 3) -> None:
        super().__init__()
        self.net = mlp(state_dim, hidden_dim, 1, n_layers)

    def forward(self, states: Tensor) -> Tensor:
        return self.net(states).squeeze(-1)
