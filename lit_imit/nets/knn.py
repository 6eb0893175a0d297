"""Nearest-neighbour action chunks (VINN, Pari et al. 2021, as act-plus-plus runs it): plain tensor functions.

A memory holds, for every stored frame i, its visual features v_i, its normalised state s_i and where its
action chunk starts in one long array of all the episodes' actions. A query (v, s) is at distance

    d_i = ||v - v_i||_2 + state_weight * ||s - s_i||_2

from frame i; the prediction is the softmax(-d / temperature)-weighted average of the action chunks of the k
nearest frames. A chunk runs on from its frame's step and holds its episode's last action past the end, as
act-plus-plus stacks its chunks (indices clipped to the episode's last step).

Choosing k: :func:`sweep_k_errors` scores every k = 1..K at once for a batch of validation queries (the
sorted distances' cumulative weighted sums give all K predictions in one pass), as act-plus-plus's
``vinn_select_k.py`` sweeps k. (That script slices the *unsorted* distances when it takes the top k; here the
sorted ones are used, which is what the weights are meant to be.)
"""

from __future__ import annotations

import torch
from torch import Tensor


def neighbour_distances(query_visual: Tensor, memory_visual: Tensor, query_state: Tensor | None = None,
                        memory_state: Tensor | None = None, state_weight: float = 0.0) -> Tensor:
    """(Q, N): L2 distance of the visual features plus ``state_weight`` times the L2 distance of the states."""
    distances = torch.cdist(query_visual.float(), memory_visual.float())
    if state_weight != 0 and query_state is not None and memory_state is not None and query_state.shape[-1] > 0:
        distances = distances + state_weight * torch.cdist(query_state.float(), memory_state.float())
    return distances


def nearest(distances: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` smallest distances of each row, ascending, and their memory indices: (Q, k) each."""
    k = min(int(k), distances.shape[-1])
    if k < 1:
        raise ValueError("the memory is empty: there are no neighbours to look up")
    return torch.topk(distances, k, dim=-1, largest=False, sorted=True)


def softmax_weights(distances: Tensor, temperature: float = 1.0) -> Tensor:
    """softmax(-d / temperature) over the last axis: nearer neighbours weigh more, the weights sum to 1."""
    return torch.softmax(-distances / temperature, dim=-1)


def chunk_positions(start: Tensor, last: Tensor, chunk_size: int) -> Tensor:
    """Indices (..., chunk_size) into the action array: start, start + 1, ... held at ``last`` (episode end)."""
    steps = torch.arange(chunk_size, device=start.device)
    return torch.minimum(start.unsqueeze(-1) + steps, last.unsqueeze(-1))


def gather_chunks(actions: Tensor, start: Tensor, last: Tensor, chunk_size: int) -> Tensor:
    """Action chunks (..., chunk_size, A) of the frames whose chunks begin at ``start`` (...)."""
    return actions[chunk_positions(start, last, chunk_size)]


def weighted_chunk(weights: Tensor, chunks: Tensor) -> Tensor:
    """sum_i w_i chunk_i: (Q, k) weights and (Q, k, C, A) chunks -> (Q, C, A)."""
    return (weights.to(chunks.dtype)[..., None, None] * chunks).sum(dim=1)


def neighbour_spread(first_actions: Tensor) -> Tensor:
    """How much neighbours disagree (Q,): the standard deviation over neighbours (Q, m, A) of each action
    dimension, averaged over dimensions (0 for one neighbour or identical ones)."""
    if first_actions.shape[1] < 2:
        return first_actions.new_zeros(first_actions.shape[0])
    return first_actions.std(dim=1, unbiased=False).mean(dim=-1)


def sweep_k_errors(sorted_distances: Tensor, chunks: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """Squared error of the k-neighbour prediction for every k = 1..K, summed over the queries: (K,).

    ``sorted_distances`` (Q, K) ascending, ``chunks`` (Q, K, C, A) the neighbours' chunks in that order,
    ``targets`` (Q, C, A). Each query's error is the mean over the chunk's C x A entries. The softmax weights of
    the first k neighbours are exp(-(d_j - d_0) / T) / sum_{j<k}: the shift by the nearest distance d_0 leaves
    every softmax unchanged and keeps the exponentials in range, so cumulative sums give all K predictions.
    """
    d = sorted_distances.double()
    w = torch.exp(-(d - d[:, :1]) / temperature)  # (Q, K), w[:, 0] = 1
    numerators = torch.cumsum(w[..., None, None] * chunks.double(), dim=1)
    predictions = numerators / torch.cumsum(w, dim=1)[..., None, None]
    errors = (predictions - targets.double().unsqueeze(1)).pow(2).mean(dim=(2, 3))  # (Q, K)
    return errors.sum(dim=0)
