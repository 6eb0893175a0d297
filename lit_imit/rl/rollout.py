"""Collecting an on-policy rollout: N envs stepped T times with a stochastic policy, resets inside.

The envs are any ``lit_imit.evaluation.EnvBatch`` (a list of gymnasium envs stepped here, or a
``lit_imit.envs.vector.ProcessEnvPool`` stepping them in worker processes). As in Ankile et al.'s residual
PPO (``reset_every_iteration``, ``reset_on_success``, ``truncation_as_done``), every rollout starts with a
reset of all envs, and an env whose episode ends inside the rollout (success, termination, the time limit) is
reset at once and keeps going; each end is a terminal for GAE (nothing is bootstrapped across it).

Seeds: every reset takes the next seed from ``seeds``, so a rollout is a function of its seeds and the
policy's random streams; the caller derives them from (seed, rank, iteration) and a resumed run steps the
same episodes as an uninterrupted one.

Rewards (``reward``): ``"sparse"`` is 1 at the step the task succeeds (``info["is_success"]``), else 0;
``"staged"`` is the increase of the episode's best stage (``info["max_reward"]``, ALOHA's 0-4 contact stages),
so an episode's return is the best stage it reached; ``"env"`` is the env's own reward (the kitchen's +1 per
sub-task, as SPiRL's RL uses).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from lit_imit.evaluation import EnvBatch, as_env_batch, stack_obs
from lit_imit.rl.ppo import PPOBatch

REWARDS = ("sparse", "staged", "env")


@dataclass
class PolicyStep:
    """What the policy did at one step for N envs."""

    env_actions: np.ndarray  # (N, A) raw actions sent to the envs
    inputs: Tensor  # (N, D) the networks' input (kept for the update)
    actions: Tensor  # (N, A) the sampled actions (the residual, for residual RL)
    logprobs: Tensor  # (N,)
    values: Tensor  # (N,)


class RolloutPolicy(Protocol):
    def __call__(self, obs: dict[str, np.ndarray], starts: np.ndarray) -> PolicyStep:
        """Act on batched observations; ``starts[i]`` says env i's observation begins a new episode."""


@dataclass
class Rollout:
    """T steps of N envs, time first."""

    inputs: Tensor  # (T, N, D)
    actions: Tensor  # (T, N, A)
    logprobs: Tensor  # (T, N)
    values: Tensor  # (T, N)
    rewards: Tensor  # (T, N) as the env gave them (before any scaling)
    ends: Tensor  # (T, N) bool: the episode ended with this step
    next_value: Tensor  # (N,) value of the observation after the last step
    episodes: int  # episodes that ended in this rollout
    successes: int  # ... and succeeded
    seconds: float  # wall time of the collection

    @property
    def env_steps(self) -> int:
        return int(self.rewards.numel())

    def batch(self, advantages: Tensor, returns: Tensor) -> PPOBatch:
        """The samples flattened to (T * N, ...) with their advantages and returns, for ``ppo_update``."""
        return PPOBatch(obs=self.inputs.flatten(0, 1), actions=self.actions.flatten(0, 1),
                        logprobs=self.logprobs.flatten(), advantages=advantages.flatten(), returns=returns.flatten())


def step_reward(kind: str, info: Mapping[str, Any], best_stage: float, env_reward: float = 0.0) -> float:
    """The reward of one step (see the module docstring); ``best_stage``: the episode's best stage before it;
    ``env_reward``: what the env returned."""
    if kind == "env":
        return float(env_reward)
    if kind == "sparse":
        return 1.0 if info.get("is_success", False) else 0.0
    if kind == "staged":
        if "max_reward" not in info:
            raise KeyError("the staged reward needs info['max_reward'] (the episode's best stage); this env has none")
        return max(0.0, float(info["max_reward"]) - best_stage)
    raise ValueError(f"unknown reward {kind!r}; choose one of {REWARDS}")


class _Episodes:
    """Per-env bookkeeping across resets: current observation, new-episode flags, best stage, counts."""

    def __init__(self, envs: EnvBatch, seeds: Iterator[int]) -> None:
        self.envs, self.seeds = envs, seeds
        self.n = len(envs)
        self.obs: list[Any] = [None] * self.n
        self.starts = np.zeros(self.n, dtype=bool)
        self.best_stage = np.zeros(self.n)
        self.episodes = self.successes = 0

    def reset(self, rows: Sequence[int]) -> None:
        if not rows:
            return
        for row, (obs, _info) in zip(rows, self.envs.reset(list(rows), [next(self.seeds) for _ in rows])):
            self.obs[row] = obs
            self.starts[row] = True
            self.best_stage[row] = 0.0

    def batch(self) -> dict[str, np.ndarray]:
        return stack_obs(self.obs)


def collect_rollout(envs: Sequence[Any] | EnvBatch, policy: RolloutPolicy, num_steps: int, seeds: Iterator[int],
                    reward: str = "sparse") -> Rollout:
    """Reset every env, then ``num_steps`` steps of ``policy`` in all of them (see the module docstring)."""
    if reward not in REWARDS:
        raise ValueError(f"unknown reward {reward!r}; choose one of {REWARDS}")
    start = time.perf_counter()
    envs = as_env_batch(envs)
    state = _Episodes(envs, seeds)
    state.reset(list(range(state.n)))
    steps: list[PolicyStep] = []
    rewards = np.zeros((num_steps, state.n), dtype=np.float32)
    ends = np.zeros((num_steps, state.n), dtype=bool)
    rows = list(range(state.n))
    for t in range(num_steps):
        step = policy(state.batch(), state.starts.copy())
        state.starts[:] = False
        steps.append(step)
        results = envs.step(rows, list(step.env_actions))
        ended = []
        for row, (obs, env_reward, terminated, truncated, info) in enumerate(results):
            state.obs[row] = obs
            rewards[t, row] = step_reward(reward, info, state.best_stage[row], env_reward)
            state.best_stage[row] = max(state.best_stage[row], float(info.get("max_reward", 0.0)))
            success = bool(info.get("is_success", False))
            if success or terminated or truncated:
                ends[t, row] = True
                ended.append(row)
                state.episodes += 1
                state.successes += int(success)
        state.reset(ended)
    last = policy(state.batch(), state.starts.copy())
    return Rollout(
        inputs=torch.stack([s.inputs for s in steps]), actions=torch.stack([s.actions for s in steps]),
        logprobs=torch.stack([s.logprobs for s in steps]), values=torch.stack([s.values for s in steps]),
        rewards=torch.from_numpy(rewards).to(last.values.device),
        ends=torch.from_numpy(ends).to(last.values.device), next_value=last.values,
        episodes=state.episodes, successes=state.successes, seconds=time.perf_counter() - start,
    )
