"""The episodes of one interactive round: in this process, or in env worker processes at once.

An interactive episode (``lit_imit.interactive.run_interactive_episode``) depends only on its job: the
novice's weights, the episode's index and seed, the model version, and the gate it decides with — a fork
of the shared gate taken at the start of the round (``SAG.fork``), extended by the episode's own decisions.
So the episodes of a round are independent: they can run one after the other in the training process, or
side by side in the worker processes of a ``ProcessEnvPool`` (each worker hosts an env, builds its teacher
and rebuilds the novice from a :func:`~lit_imit.policies.policy_snapshot` once per round), and give the same
outcomes. The callback (``callbacks.interactive.InteractiveAggregation``) gathers the outcomes; this module
knows nothing of Lightning.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from lit_imit.envs import make_env, make_teacher
from lit_imit.envs.vector import EnvWorkerError, ProcessEnvPool
from lit_imit.interactive import SAG, EpisodeOutcome, InteractiveConfig, PolicyNovice, SegmentJudge, run_interactive_episode
from lit_imit.policies import policy_from_snapshot, policy_snapshot

__all__ = ["RoundSetting", "EpisodeJob", "run_episode", "RoundRunner"]

#: an episode may take minutes (a teacher solving IK at every visited state, images); a dead worker is still
#: noticed at once
EPISODE_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class RoundSetting:
    """What every episode of a round shares (picklable: it travels to the workers)."""

    task: str
    judge: SegmentJudge
    config: InteractiveConfig
    relabel: Callable[[Any], str | None] | None
    seed: int  # episode i: env seed ``seed + i``, torch seed ``seed + i``, DAgger draws from (seed, i)


@dataclass(frozen=True)
class EpisodeJob:
    """One episode: its index over the whole run, the model version, and its own fork of the gate."""

    index: int
    version: int
    gate: SAG | None


@contextmanager
def isolated_torch_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for one episode without touching the training streams (ACT samples latents for its
    uncertainty): the episode is reproducible wherever it runs and training draws stay in step."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def run_episode(env: Any, teacher: Any, novice: Any, job: EpisodeJob, setting: RoundSetting) -> EpisodeOutcome:
    """One interactive episode of ``novice`` (a policy module in eval mode) on ``env``."""
    seed = setting.seed + job.index
    with isolated_torch_rng(seed, novice.device):
        return run_interactive_episode(
            env.unwrapped, PolicyNovice(novice), teacher, job.gate, setting.judge, setting.config, index=job.index,
            seed=seed, version=job.version, relabel=setting.relabel, rng=np.random.default_rng([setting.seed, job.index]),
        )


# ---- worker side: state of one worker process across rounds ---------------------------------------------
_worker: dict[str, Any] = {}


def _worker_load_novice(env: Any, snapshot: dict[str, Any]) -> None:
    """Rebuild this round's novice in the worker (one torch thread: the workers share the cores)."""
    torch.set_num_threads(1)
    _worker["novice"] = policy_from_snapshot(snapshot)


def _worker_episode(env: Any, payload: tuple[EpisodeJob, RoundSetting]) -> EpisodeOutcome:
    job, setting = payload
    teachers = _worker.setdefault("teachers", {})
    if id(env) not in teachers:
        teachers[id(env)] = make_teacher(setting.task, env)
    novice = _worker["novice"]
    try:
        return run_episode(env, teachers[id(env)], novice, job, setting)
    finally:
        novice.reset()


# ---- parent side ---------------------------------------------------------------------------------------
class RoundRunner:
    """Runs a round's episodes: in this process (``workers`` 0) or over ``workers`` env worker processes.

    The env (or the pool) is built on first use and kept for the next rounds; ``close`` stops the workers.
    In-process episodes use ``module`` itself (on its device); workers use CPU copies of its current weights.
    """

    def __init__(self, task: str, env_kwargs: dict[str, Any], workers: int) -> None:
        self.task = task
        self.env_kwargs = dict(env_kwargs)
        self.workers = int(workers)
        self._env: Any = None
        self._teacher: Any = None
        self._pool: ProcessEnvPool | None = None

    def run(self, module: Any, jobs: Sequence[EpisodeJob], setting: RoundSetting) -> list[EpisodeOutcome]:
        """The outcomes of ``jobs``, in their order. ``module`` must be in eval mode with the weights to use."""
        if not jobs:
            return []
        if self.workers == 0:
            return self._run_here(module, jobs, setting)
        return self._run_in_workers(module, jobs, setting)

    def _run_here(self, module: Any, jobs: Sequence[EpisodeJob], setting: RoundSetting) -> list[EpisodeOutcome]:
        if self._env is None:
            self._env = make_env(self.task, **self.env_kwargs)
            self._teacher = make_teacher(self.task, self._env)
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(run_episode(self._env, self._teacher, module, job, setting))
            finally:
                module.reset()
        return outcomes

    def _run_in_workers(self, module: Any, jobs: Sequence[EpisodeJob], setting: RoundSetting) -> list[EpisodeOutcome]:
        if self._pool is None:
            self._pool = ProcessEnvPool.for_task(self.task, self.workers, self.workers, env_kwargs=self.env_kwargs,
                                                 timeout=EPISODE_TIMEOUT_S)
        rows = list(range(self._pool.num_workers))  # row r lives on worker r: one snapshot load per worker
        try:
            self._pool.apply(rows, _worker_load_novice, [policy_snapshot(module)] * len(rows))
            spread = [k % len(rows) for k in range(len(jobs))]
            return self._pool.apply(spread, _worker_episode, [(job, setting) for job in jobs])
        except EnvWorkerError:
            # the pool closed itself when a worker died or hung; nothing of this round was stored, and a round's
            # episodes depend only on their jobs, so the next call re-runs them on fresh workers
            self._pool = None
            raise

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        if self._pool is not None:
            self._pool.close()
        self._env = self._teacher = self._pool = None
