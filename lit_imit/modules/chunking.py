"""Executing action chunks: open-loop queues and ACT's temporal ensembling, one buffer row per env.

Shared by every policy that predicts chunks of future actions (ACT, VINN, the MLP BC baseline) through
:class:`ChunkExecutor`. All work on batches of N environments and can reset single rows (an env whose episode
ended) without touching the others.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


def env_mask(env_ids: Sequence[int] | Tensor | None, n_envs: int, device: torch.device) -> Tensor:
    """Boolean (N,) mask from None (all envs), a list of indices or a boolean mask."""
    if env_ids is None:
        return torch.ones(n_envs, dtype=torch.bool, device=device)
    ids = torch.as_tensor(env_ids, device=device)
    if ids.dtype == torch.bool:
        return ids
    mask = torch.zeros(n_envs, dtype=torch.bool, device=device)
    mask[ids.long()] = True
    return mask


def chunk_execution(
    chunk_size: int, n_action_steps: int, temporal_ensemble_coeff: float | None
) -> tuple["ChunkQueue", "TemporalEnsembler | None"]:
    """The queue (and, with ``temporal_ensemble_coeff``, ACT's ensembler) that execute predicted chunks.

    ``n_action_steps`` actions of each chunk run before the next query; ensembling queries every step.
    """
    if not 1 <= n_action_steps <= chunk_size:
        raise ValueError(f"n_action_steps must be in [1, chunk_size={chunk_size}], got {n_action_steps}")
    if temporal_ensemble_coeff is not None and n_action_steps != 1:
        raise ValueError("temporal ensembling queries the policy every step: set n_action_steps=1")
    ensembler = TemporalEnsembler(temporal_ensemble_coeff, chunk_size) if temporal_ensemble_coeff is not None else None
    return ChunkQueue(n_action_steps), ensembler


#: ``query(rows)``: raw chunks (M, k, A) for the env rows of the boolean mask ``rows`` (None: all rows) and their
#: uncertainty (M,), or None where the policy did not estimate it
ChunkQuery = Callable[[Tensor | None], tuple[Tensor, Tensor | None]]


class ChunkExecutor:
    """How a chunking policy acts per env: an open-loop queue or ACT's temporal ensembling, and the uncertainty of
    the chunk each env is executing (NaN where it was not estimated), reset row by row with the queues.

    The policy supplies the query; the executor decides which rows need one this step.
    """

    def __init__(self, chunk_size: int, n_action_steps: int, temporal_ensemble_coeff: float | None) -> None:
        self.queue, self.ensembler = chunk_execution(chunk_size, n_action_steps, temporal_ensemble_coeff)
        self.uncertainty: Tensor | None = None  # (N,) of the chunk each env executes (queue mode)

    def reset(self, env_ids: Sequence[int] | Tensor | None = None) -> None:
        self.queue.reset(env_ids)
        if self.ensembler is not None:
            self.ensembler.reset(env_ids)
        if env_ids is None or self.uncertainty is None:
            self.uncertainty = None
        else:
            with torch.inference_mode():
                self.uncertainty[env_mask(env_ids, len(self.uncertainty), self.uncertainty.device)] = float("nan")

    def step(self, n_envs: int, device: torch.device, query: ChunkQuery) -> tuple[Tensor, Tensor | None]:
        """The raw actions (N, A) of this step and the uncertainty per env: with ensembling the query's of this
        step; with queues the buffer of each env's current chunk (the executor's own tensor: a caller may fill
        its NaN rows, and clones it before handing it out)."""
        if self.ensembler is not None:
            chunk, uncertainty = query(None)
            return self.ensembler.update(chunk), uncertainty
        need = self.queue.needs_query(n_envs, device)
        if self.uncertainty is None or len(self.uncertainty) != n_envs:
            self.uncertainty = torch.full((n_envs,), float("nan"), device=device)
        if bool(need.any()):
            chunk, uncertainty = query(need)
            self.queue.fill(need, chunk)
            self.uncertainty[need] = uncertainty if uncertainty is not None else float("nan")
        return self.queue.pop(), self.uncertainty


class ChunkQueue:
    """Per-env queues of the next actions of the last predicted chunk (open-loop chunk execution)."""

    def __init__(self, n_action_steps: int) -> None:
        self.n_action_steps = n_action_steps
        self.actions: Tensor | None = None  # (N, n_action_steps, A)
        self.position: Tensor | None = None  # (N,) index of the next action to execute

    def reset(self, env_ids: Sequence[int] | Tensor | None = None) -> None:
        if env_ids is None or self.position is None:
            self.actions = self.position = None
        else:  # those envs re-query at their next step (the buffers were made under inference mode)
            with torch.inference_mode():
                self.position[env_mask(env_ids, len(self.position), self.position.device)] = self.n_action_steps

    def needs_query(self, n_envs: int, device: torch.device) -> Tensor:
        """(N,) mask of the envs whose queue is empty."""
        if self.position is None:
            return torch.ones(n_envs, dtype=torch.bool, device=device)
        if len(self.position) != n_envs:
            raise ValueError(f"{n_envs} observations but {len(self.position)} queued envs: call reset() first")
        return self.position >= self.n_action_steps

    def fill(self, mask: Tensor, chunks: Tensor) -> None:
        """Put the first n_action_steps actions of new chunks (one per True in mask) into those queues."""
        if self.actions is None:
            n, (_, _, a) = len(mask), chunks.shape
            self.actions = chunks.new_zeros(n, self.n_action_steps, a)
            self.position = torch.full((n,), self.n_action_steps, dtype=torch.long, device=chunks.device)
        self.actions[mask] = chunks[:, : self.n_action_steps]
        self.position[mask] = 0

    def pop(self) -> Tensor:
        """The next action of every env (N, A)."""
        assert self.actions is not None and self.position is not None
        if bool((self.position >= self.n_action_steps).any()):
            raise RuntimeError("an action queue is empty: fill it before popping")
        action = self.actions[torch.arange(len(self.position), device=self.position.device), self.position]
        self.position += 1
        return action


class TemporalEnsembler:
    """Online temporal ensembling of overlapping chunks, one buffer per env.

    Slot j of the buffers holds, for the step j steps ahead, the running sum of w_i * prediction and of w_i,
    where i counts the predictions already made for that step (i = 0 for the oldest) and w_i = exp(-m * i).
    The executed action is sum / weight sum of slot 0, i.e. the normalised weighted average of ACT's eval.
    """

    def __init__(self, coeff: float, chunk_size: int) -> None:
        self.coeff, self.chunk_size = coeff, chunk_size
        self.weights = torch.exp(-coeff * torch.arange(chunk_size, dtype=torch.float64))
        self.sums: Tensor | None = None  # (N, k, A)
        self.weight_sums: Tensor | None = None  # (N, k)
        self.counts: Tensor | None = None  # (N, k) predictions made so far for each future step

    def reset(self, env_ids: Sequence[int] | Tensor | None = None) -> None:
        if env_ids is None or self.sums is None:
            self.sums = self.weight_sums = self.counts = None
            return
        assert self.weight_sums is not None and self.counts is not None
        with torch.inference_mode():  # the buffers were made under inference mode
            mask = env_mask(env_ids, len(self.sums), self.sums.device)
            self.sums[mask] = 0
            self.weight_sums[mask] = 0
            self.counts[mask] = 0

    def update(self, chunks: Tensor) -> Tensor:
        """Add the chunks predicted now (N, k, A) and return the ensembled action for the current step (N, A)."""
        n, k, a = chunks.shape
        if k != self.chunk_size:
            raise ValueError(f"chunks of {k} steps, the ensembler was built for {self.chunk_size}")
        if self.sums is None:
            self.sums = chunks.new_zeros(n, k, a, dtype=torch.float64)
            self.weight_sums = chunks.new_zeros(n, k, dtype=torch.float64)
            self.counts = torch.zeros(n, k, dtype=torch.long, device=chunks.device)
        assert self.weight_sums is not None and self.counts is not None
        if len(self.sums) != n:
            raise ValueError(f"{n} chunks but {len(self.sums)} ensembled envs: call reset() first")
        w = self.weights.to(chunks.device)[self.counts]  # (N, k)
        self.sums += w.unsqueeze(-1) * chunks.double()
        self.weight_sums += w
        self.counts += 1
        action = (self.sums[:, 0] / self.weight_sums[:, 0:1]).to(chunks.dtype)
        # advance one step: slot 0 is consumed, a fresh empty slot enters at the far end
        self.sums = torch.cat([self.sums[:, 1:], self.sums.new_zeros(n, 1, a)], dim=1)
        self.weight_sums = torch.cat([self.weight_sums[:, 1:], self.weight_sums.new_zeros(n, 1)], dim=1)
        self.counts = torch.cat([self.counts[:, 1:], self.counts.new_zeros(n, 1)], dim=1)
        return action


class ObservationHistory:
    """The last ``length`` observations of every env, key by key: (N, length, ...) tensors, one row per env.

    A row whose episode starts is filled with its first observation repeated, as Diffusion Policy pads the
    history at an episode's start; the other rows shift by one. Rows start independently, so envs that reset
    at different times (residual RL resets an env as soon as it succeeds) keep their own histories.
    """

    def __init__(self, length: int) -> None:
        if length < 1:
            raise ValueError(f"an observation history holds at least 1 frame, got {length}")
        self.length = length
        self.frames: dict[str, Tensor] = {}

    def reset(self) -> None:
        self.frames = {}

    def push(self, obs: dict[str, Tensor], starts: Tensor) -> dict[str, Tensor]:
        """Add one observation per env (``starts``: (N,) bool, rows beginning an episode); the histories."""
        for key, value in obs.items():
            repeated = value.unsqueeze(1).expand(-1, self.length, *value.shape[1:])
            history = self.frames.get(key)
            if history is None or history.shape[0] != value.shape[0]:
                history = repeated.clone()
            else:
                history = torch.cat([history[:, 1:], value.unsqueeze(1)], dim=1)
                history[starts] = repeated[starts]
            self.frames[key] = history
        return dict(self.frames)
