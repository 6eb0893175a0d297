"""A uniform replay buffer of transitions held as tensors, whose whole state travels in a checkpoint.

Off-policy RL learns from everything it has collected, so an exactly resumed run needs the buffer as it was:
:meth:`ReplayBuffer.state_dict` is plain tensors (the filled rows and the write position), which a weights-only
checkpoint load accepts, and :meth:`ReplayBuffer.load_state_dict` restores it bit for bit.

It is a ring of ``capacity`` rows (the oldest are overwritten once full), allocated as it fills (doubling) rather
than at once: SPiRL's kitchen buffer holds up to 10^6 transitions but a run collects ~1.5 x 10^5, and only the
filled rows are saved. Draws are uniform with replacement (SPiRL's ``UniformReplayBuffer``) from a
``torch.Generator``, so they are a function of the caller's seed.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from lit_imit.rl.sac import ReplayBatch

FIELDS = ("states", "actions", "rewards", "next_states", "terminals")
_FIRST_ALLOCATION = 1024


class ReplayBuffer:
    """Transitions (state, action, reward, next state, terminal) of fixed sizes; see the module docstring."""

    def __init__(self, capacity: int, state_dim: int, action_dim: int) -> None:
        if capacity < 1 or state_dim < 1 or action_dim < 1:
            raise ValueError(f"capacity, state_dim and action_dim must be >= 1, got {capacity}, {state_dim}, "
                             f"{action_dim}")
        self.capacity, self.state_dim, self.action_dim = int(capacity), int(state_dim), int(action_dim)
        self.position = 0  # the next row written
        self.size = 0  # rows filled
        self.data = self._allocate(min(self.capacity, _FIRST_ALLOCATION))

    def _allocate(self, rows: int) -> dict[str, Tensor]:
        shapes = {"states": (rows, self.state_dim), "actions": (rows, self.action_dim), "rewards": (rows,),
                  "next_states": (rows, self.state_dim), "terminals": (rows,)}
        return {name: torch.zeros(shape) for name, shape in shapes.items()}

    def __len__(self) -> int:
        return self.size

    def _reserve(self, rows: int) -> None:
        """Grow the tensors (doubling, at most to ``capacity``) until ``rows`` rows fit."""
        allocated = len(self.data["rewards"])
        if rows <= allocated or allocated == self.capacity:
            return
        new = allocated
        while new < rows:
            new *= 2
        grown = self._allocate(min(new, self.capacity))
        for name, value in self.data.items():
            grown[name][:allocated] = value
        self.data = grown

    def add(self, states: Tensor, actions: Tensor, rewards: Tensor, next_states: Tensor, terminals: Tensor) -> None:
        """Append N transitions (each argument's first dimension is N), overwriting the oldest when full."""
        batch = {"states": states, "actions": actions, "rewards": rewards, "next_states": next_states,
                 "terminals": terminals}
        n = int(rewards.shape[0])
        if n > self.capacity:
            raise ValueError(f"cannot add {n} transitions to a buffer of capacity {self.capacity}")
        self._reserve(min(self.size + n, self.capacity))
        rows = (self.position + torch.arange(n)) % self.capacity
        for name, value in batch.items():
            target = self.data[name]
            target[rows] = value.detach().to(target.dtype).cpu().reshape(n, *target.shape[1:])
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> ReplayBatch:
        """``batch_size`` transitions drawn uniformly with replacement."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        rows = torch.randint(0, self.size, (batch_size,), generator=generator)
        return ReplayBatch(**{name: self.data[name][rows].to(device) for name in FIELDS})

    def state_dict(self) -> dict[str, Tensor]:
        """The filled rows and the write position, as tensors (a weights-only checkpoint loads them)."""
        return {**{name: self.data[name][: self.size].clone() for name in FIELDS},
                "position": torch.tensor(self.position), "capacity": torch.tensor(self.capacity)}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore a :meth:`state_dict` (the capacity and the sizes must match this buffer's)."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"the saved replay buffer has capacity {int(state['capacity'])}, this one "
                             f"{self.capacity}: resume with the run's replay_capacity")
        size = int(state["rewards"].shape[0])
        self.data = self._allocate(max(min(self.capacity, _FIRST_ALLOCATION), size))
        for name in FIELDS:
            if state[name].shape[1:] != self.data[name].shape[1:]:
                raise ValueError(f"the saved replay buffer's {name} are {tuple(state[name].shape[1:])} per row, "
                                 f"this one's {tuple(self.data[name].shape[1:])}")
            self.data[name][:size] = state[name]
        self.size, self.position = size, int(state["position"])
