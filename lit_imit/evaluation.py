"""Batched, seeded rollouts of a policy in a set of envs (no Lightning).

The policy sees a batch of observations with a fixed number of rows, one per env, for the whole wave of
episodes: per-env buffers inside the policy (action queues, temporal ensembling, observation history) stay
aligned with their env. Envs that finished early keep feeding their last observation; their actions are
discarded.

The envs are reached through the small ``EnvBatch`` protocol (reset/step/render by row). A plain list of envs
is stepped here, one after the other (``InProcessEnvs``); ``lit_imit.envs.vector.ProcessEnvPool`` hosts them in
worker processes and steps the rows of a wave on all cores at once. Row r is the same env for the whole
evaluation either way, so for the same seeds and a deterministic policy both give the same episodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from lit_imit.video import caption, captioned


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


StepResult = tuple[Any, float, bool, bool, dict[str, Any]]  # gymnasium's (obs, reward, terminated, truncated, info)


@runtime_checkable
class EnvBatch(Protocol):
    """A fixed set of envs addressed by row (``len`` of them): what a rollout wave steps.

    ``reset``/``step`` take the rows to act on (a wave steps only its unfinished rows) and return one
    gymnasium result per row, in the order of ``rows``; ``render(row)`` is ``env.render()`` of that one env.
    """

    def __len__(self) -> int: ...

    def reset(self, rows: Sequence[int], seeds: Sequence[int | None]) -> list[tuple[Any, dict[str, Any]]]: ...

    def step(self, rows: Sequence[int], actions: Sequence[Any]) -> list[StepResult]: ...

    def render(self, row: int) -> np.ndarray | None: ...


class InProcessEnvs:
    """The serial ``EnvBatch``: envs living in this process, stepped one after the other."""

    def __init__(self, envs: Sequence[Any]) -> None:
        self.envs = list(envs)

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self, rows: Sequence[int], seeds: Sequence[int | None]) -> list[tuple[Any, dict[str, Any]]]:
        return [self.envs[row].reset(seed=None if seed is None else int(seed)) for row, seed in zip(rows, seeds)]

    def step(self, rows: Sequence[int], actions: Sequence[Any]) -> list[StepResult]:
        return [self.envs[row].step(action) for row, action in zip(rows, actions)]

    def render(self, row: int) -> np.ndarray | None:
        return self.envs[row].render()


def as_env_batch(envs: Sequence[Any] | EnvBatch) -> EnvBatch:
    """An ``EnvBatch`` as is; a sequence of envs wrapped to be stepped in this process."""
    return envs if isinstance(envs, EnvBatch) else InProcessEnvs(envs)


def _video_frame(envs: EnvBatch, row: int, obs: Mapping[str, Any], camera: str | None) -> np.ndarray | None:
    """The filmed camera from the observation when the policy sees it, else the env's own render (one env,
    in its worker when the envs live in processes)."""
    if camera is not None and f"images/{camera}" in obs:
        return np.asarray(obs[f"images/{camera}"])
    frame = envs.render(row)
    return None if frame is None else np.asarray(frame)


def _film(frames: list[np.ndarray], envs: EnvBatch, row: int, obs: Mapping[str, Any], camera: str | None,
          text: str) -> None:
    """Add the filmed env's current view, watchable and captioned, to ``frames`` (nothing when it has none)."""
    frame = _video_frame(envs, row, obs, camera)
    if frame is not None:
        frames.append(captioned(frame, text))


def run_wave(
    envs: Sequence[Any] | EnvBatch,
    policy: Callable[[dict[str, np.ndarray]], np.ndarray],
    reset_policy: Callable[[], None],
    indices: Sequence[int],
    seeds: Sequence[int],
    record_video_of: int | None = None,
    video_camera: str | None = None,
    max_steps: int | None = None,
) -> list[EpisodeResult]:
    """Run len(indices) <= len(envs) episodes in lock-step on rows 0..len(indices)-1; one result per episode."""
    envs = as_env_batch(envs)
    n = len(indices)
    if n > len(envs):
        raise ValueError(f"a wave of {n} episodes needs as many envs, got {len(envs)}")
    rows = list(range(n))
    reset_policy()
    observations = [obs for obs, _ in envs.reset(rows, [int(seed) for seed in seeds])]
    done = [False] * n
    returns = [0.0] * n
    max_rewards = [-math.inf] * n
    lengths = [0] * n
    success = [False] * n
    frames: list[np.ndarray] = []
    video_row = list(indices).index(record_video_of) if record_video_of in indices else None
    last_reward: float | None = None  # the filmed episode's latest reward, written on its next frame
    step = 0
    while not all(done) and (max_steps is None or step < max_steps):
        if video_row is not None and not done[video_row]:
            _film(frames, envs, video_row, observations[video_row], video_camera,
                  caption(step, last_reward, returns[video_row], success[video_row]))
        actions = np.asarray(policy(stack_obs(observations)))
        active = [row for row in rows if not done[row]]
        stepped = envs.step(active, [actions[row] for row in active])
        for row, (obs, reward, terminated, truncated, info) in zip(active, stepped):
            observations[row] = obs
            returns[row] += float(reward)
            max_rewards[row] = max(max_rewards[row], float(reward))
            lengths[row] += 1
            success[row] = success[row] or bool(info.get("is_success", False))
            done[row] = bool(terminated or truncated)
            if row == video_row:
                last_reward = float(reward)
        step += 1
        if video_row is not None and video_row in active and done[video_row]:  # the outcome, on the last frame
            _film(frames, envs, video_row, observations[video_row], video_camera,
                  caption(step, last_reward, returns[video_row], success[video_row]))
    return [
        EpisodeResult(
            index=int(indices[row]), seed=int(seeds[row]), success=success[row], episode_return=returns[row],
            max_reward=max_rewards[row], length=lengths[row], frames=frames if row == video_row else [],
        )
        for row in range(n)
    ]


def evaluate(
    envs: Sequence[Any] | EnvBatch,
    policy: Callable[[dict[str, np.ndarray]], np.ndarray],
    reset_policy: Callable[[], None],
    indices: Sequence[int],
    seed: int,
    record_video_of: int | None = None,
    video_camera: str | None = None,
    max_steps: int | None = None,
) -> list[EpisodeResult]:
    """Episodes ``indices`` (seed = seed + index), in waves of len(envs).

    ``envs``: a list of envs (stepped in this process) or an ``EnvBatch`` such as a ``ProcessEnvPool``.
    """
    envs = as_env_batch(envs)
    results: list[EpisodeResult] = []
    for start in range(0, len(indices), len(envs)):
        wave = list(indices[start : start + len(envs)])
        results += run_wave(
            envs, policy, reset_policy, wave, [seed + i for i in wave], record_video_of, video_camera, max_steps
        )
    return results


def policy_env_kwargs(module: Any, env_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Env arguments for rolling out ``module``: the given ones, plus what the policy reads unless given —
    its ``cameras`` (``[]`` for a state policy: nothing rendered that nobody reads) and ``env_state: true``
    when ``env_state`` is one of its ``state_keys``. So a config says the observation once, in the model."""
    kwargs = dict(env_kwargs or {})
    cameras = getattr(module, "cameras", None)
    if cameras is not None:
        kwargs.setdefault("cameras", list(cameras))
    if "env_state" in (getattr(module, "state_keys", None) or ()):
        kwargs.setdefault("env_state", True)
    return kwargs


def evaluate_module(module: Any, envs: Sequence[Any] | EnvBatch, indices: Sequence[int], seed: int,
                    **options: Any) -> list[EpisodeResult]:
    """:func:`evaluate` a policy module (``select_action`` / ``reset``, e.g. a ``PolicyModule``): in eval mode,
    without autograd, actions as numpy; the module's train/eval mode is restored afterwards.

    The one policy wrapper of the rollout callback and the held-out test, so both measure the same thing.
    """
    import torch

    def policy(obs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return module.select_action(obs).float().cpu().numpy()

    was_training = module.training
    module.eval()
    try:
        return evaluate(envs, policy, module.reset, indices, seed, **options)
    finally:
        module.train(was_training)


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
