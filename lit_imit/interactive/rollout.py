"""Batched, seeded rollouts of a policy in a set of envs (no Lightning).

The policy sees a batch of observations with a fixed number of rows, one per env, for the whole wave of
episodes: per-env buffers inside the policy (action queues, temporal ensembling, observation history) stay
aligned with their env. Envs that finished early keep feeding their last observation; their actions are
discarded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np


@dataclass
class EpisodeResult:
    """Outcome of one evaluation episode."""

    index: int
    seed: int
    success: bool
    episode_return: float
    max_reward: float
    length: int
    frames: list[np.ndarray] = field(default_factory=list)


def stack_obs(observations: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Per-env observation dicts to one dict of batched arrays."""
    return {key: np.stack([np.asarray(o[key]) for o in observations]) for key in observations[0]}


def _video_frame(env: Any, obs: Mapping[str, Any], camera: str | None) -> np.ndarray | None:
    if camera is not None and f"images/{camera}" in obs:
        return np.asarray(obs[f"images/{camera}"])
    frame = env.render()
    return None if frame is None else np.asarray(frame)


def run_wave(
    envs: Sequence[Any],
    policy: Callable[[dict[str, np.ndarray]], np.ndarray],
    reset_policy: Callable[[], None],
    indices: Sequence[int],
    seeds: Sequence[int],
    record_video_of: int | None = None,
    video_camera: str | None = None,
    max_steps: int | None = None,
) -> list[EpisodeResult]:
    """Run len(indices) <= len(envs) episodes in lock-step; returns one result per episode."""
    n = len(indices)
    envs = envs[:n]
    reset_policy()
    observations, infos = [], []
    for env, seed in zip(envs, seeds):
        obs, info = env.reset(seed=int(seed))
        observations.append(obs)
        infos.append(info)
    done = [False] * n
    returns = [0.0] * n
    max_rewards = [-math.inf] * n
    lengths = [0] * n
    success = [False] * n
    frames: list[np.ndarray] = []
    video_row = indices.index(record_video_of) if record_video_of in indices else None
    step = 0
    while not all(done) and (max_steps is None or step < max_steps):
        if video_row is not None and not done[video_row]:
            frame = _video_frame(envs[video_row], observations[video_row], video_camera)
            if frame is not None:
                frames.append(frame)
        actions = np.asarray(policy(stack_obs(observations)))
        for row, env in enumerate(envs):
            if done[row]:
                continue
            obs, reward, terminated, truncated, info = env.step(actions[row])
            observations[row] = obs
            returns[row] += float(reward)
            max_rewards[row] = max(max_rewards[row], float(reward))
            lengths[row] += 1
            success[row] = success[row] or bool(info.get("is_success", False))
            done[row] = bool(terminated or truncated)
        step += 1
    return [
        EpisodeResult(
            index=int(indices[row]), seed=int(seeds[row]), success=success[row], episode_return=returns[row],
            max_reward=max_rewards[row], length=lengths[row], frames=frames if row == video_row else [],
        )
        for row in range(n)
    ]


def evaluate(
    envs: Sequence[Any],
    policy: Callable[[dict[str, np.ndarray]], np.ndarray],
    reset_policy: Callable[[], None],
    indices: Sequence[int],
    seed: int,
    record_video_of: int | None = None,
    video_camera: str | None = None,
    max_steps: int | None = None,
) -> list[EpisodeResult]:
    """Episodes ``indices`` (seed = seed + index), in waves of len(envs)."""
    results: list[EpisodeResult] = []
    for start in range(0, len(indices), len(envs)):
        wave = list(indices[start : start + len(envs)])
        results += run_wave(
            envs, policy, reset_policy, wave, [seed + i for i in wave], record_video_of, video_camera, max_steps
        )
    return results


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sensible at 0 and n, unlike the normal approximation)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(results: Sequence[EpisodeResult]) -> dict[str, float]:
    n = len(results)
    successes = sum(r.success for r in results)
    low, high = wilson_interval(successes, n)
    return {
        "success_rate": successes / n if n else 0.0,
        "success_ci_low": low,
        "success_ci_high": high,
        "return": float(np.mean([r.episode_return for r in results])) if n else 0.0,
        "max_reward": float(np.mean([r.max_reward for r in results])) if n else 0.0,
        "episode_length": float(np.mean([r.length for r in results])) if n else 0.0,
        "episodes": float(n),
    }
