"""MLPPolicy: a multilayer perceptron from low-dimensional observations to a chunk of actions.

The network of robomimic's BC baseline (fully connected layers with ReLU between them, a linear output),
widened at the output to ``chunk_size`` future actions so that it can execute chunks like ACT.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn


class MLPPolicy(nn.Module):
    """(B, in_dim) normalised observation -> (B, chunk_size, action_dim) normalised actions."""

    def __init__(self, in_dim: int, action_dim: int, chunk_size: int = 1, hidden_dims: Sequence[int] = (1024, 1024),
                 dropout: float = 0.0) -> None:
        super().__init__()
        if in_dim < 1 or action_dim < 1 or chunk_size < 1:
            raise ValueError(f"in_dim, action_dim and chunk_size must be >= 1, got {in_dim}, {action_dim}, {chunk_size}")
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, int(hidden)), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(hidden)
        layers.append(nn.Linear(width, chunk_size * action_dim))
        self.net = nn.Sequential(*layers)
        self.chunk_size, self.action_dim = chunk_size, action_dim

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs).view(obs.shape[0], self.chunk_size, self.action_dim)

