"""A seeded, rank-sharded sampler for uniform and prioritized draws.

Every rank draws the same global list of indices from a generator seeded by (seed, epoch) and keeps its
own slice ``rank::world_size``. The draw therefore depends only on (seed, epoch, probabilities): a resumed
run draws exactly what an uninterrupted run would have, and DDP ranks never overlap. Every rank gets the
same number of indices (the draw is padded with its own first indices up to a multiple of the world size,
as torch's ``DistributedSampler`` pads): a rank with one batch more than the others would wait forever in
that batch's gradient all-reduce. Lightning must be told not to wrap it
(``Trainer(use_distributed_sampler=False)``, the CLI's default).

A mid-epoch resume continues the same draw: ``resume(epoch, served)`` skips the indices this rank already
served, while ``len`` stays the whole epoch's (Lightning counts the epoch's batches from the checkpoint's
progress and expects a resumable loader to yield only the rest). ``EpochDataLoader`` in ``datamodule.py``
counts what it served and calls it from its ``load_state_dict``.

:class:`WeightedStoreSampler` is the co-training draw over several stores laid end to end (act-plus-plus's
``BatchSampler`` with ``sample_weights``), with the same seeding, sharding and resume.
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
        self.start = 0  # indices of this rank's epoch already served (set by ``resume``)
        self.probabilities = None
        if probabilities is not None:
            probs = torch.as_tensor(probabilities, dtype=torch.float64)
            if probs.numel() != num_items or not torch.isfinite(probs).all() or (probs < 0).any() or probs.sum() <= 0:
                raise ValueError("sampling probabilities must be finite, non-negative, one per item, not all zero")
            self.probabilities = probs / probs.sum()

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch``; a new epoch starts from its first index, the resumed one where it stopped."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def resume(self, epoch: int, served: int) -> None:
        """Continue ``epoch`` after the first ``served`` indices of this rank (what a checkpoint saw trained)."""
        self.epoch = int(epoch)
        self.start = min(max(int(served), 0), self.per_rank())

    def generator(self) -> torch.Generator:
        """The epoch's generator: seeded by (seed, epoch) only, so every rank and every resume draws alike."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def global_indices(self) -> torch.Tensor:
        """The draw of this epoch over all ranks (identical on every rank)."""
        if self.num_items == 0:
            return torch.zeros(0, dtype=torch.long)
        gen = self.generator()
        if self.probabilities is not None:
            return torch.multinomial(self.probabilities, self.num_samples, replacement=True, generator=gen)
        if not self.shuffle:
            return torch.arange(self.num_samples) % self.num_items
        return cycled_permutation(self.num_items, self.num_samples, gen)

    def __iter__(self) -> Iterator[int]:
        indices = self.global_indices()
        if len(indices) == 0:
            return iter([])
        padded = self.per_rank() * self.world_size
        if padded > len(indices):  # wrap around: fewer samples than ranks still gives each rank its share
            indices = indices.repeat(-(-padded // len(indices)))[:padded]
        return iter(indices[self.rank :: self.world_size][self.start :].tolist())

    def per_rank(self) -> int:
        """Indices each rank draws per epoch: ``ceil(num_samples / world_size)``, equal on every rank."""
        if self.num_items == 0:
            return 0
        return -(-self.num_samples // self.world_size)

    def __len__(self) -> int:
        return self.per_rank()


def cycled_permutation(num_items: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` indices of ``range(num_items)``: fresh permutations end to end, so every item comes once
    before any comes twice (an epoch's uniform draw)."""
    reps = -(-count // num_items)
    perms = [torch.randperm(num_items, generator=generator) for _ in range(reps)]
    return torch.cat(perms)[:count]


class WeightedStoreSampler(SeededSampler):
    """Co-training: each index picks a store with probability ∝ its weight, then a sample of that store.

    act-plus-plus's ``BatchSampler(sample_weights=...)`` draws the same way: a dataset by weight, then a step
    uniformly within it. Here the stores' samples are laid end to end (store ``s`` owns indices
    ``offsets[s] .. offsets[s] + sizes[s] - 1``), the store choices are drawn with replacement, and within a
    store the draw walks fresh permutations (uniform, and every sample of a store comes once before any
    comes twice; act-plus-plus draws with replacement). Seeding by (seed, epoch), equal per-rank counts
    under DDP and ``resume`` are :class:`SeededSampler`'s.

    Args:
        sizes: samples per store, in the order they are laid end to end.
        weights: one non-negative weight per store (normalised here; need not sum to 1). A store of weight
            0 is never drawn; a store with weight must have samples.
        num_samples: samples per epoch over all ranks (default: all stores' samples).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        num_samples: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.sizes = [int(n) for n in sizes]
        self.store_probabilities = store_probabilities(self.sizes, weights)
        self.offsets = [sum(self.sizes[:s]) for s in range(len(self.sizes))]
        super().__init__(sum(self.sizes), num_samples, seed=seed, shuffle=True, rank=rank, world_size=world_size)

    def global_indices(self) -> torch.Tensor:
        """The epoch's draw over all ranks: store choices first, then each store's share of permutations."""
        if self.num_items == 0:
            return torch.zeros(0, dtype=torch.long)
        gen = self.generator()
        stores = torch.multinomial(self.store_probabilities, self.num_samples, replacement=True, generator=gen)
        indices = torch.empty(self.num_samples, dtype=torch.long)
        for s, (offset, size) in enumerate(zip(self.offsets, self.sizes)):
            slots = torch.nonzero(stores == s).squeeze(1)
            if len(slots):
                indices[slots] = offset + cycled_permutation(size, len(slots), gen)
        return indices


def store_probabilities(sizes: Sequence[int], weights: Sequence[float]) -> torch.Tensor:
    """The weights as probabilities, refusing what cannot be drawn from (the message says which store)."""
    if len(weights) != len(sizes) or not sizes:
        raise ValueError(f"one weight per store is needed: {len(sizes)} stores, {len(weights)} weights")
    probs = torch.as_tensor([float(w) for w in weights], dtype=torch.float64)
    if not torch.isfinite(probs).all() or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(f"store weights must be finite, non-negative and not all zero, got {list(weights)}")
    empty = [s for s, (n, w) in enumerate(zip(sizes, probs.tolist())) if w > 0 and n <= 0]
    if empty:
        raise ValueError(f"stores {empty} have a weight but no samples to draw")
    return probs / probs.sum()
