"""PolicyModule: the contract every method's LightningModule offers besides training.

Batches and observations share one layout so that the same code path serves training samples and live
environment observations:

* ``batch["qpos"]``: (B, D) float32 proprioception (or (B, To, D) when the dataset keeps a history);
* ``batch["qvel"]``: (B, D) float32, optional;
* ``batch["images/<cam>"]``: (B, H, W, 3) uint8 (or (B, To, H, W, 3)); modules convert to float on device,
  which keeps host-to-device traffic four times smaller than float images;
* ``batch["action"]``: (B, k, A) float32 raw (un-normalised) actions t..t+k-1, ``batch["action_is_pad"]``: (B, k) bool;
* ``batch["weight"]``: (B,) float32 importance-sampling weights (ones under uniform sampling).

Normalisation statistics live in registered buffers so that a checkpoint alone runs the policy.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from lit_imit.nets.normalizer import Normalizer, rename_legacy_stat_keys


@dataclass
class Prediction:
    """One control step for a batch of envs plus a per-env uncertainty (higher = less sure)."""

    action: Tensor  # (B, A)
    uncertainty: Tensor  # (B,)


def state_sizes(state_keys: Sequence[str], state_dim: int | Sequence[int]) -> list[int]:
    """One size per low-dimensional observation key: ``state_dim`` as given per key, or one int for one key."""
    sizes = [int(state_dim)] if isinstance(state_dim, int) else [int(d) for d in state_dim]
    if not state_keys or len(sizes) != len(state_keys):
        raise ValueError(f"state_dim must give one size per state key: state_keys={list(state_keys)}, "
                         f"state_dim={state_dim}")
    return sizes


def batch_size_of(batch: Mapping[str, Any]) -> int:
    """Rows in a batch: the length of its first tensor (batches of every method carry at least one)."""
    for value in batch.values():
        if isinstance(value, Tensor) and value.ndim > 0:
            return int(value.shape[0])
    raise ValueError(f"batch has no tensor to count its rows (keys {sorted(batch)})")


def require_all_rows(module: Any, env_ids: Sequence[int] | Tensor | None, batch_rows: int | None) -> None:
    """Raise unless ``env_ids`` (a ``reset`` argument) covers all ``batch_rows`` rows of the acting state."""
    if env_ids is None or batch_rows is None:
        return
    ids = {int(i) for i in (env_ids.tolist() if isinstance(env_ids, Tensor) else env_ids)}
    if ids != set(range(batch_rows)):
        raise ValueError(
            f"{type(module).__name__} keeps one acting state for all {batch_rows} rows, so it cannot reset rows "
            f"{sorted(ids)} alone; reset all rows (env_ids=None) at the start of a wave of episodes"
        )


def single_step(x: Tensor, name: str, ndim: int) -> Tensor:
    """``x`` without a length-1 observation-history axis (B, 1, ...) -> (B, ...), for policies that look at one
    observation (ACT, VINN); any other shape than ``ndim`` dims is an error naming ``name``."""
    if x.ndim == ndim + 1 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim != ndim:
        raise ValueError(f"{name} should have {ndim} dims (batch first), got shape {tuple(x.shape)}")
    return x


def check_state_noise(std: float) -> None:
    """``state_noise_std`` must be a number >= 0 (NaN is refused too)."""
    if not std >= 0:
        raise ValueError(f"state_noise_std must be >= 0, got {std}")


def noisy_states(states: Tensor, std: float, training: bool) -> Tensor:
    """Normalised low-dimensional inputs plus N(0, std^2) per entry in training; unchanged otherwise (std 0,
    validation, acting). The ``state_noise_std`` of ACT and Diffusion: a policy trained on exact states from
    few demos can key on details of the demos' own states (the arm's joints already say where a teacher's path
    is heading); noise makes those details a weak cue, so it leans on what generalises."""
    if not training or not std:
        return states
    return states + std * torch.randn_like(states)


def teacher_forced(targets: Tensor | None, sigma: float | None, training: bool) -> Tensor | None:
    """The true auxiliary targets plus N(0, sigma^2) noise, for a policy input that carries an estimate of them:
    in training with a ``sigma`` the policy learns from the (noisy) truth; otherwise None, and it reads the
    estimate, as it does when acting (ACT's ``aux_token_target_noise``, Diffusion's ``aux_target_noise``)."""
    if sigma is None or not training or targets is None:
        return None
    return targets + sigma * torch.randn_like(targets)


def weighted_mean(per_sample: Tensor, weight: Tensor | None) -> Tensor:
    """The batch mean of each sample's loss times its importance weight: mean_i(w_i * l_i).

    PIER (as prioritized experience replay, Schaul et al. 2016, and the ASkDAgger reference) corrects its
    sampling bias by scaling each sample's loss with w_i = (N P(i))^-beta / max_j w_j, so that in
    expectation over prioritized draws the loss is (a constant times) the uniform-sampling loss. The
    self-normalised form sum(w l) / sum(w) would undo that at batch size 1, where it is l whatever w is.
    Uniform sampling gives w = 1: the plain mean.
    """
    if weight is None:
        return per_sample.mean()
    return (per_sample * weight.to(per_sample.dtype)).mean()


def policy_class_path(cls: type) -> str:
    """``"module.path.ClassName"``: how a checkpoint names the class that wrote it (``policy_class``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


class PolicyModule(pl.LightningModule):
    """Base of every method: normalisation buffers, the stats hand-over from the DataModule, the policy API."""

    #: how the method maps states and actions to its network's scale: "mean_std" (ACT, BC) or "min_max"
    #: (Diffusion, to [-1, 1]); code working in the policy's normalised space (residual RL) reads it
    normalization = "mean_std"

    def __init__(self) -> None:
        super().__init__()
        self.normalizer = Normalizer()
        #: optimiser steps behind the weights when they were loaded (a checkpoint's ``global_step``, a policy
        #: directory's ``training.global_step``); ``test`` logs its metrics at this step. None: not loaded.
        self.trained_steps: int | None = None

    # ---- normalisation: statistics live in ``self.normalizer`` (lit_imit/nets/normalizer.py) -----------
    def register_stats_buffers(self, key: str, dim: int) -> None:
        """Identity statistics for one key, filled later from the DataModule's stats (or a checkpoint)."""
        self.normalizer.add_key(key, dim)

    def register_policy_stats(self, state_keys: Sequence[str], state_sizes: Sequence[int], action_dim: int) -> None:
        """Statistics for the observation keys and the actions, which every imitation policy normalises."""
        for key, dim in (*zip(state_keys, state_sizes), ("action", action_dim)):
            self.register_stats_buffers(key, dim)

    @property
    def normalized_keys(self) -> tuple[str, ...]:
        """Keys whose statistics this module normalises with, e.g. ("qpos", "action")."""
        return self.normalizer.keys

    @property
    def stats_initialized(self) -> Tensor:
        """True once dataset statistics were loaded (a bool tensor: it is saved with the weights)."""
        return self.normalizer.initialized

    def load_stats(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """Copy dataset statistics (dicts of arrays/tensors per key) into the normaliser."""
        self.normalizer.load(stats)

    def normalize(self, key: str, x: Tensor) -> Tensor:
        """``x`` (a state key or ``"action"``) in the policy's normalised space (its ``normalization``)."""
        if self.normalization == "min_max":
            return self.normalizer.min_max(key, x)
        return self.normalizer.mean_std(key, x)

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        """The inverse of :meth:`normalize`: raw values of ``key`` from normalised ones."""
        if self.normalization == "min_max":
            return self.normalizer.un_min_max(key, x)
        return self.normalizer.un_mean_std(key, x)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # checkpoints written before the Normalizer kept the statistics as stat_<key>_<name> on the module
        rename_legacy_stat_keys(state_dict, prefix, self.normalizer.keys)
        if not self.normalizer.keys:  # a module without statistics saved no flag before the Normalizer
            state_dict.setdefault(f"{prefix}normalizer.initialized", self.normalizer.initialized.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def data_requirements(self) -> dict[str, tuple[str, Any, str]]:
        """What this policy needs from its DataModule: ``{data attr: (model arg, value, "==" | ">=")}``.

        ``value`` is what the data attribute must be (or exceed); the model arg is the setting that decides
        it. A DataModule takes the values of the attributes its config leaves out from here
        (``EpisodeDataModule.adopt_model_settings``), so a config says them once.

        Checked once when the two meet (``setup``), so a mismatched config fails at start with both keys
        named instead of at the first training step (or never, as a silently wrong horizon would).
        """
        return {}

    def check_data_compatibility(self, dm: Any) -> None:
        """Raise a ValueError naming ``model.init_args.X`` and ``data.init_args.Y`` for each mismatch."""
        problems = []
        for data_attr, (model_arg, needed, relation) in self.data_requirements().items():
            have = getattr(dm, data_attr, None)
            if have is None:
                continue
            if isinstance(needed, (list, tuple)):
                needed, have = list(needed), list(have)
            ok = have >= needed if relation == ">=" else have == needed
            if not ok:
                rel = "at least " if relation == ">=" else ""
                setting = self.hparams.get(model_arg, needed) if hasattr(self, "hparams") else needed
                problems.append(f"model.init_args.{model_arg}={setting} needs data.init_args.{data_attr} to be "
                                f"{rel}{needed}, got {have} (or leave data.init_args.{data_attr} out: the data "
                                "then takes the model's)")
        if problems:
            raise ValueError(f"{type(self).__name__} and {type(dm).__name__} disagree: " + "; ".join(problems))

    def setup(self, stage: str) -> None:
        """Check the DataModule against the model, then take its normalisation stats unless a checkpoint
        already provided them."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None:
            self.check_data_compatibility(dm)
        if self.normalized_keys and dm is not None and hasattr(dm, "stats") and not bool(self.stats_initialized):
            stats = dm.stats
            if stats is not None:
                self.load_stats(stats)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record which class this is, so :func:`lit_imit.policies.load_policy` rebuilds exactly it (a plain
        string: a weights-only load reads it) instead of guessing the class from hyper-parameter names."""
        checkpoint["policy_class"] = policy_class_path(type(self))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Remember the checkpoint's step (``trained_steps``): ``test`` of these weights is logged there."""
        self.trained_steps = int(checkpoint.get("global_step", 0))

    # ---- training: each method computes its losses, the base steps and logs them ---------------------
    def compute_loss(self, batch: Mapping[str, Any], weighted: bool = True) -> dict[str, Tensor]:
        """The method's loss terms as batch means: ``{"loss": what is minimised, <term>: ...}``.

        ``weighted``: multiply each sample's terms by ``batch["weight"]`` (PIER's importance weights) before
        the mean; validation and test pass False so their numbers are comparable across samplers.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss")

    def training_losses(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The losses of a training step (a method adds augmentation here)."""
        return self.compute_loss(batch, weighted=True)

    def evaluation_losses(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The losses of a validation or test step: unweighted (a method fixes its noise here)."""
        return self.compute_loss(batch, weighted=False)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        losses = self.training_losses(batch)
        self.log_losses("train", losses, batch)
        return losses["loss"]

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        losses = self.evaluation_losses(batch)
        self.log_losses("val", losses, batch)
        return losses["loss"]

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor | None:
        """``test`` is the rollout callback's success rate; with ``data.init_args.test_loss`` it also reports the
        validation split's losses under ``test/``. Without, the test loader's one empty batch (Lightning runs
        no test epoch, hence no rollout, without a batch) scores nothing."""
        if not batch:
            return None
        losses = self.evaluation_losses(batch)
        self.log_losses("test", losses, batch)
        return losses["loss"]

    def on_test_epoch_end(self) -> None:
        """Test metrics go to the logger at ``trained_steps`` (Lightning takes a logged ``step`` as the x-axis),
        so a checkpoint's test sits at its training step in TensorBoard, not at 0."""
        if self.trained_steps is not None:
            self.log("step", float(self.trained_steps))

    def log_losses(self, prefix: str, losses: Mapping[str, Tensor], batch: Mapping[str, Any]) -> None:
        """Every term as ``<prefix>/<name>`` (``loss`` on the progress bar); averaged over ranks outside training."""
        size = batch_size_of(batch)
        for name, value in losses.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == "loss", batch_size=size,
                     sync_dist=prefix != "train")

    # ---- the policy contract -------------------------------------------------------------------------
    def reset(self, env_ids: Sequence[int] | Tensor | None = None) -> None:
        """Start of episodes: clear action queues, ensembling buffers, observation history.

        ``env_ids`` clears only those rows of a vectorised rollout (None: all rows). A method whose acting
        state is shared by all rows (one queue for the whole batch) raises for a strict subset rather than
        clearing the others' state too: :func:`require_all_rows`.
        """

    def select_action(self, obs: Mapping[str, Any]) -> Tensor:
        """One control step for a batch of envs: returns (B, A) raw actions."""
        raise NotImplementedError(f"{type(self).__name__} must implement select_action")

    def predict(self, obs: Mapping[str, Any]) -> Prediction:
        """One control step plus a per-env uncertainty, for gating (interactive learning)."""
        raise NotImplementedError(f"{type(self).__name__} cannot estimate uncertainty, so it cannot be gated")

    #: observation frames the policy reads per query (a history for Diffusion Policy)
    n_obs_steps = 1

    def plan_normalized(self, obs: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """The actions the policy would execute open loop from ``obs``, normalised: (N, n_action_steps, A).

        ``obs`` holds every key the policy reads with a history axis, (N, ``n_obs_steps``, ...), as tensors on
        the module's device; ``generator`` draws any sampling noise. No queue or history of the module is
        touched: the caller executes the chunk (residual RL runs a frozen base policy through this).
        """
        raise NotImplementedError(f"{type(self).__name__} does not expose its action chunks, so it cannot serve "
                                  "as the base of a residual policy")

    #: the precision of the networks when acting (select_action, predict): "32", or "bf16-mixed" for bfloat16
    #: autocast on the module's device (a CPU with AVX512_BF16 runs ACT's query at LeRobot's size 1.4-1.7x faster).
    #: Not a hyper-parameter: a deployment choice, like Lightning's training precision. Set it with
    #: :meth:`set_inference_precision`; the actions returned stay float32.
    inference_precision = "32"
    #: the precisions a method acts in; one that offers "bf16-mixed" casts its networks' outputs to float32
    INFERENCE_PRECISIONS: tuple[str, ...] = ("32",)

    def set_inference_precision(self, precision: str) -> None:
        """Run the networks in ``precision`` when acting: "32" (default) or "bf16-mixed" (bfloat16 autocast)."""
        if str(precision) not in self.INFERENCE_PRECISIONS:
            raise ValueError(f"{type(self).__name__} acts in precision {list(self.INFERENCE_PRECISIONS)}, "
                             f"not {precision!r}")
        self.inference_precision = str(precision)

    # ---- helpers -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def policy_mode(self) -> Iterator[None]:
        """Eval mode under inference_mode (and the inference precision's autocast) for one control step; the
        previous train/eval mode is restored."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), self.inference_autocast():
                yield
        finally:
            self.train(was_training)

    def inference_autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on the module's device under ``inference_precision="bf16-mixed"``, else nothing.
        Networks' outputs are cast back to float32 where they leave the model (chunks, noise predictions)."""
        if self.inference_precision == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def policy_inputs(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of an observation the policy reads: its state keys and ``images/<cam>`` of its cameras
        (others, e.g. cameras rendered only for video, never reach the device); a missing one is a KeyError
        naming it."""
        keys = [*getattr(self, "state_keys", []), *(f"images/{c}" for c in getattr(self, "cameras", []))]
        missing = [k for k in keys if k not in obs]
        if missing:
            raise KeyError(f"observation lacks {missing} (has {sorted(obs)})")
        return {k: obs[k] for k in keys}

    def obs_to_tensors(self, obs: Mapping[str, Any]) -> dict[str, Tensor]:
        """Env observations (numpy, batched) to tensors on this module's device, same layout as a batch."""
        out: dict[str, Tensor] = {}
        for key, value in obs.items():
            t = torch.as_tensor(np.asarray(value)) if not isinstance(value, Tensor) else value
            if t.dtype == torch.float64:
                t = t.float()
            out[key] = t.to(self.device, non_blocking=True)
        return out

    # ---- guards --------------------------------------------------------------------------------------
    def on_before_backward(self, loss: Tensor) -> None:
        """Stop at the first non-finite training loss, naming the step and the logged loss terms.

        One NaN backward turns every weight NaN, and Lightning would carry on and checkpoint them with exit
        status 0. Checking costs one sync per step, which the progress bar's loss display already pays.
        """
        if bool(torch.isfinite(loss.detach()).all()):
            return
        trainer = self._trainer
        terms = {}
        if trainer is not None:  # what training_step logged for this step (train/l1, train/kl, ...)
            terms = {k: v.tolist() if isinstance(v, Tensor) else v
                     for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        where = f"global step {self.global_step}, epoch {self.current_epoch}" if trainer is not None else "a step"
        raise FloatingPointError(
            f"non-finite training loss {loss.detach().float().cpu().tolist()} at {where}; loss terms of this step: "
            f"{terms or 'none logged'}. Check the data (EpisodeStore.verify()), the normalisation statistics "
            "and the learning rate; nothing of this step was applied to the weights"
        )
