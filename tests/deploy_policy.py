"""A tiny state-only policy to deploy in tests: no cameras, no training, small deterministic moves.

Tests that exercise the deploy script itself (signals, logging) load it with
``--policy-class tests.deploy_policy:NudgePolicy`` so they do not depend on any method's model.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from lit_imit.modules.base import PolicyModule


class NudgePolicy(PolicyModule):
    """Asks every joint to move ``step_rad`` past the measured pose; the gripper stays open."""

    def __init__(self, step_rad: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cameras: list[str] = []
        self.register_buffer("step", torch.tensor(float(step_rad)))

    def select_action(self, obs: Mapping[str, Any]) -> Tensor:
        action = torch.as_tensor(obs["qpos"], dtype=torch.float32) + self.step
        action[:, 6] = 1.0
        return action


def save_nudge_checkpoint(path: Any, step_rad: float = 0.01) -> None:
    """What a Lightning checkpoint holds for inference: the state dict and plain hyper-parameters."""
    module = NudgePolicy(step_rad)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
