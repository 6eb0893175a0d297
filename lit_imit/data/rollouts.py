"""EnvDataModule: the environments an RL learner collects its experience from (no stored episodes).

Reinforcement learning trains on what the current policy does, so its "data" is a set of envs: each rank
hosts ``num_envs`` of them (``lit_imit.envs.vector.open_envs``: in-process, or in worker processes with
``num_workers``), built in ``setup`` (DDP relaunches the CLI per rank; nothing is built in ``__init__``) and
closed in ``teardown``. The module steps them itself, in its ``training_step``
(``lit_imit.modules.residual_ppo``): a rollout made by the data loader would be collected before the
previous update (Lightning fetches a batch ahead), i.e. off-policy.

The train loader therefore only paces training: ``iterations_per_epoch`` tickets per epoch, one PPO
iteration (rollout + update) each, or one decision of every env and its updates for off-policy SAC
(``lit_imit.modules.skill_sac``), so an epoch's end (rollout evaluation, ``last.ckpt``) falls between
iterations. The test loader holds one empty batch, so that ``test`` runs its epoch hooks (the rollouts).
Envs take the observation the policy reads (``cameras`` / ``env_state``, from the model through
``lit_imit.evaluation.policy_env_kwargs``) unless ``env_kwargs`` says otherwise.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lit_imit.envs import task_spec
from lit_imit.envs.vector import close_envs, open_envs, worker_count
from lit_imit.evaluation import policy_env_kwargs
from lit_imit.rl.rollout import REWARDS


class EnvDataModule(pl.LightningDataModule):
    """Per-rank training envs of one task for on-policy RL.

    Args:
        task: task name or gymnasium id (``lit_imit.envs.TASKS``).
        num_envs: envs per rank, stepped in lock-step (Ankile et al. use 1024 GPU-simulated envs; size it for
            the machine's cores).
        num_workers: processes hosting them: 0 = in the training process, N > 0, or ``"auto"`` (the CPUs this
            process may use, shared among the ranks of the node).
        env_kwargs: extra env arguments (``image_size``, ``fast_render``...); ``cameras`` and ``env_state``
            default to what the policy reads.
        reward: ``"sparse"`` (1 at success: Ankile et al.), ``"staged"`` (the increase of the task's best
            stage, ALOHA's 0-4) or ``"env"`` (the env's own reward: SPiRL's kitchen); see ``lit_imit.rl.rollout``.
        iterations_per_epoch: training steps per epoch (PPO: a rollout and its update; SAC: a decision of every
            env and its gradient updates).
    """

    def __init__(self, task: str, num_envs: int = 8, num_workers: int | str = 0,
                 env_kwargs: dict[str, Any] | None = None, reward: str = "sparse",
                 iterations_per_epoch: int = 10) -> None:
        super().__init__()
        task_spec(task)  # an unknown task fails at config time, naming the known ones
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        if num_envs < 1 or iterations_per_epoch < 1:
            raise ValueError(f"num_envs and iterations_per_epoch must be >= 1, got {num_envs}, {iterations_per_epoch}")
        worker_count(num_workers, num_envs)  # a bad value fails at config time
        self.task = task
        self.num_envs = num_envs
        self.num_workers = num_workers
        self.env_kwargs = dict(env_kwargs or {})
        self.reward = reward
        self.iterations_per_epoch = iterations_per_epoch
        self._envs: Any = None

    @property
    def envs(self) -> Any:
        """This rank's envs (an ``EnvBatch``), built in ``setup("fit")``."""
        if self._envs is None:
            raise RuntimeError("EnvDataModule has no envs outside fit: they are built in setup('fit')")
        return self._envs

    def setup(self, stage: str) -> None:
        if stage != "fit" or self._envs is not None:
            return
        trainer = self.trainer
        model = trainer.lightning_module if trainer is not None else None
        kwargs = policy_env_kwargs(model, self.env_kwargs) if model is not None else dict(self.env_kwargs)
        local_world = max(1, trainer.world_size // max(1, trainer.num_nodes)) if trainer is not None else 1
        self._envs = open_envs(self.task, self.num_envs, worker_count(self.num_workers, self.num_envs, local_world),
                               kwargs)

    def teardown(self, stage: str) -> None:
        close_envs(self._envs)
        self._envs = None

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.arange(self.iterations_per_epoch), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        """One empty batch: Lightning runs no test epoch (hence no ``RolloutEvaluation``) without a batch, and
        ``PolicyModule.test_step`` scores nothing for it."""
        return DataLoader([{}], batch_size=None)
