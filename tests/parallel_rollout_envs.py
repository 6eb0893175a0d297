"""Envs for the worker-pool tests, importable without torch: a spawned worker imports the module of every
factory it is given, and this one keeps that import (hence the test) quick."""

from __future__ import annotations

import os
import signal

import gymnasium as gym
import numpy as np

from lit_imit.envs import make_env

TASK = "transfer_cube"


class CountRenders(gym.Wrapper):
    """Counts ``render`` calls (read back with ``ProcessEnvPool.call(row, "renders")``)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.renders = 0

    def render(self):
        self.renders += 1
        return self.env.render()


def counting_env(**kwargs) -> gym.Env:
    return CountRenders(make_env(TASK, **kwargs))


class BrokenEnv(gym.Env):
    """A trivial env whose step fails in the way it is told to."""

    observation_space = gym.spaces.Dict({"qpos": gym.spaces.Box(-1, 1, (2,), np.float32),
                                         "qvel": gym.spaces.Box(-1, 1, (2,), np.float32)})
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def __init__(self, failure: str = "raise", after: int = 2) -> None:
        if failure == "construct":
            raise RuntimeError("this env cannot be built")
        self.failure, self.after, self.t = failure, after, 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return {"qpos": np.zeros(2, np.float32), "qvel": np.zeros(2, np.float32)}, {}

    def step(self, action):
        self.t += 1
        if self.t > self.after:
            if self.failure == "raise":
                raise ZeroDivisionError("simulated physics failure")
            os.kill(os.getpid(), signal.SIGKILL)  # a segfault or the OOM killer
        return {"qpos": np.zeros(2, np.float32), "qvel": np.zeros(2, np.float32)}, 0.0, False, False, {}
