"""A toy task for residual RL tests: reach a small disk around the origin, and a deliberately biased base.

``BiasedReachEnv``: a point x in R^2 starts uniformly in [-1, 1]^2 and moves by the action (clipped to
+-0.25 per coordinate); the episode succeeds (sparse reward 1) when |x| < 0.1, and is cut after 30 steps.

``biased_base``: a linear BC policy a = -0.3 x + (0.04, 0): it converges to x* = (0.133, 0), outside the disk,
so it succeeds only when its straight path towards x* crosses the disk (about a quarter of the starts). The
residual must learn to cancel the bias (0.04 = 0.1 x a residual of 0.4).
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from lit_imit.envs.registry import register_task

TOY_TASK = "toy_biased_reach"
BIAS = (0.04, 0.0)


class BiasedReachEnv(gym.Env):
    """See the module docstring; observation ``{"qpos": x}``, info ``is_success`` / ``max_reward``."""

    def __init__(self, cameras: tuple[str, ...] = (), env_state: bool = False) -> None:
        if cameras or env_state:  # what rollouts pass for a state policy: no camera, no object state
            raise ValueError("the toy reach env has neither cameras nor an env_state")
        self.observation_space = spaces.Dict({"qpos": spaces.Box(-np.inf, np.inf, (2,), np.float32)})
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.x = np.zeros(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1.0, 1.0, size=2)
        return {"qpos": self.x.astype(np.float32)}, {}

    def step(self, action):
        self.x = self.x + np.clip(np.asarray(action, dtype=np.float64), -0.25, 0.25)
        success = bool(np.linalg.norm(self.x) < 0.1)
        info = {"is_success": success, "max_reward": float(success)}
        return {"qpos": self.x.astype(np.float32)}, float(success), False, False, info


def register_toy_task() -> None:
    register_task(TOY_TASK, env_id="lit_imit/ToyBiasedReach-v0", entry_point="tests.residual_toy:BiasedReachEnv",
                  teacher="tests.residual_toy:BiasedReachEnv", max_episode_steps=30)


def biased_base(path: Path) -> Path:
    """A BC checkpoint of the biased linear policy (no hidden layer, identity normalisation)."""
    from lit_imit.modules.bc import BCModule
    from tests.test_policies import trainer_checkpoint

    module = BCModule(state_dim=2, action_dim=2, hidden_dims=())
    module.load_stats({key: {"mean": np.zeros(2), "std": np.ones(2), "min": -np.ones(2), "max": np.ones(2)}
                       for key in ("qpos", "action")})
    with torch.no_grad():
        module.model.net[0].weight.copy_(-0.3 * torch.eye(2))
        module.model.net[0].bias.copy_(torch.tensor(BIAS))
    trainer_checkpoint(module, path)
    return path


register_toy_task()
