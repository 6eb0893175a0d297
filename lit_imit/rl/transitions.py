"""Collecting off-policy transitions, one decision at a time, from N envs whose episodes run across calls.

A *decision* is what the learner chooses and stores: an env action for flat SAC, a skill z that a frozen
decoder executes for ``horizon`` env steps for SPiRL (its high-level policy acts every H = 10 steps). One call
of :meth:`EnvRunner.decide` executes one decision in every env in lock-step: up to ``horizon`` env steps, the
low-level actions coming from ``act(observations, t)`` at each step t. An env whose episode ends inside the
decision (termination, time limit) stops there and waits for the others, so every env decides again at the
same time, at the start of each episode and every ``horizon`` steps within it, as SPiRL's
``FixedIntervalHierarchicalAgent`` does.

The decision's transition is (observation at its start, summed reward of its steps, observation after its last
step, terminal): SPiRL's high-level transition (``HierarchicalSampler``: the rewards since the last high-level
step, summed). ``terminal`` is the env's *termination* (the goal reached: nothing to bootstrap); a time limit
ends the episode without being terminal, so the learner bootstraps there (Pardo et al., 2018; SPiRL marks
timeouts done). Ended envs are reset after the transition is taken, each with the next seed of ``seeds``.

The runner keeps the envs' observations between calls, so episodes span many calls; the module starts a runner
(fresh seeded resets) at every epoch, which makes an epoch a function of its seeds and the learner's state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from lit_imit.evaluation import EnvBatch, as_env_batch, stack_obs
from lit_imit.rl.rollout import REWARDS, step_reward


@dataclass
class FinishedEpisode:
    """One episode that ended during a decision."""

    episode_return: float
    length: int
    success: bool


@dataclass
class Decision:
    """One decision of N envs: the transitions to store and the episodes that ended."""

    observations: dict[str, np.ndarray]  # at the decision's start, (N, ...) per key
    next_observations: dict[str, np.ndarray]  # after its last step (an ended episode's final observation)
    rewards: np.ndarray  # (N,) summed over the decision's steps
    terminals: np.ndarray  # (N,) bool: the env terminated the episode (no bootstrap)
    ended: np.ndarray  # (N,) bool: the episode ended (terminated or truncated); the env was reset
    env_steps: int  # env steps taken, over all envs
    seconds: float
    episodes: list[FinishedEpisode] = field(default_factory=list)


class EnvRunner:
    """N envs stepped decision by decision (see the module docstring).

    Args:
        envs: a list of gymnasium envs or an ``EnvBatch`` (``ProcessEnvPool``).
        seeds: the env seed of every reset, in order (all envs are reset at construction).
        reward: ``"env"`` (the env's reward), ``"sparse"`` or ``"staged"`` (``lit_imit.rl.rollout``).
    """

    def __init__(self, envs: Sequence[Any] | EnvBatch, seeds: Iterator[int], reward: str = "env") -> None:
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; choose one of {REWARDS}")
        self.envs, self.seeds, self.reward = as_env_batch(envs), seeds, reward
        self.n = len(self.envs)
        self.obs: list[Any] = [None] * self.n
        self.returns = np.zeros(self.n)
        self.lengths = np.zeros(self.n, dtype=np.int64)
        self.success = np.zeros(self.n, dtype=bool)
        self.best_stage = np.zeros(self.n)
        self._reset(list(range(self.n)))

    def _reset(self, rows: Sequence[int]) -> None:
        if not rows:
            return
        for row, (obs, _info) in zip(rows, self.envs.reset(list(rows), [next(self.seeds) for _ in rows])):
            self.obs[row] = obs
            self.returns[row], self.lengths[row] = 0.0, 0
            self.success[row], self.best_stage[row] = False, 0.0

    def observations(self) -> dict[str, np.ndarray]:
        """The envs' current observations, batched."""
        return stack_obs(self.obs)

    def decide(self, act: Callable[[dict[str, np.ndarray], int], np.ndarray], horizon: int) -> Decision:
        """Execute one decision in every env: ``act(observations, t)`` gives (N, A) env actions at step t < horizon
        (rows of ended episodes are ignored); see the module docstring."""
        if horizon < 1:
            raise ValueError(f"a decision lasts at least one env step, got horizon {horizon}")
        start = time.perf_counter()
        first = self.observations()
        rewards = np.zeros(self.n, dtype=np.float32)
        terminals = np.zeros(self.n, dtype=bool)
        ended = np.zeros(self.n, dtype=bool)
        steps = 0
        for t in range(horizon):
            active = [row for row in range(self.n) if not ended[row]]
            if not active:
                break
            actions = np.asarray(act(self.observations(), t))
            for row, (obs, env_reward, terminated, truncated, info) in zip(
                    active, self.envs.step(active, [actions[row] for row in active])):
                self.obs[row] = obs
                reward = step_reward(self.reward, info, self.best_stage[row], float(env_reward))
                self.best_stage[row] = max(self.best_stage[row], float(info.get("max_reward", 0.0)))
                rewards[row] += reward
                self.returns[row] += reward
                self.lengths[row] += 1
                self.success[row] |= bool(info.get("is_success", False))
                terminals[row] = bool(terminated)
                ended[row] = bool(terminated or truncated)
            steps += len(active)
        finished = [FinishedEpisode(float(self.returns[row]), int(self.lengths[row]), bool(self.success[row]))
                    for row in range(self.n) if ended[row]]
        decision = Decision(observations=first, next_observations=self.observations(), rewards=rewards,
                            terminals=terminals, ended=ended, env_steps=steps, seconds=0.0, episodes=finished)
        self._reset([row for row in range(self.n) if ended[row]])
        decision.seconds = time.perf_counter() - start
        return decision
