"""A trivial task for the SAC tests, and a hand-made skill prior whose skills are constant actions.

``PointReachEnv``: a point x in R^2 starts uniformly in [-1, 1]^2 and moves by 0.2 x the action (in [-1, 1]^2);
the reward is -|x| after each step, the episode is cut after 21 steps (a time limit: truncated) and succeeds
once |x| < 0.1 (which terminates it with ``terminate=True``). A random policy returns about -17, heading straight
for the origin about -3.

``hand_made_prior``: a ``SkillPriorModule`` (state 2, action 2, latent 2, H = 3) whose closed-loop decoder is
the linear map a = z (the skill "push this way for 3 steps") and whose prior is N(0, I) everywhere, with
identity state statistics: SPiRL in this skill space must learn z ~ -x.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from lit_imit.envs.registry import register_task

TOY_TASK = "toy_point_reach"
HORIZON = 3


class PointReachEnv(gym.Env):
    """See the module docstring; observation ``{"state": x}``, info ``is_success``."""

    def __init__(self, terminate: bool = False, render_mode: str | None = None) -> None:
        self.terminate = terminate
        self.observation_space = spaces.Dict({"state": spaces.Box(-np.inf, np.inf, (2,), np.float32)})
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.x = np.zeros(2)
        self.reached = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1.0, 1.0, size=2)
        self.reached = False
        return {"state": self.x.astype(np.float32)}, {}

    def step(self, action):
        self.x = self.x + 0.2 * np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        distance = float(np.linalg.norm(self.x))
        self.reached = self.reached or distance < 0.1
        terminated = self.terminate and self.reached
        return {"state": self.x.astype(np.float32)}, -distance, terminated, False, {"is_success": self.reached}


register_task(TOY_TASK, env_id="lit_imit/ToyPointReach-v0", entry_point="tests.sac_toy:PointReachEnv",
              teacher="tests.sac_toy:PointReachEnv", max_episode_steps=21)


def hand_made_prior(path: Path) -> Path:
    """The checkpoint of the skill prior described in the module docstring."""
    from lit_imit.modules.skill_prior import SkillPriorModule
    from tests.test_policies import trainer_checkpoint

    module = SkillPriorModule(state_dim=2, action_dim=2, horizon=HORIZON, latent_dim=2, hidden_dim=8, n_layers=0,
                              encoder_hidden=8, prior_hidden=8, prior_layers=0)
    module.load_stats({"state": {"mean": np.zeros(2), "std": np.ones(2), "min": -np.ones(2), "max": np.ones(2)}})
    with torch.no_grad():
        decoder = module.decoder.net[0]  # [state || z] -> action
        decoder.weight.copy_(torch.cat([torch.zeros(2, 2), torch.eye(2)], dim=1))
        decoder.bias.zero_()
        module.prior.net[0].weight.zero_()  # mean 0, log_std 0
        module.prior.net[0].bias.zero_()
    trainer_checkpoint(module, path)
    return path
