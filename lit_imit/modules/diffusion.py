"""Diffusion Policy (Chi et al., RSS 2023) as a PolicyModule; defaults follow Chi et al. and LeRobot.

Training: the action window (B, Tp, A), which starts at the *first* observation step t-To+1, is min-max
normalised to [-1, 1], noised to a random diffusion step k with a DDPM schedule, and a 1-D conditional U-Net
predicts the noise given k and the encoded observation history (To frames of camera keypoints + state).
Padded steps past the episode end repeat the last action (LeRobot's copy padding); the loss is the
per-sample MSE on the noise over the whole window (``mask_padding=True``: over the non-padded steps only),
weighted by ``batch["weight"]``.

Acting (receding horizon): a chunk of Tp actions is denoised from Gaussian noise with the inference scheduler
(DDPM with all ``num_train_timesteps`` steps by default; DDIM with fewer steps selectable) and actions
[To-1, To-1+Ta) — the ones from the current step on — are executed before the policy is queried again. An
observation queue holds the last To env observations, filled by repeating the first observation after
``reset()``.

Defaults — one reference: Chi et al., "Diffusion Policy" (RSS 2023; ``train_diffusion_unet_hybrid_workspace``,
its CNN image config) as LeRobot's ``DiffusionPolicy`` ports it (``DiffusionConfig`` as shipped until May
2026). They agree on the values below; where they differ, the line says which one the default follows:

* To 2, Tp 16, Ta 8 (``n_obs_steps``, ``horizon``, ``n_action_steps``).
* Training scheduler DDPM, 100 steps, ``squaredcos_cap_v2``, betas 1e-4..0.02, epsilon prediction,
  ``clip_sample`` True (LeRobot's ``clip_sample_range`` 1.0: actions are normalised to [-1, 1]).
* Inference with the same DDPM scheduler and all its steps: ``inference_scheduler="ddpm"``,
  ``num_inference_steps=None`` -> ``num_train_timesteps`` (LeRobot's ``num_inference_steps=None``; Chi et
  al.'s CNN configs sample 100 DDPM steps).
* Unmasked loss, ``mask_padding=False`` (LeRobot's ``do_mask_loss_for_padding=False``, "as the original
  Diffusion Policy implementation does").
* AdamW lr 1e-4, betas (0.95, 0.999), eps 1e-8, weight decay 1e-6; cosine schedule with 500 warm-up steps.
* Image encoder: a ResNet-18 per camera (Chi et al.; LeRobot shares one across cameras unless
  ``use_separate_rgb_encoder_per_camera``), no pretrained weights, BatchNorm replaced by GroupNorm, spatial
  softmax with 32 keypoints, ``relu(Linear(64 -> 64))`` (LeRobot's ``DiffusionRgbEncoder``:
  ``self.relu(self.out(x))``; Chi et al.'s robomimic encoder ends with the linear layer, which is
  ``keypoint_relu=False``); random crop in training, centre crop in eval (``augmentation="crop"``).
  The default crop (``crop_ratio`` 0.9) is Chi et al.'s robomimic crop (76/84 px); LeRobot's PushT crop is
  84/96 px and its ALOHA configs use ``crop_shape=[440, 560]``, as the shipped ALOHA configs do.
* U-Net: kernel 5, 8 groups, step embedding 128, FiLM scale and bias. The one default from neither image
  config: the widths ``down_dims=[256, 512, 1024]`` (Chi et al.'s low-dim width, cheap for tests and the
  state-only configs); their image width ``[512, 1024, 2048]`` is set in the shipped image configs.
* EMA of the weights (power 0.75) is the ``callbacks.ema.EMA`` callback in the shipped configs.

Presets (``PRESETS``; ``DiffusionModule.from_preset(name, **overrides)``; shipped configs
``configs/diffusion/transfer_cube_<preset>.yaml``) reproduce two other implementations:

* ``act_plus_plus`` — the act-plus-plus repository's Diffusion Policy on ALOHA (``policy.DiffusionPolicy``):
  50 training steps, DDIM with 10 inference steps (``set_alpha_to_one``, no offset), masked loss, To 1,
  Tp 16 with the whole chunk executed (Ta 16), its image augmentation (95 % random crop resized back, ±5°
  rotation, colour jitter 0.3/0.4/0.5; 95 % centre crop resized back in eval), keypoint features without a
  ReLU, robomimic's U-Net widths (step embedding 256), AdamW with torch's default betas and no weight
  decay. Not reproduced: its constant learning rate (here the warm-up cosine), qpos mean/std normalisation
  (here min-max), its loss denominator (``(l2 * ~is_pad).mean()`` divides by every step, padded ones
  included; here by the valid steps) and its per-sample (not per-image) augmentation draws.
* ``robust_rearrangement`` — the diffusion BC of "From Imitation to Refinement" (ankile/robust-rearrangement,
  ``config/actor/diffusion.yaml`` + ``config/base.yaml``): DDPM 100 training steps, DDIM 16 inference steps,
  To 1, Tp 32, Ta 8, unmasked loss, U-Net widths [256, 512, 1024] with step embedding 256, AdamW with torch's
  default betas, 10 000 warm-up steps. Not reproduced: its pretrained image encoders on 224x224 images and
  its warm start of each chunk from the previous one.

Scheduler length: the cosine learning-rate schedule (stepped per optimizer step) runs over ``max_steps`` when
given, else over ``trainer.estimated_stepping_batches``; in an endless run (neither known) the rate stays
constant after the warm-up.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_imit.modules.base import (
    PolicyModule, Prediction, check_state_noise, noisy_states, require_all_rows, state_sizes, teacher_forced,
    weighted_mean,
)
from lit_imit.modules.schedules import WarmupCosine, warmup_cosine  # noqa: F401  (WarmupCosine: re-exported)
from lit_imit.nets.diffusion_obs import DiffusionObsEncoder
from lit_imit.nets.unet1d import ConditionalUnet1d, check_horizon

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
#: where a query's denoising starts (the ``initial_noise`` argument)
INITIAL_NOISE = ("fresh", "episode", "zero")

#: Named variants (see the module docstring): constructor arguments that replace the defaults. Each is also
#: shipped as a config, ``configs/diffusion/transfer_cube_<name>.yaml``, where ``--print_config`` shows it.
PRESETS: dict[str, dict[str, Any]] = {
    "act_plus_plus": dict(
        n_obs_steps=1, horizon=16, n_action_steps=16,
        noise_scheduler="ddpm", num_train_timesteps=50, inference_scheduler="ddim", num_inference_steps=10,
        mask_padding=True,
        augmentation="act_plus_plus", crop_shape=None, crop_ratio=0.95, keypoint_relu=False,
        down_dims=[256, 512, 1024], diffusion_step_embed_dim=256,
        betas=[0.9, 0.999], weight_decay=0.0,
    ),
    "robust_rearrangement": dict(
        n_obs_steps=1, horizon=32, n_action_steps=8,
        noise_scheduler="ddpm", num_train_timesteps=100, inference_scheduler="ddim", num_inference_steps=16,
        mask_padding=False,
        down_dims=[256, 512, 1024], diffusion_step_embed_dim=256,
        betas=[0.9, 0.999], warmup_steps=10_000,
    ),
}


def preset_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of preset ``name`` (a copy), with ``overrides`` applied on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    kwargs = {k: list(v) if isinstance(v, list) else v for k, v in PRESETS[name].items()}
    kwargs.update(overrides)
    return kwargs


def build_scheduler(
    kind: str,
    num_train_timesteps: int = 100,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_schedule: str = "squaredcos_cap_v2",
    prediction_type: str = "epsilon",
    clip_sample: bool = True,
) -> DDPMScheduler | DDIMScheduler:
    """A diffusers noise scheduler of ``kind`` ('ddpm' | 'ddim') from the shared training configuration.

    DDPM uses the fixed-small posterior variance, DDIM sets alpha_0 = 1 with no step offset, both as in
    Diffusion Policy's configs (Chi et al., RSS 2023; diffusion_policy), so a DDIM sampler runs on a DDPM-trained model unchanged.
    """
    common = dict(
        num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
        beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=clip_sample,
    )
    if kind == "ddpm":
        return DDPMScheduler(variance_type="fixed_small", **common)
    if kind == "ddim":
        return DDIMScheduler(set_alpha_to_one=True, steps_offset=0, **common)
    raise ValueError(f"unknown scheduler {kind!r}; choose one of {sorted(SCHEDULERS)}")


def edge_pad_actions(action: Tensor, is_pad: Tensor) -> Tensor:
    """Replace padded steps by the nearest valid step (the last one before, else the first one after).

    The U-Net convolves over time, so whatever the dataset put in padded slots (zeros, NaN) would leak into
    the valid steps' predictions; repeating the edge action is what Diffusion Policy's sampler does.
    """
    steps = torch.arange(action.shape[1], device=action.device).expand_as(is_pad)
    valid = ~is_pad
    last_before = torch.where(valid, steps, -1).cummax(dim=1).values
    first_after = torch.where(valid, steps, action.shape[1]).flip(1).cummin(dim=1).values.flip(1)
    source = torch.where(last_before >= 0, last_before, first_after).clamp(0, action.shape[1] - 1)
    return action.gather(1, source.unsqueeze(-1).expand_as(action))


class DiffusionModule(PolicyModule):
    """Diffusion Policy with a conditional 1-D U-Net, GroupNorm ResNet-18 keypoint encoders and DDPM/DDIM.

    Args (plain types for LightningCLI):
        cameras: camera names read from ``images/<cam>``; ``[]`` is the state-only variant.
        state_keys: low-dimensional observation keys (qpos, and e.g. the object poses ``env_state``), each
            min-max normalised and concatenated per frame.
        state_dim, action_dim: sizes of the state keys (one int per key; an int when there is only qpos) and
            of the action.
        n_obs_steps (To), horizon (Tp), n_action_steps (Ta): observation history, denoised window, and the
            actions executed per query (indices [To-1, To-1+Ta) of the window).
        down_dims, kernel_size, n_groups, diffusion_step_embed_dim, film_scale: the U-Net (Chi et al., RSS 2023).
        crop_shape: (h, w) random crop in training / centre crop in eval; ``crop_ratio`` is used when it is
            None (fraction of each side); both None disables cropping.
        num_keypoints, image_feature_dim: spatial-softmax keypoints per camera and the feature size after them.
        vision_width: channels of each camera ResNet-18's first stage; 64 (the reference) is the standard
            ResNet-18, whose stages double it to 512. A named departure for CPU budgets: 32 keeps every layer and
            costs a quarter of the multiply-adds (configs/diffusion/transfer_cube_cpu.yaml).
        noise_scheduler: training scheduler ('ddpm'); its configuration (num_train_timesteps, beta_*,
            prediction_type, clip_sample) is shared with the ``inference_scheduler`` ('ddpm' | 'ddim').
        num_inference_steps: denoising steps; None = all ``num_train_timesteps`` (LeRobot), e.g. 10 for DDIM.
        initial_noise: where each query's denoising starts. 'fresh' (Chi et al., LeRobot): a new Gaussian draw
            per query. 'episode': one draw per episode (after ``reset``), reused by every query while the batch
            shape holds; with DDIM (deterministic steps) the window is then a fixed function of the observation
            within an episode, so consecutive plans no longer differ by their draw alone. 'zero': the prior's
            mean for every query (deterministic across episodes too). An inference setting only
            (``use_initial_noise`` changes it on a trained model); on insertion from state neither changed
            the success (configs/diffusion/insertion_state.yaml).
        lr, betas, weight_decay, warmup_steps, max_steps: AdamW and the warm-up cosine schedule.
        mask_padding: exclude padded action steps from the loss (False: LeRobot, Chi et al.; True:
            act-plus-plus).
        augmentation: image augmentation of the encoder: 'crop' (random/centre crop: Chi et al., LeRobot),
            'act_plus_plus' (crop resized back, rotation, colour jitter) or 'none' (centre crop always).
        keypoint_relu: ReLU after the keypoint projection (LeRobot); False is a linear projection
            (act-plus-plus, and checkpoints trained before the ReLU existed). It adds no parameters.
        state_min_range: floor of the range that maps each low-dimensional input to [-1, 1] (the range is widened
            about its midpoint). None: Chi et al.'s min-max over the data (only constant dimensions are left
            unscaled). Object poses need it: an upright cube's quaternion spans 0.002 over 50 teacher demos, so
            a tilt of 0.03 reads as ~30 normalised units; ACT's std floor of 0.01 bounds the same input near 3.
        num_uncertainty_samples: denoised samples per env in ``predict`` (their spread is the uncertainty).
        seed: seed of the sampling-noise generator (re-seeded by ``reset``) and of the validation noise.
        channels_last: run the camera ResNets in channels-last layout (same results, ~1.3x faster on CPU).
        fused_optimizer: use the fused AdamW kernel (same update, ~3x faster on CPU for the 250M-parameter
            image U-Net); falls back to the default implementation on devices without one.
        aux_state_keys: low-dimensional keys (e.g. ``env_state``, the object poses) that the cameras must
            estimate: an MLP on each frame's spatial-softmax keypoints regresses their mean/std-normalised values,
            ``aux_weight`` times its mean squared error joins the loss, and the estimate (detached) joins the
            frame's conditioning. Training targets only: acting reads the env's usual observation. ``[]`` (every
            reference) has none. A named departure for encoders from scratch on few demos, after ACT's
            ``aux_state_token`` (configs/act/transfer_cube_cpu.yaml measures it there): it tells the keypoints
            what in the image matters, and the denoiser conditions on the object pose as a state policy does.
        aux_state_dim: one size per ``aux_state_keys`` entry (an int for one key).
        aux_weight: weight of the auxiliary term in the loss.
        aux_target_noise: None: in training the conditioning carries the estimate, as when acting. A float
            sigma: it carries the true normalised target plus N(0, sigma^2) (teacher forcing: the denoiser
            learns from exact poses, and the noise prepares it for the estimate's error); validation and acting
            use the estimate.
        state_noise_std: Gaussian noise of this standard deviation (in the [-1, 1] units of the min-max
            normalisation) added to each frame's low-dimensional inputs in training batches; 0 (Chi et al.,
            LeRobot) trains on them as recorded. A named departure against over-fitting few demos from exact
            states (ACT's option of the same name): configs/diffusion/insertion_state.yaml measures it.
    """

    #: noise predictions leave the U-Net as float32 (``.float()``), so the sampler's update stays float32 under
    #: bfloat16 autocast
    INFERENCE_PRECISIONS = ("32", "bf16-mixed")

    def __init__(
        self,
        cameras: list[str] = ["top"],  # noqa: B006 - jsonargparse shows list defaults; never mutated
        state_dim: int | list[int] = 14,
        action_dim: int = 14,
        n_obs_steps: int = 2,
        horizon: int = 16,
        n_action_steps: int = 8,
        down_dims: list[int] = [256, 512, 1024],  # noqa: B006
        kernel_size: int = 5,
        n_groups: int = 8,
        diffusion_step_embed_dim: int = 128,
        film_scale: bool = True,
        crop_shape: list[int] | None = None,
        crop_ratio: float | None = 0.9,
        num_keypoints: int = 32,
        image_feature_dim: int = 64,
        noise_scheduler: str = "ddpm",
        num_train_timesteps: int = 100,
        beta_schedule: str = "squaredcos_cap_v2",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
        inference_scheduler: str = "ddpm",
        num_inference_steps: int | None = None,
        lr: float = 1e-4,
        betas: list[float] = [0.95, 0.999],  # noqa: B006
        weight_decay: float = 1e-6,
        warmup_steps: int = 500,
        max_steps: int | None = None,
        mask_padding: bool = False,
        num_uncertainty_samples: int = 8,
        seed: int = 0,
        channels_last: bool = True,
        fused_optimizer: bool = True,
        state_keys: list[str] = ["qpos"],  # noqa: B006
        augmentation: str = "crop",
        keypoint_relu: bool = True,
        state_min_range: float | None = None,
        vision_width: int = 64,
        aux_state_keys: list[str] = [],  # noqa: B006
        aux_state_dim: int | list[int] = 7,
        aux_weight: float = 1.0,
        aux_target_noise: float | None = None,
        initial_noise: str = "fresh",
        state_noise_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.state_keys = list(state_keys)
        state_dims = state_sizes(self.state_keys, state_dim)
        self.aux_state_keys = list(aux_state_keys)
        aux_dims = state_sizes(self.aux_state_keys, aux_state_dim) if self.aux_state_keys else []
        if set(self.aux_state_keys) & set(self.state_keys):
            raise ValueError(f"aux_state_keys {self.aux_state_keys} must not be inputs too (state_keys "
                             f"{self.state_keys})")
        if aux_target_noise is not None and not (self.aux_state_keys and aux_target_noise >= 0):
            raise ValueError(f"aux_target_noise needs aux_state_keys and a sigma >= 0, got {aux_target_noise} "
                             f"(aux_state_keys={self.aux_state_keys})")
        check_state_noise(state_noise_std)
        _check_horizons(n_obs_steps, horizon, n_action_steps)
        check_horizon(horizon, down_dims)
        if prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'sample', got {prediction_type!r}")
        self.cameras = list(cameras)
        self.n_obs_steps, self.horizon, self.n_action_steps = n_obs_steps, horizon, n_action_steps
        self.action_dim = action_dim
        if state_min_range is not None and not state_min_range > 0:
            raise ValueError(f"state_min_range must be positive (or None), got {state_min_range}")
        self.state_min_range = state_min_range

        self.obs_encoder = DiffusionObsEncoder(
            self.cameras, sum(state_dims), crop_shape=crop_shape, crop_ratio=crop_ratio, num_keypoints=num_keypoints,
            feature_dim=image_feature_dim, channels_last=channels_last, augmentation=augmentation,
            keypoint_relu=keypoint_relu, vision_width=vision_width, aux_dim=sum(aux_dims),
        )
        self.unet = ConditionalUnet1d(
            action_dim, self.obs_encoder.global_cond_dim(n_obs_steps), down_dims=down_dims,
            kernel_size=kernel_size, n_groups=n_groups, diffusion_step_embed_dim=diffusion_step_embed_dim,
            film_scale=film_scale,
        )
        self.register_policy_stats([*self.state_keys, *self.aux_state_keys], [*state_dims, *aux_dims], action_dim)

        sched_cfg = dict(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=clip_sample,
        )
        self.train_scheduler = build_scheduler(noise_scheduler, **sched_cfg)
        self.sampler = build_scheduler(inference_scheduler, **sched_cfg)
        if num_inference_steps is None:  # LeRobot: as many denoising steps as training steps
            num_inference_steps = num_train_timesteps
        self.num_inference_steps = int(num_inference_steps)

        self.sampling_generator = torch.Generator().manual_seed(seed)
        self.use_initial_noise(initial_noise)
        self._obs_queue: dict[str, deque[Tensor]] = {}
        self._action_queue: deque[Tensor] = deque()
        self._queue_uncertainty: Tensor | None = None

    normalization = "min_max"  # Chi et al.: states and actions to [-1, 1]

    def use_sampler(self, kind: str, num_inference_steps: int | None = None) -> None:
        """Sample with another inference scheduler ('ddpm' | 'ddim') and step count from now on, on the same
        trained model (the schedulers share the training configuration): compares samplers on one checkpoint."""
        hp = self.hparams
        self.sampler = build_scheduler(
            kind, num_train_timesteps=hp.num_train_timesteps, beta_start=hp.beta_start, beta_end=hp.beta_end,
            beta_schedule=hp.beta_schedule, prediction_type=hp.prediction_type, clip_sample=hp.clip_sample,
        )
        self.num_inference_steps = int(num_inference_steps or hp.num_train_timesteps)

    def use_initial_noise(self, kind: str) -> None:
        """Start each query's denoising from ``kind`` noise from now on ('fresh' | 'episode' | 'zero', see the
        ``initial_noise`` argument), on the same trained model."""
        if kind not in INITIAL_NOISE:
            raise ValueError(f"initial_noise must be one of {INITIAL_NOISE}, got {kind!r}")
        self.initial_noise = kind
        self._episode_noise: Tensor | None = None

    def use_action_steps(self, n_action_steps: int) -> None:
        """Execute ``n_action_steps`` (Ta) of each denoised window from now on, on the same trained model.

        Ta is a control setting, not a training one (the denoiser always predicts the whole horizon), so a
        finished run can be tested at another Ta: Chi et al. find Ta 8 best on their tasks; a smaller Ta
        re-plans more often (closer to closed loop) at more queries per episode. Queued actions are dropped.
        """
        _check_horizons(self.n_obs_steps, self.horizon, n_action_steps)
        self.n_action_steps = int(n_action_steps)
        self._action_queue.clear()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "DiffusionModule":
        """A module with preset ``name``'s arguments (``PRESETS``), ``overrides`` applied on top.

        Every value is passed explicitly, so the hyperparameters (and checkpoints) hold the effective
        configuration, not a preset name whose meaning could change.
        """
        return cls(**preset_kwargs(name, **overrides))

    def data_requirements(self) -> dict[str, tuple[str, Any, str]]:
        """Same cameras, state keys, observation history and action size; windows exactly ``horizon`` long."""
        return {
            "cameras": ("cameras", list(self.cameras), "=="),
            "state_keys": ("state_keys + aux_state_keys" if self.aux_state_keys else "state_keys",
                           [*self.state_keys, *self.aux_state_keys], "=="),
            "chunk_size": ("horizon", int(self.horizon), "=="),
            "n_obs_steps": ("n_obs_steps", int(self.n_obs_steps), "=="),
            "action_offset": ("n_obs_steps", -(int(self.n_obs_steps) - 1), "=="),  # windows start at t-To+1
            "action_dim": ("action_dim", int(self.action_dim), "=="),
        }

    # ---- observation encoding --------------------------------------------------------------------------
    def global_condition(self, obs: Mapping[str, Tensor]) -> Tensor:
        """History of each state key (B, To, D) raw + ``images/<cam>`` (B, To, H, W, 3) uint8 -> (B, G)."""
        return self.condition_and_aux(obs)[0]

    def condition_and_aux(self, obs: Mapping[str, Tensor],
                          aux_value: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """:meth:`global_condition` and the auxiliary estimate (B, To, sum of aux_state_dim), normalised (None
        without ``aux_state_keys``); ``aux_value`` replaces the estimate in the conditioning."""
        squeezed = self._history_squeezed(obs)
        state = torch.cat([self.normalizer.min_max(key, self._history(obs, key, squeezed).float(),
                                                   min_range=self.state_min_range) for key in self.state_keys], dim=-1)
        state = noisy_states(state, self.hparams.state_noise_std, self.training)
        images = {}
        for cam in self.cameras:
            frames = obs.get(f"images/{cam}")
            if frames is not None:
                images[cam] = frames.unsqueeze(1) if squeezed else frames
        return self.obs_encoder.encode(state, images, aux_value)

    def _history_squeezed(self, obs: Mapping[str, Tensor]) -> bool:
        """Datasets drop the To dimension when it is 1."""
        return obs[self.state_keys[0]].dim() == 2 and self.n_obs_steps == 1

    def _history(self, obs: Mapping[str, Tensor], key: str, squeezed: bool) -> Tensor:
        """``obs[key]`` as (B, To, D), checked."""
        if key not in obs:
            raise KeyError(f"the batch has no {key!r} (keys: {sorted(obs)})")
        value = obs[key].unsqueeze(1) if squeezed else obs[key]
        if value.dim() != 3 or value.shape[1] != self.n_obs_steps:
            raise ValueError(f"{key} must be (B, n_obs_steps={self.n_obs_steps}, D), got {tuple(obs[key].shape)}")
        return value

    def _aux_targets(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The auxiliary keys' history (B, To, sum of aux_state_dim), mean/std normalised (the std floor bounds a
        nearly constant quaternion entry; min-max would scale it up without bound)."""
        squeezed = self._history_squeezed(batch)
        return torch.cat([self.normalizer.mean_std(key, self._history(batch, key, squeezed).float())
                          for key in self.aux_state_keys], dim=-1)

    def _teacher_forced_aux(self, targets: Tensor | None) -> Tensor | None:
        """``aux_target_noise``: the noisy true targets for the conditioning in training; None otherwise."""
        return teacher_forced(targets, self.hparams.aux_target_noise, self.training)

    # ---- training --------------------------------------------------------------------------------------
    def per_sample_loss(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """(B,) denoising MSE over each sample's action window (its non-padded steps with ``mask_padding``),
        plus ``aux_weight`` times the auxiliary estimate's MSE with ``aux_state_keys``.

        ``generator`` (CPU) makes the noise and diffusion steps reproducible (validation); without it they
        come from torch's global generator on the batch's device (training).
        """
        return sum(self.per_sample_terms(batch, generator).values())

    def per_sample_terms(self, batch: Mapping[str, Tensor],
                         generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """{"denoise"} (and {"aux"}, weighted) per sample (B,): the terms of :meth:`per_sample_loss`."""
        action = batch["action"].float()
        b = action.shape[0]
        if action.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(
                f"action must be (B, horizon={self.horizon}, {self.action_dim}), got {tuple(action.shape)}"
            )
        is_pad = batch.get("action_is_pad")
        if is_pad is not None:
            action = edge_pad_actions(action, is_pad.bool())
        clean = self.normalizer.min_max("action", action)
        aux_targets = self._aux_targets(batch) if self.aux_state_keys else None
        cond, estimate = self.condition_and_aux(batch, self._teacher_forced_aux(aux_targets))
        terms = {}
        if estimate is not None:
            terms["aux"] = self.hparams.aux_weight * (estimate - aux_targets).square().mean(dim=(1, 2))

        if generator is None:
            noise = torch.randn_like(clean)
            steps = torch.randint(0, self.train_scheduler.config.num_train_timesteps, (b,), device=self.device)
        else:
            noise = torch.randn(clean.shape, generator=generator).to(self.device)
            steps = torch.randint(0, self.train_scheduler.config.num_train_timesteps, (b,), generator=generator)
            steps = steps.to(self.device)
        noisy = self.train_scheduler.add_noise(clean, noise, steps)
        predicted = self.unet(noisy, steps, cond).float()
        target = noise if self.hparams.prediction_type == "epsilon" else clean
        error = (predicted - target).square()
        if is_pad is None or not self.hparams.mask_padding:
            return {"denoise": error.mean(dim=(1, 2)), **terms}
        valid = (~is_pad.bool()).unsqueeze(-1)
        error = torch.where(valid, error, torch.zeros_like(error))
        denoise = error.sum(dim=(1, 2)) / (valid.sum(dim=(1, 2)) * self.action_dim).clamp_min(1)
        return {"denoise": denoise, **terms}

    def compute_loss(self, batch: Mapping[str, Tensor], weighted: bool = True,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """{"loss"} (and, with ``aux_state_keys``, its "aux" term): batch means of :meth:`per_sample_terms`,
        importance-weighted when asked."""
        weight = batch.get("weight") if weighted else None
        terms = self.per_sample_terms(batch, generator)
        out = {"loss": weighted_mean(sum(terms.values()), weight)}
        if "aux" in terms:
            out["aux"] = weighted_mean(terms["aux"], weight)
        return out

    def on_validation_epoch_start(self) -> None:
        # the same noise and steps every validation: epoch-to-epoch changes of val/loss are the model's
        self._val_generator = torch.Generator().manual_seed(self.hparams.seed)

    def on_test_epoch_start(self) -> None:
        self._val_generator = torch.Generator().manual_seed(self.hparams.seed)

    def evaluation_losses(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Unweighted, with noise and diffusion steps drawn from a generator re-seeded every epoch."""
        generator = getattr(self, "_val_generator", None)
        if generator is None:  # called outside a Trainer loop
            generator = self._val_generator = torch.Generator().manual_seed(self.hparams.seed)
        return self.compute_loss(batch, weighted=False, generator=generator)

    def on_fit_start(self) -> None:
        if not bool(self.stats_initialized):
            rank_zero_warn(
                "DiffusionModule: normalisation statistics were never loaded (no DataModule stats, no checkpoint);"
                " qpos and actions are assumed to lie in [-1, 1] already"
            )

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        fused = hp.fused_optimizer and self.device.type in ("cpu", "cuda")
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=hp.lr, betas=tuple(hp.betas), eps=1e-8, weight_decay=hp.weight_decay,
            fused=fused or None,
        )
        return {"optimizer": optimizer, "lr_scheduler": warmup_cosine(optimizer, hp.warmup_steps, hp.max_steps,
                                                                      self._trainer)}

    # ---- sampling ----------------------------------------------------------------------------------------
    def _start_noise(self, shape: tuple[int, int, int], generator: torch.Generator) -> Tensor:
        """The x_T a query denoises from, per ``initial_noise``."""
        if self.initial_noise == "zero":
            return torch.zeros(shape)
        if self.initial_noise == "fresh":
            return torch.randn(shape, generator=generator)
        if self._episode_noise is None or tuple(self._episode_noise.shape) != shape:
            self._episode_noise = torch.randn(shape, generator=generator)
        return self._episode_noise

    @torch.no_grad()
    def sample_normalized(self, global_cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Denoise (B, Tp, A) normalised action windows from Gaussian noise with the inference scheduler."""
        generator = self.sampling_generator if generator is None else generator
        shape = (global_cond.shape[0], self.horizon, self.action_dim)
        x = self._start_noise(shape, generator).to(global_cond.device)
        self.sampler.set_timesteps(self.num_inference_steps)
        for step in self.sampler.timesteps:
            eps = self.unet(x, step.to(x.device), global_cond).float()
            x = self.sampler.step(eps, step, x, generator=generator).prev_sample
        return x

    @torch.no_grad()
    def sample_actions(self, obs: Mapping[str, Tensor], num_samples: int = 1) -> Tensor:
        """Raw action windows (B, num_samples, Tp, A) for an observation history (training-batch layout)."""
        cond = self.global_condition(obs)
        cond = cond.repeat_interleave(num_samples, dim=0)
        chunks = self.sample_normalized(cond).reshape(-1, num_samples, self.horizon, self.action_dim)
        return self.normalizer.un_min_max("action", chunks)

    def plan_normalized(self, obs: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """The executed part [To-1, To-1+Ta) of one denoised window, normalised: (N, Ta, A) (see PolicyModule)."""
        window = self.sample_normalized(self.global_condition(obs), generator)
        start = self.n_obs_steps - 1
        return window[:, start : start + self.n_action_steps]

    # ---- the policy contract -----------------------------------------------------------------------------
    def reset(self, env_ids: Sequence[int] | Tensor | None = None, seed: int | None = None) -> None:
        """New episodes: empty the queues and re-seed the sampling noise (``seed`` defaults to the ``seed`` arg).

        Re-seeding makes every episode's sampling noise a function of the seed and the step alone, so a
        rollout evaluation is reproducible whatever ran before it. The queues hold all rows together, so
        ``env_ids`` must name every row (or be None).
        """
        rows = next(iter(self._obs_queue.values()))[-1].shape[0] if self._obs_queue else None
        require_all_rows(self, env_ids, rows)
        self._obs_queue = {}
        self._action_queue = deque()
        self._queue_uncertainty = None
        self._episode_noise = None
        self.sampling_generator.manual_seed(self.hparams.seed if seed is None else seed)

    def select_action(self, obs: Mapping[str, Any]) -> Tensor:
        """One control step for N envs: obs ``qpos`` (N, D), ``images/<cam>`` (N, H, W, 3) -> (N, A) raw."""
        return self._control_step(obs, num_samples=1)[0]

    def predict(self, obs: Mapping[str, Any]) -> Prediction:
        """The same step plus the spread of ``num_uncertainty_samples`` denoised chunks (per env).

        The uncertainty belongs to the chunk being executed: it is computed when the policy is queried and
        reported again for the following steps of that chunk. If the running chunk came from
        ``select_action`` (one sample, no spread), the policy is queried afresh.
        """
        if self._queue_uncertainty is None:
            self._action_queue.clear()
        action, uncertainty = self._control_step(obs, num_samples=max(2, self.hparams.num_uncertainty_samples))
        assert uncertainty is not None
        return Prediction(action=action, uncertainty=uncertainty)

    def _control_step(self, obs: Mapping[str, Any], num_samples: int) -> tuple[Tensor, Tensor | None]:
        with self.policy_mode():
            self._push_observation(self.obs_to_tensors(self._needed_obs(obs)))
            if not self._action_queue:
                self._plan(num_samples)
            return self._action_queue.popleft(), self._queue_uncertainty

    def _needed_obs(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """The observation entries the policy reads (others are never moved to the device)."""
        keys = [*self.state_keys, *(f"images/{cam}" for cam in self.cameras)]
        missing = [k for k in keys if k not in obs]
        if missing:
            raise KeyError(f"observation lacks {missing} (has {sorted(obs)})")
        return {k: obs[k] for k in keys}

    def _push_observation(self, obs: dict[str, Tensor]) -> None:
        """Append one env observation; right after ``reset()`` the first one fills the whole history."""
        keys = list(obs)
        first = self.state_keys[0]
        n = obs[first].shape[0]
        if self._obs_queue and self._obs_queue[first][-1].shape[0] != n:
            raise ValueError("the number of envs changed since the last step: call reset() between episodes")
        for key in keys:
            queue = self._obs_queue.setdefault(key, deque(maxlen=self.n_obs_steps))
            if not queue:
                queue.extend([obs[key]] * self.n_obs_steps)
            else:
                queue.append(obs[key])

    def _plan(self, num_samples: int) -> None:
        """Query the policy: denoise chunk(s) and enqueue the executable actions [To-1, To-1+Ta)."""
        history = {key: torch.stack(list(queue), dim=1) for key, queue in self._obs_queue.items()}
        chunks = self.sample_actions(history, num_samples)  # (N, S, Tp, A) raw
        start = self.n_obs_steps - 1
        window = chunks[:, :, start : start + self.n_action_steps]
        if num_samples > 1:
            spread = self.normalizer.min_max("action", window).std(dim=1)  # in [-1, 1] units, per step and dim
            self._queue_uncertainty = spread.mean(dim=(1, 2))
        else:
            self._queue_uncertainty = None
        self._action_queue.extend(window[:, 0].unbind(dim=1))


def _check_horizons(n_obs_steps: int, horizon: int, n_action_steps: int) -> None:
    if n_obs_steps < 1 or n_action_steps < 1:
        raise ValueError(f"n_obs_steps and n_action_steps must be >= 1, got {n_obs_steps}, {n_action_steps}")
    if n_obs_steps - 1 + n_action_steps > horizon:
        raise ValueError(
            f"the executed actions [n_obs_steps-1, n_obs_steps-1+n_action_steps) = [{n_obs_steps - 1}, "
            f"{n_obs_steps - 1 + n_action_steps}) do not fit in the horizon {horizon}"
        )
