"""A seeded, rank-sharded sampler for uniform and prioritized draws.

Every rank draws the same global list of indices from a generator seeded by (seed, epoch) and keeps its
own slice ``rank::world_size``. The draw therefore depends only on (seed, epoch, probabilities): a resumed
run draws exactly what an uninterrupted run would have, and DDP ranks never overlap. Every rank gets the
same number of indices (the draw is padded with its own first indices up to a multiple of the world size,
as torch's ``DistributedSampler`` pads): a rank with one batch more than the others would wait forever in
that batch's gradient all-reduce. Lightning must be told not to wrap it
(``Trainer(use_distributed_sampler=False)``, the CLI's default).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from lit_imit.distributed import rank_and_world


class SeededSampler(Sampler[int]):
    """Draw ``num_samples`` indices per epoch: a permutation (uniform) or with replacement by ``probabilities``.

    Args:
        num_items: size of the dataset.
        num_samples: samples per epoch over all ranks (default: ``num_items``); fixing it keeps the epoch
            length constant while an interactive dataset grows.
        probabilities: per-item sampling probabilities (prioritized sampling); ``None`` = uniform.
        shuffle: for uniform sampling, permute (training) or keep the order (validation).
    """

    def __init__(
        self,
        num_items: int,
        num_samples: int | None = None,
        probabilities: Sequence[float] | torch.Tensor | None = None,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        default_rank, default_world = rank_and_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.num_items = num_items
        self.num_samples = num_items if num_samples is None else int(num_samples)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.probabilities = None
        if probabilities is not None:
            probs = torch.as_tensor(probabilities, dtype=torch.float64)
            if probs.numel() != num_items or not torch.isfinite(probs).all() or (probs < 0).any() or probs.sum() <= 0:
                raise ValueError("sampling probabilities must be finite, non-negative, one per item, not all zero")
            self.probabilities = probs / probs.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_indices(self) -> torch.Tensor:
        """The draw of this epoch over all ranks (identical on every rank)."""
        if self.num_items == 0:
            return torch.zeros(0, dtype=torch.long)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.probabilities is not None:
            return torch.multinomial(self.probabilities, self.num_samples, replacement=True, generator=gen)
        if not self.shuffle:
            return torch.arange(self.num_samples) % self.num_items
        reps = -(-self.num_samples // self.num_items)
        perms = [torch.randperm(self.num_items, generator=gen) for _ in range(reps)]
        return torch.cat(perms)[: self.num_samples]

    def __iter__(self) -> Iterator[int]:
        indices = self.global_indices()
        if len(indices) == 0:
            return iter([])
        padded = self.per_rank() * self.world_size
        if padded > len(indices):  # wrap around: fewer samples than ranks still gives each rank its share
            indices = indices.repeat(-(-padded // len(indices)))[:padded]
        return iter(indices[self.rank :: self.world_size].tolist())

    def per_rank(self) -> int:
        """Indices each rank draws per epoch: ``ceil(num_samples / world_size)``, equal on every rank."""
        if self.num_items == 0:
            return 0
        return -(-self.num_samples // self.world_size)

    def __len__(self) -> int:
        return self.per_rank()
