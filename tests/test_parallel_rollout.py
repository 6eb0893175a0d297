"""Evaluation rollouts with the envs in worker processes (``lit_imit.envs.vector.ProcessEnvPool``) give the same
episodes as in-process ones, return the video frames, and turn a failing or dying worker into an error."""

from __future__ import annotations

import os
import time
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lit_imit.envs import make_env, make_teacher
from lit_imit.envs.vector import EnvWorkerError, ProcessEnvPool
from lit_imit.evaluation import evaluate
from tests.parallel_rollout_envs import BrokenEnv, counting_env

TASK = "transfer_cube"
STATE_ONLY = {"cameras": [], "image_size": (24, 32)}  # image_size: what env.render() films


# ---- deterministic numpy policies (the scripted teacher reads env.unwrapped: it cannot cross processes) ---
class Recorder:
    """A deterministic policy that also keeps every observation batch it saw (compared across runs)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, np.ndarray]] = []

    def reset(self) -> None:
        pass

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self.seen.append({key: value.copy() for key, value in obs.items()})
        return self.act(obs)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return obs["qpos"] + 0.2 * np.sin(3.0 * obs["qvel"]) + 0.05


class Replay(Recorder):
    """Replays the teacher's recorded actions of each row's episode, wave after wave."""

    def __init__(self, actions: dict[int, np.ndarray], waves: list[list[int]]) -> None:
        super().__init__()
        self.actions, self.waves, self.wave, self.t = actions, waves, -1, 0

    def reset(self) -> None:
        self.wave, self.t = self.wave + 1, 0

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        seeds = self.waves[self.wave]
        assert len(obs["qpos"]) == len(seeds)  # the policy still sees one row per env of the wave
        rows = [self.actions[s][min(self.t, len(self.actions[s]) - 1)] for s in seeds]
        self.t += 1
        return np.stack(rows)


def teacher_actions(seed: int, steps: int) -> np.ndarray:
    env = make_env(TASK, cameras=[])
    obs, _ = env.reset(seed=seed)
    teacher = make_teacher(TASK, env)
    teacher.reset()
    actions = []
    for _ in range(steps):
        actions.append(teacher.act(obs))
        obs, *_ = env.step(actions[-1])
    env.close()
    return np.stack(actions).astype(np.float32)


def episodes(results) -> list[tuple]:
    return [(r.index, r.seed, r.success, r.episode_return, r.max_reward, r.length) for r in results]


def assert_same_observations(a: Recorder, b: Recorder) -> None:
    assert len(a.seen) == len(b.seen)
    for x, y in zip(a.seen, b.seen):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def run_both(env_fns, num_workers: int, make_policy, **evaluate_kwargs):
    """The same evaluation in-process and in a pool; (serial results, parallel results, policies)."""
    serial_envs = [fn() for fn in env_fns]
    serial_policy = make_policy()
    serial = evaluate(serial_envs, serial_policy, serial_policy.reset, **evaluate_kwargs)
    for env in serial_envs:
        env.close()
    parallel_policy = make_policy()
    with ProcessEnvPool(env_fns, num_workers) as pool:
        parallel = evaluate(pool, parallel_policy, parallel_policy.reset, **evaluate_kwargs)
    return serial, parallel, serial_policy, parallel_policy


# ---- same episodes ------------------------------------------------------------------------------------
def test_parallel_matches_serial_on_full_teacher_episodes():
    """Three full transfer-cube episodes (two waves over 2 envs in 2 workers) replaying the teacher's actions:
    identical success, return, max reward and length, and identical observations fed to the policy."""
    seed, indices = 500, [0, 1, 2]
    actions = {seed + i: teacher_actions(seed + i, 400) for i in indices}
    waves = [[seed + 0, seed + 1], [seed + 2]]
    env_fns = [partial(make_env, TASK, **STATE_ONLY)] * 2
    serial, parallel, a, b = run_both(env_fns, 2, lambda: Replay(actions, waves), indices=indices, seed=seed)
    assert episodes(parallel) == episodes(serial)
    assert [r.length for r in serial] == [400, 400, 400]
    assert all(r.success and r.max_reward == 4 for r in serial), episodes(serial)  # a real signal compared
    assert_same_observations(a, b)


def test_rows_that_finish_early_are_frozen_and_workers_host_several_envs():
    """Rows with different time limits (12, 30, 20 steps), three envs over two workers (worker 0 hosts rows
    0 and 2), two waves with a short last one."""
    env_fns = [partial(make_env, TASK, max_episode_steps=limit, **STATE_ONLY) for limit in (12, 30, 20)]
    serial, parallel, a, b = run_both(env_fns, 2, Recorder, indices=[0, 1, 2, 3, 4], seed=7)
    assert episodes(parallel) == episodes(serial)
    assert [r.length for r in parallel] == [12, 30, 20, 12, 30]
    assert_same_observations(a, b)


# ---- video --------------------------------------------------------------------------------------------
def test_state_only_video_is_rendered_in_the_worker_by_row_zero_only():
    env_fns = [partial(counting_env, **STATE_ONLY)] * 2
    kwargs = dict(indices=[0, 1, 2], seed=3, record_video_of=0, max_steps=8)
    serial_envs = [fn() for fn in env_fns]
    serial = evaluate(serial_envs, Recorder(), lambda: None, **kwargs)
    with ProcessEnvPool(env_fns, 2) as pool:
        parallel = evaluate(pool, Recorder(), lambda: None, **kwargs)
        assert [pool.call(row, "renders") for row in (0, 1)] == [8, 0]  # only the filmed episode's env renders
    assert episodes(parallel) == episodes(serial)
    frames = parallel[0].frames
    assert len(frames) == 8 and frames[0].shape == (240, 320, 3) and frames[0].dtype == np.uint8  # scaled up x10
    assert all(not r.frames for r in parallel[1:])
    for x, y in zip(frames, serial[0].frames):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(frames[0], frames[-1])  # the arms moved: frames of successive states


def test_one_camera_frames_come_back_from_the_workers():
    env_fns = [partial(make_env, TASK, cameras=["top"], image_size=(24, 32))] * 2
    serial, parallel, a, b = run_both(env_fns, 2, Recorder, indices=[0, 1], seed=11, record_video_of=0,
                                      video_camera="top", max_steps=6)
    assert episodes(parallel) == episodes(serial)
    assert_same_observations(a, b)  # the images/top rows included
    assert b.seen[0]["images/top"].shape == (2, 24, 32, 3)
    assert len(parallel[0].frames) == 6
    for x, y in zip(parallel[0].frames, serial[0].frames):
        np.testing.assert_array_equal(x, y)


# ---- failures -----------------------------------------------------------------------------------------
def zeros(obs):
    return np.zeros_like(obs["qpos"])


@pytest.mark.parametrize("failure, message", [("raise", "ZeroDivisionError: simulated physics failure"),
                                              ("die", "died (exit code -9")])
def test_a_failing_or_dying_worker_is_a_clear_error_not_a_hang(failure, message):
    pool = ProcessEnvPool([partial(BrokenEnv, "raise", 10**6), partial(BrokenEnv, failure)], 2)
    start = time.monotonic()
    with pytest.raises(EnvWorkerError, match="(?s)env worker 1 .*" + message.replace("(", r"\(")):
        evaluate(pool, zeros, lambda: None, indices=[0, 1], seed=0, max_steps=10)
    assert time.monotonic() - start < 30
    assert not any(p.is_alive() for p in pool._processes)  # the whole pool was stopped
    with pytest.raises(EnvWorkerError, match="closed"):
        pool.step([0], [np.zeros(2)])


def test_an_env_that_cannot_be_built_fails_the_pool_start():
    with pytest.raises(EnvWorkerError, match="this env cannot be built"):
        ProcessEnvPool([BrokenEnv, partial(BrokenEnv, "construct")], 2)


def test_close_stops_the_workers_and_refuses_fork():
    pool = ProcessEnvPool.for_task(TASK, 2, 2, env_kwargs=STATE_ONLY)
    processes = list(pool._processes)
    assert all(p.is_alive() for p in processes)
    pool.close()
    pool.close()  # idempotent
    assert not any(p.is_alive() for p in processes)
    with pytest.raises(ValueError, match="fork"):
        ProcessEnvPool([BrokenEnv], 1, start_method="fork")


# ---- the callback -------------------------------------------------------------------------------------
class TinyPolicyModule(torch.nn.Module):
    """Just what RolloutEvaluation.run needs of a LightningModule."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: dict[str, float] = {}

    def reset(self) -> None:
        pass

    def select_action(self, obs: dict[str, np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(Recorder().act(obs))

    def log(self, name: str, value: float, **kwargs) -> None:
        self.logged[name] = value


def test_rollout_callback_with_workers_logs_the_same_numbers():
    from callbacks.rollout import RolloutEvaluation

    trainer = SimpleNamespace(global_rank=0, world_size=1, num_nodes=1, callbacks=[], is_global_zero=False)
    logged = {}
    for workers in (0, 2):
        callback = RolloutEvaluation(TASK, n_episodes=3, n_envs=2, num_workers=workers, max_steps=15,
                                     env_kwargs={"cameras": []}, video=False)
        module = TinyPolicyModule()
        callback.run(trainer, module, tag="test")
        assert isinstance(callback._envs, ProcessEnvPool) == (workers > 0)
        callback.teardown(trainer, module, "test")
        assert callback._envs is None
        logged[workers] = module.logged
    assert logged[0] == logged[2] and logged[0]["rollout/episode_length"] == 15


def test_rollout_callback_worker_count():
    from callbacks.rollout import RolloutEvaluation

    assert RolloutEvaluation(TASK, n_envs=4).worker_count() == 0
    assert RolloutEvaluation(TASK, n_envs=4, num_workers=8).worker_count() == 4  # at most one per env
    auto = RolloutEvaluation(TASK, n_envs=64, num_workers="auto")
    assert auto.worker_count() == min(64, len(os.sched_getaffinity(0)))
    assert auto.worker_count(local_world_size=2) == max(1, len(os.sched_getaffinity(0)) // 2)
    assert RolloutEvaluation(TASK, n_envs=64, num_workers=-1).worker_count() == auto.worker_count()
    with pytest.raises(ValueError, match="num_workers"):
        RolloutEvaluation(TASK, num_workers=-2)


@pytest.mark.slow
def test_fit_with_rollout_workers_logs_a_video_and_stops_its_workers(tmp_path):
    """``fit`` through the CLI with two env workers and a camera: metrics, the mp4 of the first episode, and
    no worker process left once the run is over (teardown closed the pool)."""
    import multiprocessing

    from lit_imit.cli import main
    from tests.test_cli import _tags, config, synthetic_store

    rollout = {"class_path": "callbacks.rollout.RolloutEvaluation",
               "init_args": {"task": TASK, "n_episodes": 3, "n_envs": 2, "num_workers": 2, "every_n_epochs": 1,
                             "max_steps": 10, "env_kwargs": {"cameras": ["top"], "image_size": [48, 64]}}}
    cfg = config(tmp_path, {"data_dir": synthetic_store(tmp_path / "data")}, callbacks=[rollout], max_epochs=1)
    main({"fit": cfg})
    log_dir = tmp_path / "logs" / "version_0"
    assert {"rollout/success_rate", "rollout/episode_length"} <= _tags(log_dir)
    assert (log_dir / "videos" / "epoch_0000.mp4").stat().st_size > 0
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("env-worker")]
