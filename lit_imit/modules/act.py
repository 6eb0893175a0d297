"""ACTModule: training and execution logic of ACT on top of :class:`lit_imit.nets.act.ACT`.

Training: the low-dimensional inputs (``state_keys``: qpos, and e.g. the object poses ``env_state``) and the
actions are mean/std normalised with the dataset statistics (std floored at 0.01 as in the original), images
go to the network as uint8. The loss is the L1 error of the chunk plus ``kl_weight`` times the KL divergence
of the CVAE posterior from N(0, I). Both terms are computed per sample so that importance weights
(``batch["weight"]``, PIER) can weight them.

L1 reduction (``l1_reduction``): ``"all_entries"`` (default) zeroes the padded steps and averages over all
k x A entries, ``(l1 * ~is_pad).mean()``, as the original ACT and LeRobot compute it; ``"valid_entries"``
divides each sample by its own count of valid entries instead, which up-weights the samples near the end of
an episode (the last ~k steps) relative to the KL term.

Execution (``select_action`` / ``predict``), for a batch of N environments:

* chunking: a chunk is predicted every ``n_action_steps`` steps and executed open loop, one queue per env;
* temporal ensembling (``temporal_ensemble_coeff``, 0.01 in ACT): the policy is queried every step and the
  action for step t is the average of all predictions made for t, weighted exp(-m * i) with i = 0 for the
  oldest prediction (so older predictions weigh slightly more), computed online;
* z = 0 (prior mean) for the executed action;
* ``predict`` adds an uncertainty per env: the spread of ``n_uncertainty_samples`` chunks decoded from
  z ~ N(0, I), i.e. the standard deviation across samples of each *normalised* action entry, averaged over
  the chunk's steps and action dimensions. Normalised units make dimensions with different scales
  (radians, gripper in [0, 1]) comparable; averaging over the whole chunk scores the plan the policy commits
  to. Under chunking the uncertainty of the chunk being executed is reported at each of its steps.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_imit.modules.base import (
    PolicyModule, Prediction, check_state_noise, noisy_states, single_step, state_sizes, teacher_forced, weighted_mean,
)
from lit_imit.modules.chunking import ChunkExecutor
from lit_imit.modules.schedules import warmup_cosine
from lit_imit.nets.act import ACT, ACTOutput
from lit_imit.nets.augment import random_shift

ACT_MIN_STD = 1e-2  # the original clips dataset std to at least this value


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample (B,), summed over latent dimensions."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)


L1_REDUCTIONS = ("all_entries", "valid_entries")
LR_SCHEDULES = ("constant", "cosine")


def masked_l1_per_sample(pred: Tensor, target: Tensor, is_pad: Tensor | None, reduction: str = "all_entries") -> Tensor:
    """Absolute error per sample (B,) with padded targets zeroed; see ``l1_reduction`` in the module docstring.

    ``"all_entries"`` divides by k x A for every sample, so the batch mean equals ``(l1 * ~is_pad).mean()``
    (original ACT, LeRobot); ``"valid_entries"`` divides by the sample's own number of valid entries.
    """
    if reduction not in L1_REDUCTIONS:
        raise ValueError(f"l1_reduction must be one of {L1_REDUCTIONS}, got {reduction!r}")
    err = (pred - target).abs()
    if is_pad is None:
        return err.mean(dim=(1, 2))
    valid = ~is_pad.bool()
    err = torch.where(valid.unsqueeze(-1), err, torch.zeros((), dtype=err.dtype, device=err.device))
    if reduction == "all_entries":
        return err.mean(dim=(1, 2))
    n_valid = valid.sum(dim=1).to(err.dtype) * err.shape[-1]
    return err.sum(dim=(1, 2)) / n_valid.clamp_min(1.0)


class ACTModule(PolicyModule):
    """ACT (Zhao et al., RSS 2023) with LeRobot's defaults (one decoder layer, see ``lit_imit.nets.act``)."""

    #: action chunks leave the network as float32 (``.float()``), so the temporal ensemble and the queue stay
    #: float32 under bfloat16 autocast
    INFERENCE_PRECISIONS = ("32", "bf16-mixed")

    def __init__(
        self,
        cameras: Sequence[str] = ("top",),
        state_dim: int | list[int] = 14,
        action_dim: int = 14,
        chunk_size: int = 100,
        n_action_steps: int = 100,
        temporal_ensemble_coeff: float | None = None,
        dim_model: int = 512,
        n_heads: int = 8,
        dim_feedforward: int = 3200,
        n_encoder_layers: int = 4,
        n_decoder_layers: int = 1,
        n_vae_encoder_layers: int = 4,
        latent_dim: int = 32,
        dropout: float = 0.1,
        use_vae: bool = True,
        kl_weight: float = 10.0,
        l1_reduction: str = "all_entries",
        shared_backbone: bool = True,
        pretrained_backbone: str | None = None,
        allow_random_init: bool = False,
        backbone_norm: str = "frozen_batch",
        backbone_stride: int = 32,
        image_shift: int = 0,
        state_noise_std: float = 0.0,
        lr: float = 1e-5,
        lr_backbone: float = 1e-5,
        weight_decay: float = 1e-4,
        lr_schedule: str = "constant",
        warmup_steps: int = 0,
        max_steps: int | None = None,
        n_uncertainty_samples: int = 8,
        channels_last: bool = True,
        fuse_frozen_bn: bool = True,
        fast_dropout: bool = True,
        compile: bool = False,
        state_keys: Sequence[str] = ("qpos",),
        image_pos_in_tokens: bool = False,
        aux_state_keys: Sequence[str] = (),
        aux_state_dim: int | list[int] = 7,
        aux_weight: float = 1.0,
        aux_state_token: bool = False,
        aux_token_target_noise: float | None = None,
    ) -> None:
        """
        Args:
            cameras: camera names; batches carry ``images/<name>``. ``[]`` is the state-only policy.
            state_dim: size of each low-dimensional input, one int per ``state_keys`` entry (an int when
                there is only qpos).
            state_keys: low-dimensional observation keys; the first is the proprioception the CVAE encoder
                also reads (qpos), every other one (e.g. ``env_state``) is one more encoder token.
            l1_reduction: ``all_entries`` (original ACT, LeRobot) or ``valid_entries``; module docstring.
            n_action_steps: actions executed from each chunk before the next query (<= chunk_size).
            temporal_ensemble_coeff: m of the ensembling weights exp(-m i); needs ``n_action_steps=1``.
            pretrained_backbone: path to a ResNet-18 state dict, ``"imagenet"`` (torchvision's cached file) or
                None (random init). Nothing is downloaded: asked-for weights that are not on this machine
                stop with ``PretrainedWeightsUnavailable``, which says where to put them.
            allow_random_init: with asked-for weights missing, warn loudly and start from random init instead
                of stopping (CPU smoke runs; never the paper's setting). A missing file named by path is
                always an error.
            backbone_norm: ``frozen_batch`` (the original ACT: DETR's frozen batch norm, meant for ImageNet
                weights) or ``group``: trainable GroupNorm, Diffusion Policy's choice for a ResNet trained from
                scratch. A named departure for runs without pretrained weights, where frozen "statistics" are
                the identity and the ResNet trains unnormalised (configs/act/transfer_cube_cpu.yaml measures it).
            backbone_stride: 32 (the original ACT: the whole ResNet-18, 512 channels) or 16: features from layer3
                (256 channels, twice as many cells per side). A named departure for small images: at 96x128 the
                stride-32 map is 3x4 cells for a cube three pixels wide.
            image_shift: training images shifted by up to this many pixels (``nets.augment.random_shift``, DrQ's
                pad-and-crop); 0, the original ACT's setting, trains on the images as recorded. A named departure
                for ResNets from scratch: robustness to small camera offsets. It moves the whole scene, so it adds
                no new object positions relative to the arms (configs/act/transfer_cube_cpu.yaml measures it).
            state_noise_std: Gaussian noise of this standard deviation (in normalised units, i.e. dataset
                stds) added to the low-dimensional inputs of training batches; 0, the original ACT's setting,
                trains on them as recorded. A named departure against the copycat shortcut: along a teacher's
                path the arm's own joints already say where it is heading, so a policy can fit the demos from
                qpos alone and ignore the cube in the image, then drift in closed loop. Noise makes qpos a weak
                cue for where the target is (configs/act/transfer_cube_cpu.yaml measures it).
            lr_backbone: learning rate of the ResNets; <= 0 freezes them (no backward through the images).
            lr_schedule: ``constant`` (the original ACT and LeRobot) or ``cosine``: a linear warm-up over
                ``warmup_steps``, then half a cosine to 0 at ``max_steps`` (None: the trainer's step count).
                A named departure for short budgets: the rate ends small, so the last checkpoint does not
                swing between good and bad policies as it does at a constant rate.
            n_uncertainty_samples: latent samples decoded by ``predict`` to measure the spread (>= 2).
            image_pos_in_tokens: False (the original ACT, DETR): the 2-D position encoding of the image cells is
                added to the attention queries and keys only, so a token's content says what a cell shows but
                not where the cell is. True adds it to the image tokens themselves as well (as ViT does), so
                what attention reads back carries the position. A named departure for ResNets from scratch,
                whose features cannot lean on ImageNet's to tell where an object is.
            aux_state_keys: low-dimensional keys (e.g. ``env_state``, the object poses) that the images must
                predict: a linear head on the mean of the encoder's image tokens regresses their normalised
                values, and ``aux_weight`` times its mean squared error joins the loss. They are training
                targets only; the policy never reads them, so it runs on the env's usual observation. ``()``
                (the original ACT) has no such head. A named departure for ResNets from scratch: it tells the
                backbone what in the image matters (configs/act/transfer_cube_cpu.yaml measures it).
            aux_state_dim: one size per ``aux_state_keys`` entry (an int for one key).
            aux_weight: weight of the auxiliary term in the loss.
            aux_state_token: False: the auxiliary head reads the encoder's image tokens (above). True: it reads
                spatial-softmax keypoints of the backbone features instead, and its estimate of the
                ``aux_state_keys`` enters the encoder as one more token, detached (the action loss does not
                train it), so the policy reads the images' answer the way a state policy reads the true object
                pose. At test time the estimate comes from the images alone. A named departure against the
                copycat shortcut, for ResNets from scratch (configs/act/transfer_cube_cpu.yaml measures it).
            aux_token_target_noise: None: in training the token carries the estimate, as when acting. A float
                sigma: in training it carries the true normalised target plus N(0, sigma^2) noise (teacher
                forcing: the policy learns from exact object poses, like a state policy, and the noise prepares it
                for the estimate's error); validation and acting use the estimate. Needs ``aux_state_token``.
            channels_last / fuse_frozen_bn / compile: speed switches that do not change the maths
                (compile = ``torch.compile`` of the network).
            fast_dropout: draw the transformer's CPU dropout masks from 16-bit uniforms (``lit_imit.nets.dropout``:
                2-4x cheaper than torch's Bernoulli draws, which took 8% of a step at LeRobot's shape); the drop
                probability is then ``dropout`` rounded to 1/65536. ``False``: torch's ``nn.Dropout``, as the
                original ACT and LeRobot. No effect with ``dropout: 0`` or on a GPU.
        """
        super().__init__()
        cameras = list(cameras)
        state_keys = list(state_keys)
        state_dims = state_sizes(state_keys, state_dim)
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if l1_reduction not in L1_REDUCTIONS:
            raise ValueError(f"l1_reduction must be one of {L1_REDUCTIONS}, got {l1_reduction!r}")
        self._execution = ChunkExecutor(chunk_size, n_action_steps, temporal_ensemble_coeff)
        if n_uncertainty_samples < 2:
            raise ValueError("n_uncertainty_samples must be >= 2 to measure a spread")
        if image_shift < 0:
            raise ValueError(f"image_shift must be >= 0 pixels, got {image_shift}")
        check_state_noise(state_noise_std)
        aux_state_keys = list(aux_state_keys)
        aux_dims = state_sizes(aux_state_keys, aux_state_dim) if aux_state_keys else []
        if set(aux_state_keys) & set(state_keys):
            raise ValueError(f"aux_state_keys {aux_state_keys} must not be inputs too (state_keys {state_keys})")
        if aux_state_token and not aux_state_keys:
            raise ValueError("aux_state_token needs aux_state_keys: the token carries their estimate")
        if aux_token_target_noise is not None and not (aux_state_token and aux_token_target_noise >= 0):
            raise ValueError("aux_token_target_noise needs aux_state_token and a sigma >= 0, got "
                             f"{aux_token_target_noise} (aux_state_token={aux_state_token})")
        self.save_hyperparameters()
        self.cameras = cameras
        self.state_keys = state_keys
        self.aux_state_keys = aux_state_keys
        self.model = ACT(
            state_dim=state_dims[0],
            extra_state_dims=state_dims[1:],
            action_dim=action_dim,
            n_cameras=len(cameras),
            chunk_size=chunk_size,
            dim_model=dim_model,
            n_heads=n_heads,
            dim_feedforward=dim_feedforward,
            n_encoder_layers=n_encoder_layers,
            n_decoder_layers=n_decoder_layers,
            n_vae_encoder_layers=n_vae_encoder_layers,
            latent_dim=latent_dim,
            dropout=dropout,
            use_vae=use_vae,
            shared_backbone=shared_backbone,
            pretrained_backbone=pretrained_backbone,
            allow_random_init=allow_random_init,
            fuse_frozen_bn=fuse_frozen_bn,
            fast_dropout=fast_dropout,
            backbone_norm=backbone_norm,
            backbone_stride=backbone_stride,
            aux_dim=sum(aux_dims),
            image_pos_in_tokens=image_pos_in_tokens,
            aux_token=aux_state_token,
        )
        if channels_last:
            self.model.use_channels_last(True)
        if lr_backbone <= 0:
            for p in self.model.backbone_parameters():
                p.requires_grad_(False)
        if compile:
            self.model.compile()
        self.register_policy_stats([*state_keys, *aux_state_keys], [*state_dims, *aux_dims], action_dim)
        self._warned_stats = False

    def data_requirements(self) -> dict[str, tuple[str, Any, str]]:
        """Same cameras and state keys, chunks at least ``chunk_size`` long, the same action size."""
        hp = self.hparams
        return {
            "cameras": ("cameras", list(self.cameras), "=="),
            "state_keys": ("state_keys + aux_state_keys" if self.aux_state_keys else "state_keys",
                           [*self.state_keys, *self.aux_state_keys], "=="),
            "chunk_size": ("chunk_size", int(hp.chunk_size), ">="),
            "action_dim": ("action_dim", int(hp.action_dim), "=="),
        }

    # ---- normalisation ----------------------------------------------------------------------------------
    def load_stats(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """As the base class, then floor the std at 0.01 like the original (constant dims stay finite)."""
        super().load_stats(stats)
        for key in self.normalized_keys:
            self.normalizer.stat(key, "std").clamp_(min=ACT_MIN_STD)

    # ---- batches -------------------------------------------------------------------------------------------
    def _observation(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Normalised qpos (B, S), uint8 images [(B, H, W, 3)] in camera order, the other normalised states."""
        missing = [k for k in self.state_keys if k not in batch]
        missing += [f"images/{c}" for c in self.cameras if f"images/{c}" not in batch]
        if missing:
            raise KeyError(f"batch has no {missing} (keys: {sorted(batch)})")
        states = [self._normalized_state(batch, key) for key in self.state_keys]
        images = [single_step(batch[f"images/{c}"], f"images/{c}", 4) for c in self.cameras]
        return states[0], images, states[1:]

    def _normalized_state(self, batch: Mapping[str, Tensor], key: str) -> Tensor:
        """``batch[key]`` at the current step (B, D), mean/std normalised with the dataset statistics."""
        return self.normalizer.mean_std(key, single_step(batch[key], key, 2).float())

    def _targets(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Normalised action chunk (B, k, A) and its padding mask (B, k), cut to chunk_size."""
        k = self.hparams.chunk_size
        actions = batch["action"]
        if actions.ndim != 3 or actions.shape[1] < k:
            raise ValueError(f"batch['action'] must be (B, >= {k}, A), got {tuple(actions.shape)}")
        is_pad = batch.get("action_is_pad")
        if is_pad is None:
            is_pad = torch.zeros(actions.shape[:2], dtype=torch.bool, device=actions.device)
        return self.normalizer.mean_std("action", actions[:, :k].float()), is_pad[:, :k].bool()

    def forward(self, batch: Mapping[str, Tensor]) -> ACTOutput:
        """Training-style forward: posterior z when the VAE is on, normalised predicted chunk."""
        qpos, images, extra = self._observation(batch)
        actions, is_pad = self._targets(batch)
        return self.model(qpos, images, actions, is_pad, extra_states=extra)

    def _augment(self, images: list[Tensor]) -> list[Tensor]:
        """Training images shifted by up to ``image_shift`` pixels; evaluation (eval mode) sees them as they are."""
        if not self.training or not self.hparams.image_shift:
            return images
        return [random_shift(x, self.hparams.image_shift) for x in images]

    def _noisy_states(self, states: list[Tensor]) -> list[Tensor]:
        """Training inputs plus N(0, state_noise_std^2) per entry (normalised units); eval mode: unchanged."""
        return [noisy_states(x, self.hparams.state_noise_std, self.training) for x in states]

    def _teacher_forced_token(self, aux_targets: Tensor | None) -> Tensor | None:
        """``aux_token_target_noise``: the noisy true target for the token in training; None (the estimate)
        otherwise."""
        return teacher_forced(aux_targets, self.hparams.aux_token_target_noise, self.training)

    def _aux_targets(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Normalised auxiliary targets (B, sum of aux_state_dim), the keys concatenated in order."""
        missing = [k for k in self.aux_state_keys if k not in batch]
        if missing:
            raise KeyError(f"batch has no auxiliary target {missing} (keys: {sorted(batch)})")
        return torch.cat([self._normalized_state(batch, key) for key in self.aux_state_keys], dim=-1)

    def compute_loss(self, batch: Mapping[str, Tensor], weighted: bool = True) -> dict[str, Tensor]:
        """{"loss", "l1", "kl"} (and "aux" with ``aux_state_keys``): batch means of the per-sample terms,
        importance-weighted when asked."""
        qpos, images, extra = self._observation(batch)
        images = self._augment(images)
        qpos, *extra = self._noisy_states([qpos, *extra])
        actions, is_pad = self._targets(batch)
        aux_targets = self._aux_targets(batch) if self.aux_state_keys else None
        out = self.model(qpos, images, actions, is_pad, extra_states=extra,
                         aux_token_value=self._teacher_forced_token(aux_targets))
        weight = batch.get("weight") if weighted else None
        l1 = masked_l1_per_sample(out.actions.float(), actions, is_pad, self.hparams.l1_reduction)
        if out.mu is not None and out.logvar is not None:
            kl = kl_divergence(out.mu.float(), out.logvar.float())
        else:
            kl = torch.zeros_like(l1)
        per_sample = l1 + self.hparams.kl_weight * kl
        terms = {"l1": weighted_mean(l1, weight), "kl": weighted_mean(kl, weight)}
        if self.aux_state_keys:
            aux = (out.aux.float() - aux_targets).pow(2).mean(dim=-1)
            per_sample = per_sample + self.hparams.aux_weight * aux
            terms["aux"] = weighted_mean(aux, weight)
        return {"loss": weighted_mean(per_sample, weight), **terms}

    def configure_optimizers(self) -> Any:
        """AdamW with the backbone in its own param group (its own lr), fused kernels where available."""
        hp = self.hparams
        groups = [{"params": [p for p in self.model.non_backbone_parameters() if p.requires_grad], "lr": hp.lr}]
        backbone = [p for p in self.model.backbone_parameters() if p.requires_grad]
        if backbone:
            groups.append({"params": backbone, "lr": hp.lr_backbone})
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay, **_adamw_kernel(self.parameters()))
        if hp.lr_schedule == "constant":
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": warmup_cosine(optimizer, hp.warmup_steps, hp.max_steps, self._trainer)}

    # ---- the policy contract ----------------------------------------------------------------------------
    def reset(self, env_ids: Sequence[int] | Tensor | None = None) -> None:
        """Clear the action queues / ensembling buffers (of all envs, or only of ``env_ids``)."""
        self._execution.reset(env_ids)

    def _check_stats(self) -> None:
        if not bool(self.stats_initialized) and not self._warned_stats:
            rank_zero_warn("ACTModule runs the policy with identity normalisation: no dataset stats were loaded")
            self._warned_stats = True

    def _query_chunk(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Normalised chunk (N, k, A) with z = 0."""
        qpos, images, extra = self._observation(obs)
        return self.model(qpos, images, extra_states=extra).actions.float()

    def _query_chunk_with_uncertainty(self, obs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Normalised chunk with z = 0 and the spread over z ~ N(0, I) samples, in one decoder batch."""
        if not self.hparams.use_vae:
            raise RuntimeError("ACT without the CVAE (use_vae=False) never learned to use z: no uncertainty")
        qpos, images, extra = self._observation(obs)
        n, s = qpos.shape[0], self.hparams.n_uncertainty_samples
        z = torch.randn(n, 1 + s, self.hparams.latent_dim, device=qpos.device, dtype=qpos.dtype)
        z[:, 0] = 0.0
        chunks = self.model.decode_latents(qpos, images, z, extra_states=extra).float()
        return chunks[:, 0], chunks[:, 1:].std(dim=1).mean(dim=(1, 2))

    def _step(self, obs: Mapping[str, Any], with_uncertainty: bool) -> tuple[Tensor, Tensor | None]:
        """One control step for N envs: raw actions (N, A) and, if asked, the uncertainty per env (N,)."""
        self._check_stats()
        batch = self.obs_to_tensors(self.policy_inputs(obs))
        n = batch[self.state_keys[0]].shape[0]

        def query(rows: Tensor | None) -> tuple[Tensor, Tensor | None]:
            sub = batch if rows is None else {key: value[rows] for key, value in batch.items()}
            if with_uncertainty:
                chunk, uncertainty = self._query_chunk_with_uncertainty(sub)
            else:
                chunk, uncertainty = self._query_chunk(sub), None
            return self.normalizer.un_mean_std("action", chunk), uncertainty

        action, uncertainty = self._execution.step(n, self.device, query)
        if not with_uncertainty or self._execution.ensembler is not None:
            return action, uncertainty
        unknown = torch.isnan(uncertainty)
        if bool(unknown.any()):  # chunks queried by select_action carry no estimate: score the current obs
            sub = {key: value[unknown] for key, value in batch.items()}
            uncertainty[unknown] = self._query_chunk_with_uncertainty(sub)[1]
        return action, uncertainty.clone()

    def select_action(self, obs: Mapping[str, Any]) -> Tensor:
        """One control step for a batch of envs: raw actions (N, A)."""
        with self.policy_mode():
            action, _ = self._step(obs, with_uncertainty=False)
        return action

    def predict(self, obs: Mapping[str, Any]) -> Prediction:
        """The step of ``select_action`` plus the latent-sample spread per env (see the module docstring)."""
        with self.policy_mode():
            action, uncertainty = self._step(obs, with_uncertainty=True)
        assert uncertainty is not None
        return Prediction(action=action, uncertainty=uncertainty)

    def plan_normalized(self, obs: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """The first ``n_action_steps`` of the z = 0 chunk, normalised: (N, n_action_steps, A). Deterministic
        (``generator`` is unused); temporal ensembling, if configured, is not applied: the chunk runs open loop."""
        return self._query_chunk(obs)[:, : self.hparams.n_action_steps]

    def predict_chunk(self, obs: Mapping[str, Any]) -> Tensor:
        """Raw action chunk (N, k, A) with z = 0 for the current observation (no queues involved)."""
        with self.policy_mode():
            batch = self.obs_to_tensors(self.policy_inputs(obs))
            return self.normalizer.un_mean_std("action", self._query_chunk(batch))


def _adamw_kernel(params: Iterator[torch.nn.Parameter]) -> dict[str, bool]:
    """fused=True when every parameter lives on a device with fused AdamW kernels, else foreach."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        supported = set(_get_fused_kernels_supported_devices())
    except ImportError:  # private helper moved: foreach is always safe
        return {"foreach": True}
    if all(p.device.type in supported and p.dtype.is_floating_point for p in params):
        return {"fused": True}
    return {"foreach": True}


