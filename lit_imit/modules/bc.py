"""BCModule: behaviour cloning with an MLP on low-dimensional observations, the baseline of every BC study.

Defaults follow robomimic's BC (Mandlekar et al., CoRL 2021): two hidden layers of 1024 ReLU units, an L2
loss on mean/std-normalised actions, Adam at lr 1e-4 without weight decay, one action per step.

Named departures, for policies that must be precise over long horizons from few demos:

* ``chunk_size`` > 1: predict the next k actions, executed as ACT executes them (``n_action_steps`` open loop
  per query, or temporal ensembling with ``temporal_ensemble_coeff``; ``lit_imit.modules.chunking``). On the
  ALOHA tasks single-step BC stalls where the teacher switches (stop and close the gripper at the grasp): the
  state barely changes there while the action does. A chunk carries the switch.
* ``loss: l1``: ACT's loss (and what the ALOHA state recipe uses), less pulled by the rare large errors
  at those switches.

Padded steps (past an episode's end) are zeroed and the error averaged over all k x A entries, as ACT's L1.
There is no latent and no sampling: the policy is deterministic, so it has no uncertainty to gate on.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from lit_imit.modules.base import PolicyModule, state_sizes, weighted_mean
from lit_imit.modules.chunking import ChunkExecutor
from lit_imit.nets.mlp import MLPPolicy

BC_LOSSES = ("l2", "l1")
MIN_STD = 1e-2  # std floor of the normalisation (as ACT): constant dimensions stay finite


class BCModule(PolicyModule):
    """MLP behaviour cloning (robomimic BC) with optional action chunking."""

    def __init__(
        self,
        state_keys: Sequence[str] = ("qpos",),
        state_dim: int | list[int] = 14,
        action_dim: int = 14,
        chunk_size: int = 1,
        n_action_steps: int = 1,
        temporal_ensemble_coeff: float | None = None,
        hidden_dims: Sequence[int] = (1024, 1024),
        dropout: float = 0.0,
        loss: str = "l2",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
    ) -> None:
        """
        Args:
            state_keys: low-dimensional observation keys, concatenated in this order (e.g. qpos, env_state).
            state_dim: size of each, one int per key (an int when there is one key).
            chunk_size: actions predicted per query (1 = robomimic BC).
            n_action_steps: actions executed from each chunk before the next query (<= chunk_size).
            temporal_ensemble_coeff: ACT's m; query every step and average the overlapping chunks (needs
                ``n_action_steps=1``).
            hidden_dims: widths of the hidden layers.
            loss: ``l2`` (robomimic) or ``l1`` (ACT).
        """
        super().__init__()
        state_keys = list(state_keys)
        state_dims = state_sizes(state_keys, state_dim)
        if loss not in BC_LOSSES:
            raise ValueError(f"loss must be one of {BC_LOSSES}, got {loss!r}")
        self._execution = ChunkExecutor(chunk_size, n_action_steps, temporal_ensemble_coeff)
        self.save_hyperparameters()
        self.state_keys = state_keys
        self.cameras: list[str] = []  # a state policy: rollouts render no camera for it
        self.model = MLPPolicy(sum(state_dims), action_dim, chunk_size, hidden_dims, dropout)
        self.register_policy_stats(state_keys, state_dims, action_dim)

    def data_requirements(self) -> dict[str, tuple[str, Any, str]]:
        """No cameras, the same state keys, chunks at least ``chunk_size`` long, the same action size."""
        hp = self.hparams
        return {
            "cameras": ("cameras", [], "=="),
            "state_keys": ("state_keys", list(self.state_keys), "=="),
            "chunk_size": ("chunk_size", int(hp.chunk_size), ">="),
            "action_dim": ("action_dim", int(hp.action_dim), "=="),
        }

    def load_stats(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        super().load_stats(stats)
        for key in self.normalized_keys:
            self.normalizer.stat(key, "std").clamp_(min=MIN_STD)

    # ---- training -------------------------------------------------------------------------------------------
    def _observation(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Normalised, concatenated state (B, sum D); a length-1 observation history is dropped."""
        missing = [k for k in self.state_keys if k not in batch]
        if missing:
            raise KeyError(f"batch has no {missing} (keys: {sorted(batch)})")
        parts = []
        for key in self.state_keys:
            x = batch[key].float()
            if x.ndim == 3 and x.shape[1] == 1:
                x = x[:, 0]
            if x.ndim != 2:
                raise ValueError(f"{key} should be (B, D), got shape {tuple(x.shape)}")
            parts.append(self.normalizer.mean_std(key, x))
        return torch.cat(parts, dim=-1)

    def compute_loss(self, batch: Mapping[str, Tensor], weighted: bool = True) -> dict[str, Tensor]:
        """{"loss"}: batch mean of the per-sample error (padded steps zeroed), importance-weighted when asked."""
        k = self.hparams.chunk_size
        actions = batch["action"]
        if actions.ndim != 3 or actions.shape[1] < k:
            raise ValueError(f"batch['action'] must be (B, >= {k}, A), got {tuple(actions.shape)}")
        target = self.normalizer.mean_std("action", actions[:, :k].float())
        pred = self.model(self._observation(batch))
        err = (pred - target).abs() if self.hparams.loss == "l1" else (pred - target).pow(2)
        is_pad = batch.get("action_is_pad")
        if is_pad is not None:
            err = err * (~is_pad[:, :k].bool()).unsqueeze(-1).to(err.dtype)
        per_sample = err.mean(dim=(1, 2))
        return {"loss": weighted_mean(per_sample, batch.get("weight") if weighted else None)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam (robomimic); AdamW when weight_decay > 0."""
        hp = self.hparams
        if hp.weight_decay > 0:
            return torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return torch.optim.Adam(self.parameters(), lr=hp.lr)

    # ---- the policy contract ----------------------------------------------------------------------------
    def reset(self, env_ids: Sequence[int] | Tensor | None = None) -> None:
        """Clear the action queues / ensembling buffers (of all envs, or only of ``env_ids``)."""
        self._execution.reset(env_ids)

    def plan_normalized(self, obs: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """The first ``n_action_steps`` of the predicted chunk, normalised: (N, n_action_steps, A) (deterministic;
        temporal ensembling, if configured, is not applied)."""
        return self.model(self._observation(obs))[:, : self.hparams.n_action_steps]

    def predict_chunk(self, obs: Mapping[str, Any]) -> Tensor:
        """Raw action chunk (N, k, A) for the current observations (no queues involved)."""
        with self.policy_mode():
            batch = self.obs_to_tensors({k: obs[k] for k in self.state_keys})
            return self.normalizer.un_mean_std("action", self.model(self._observation(batch)))

    def select_action(self, obs: Mapping[str, Any]) -> Tensor:
        """One control step for a batch of envs: raw actions (N, A)."""
        obs = self.policy_inputs(obs)

        def query(rows: Tensor | None) -> tuple[Tensor, None]:
            sub = obs if rows is None else {k: value[rows.cpu().numpy()] for k, value in obs.items()}
            return self.predict_chunk(sub), None

        with self.policy_mode():
            return self._execution.step(len(obs[self.state_keys[0]]), self.device, query)[0]
