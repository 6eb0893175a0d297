"""Recording episodes from a policy acting in an env (scripted teachers, novices, replays).

Every observation key of the env is stored under ``observations/<key>`` and the action under ``action``
(or ``action/<name>`` when the env takes a dict of actions, as pick-and-place does). Episodes are written
whole and atomically, so an interrupted recording keeps every finished episode and no partial one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from lit_imit.data.episodes import EpisodeStore
from lit_imit.envs import make_env, make_teacher, task_spec


@dataclass
class RecordingReport:
    """What a recording run produced: ids written, attempts, and the policy's success rate."""

    ids: list[int] = field(default_factory=list)
    attempts: int = 0
    successes: int = 0

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 0.0


class EpisodeBuffer:
    """Accumulates one episode's observations and actions step by step."""

    def __init__(self) -> None:
        self.columns: dict[str, list[np.ndarray]] = {}

    def add(self, obs: Mapping[str, Any], action: Any) -> None:
        for key, value in obs.items():
            self.columns.setdefault(f"observations/{key}", []).append(np.asarray(value))
        if isinstance(action, Mapping):
            for key, value in action.items():
                self.columns.setdefault(f"action/{key}", []).append(np.asarray(value, dtype=np.float32))
        else:
            self.columns.setdefault("action", []).append(np.asarray(action, dtype=np.float32))

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for key, values in self.columns.items():
            arr = np.stack(values)
            out[key] = arr.astype(np.float32) if arr.dtype == np.float64 else arr
        return out


def run_episode(
    env: Any, policy: Callable[[Mapping[str, Any]], Any], seed: int, reset_policy: Callable[[], None] | None = None,
    perturb: Callable[[Any], Any] | None = None,
) -> tuple[EpisodeBuffer, dict[str, Any]]:
    """Roll one episode out; returns the recorded (obs_t, action_t) pairs and the final info.

    ``perturb`` (DART): the env executes ``perturb(action)`` while the buffer records the policy's own action,
    so the demos visit states off the policy's path and label them with what the policy does there.
    """
    obs, info = env.reset(seed=seed)
    if reset_policy is not None:
        reset_policy()
    buffer = EpisodeBuffer()
    total_reward = 0.0
    while True:
        action = policy(obs)
        buffer.add(obs, action)
        obs, reward, terminated, truncated, info = env.step(action if perturb is None else perturb(action))
        total_reward += float(reward)
        if terminated or truncated:
            break
    info = dict(info)
    info["return"] = total_reward
    return buffer, info


def record_teacher_episodes(
    task: str,
    episodes: int,
    store: EpisodeStore,
    cameras: list[str] | None = None,
    image_size: tuple[int, int] | None = None,
    seed: int = 0,
    keep_failures: bool = False,
    max_attempts: int | None = None,
    progress: bool = False,
    env_kwargs: Mapping[str, Any] | None = None,
    workers: int = 1,
    action_noise: float = 0.0,
) -> RecordingReport:
    """Record ``episodes`` teacher episodes of ``task`` into ``store`` (only successful ones by default).

    Seeds continue after the largest one in ``store`` (``seed`` starts an empty store); several recorders
    may write into one store at once, each episode gets its own id and seed (``EpisodeStore.reserve_seed``).
    ``env_kwargs`` go to the env as they are (e.g. ``env_state=True`` to record the object poses,
    ``fast_render=False``); ``cameras`` and ``image_size`` override entries of the same name.

    ``workers`` > 1 simulates that many episodes at once in spawned worker processes (each builds its own env
    and teacher); this process reserves their seeds in order and writes the finished episodes in seed order,
    so a store recorded with workers holds the same seeds under the same ids as one recorded without (as long
    as no other recorder shares the store). An interrupted run keeps every episode already written.

    ``action_noise`` > 0 records DART demos (Laskey et al., CoRL 2017): the env executes the teacher's action
    plus Gaussian noise of that standard deviation (action units: radians for joints), drawn from the episode's
    seed, and the file keeps the teacher's clean action for each state it reached. The teachers are closed
    loop, so every label is the correction from where the noise pushed the arm; the episode's attrs say the
    noise, and success is judged on the noisy execution. Noise is drawn afresh every step, so keep it small:
    the transfer-cube teacher kept 7 of 8 episodes at 0.01 and lost the hand-over in all 8 at 0.02 (the jitter
    shakes the cube loose).
    """

    spec = task_spec(task)
    env_kwargs = dict(env_kwargs or {})
    if cameras is not None:
        env_kwargs["cameras"] = list(cameras)
    if image_size is not None:
        env_kwargs["image_size"] = tuple(image_size)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not action_noise >= 0:
        raise ValueError(f"action_noise must be >= 0, got {action_noise}")
    report = RecordingReport()
    max_attempts = max_attempts if max_attempts is not None else 3 * episodes + 10
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc=f"recording {task}", unit="ep")

    def keep(episode_seed: int, arrays: dict[str, np.ndarray], info: Mapping[str, Any]) -> None:
        report.attempts += 1
        success = bool(info.get("is_success", False))
        report.successes += int(success)
        if success or keep_failures:
            attrs = {
                "sim": spec.env_id, "task": task, "success": success, "source": "teacher", "round": 0,
                "seed": episode_seed, "return": info["return"], "max_reward": info.get("max_reward"),
                "instruction": info.get("instruction"), "action_noise": float(action_noise),
            }
            if env_kwargs.get("camera_fovy"):  # a view other than the MJCF's: rollouts must render the same
                attrs["camera_fovy"] = {cam: float(v) for cam, v in env_kwargs["camera_fovy"].items()}
            report.ids.append(store.add(arrays, attrs))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.set_postfix(success_rate=f"{report.success_rate:.2f}")

    def wanted() -> int:
        return min(episodes - len(report.ids), max_attempts - report.attempts)

    try:
        if workers == 1:
            episode_fn = _TeacherEpisodes(task, env_kwargs, action_noise)
            try:
                while wanted() > 0:
                    # from the store, under its lock: seeds continue after the largest one recorded (re-runs
                    # append new episodes) and recorders writing into the same store at once never share one
                    keep(*episode_fn(store.reserve_seed(seed)))
            finally:
                episode_fn.close()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: never fork a process that may hold an EGL context. A worker that fails to start or dies
            # breaks the executor, which raises here (a multiprocessing.Pool would respawn it for ever).
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker_episodes,
                                     initargs=(task, env_kwargs, action_noise)) as pool:
                while wanted() > 0:
                    seeds = [store.reserve_seed(seed) for _ in range(min(workers, wanted()))]
                    for result in pool.map(_worker_episode, seeds):
                        keep(*result)
    finally:
        if bar is not None:
            bar.close()
    if len(report.ids) < episodes:
        raise RuntimeError(
            f"the {task} teacher produced only {len(report.ids)} of {episodes} successful episodes in "
            f"{report.attempts} attempts (success rate {report.success_rate:.2f})"
        )
    return report


class _TeacherEpisodes:
    """One env and its teacher; called with a seed, runs one episode and returns (seed, arrays, info)."""

    def __init__(self, task: str, env_kwargs: Mapping[str, Any], action_noise: float = 0.0) -> None:
        self.env = make_env(task, **env_kwargs)
        self.teacher = make_teacher(task, self.env)
        self.action_noise = float(action_noise)

    def __call__(self, episode_seed: int) -> tuple[int, dict[str, np.ndarray], dict[str, Any]]:
        perturb = dart_noise(self.env, self.action_noise, episode_seed) if self.action_noise else None
        buffer, info = run_episode(self.env, self.teacher.act, episode_seed, self.teacher.reset, perturb)
        keys = ("is_success", "return", "max_reward", "instruction")
        return episode_seed, buffer.arrays(), {k: info.get(k) for k in keys}

    def close(self) -> None:
        self.env.close()


def dart_noise(env: Any, std: float, episode_seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """``action -> action + N(0, std^2)``, clipped to the env's action space, from a generator seeded by the
    episode's seed (its own stream: the env's placement draws stay those of a clean recording)."""
    space = env.action_space
    if not hasattr(space, "low") or not hasattr(space, "high"):
        raise ValueError(f"action_noise needs a continuous (Box) action space; this env's is {space}")
    rng = np.random.default_rng([int(episode_seed), 0xDA27])

    def perturb(action: np.ndarray) -> np.ndarray:
        noisy = np.asarray(action, dtype=np.float64) + rng.normal(0.0, std, size=np.shape(action))
        return np.clip(noisy, space.low, space.high).astype(np.float32)

    return perturb


_worker_episodes: _TeacherEpisodes | None = None  # the env and teacher of a recording worker process


def _init_worker_episodes(task: str, env_kwargs: Mapping[str, Any], action_noise: float = 0.0) -> None:
    global _worker_episodes
    _worker_episodes = _TeacherEpisodes(task, env_kwargs, action_noise)


def _worker_episode(episode_seed: int) -> tuple[int, dict[str, np.ndarray], dict[str, Any]]:
    assert _worker_episodes is not None, "recording worker used before its initializer ran"
    return _worker_episodes(episode_seed)
