"""DiffusionModule: schedulers, loss and masking, training, memorisation with DDIM, receding horizon."""

from __future__ import annotations

import io
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lit_imit.benchmarking import diffusion_batch, identity_stats
from lit_imit.modules.diffusion import (
    DiffusionModule,
    WarmupCosine,
    build_scheduler,
    edge_pad_actions,
)

TINY = dict(down_dims=[16, 32], diffusion_step_embed_dim=16, kernel_size=3, n_groups=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is many times faster than two when the CPU is shared (no OpenMP spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def state_only(**kw) -> DiffusionModule:
    args = dict(cameras=[], state_dim=4, action_dim=2, n_obs_steps=2, horizon=8, n_action_steps=4, **TINY)
    args.update(kw)
    module = DiffusionModule(**args)
    module.load_stats(identity_stats(args["state_dim"], args["action_dim"]))
    return module


# ---- configuration -------------------------------------------------------------------------------------
def test_scheduler_configs_match_diffusion_policy():
    """Defaults (Chi et al. / LeRobot): DDPM with all 100 steps for training and for sampling."""
    module = state_only()
    train, infer = module.train_scheduler.config, module.sampler.config
    assert type(module.train_scheduler).__name__ == "DDPMScheduler"
    assert type(module.sampler).__name__ == "DDPMScheduler"
    for cfg in (train, infer):
        assert cfg.num_train_timesteps == 100
        assert cfg.beta_schedule == "squaredcos_cap_v2"
        assert cfg.prediction_type == "epsilon"
        assert cfg.clip_sample is True and cfg.clip_sample_range == 1.0
        assert (cfg.beta_start, cfg.beta_end) == (1e-4, 0.02)
        assert cfg.variance_type == "fixed_small"
    assert module.hparams.inference_scheduler == "ddpm" and module.hparams.num_inference_steps is None
    assert module.num_inference_steps == 100
    module.sampler.set_timesteps(module.num_inference_steps)
    assert module.sampler.timesteps.tolist() == list(range(99, -1, -1))
    torch.testing.assert_close(module.train_scheduler.alphas_cumprod, module.sampler.alphas_cumprod)


def test_ddim_sampler_through_explicit_arguments():
    """The former default (DDIM, 10 steps) stays selectable and samples the same noise schedule."""
    module = state_only(inference_scheduler="ddim", num_inference_steps=10)
    assert type(module.train_scheduler).__name__ == "DDPMScheduler"
    assert type(module.sampler).__name__ == "DDIMScheduler"
    infer = module.sampler.config
    assert infer.set_alpha_to_one is True and infer.steps_offset == 0
    assert infer.num_train_timesteps == 100 and infer.clip_sample is True
    assert module.num_inference_steps == 10
    module.sampler.set_timesteps(module.num_inference_steps)
    assert module.sampler.timesteps.tolist() == list(range(90, -1, -10))
    # the same noise schedule for training and sampling
    torch.testing.assert_close(module.train_scheduler.alphas_cumprod, module.sampler.alphas_cumprod)
    actions = module.sample_actions({"qpos": torch.rand(2, 2, 4)})
    assert actions.shape == (2, 1, 8, 2) and torch.isfinite(actions).all()


def test_inference_steps_default_to_all_training_steps():
    """``num_inference_steps=None`` means ``num_train_timesteps`` for either sampler (LeRobot)."""
    assert state_only().num_inference_steps == 100
    assert state_only(inference_scheduler="ddpm").num_inference_steps == 100
    assert state_only(inference_scheduler="ddim").num_inference_steps == 100
    assert state_only(num_train_timesteps=50).num_inference_steps == 50
    assert state_only(inference_scheduler="ddim", num_inference_steps=8).num_inference_steps == 8
    with pytest.raises(ValueError, match="unknown scheduler"):
        build_scheduler("euler")
    with pytest.raises(ValueError, match="unknown scheduler"):
        state_only(inference_scheduler="euler")


def test_invalid_horizons_are_rejected():
    with pytest.raises(ValueError, match="multiple of 2"):
        state_only(horizon=7, n_action_steps=2)
    with pytest.raises(ValueError, match="do not fit"):
        state_only(horizon=8, n_obs_steps=3, n_action_steps=7)


def test_hparams_and_state_dict_are_plain_and_weights_only_loadable():
    module = state_only(num_inference_steps=10)
    plain = (int, float, str, bool, type(None), list)
    assert all(isinstance(v, plain) for v in module.hparams.values()), dict(module.hparams)
    assert all(isinstance(v, torch.Tensor) for v in module.state_dict().values())
    assert {"normalizer.qpos_min", "normalizer.action_max", "normalizer.initialized"} <= set(module.state_dict())
    buffer = io.BytesIO()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    clone = DiffusionModule(**loaded["hyper_parameters"])
    clone.load_state_dict(loaded["state_dict"])
    obs = {"qpos": torch.rand(3, 2, 4)}
    module.sampling_generator.manual_seed(1)
    clone.sampling_generator.manual_seed(1)
    assert torch.equal(module.sample_actions(obs), clone.sample_actions(obs))


def test_warmup_cosine_schedule_values():
    f = WarmupCosine(500, 1500)
    assert f(0) == pytest.approx(1 / 500) and f(499) == pytest.approx(1.0)
    assert f(500) == pytest.approx(1.0)
    assert f(1000) == pytest.approx(0.5)
    assert f(1500) == pytest.approx(0.0) and f(3000) == 0.0
    assert WarmupCosine(10, None)(10_000) == 1.0


def test_optimizer_settings():
    module = state_only(max_steps=2000)
    cfg = module.configure_optimizers()
    opt = cfg["optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["betas"] == (0.95, 0.999) and group["weight_decay"] == 1e-6 and group["eps"] == 1e-8
    assert group["fused"] is True
    assert cfg["lr_scheduler"]["interval"] == "step"
    sched = cfg["lr_scheduler"]["scheduler"]
    assert sched.lr_lambdas[0].warmup == 500 and sched.lr_lambdas[0].total == 2000
    assert group["lr"] == pytest.approx(1e-4 / 500)  # first step of the warm-up


# ---- loss ----------------------------------------------------------------------------------------------
def test_edge_padding_repeats_the_nearest_valid_action():
    action = torch.arange(6.0).view(1, 6, 1).repeat(1, 1, 2)
    is_pad = torch.tensor([[True, False, False, False, True, True]])
    out = edge_pad_actions(action, is_pad)
    assert out[0, :, 0].tolist() == [1.0, 1.0, 2.0, 3.0, 3.0, 3.0]


class ZeroNet(torch.nn.Module):
    """Predicts zero noise: the loss is then exactly the mean square of the drawn noise."""

    def forward(self, x, t, cond):
        return torch.zeros_like(x)


def test_loss_is_unmasked_by_default():
    """LeRobot's ``do_mask_loss_for_padding=False``: every step of the window counts, padded ones included."""
    module = state_only()
    assert module.hparams.mask_padding is False
    module.unet = ZeroNet()
    batch = {"qpos": torch.zeros(2, 2, 4), "action": torch.zeros(2, 8, 2),
             "action_is_pad": torch.zeros(2, 8, dtype=torch.bool)}
    batch["action_is_pad"][1, 5:] = True
    loss = module.per_sample_loss(batch, torch.Generator().manual_seed(0))
    noise = torch.randn((2, 8, 2), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, noise.square().mean(dim=(1, 2)))


def test_padding_is_masked_in_the_loss():
    module = state_only(mask_padding=True)
    module.unet = ZeroNet()
    batch = {"qpos": torch.zeros(2, 2, 4), "action": torch.zeros(2, 8, 2),
             "action_is_pad": torch.zeros(2, 8, dtype=torch.bool)}
    batch["action_is_pad"][1, 5:] = True
    loss = module.per_sample_loss(batch, torch.Generator().manual_seed(0))
    noise = torch.randn((2, 8, 2), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss[0], noise[0].square().mean())
    torch.testing.assert_close(loss[1], noise[1, :5].square().mean())  # only the 5 valid steps

    # whatever the dataset put in the padded slots (even NaN) cannot reach the loss, masked or not
    batch["action"][1, 5:] = float("nan")
    for mask_padding in (True, False):
        again = state_only(mask_padding=mask_padding)
        torch.testing.assert_close(
            again.per_sample_loss(batch, torch.Generator().manual_seed(3)),
            again.per_sample_loss({**batch, "action": batch["action"].nan_to_num(7.0)},
                                  torch.Generator().manual_seed(3)),
        )


class WildOnPaddedSteps(torch.nn.Module):
    """Predicts zero noise, except a wild value on the steps marked in ``pad`` (the padded ones)."""

    def __init__(self, pad: torch.Tensor) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x, t, cond):
        return torch.where(self.pad[:, :, None], torch.full_like(x, 1e3), torch.zeros_like(x))


def test_a_wild_padded_step_changes_the_unmasked_loss_only():
    batch = {"qpos": torch.zeros(2, 2, 4), "action": torch.zeros(2, 8, 2),
             "action_is_pad": torch.zeros(2, 8, dtype=torch.bool)}
    batch["action_is_pad"][1, 5:] = True
    noise = torch.randn((2, 8, 2), generator=torch.Generator().manual_seed(0))
    losses = {}
    for mask_padding in (False, True):
        module = state_only(mask_padding=mask_padding)
        module.unet = WildOnPaddedSteps(batch["action_is_pad"])
        losses[mask_padding] = module.per_sample_loss(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(losses[True][1], noise[1, :5].square().mean())  # the wild steps are left out
    assert losses[False][1] > 1e5  # the unmasked loss counts them
    torch.testing.assert_close(losses[False][0], losses[True][0])  # no padding: both the same
    torch.testing.assert_close(losses[False][0], noise[0].square().mean())


def test_training_step_weights_samples():
    module = state_only()
    batch = diffusion_batch(batch_size=4, horizon=8, cameras=(), state_dim=4, action_dim=2)
    batch["weight"] = torch.tensor([1.0, 0.0, 3.0, 0.0])
    torch.manual_seed(5)
    per_sample = module.per_sample_loss(batch)
    torch.manual_seed(5)
    loss = module.training_step(batch, 0)
    torch.testing.assert_close(loss, (per_sample[0] + 3 * per_sample[2]) / 4)


def test_validation_noise_is_reproducible():
    module = state_only()
    batch = diffusion_batch(batch_size=4, horizon=8, cameras=(), state_dim=4, action_dim=2)
    module.on_validation_epoch_start()
    first = module.validation_step(batch, 0)
    module.on_validation_epoch_start()
    assert torch.equal(first, module.validation_step(batch, 0))


# ---- training ------------------------------------------------------------------------------------------
def synthetic_windows(n_episodes=3, length=12, n_obs=2, horizon=8, hw=(48, 48), camera=True):
    """Windows over smooth fake episodes (action at t = qpos at t+1) with camera frames, as a dataset yields."""
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(n_episodes):
        qpos = np.cumsum(rng.normal(0, 0.1, size=(length + 1, 4)), axis=0).astype(np.float32)
        action = qpos[1:, :2]
        frames = rng.integers(0, 255, size=(length, *hw, 3), dtype=np.uint8)
        for t in range(length):
            obs_steps = np.clip(np.arange(t - n_obs + 1, t + 1), 0, None)
            steps = np.arange(t - n_obs + 1, t - n_obs + 1 + horizon)
            sample = {
                "qpos": torch.from_numpy(qpos[obs_steps]),
                "action": torch.from_numpy(action[np.clip(steps, 0, length - 1)]),
                "action_is_pad": torch.from_numpy(steps >= length),
                "weight": torch.tensor(1.0),
            }
            if camera:
                sample["images/top"] = torch.from_numpy(frames[obs_steps])
            samples.append(sample)
    return samples


def stats_of(samples):
    q = torch.cat([s["qpos"] for s in samples])
    a = torch.cat([s["action"] for s in samples])
    return {
        k: {"mean": v.mean(0), "std": v.std(0), "min": v.amin(0), "max": v.amax(0)}
        for k, v in (("qpos", q), ("action", a))
    }


def fit_and_measure(module, samples, steps, tmp_path) -> tuple[float, float]:
    """Denoising loss on all samples (fixed noise) before and after ``steps`` Trainer steps."""
    module.load_stats(stats_of(samples))
    eval_batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}

    def loss_now() -> float:
        module.eval()
        with torch.no_grad():
            return module.per_sample_loss(eval_batch, torch.Generator().manual_seed(0)).mean().item()

    before = loss_now()
    module.train()  # Lightning keeps the modules' mode as it finds them
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(module, DataLoader(samples, batch_size=12, shuffle=True))
    assert "train/loss" in trainer.callback_metrics
    return before, loss_now()


def test_denoising_loss_falls_with_the_trainer_on_synthetic_episodes(tmp_path):
    torch.manual_seed(0)
    module = DiffusionModule(cameras=[], state_dim=4, action_dim=2, horizon=8, n_action_steps=4, lr=3e-3,
                             warmup_steps=5, **TINY)
    before, after = fit_and_measure(module, synthetic_windows(camera=False), 150, tmp_path)
    assert math.isfinite(after) and after < 0.6 * before, (before, after)


@pytest.mark.slow
def test_denoising_loss_falls_with_a_camera(tmp_path):
    torch.manual_seed(0)
    module = DiffusionModule(cameras=["top"], state_dim=4, action_dim=2, horizon=8, n_action_steps=4,
                             crop_shape=[40, 40], num_keypoints=8, image_feature_dim=8, lr=3e-3, warmup_steps=5,
                             **TINY)
    before, after = fit_and_measure(module, synthetic_windows(), 120, tmp_path)
    assert math.isfinite(after) and after < 0.6 * before, (before, after)


def test_gradients_reach_the_camera_encoder():
    torch.manual_seed(0)
    module = DiffusionModule(cameras=["top"], state_dim=4, action_dim=2, horizon=8, n_action_steps=4,
                             crop_shape=[40, 40], num_keypoints=4, image_feature_dim=4, **TINY)
    samples = synthetic_windows(n_episodes=1, length=4)
    module.load_stats(stats_of(samples))
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    module.per_sample_loss(batch).mean().backward()
    encoder = module.obs_encoder.encoders["top"]
    for part in (encoder.trunk[0], encoder.keypoints.keypoint_conv, encoder.project):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0


def test_vision_width_narrows_every_stage_of_the_camera_resnet():
    """vision_width 64 is torchvision's ResNet-18 (same names and shapes); 16 has stages of 16..128 channels,
    the same layers, and still trains end to end (gradients reach the stem)."""
    import torchvision

    from lit_imit.nets.diffusion_obs import narrow_resnet18_trunk

    reference = torch.nn.Sequential(*list(torchvision.models.resnet18(weights=None).children())[:-2])
    assert {k: v.shape for k, v in narrow_resnet18_trunk(64).state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    torch.manual_seed(0)
    kw = dict(cameras=["top"], state_dim=4, action_dim=2, horizon=8, n_action_steps=4, crop_shape=[40, 40],
              num_keypoints=4, image_feature_dim=4, **TINY)
    standard, narrow = DiffusionModule(**kw), DiffusionModule(**kw, vision_width=16)
    trunk = narrow.obs_encoder.encoders["top"].trunk
    assert [trunk[i][0].conv1.out_channels for i in range(4, 8)] == [16, 32, 64, 128]
    assert narrow.obs_encoder.encoders["top"].keypoints.keypoint_conv.in_channels == 128
    assert [k for k in narrow.state_dict()] == [k for k in standard.state_dict()]
    count = lambda m: sum(p.numel() for p in m.obs_encoder.parameters())  # noqa: E731
    assert count(narrow) < count(standard) / 10
    samples = synthetic_windows(n_episodes=1, length=4)
    narrow.load_stats(stats_of(samples))
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    narrow.per_sample_loss(batch).mean().backward()
    assert trunk[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="width must be >= 1"):
        narrow_resnet18_trunk(0)


def test_camera_features_pass_a_relu_after_the_keypoint_projection():
    """LeRobot's DiffusionRgbEncoder returns ``relu(out(keypoints))``: the per-camera features are >= 0."""
    torch.manual_seed(0)
    kw = dict(cameras=["top"], state_dim=4, action_dim=2, horizon=8, n_action_steps=4, crop_shape=[40, 40],
              num_keypoints=4, image_feature_dim=16, **TINY)
    module = DiffusionModule(**kw).eval()
    with torch.no_grad():  # a bias that makes about half the linear features negative
        module.obs_encoder.encoders["top"].project.bias.copy_(torch.linspace(-1, 1, 16))
    images = torch.randint(0, 256, (3, 2, 48, 48, 3), dtype=torch.uint8)
    cond = module.global_condition({"qpos": torch.zeros(3, 2, 4), "images/top": images}).view(3, 2, 4 + 16)
    features = cond[..., 4:]
    assert (features >= 0).all() and (features == 0).any()

    linear = DiffusionModule(**kw, keypoint_relu=False).eval()  # act-plus-plus / the encoder before the ReLU
    linear.load_state_dict(module.state_dict())  # the ReLU adds no parameters: the same state dict
    raw = linear.global_condition({"qpos": torch.zeros(3, 2, 4), "images/top": images}).view(3, 2, 20)[..., 4:]
    assert (raw < 0).any()
    torch.testing.assert_close(features, raw.clamp_min(0))


def test_checkpoint_of_the_old_layout_loads():
    """Hyperparameters saved before ``augmentation``/``keypoint_relu`` existed still build the module and its
    state dict loads strictly (the ReLU and the augmentation add no parameters)."""
    kw = dict(cameras=["top"], state_dim=4, action_dim=2, horizon=8, n_action_steps=4, crop_shape=[40, 40],
              num_keypoints=4, image_feature_dim=8, inference_scheduler="ddim", num_inference_steps=10,
              mask_padding=True, **TINY)
    old = DiffusionModule(**kw)
    hparams = {k: v for k, v in old.hparams.items() if k not in ("augmentation", "keypoint_relu")}
    buffer = io.BytesIO()
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": hparams}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    clone = DiffusionModule(**loaded["hyper_parameters"])
    assert clone.load_state_dict(loaded["state_dict"], strict=True) is not None
    assert set(clone.state_dict()) == set(old.state_dict())
    assert clone.obs_encoder.augmentation == "crop" and clone.obs_encoder.encoders["top"].relu is True


def memorised_model():
    """A tiny state-only model overfitted on 2 fixed (observation, chunk) pairs."""
    torch.manual_seed(0)
    module = state_only(down_dims=[64], diffusion_step_embed_dim=32, kernel_size=5, inference_scheduler="ddim",
                        num_inference_steps=10)
    g = torch.Generator().manual_seed(1)
    qpos = (torch.rand(2, 1, 4, generator=g) * 2 - 1).repeat(1, 2, 1)  # a repeated frame, as after reset()
    t = torch.linspace(0, 1, 8)[None, :, None]
    chunks = 0.7 * torch.sin((torch.rand(2, 1, 2, generator=g) * 3 + 1) * 3 * t + torch.rand(2, 1, 2, generator=g) * 6)
    batch = {"qpos": qpos.repeat(16, 1, 1), "action": chunks.repeat(16, 1, 1)}
    steps = 400
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        loss = module.per_sample_loss(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return module.eval(), qpos, chunks


@pytest.fixture(scope="module")
def memorised():
    return memorised_model()


def test_ddim_sampling_reproduces_a_memorised_chunk(memorised):
    module, qpos, chunks = memorised
    assert (chunks[0] - chunks[1]).abs().max() > 0.5, "the two chunks must be distinguishable"
    for seed in range(3):
        module.sampling_generator.manual_seed(seed)
        sampled = module.sample_actions({"qpos": qpos})[:, 0]
        err = (sampled - chunks).abs().amax(dim=(1, 2))
        assert (err < 0.1).all(), f"seed {seed}: max abs error per pair {err.tolist()}"


def test_default_ddpm_sampling_reproduces_a_memorised_chunk(memorised):
    """The default sampler (DDPM, all 100 steps, stochastic) on the same weights also finds the chunks."""
    trained, qpos, chunks = memorised
    module = state_only(down_dims=[64], diffusion_step_embed_dim=32, kernel_size=5)
    module.load_state_dict(trained.state_dict())
    module.eval()
    assert type(module.sampler).__name__ == "DDPMScheduler" and module.num_inference_steps == 100
    for seed in range(2):
        module.sampling_generator.manual_seed(seed)
        sampled = module.sample_actions({"qpos": qpos})[:, 0]
        err = (sampled - chunks).abs().amax(dim=(1, 2))
        assert (err < 0.1).all(), f"seed {seed}: max abs error per pair {err.tolist()}"


def test_predict_uncertainty_is_low_on_memorised_obs_and_high_untrained(memorised):
    module, qpos, chunks = memorised
    module.reset()
    pred = module.predict({"qpos": qpos[:, -1].numpy()})
    assert pred.action.shape == (2, 2) and pred.uncertainty.shape == (2,)
    torch.testing.assert_close(pred.action, chunks[:, 1], atol=0.1, rtol=0)  # step To-1 of the window
    untrained = state_only(down_dims=[64], diffusion_step_embed_dim=32, kernel_size=5, inference_scheduler="ddim",
                           num_inference_steps=10)
    untrained.reset()
    raw = untrained.predict({"qpos": qpos[:, -1]})
    assert pred.uncertainty.max() < 0.1 < 0.2 < raw.uncertainty.min(), (pred.uncertainty, raw.uncertainty)


def test_sampling_is_seeded():
    module = state_only(num_inference_steps=10)  # DDPM draws fresh noise at every step from the generator
    obs = {"qpos": torch.rand(3, 4)}
    module.reset()
    first = [module.select_action(obs) for _ in range(6)]
    module.reset()
    again = [module.select_action(obs) for _ in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    module.reset(seed=123)
    other = module.select_action(obs)
    assert not torch.equal(other, first[0])


def test_initial_noise_fresh_per_query_one_per_episode_or_zero():
    """Under deterministic DDIM the window is a function of the observation and x_T: 'fresh' draws x_T per query
    (two queries on one observation differ), 'episode' reuses the episode's draw until ``reset`` (equal windows,
    and the same draw as the first query of a fresh-noise episode), 'zero' denoises from zeros every time."""
    module = state_only(inference_scheduler="ddim", num_inference_steps=4)
    cond = module.global_condition({"qpos": torch.rand(3, 2, 4)})
    module.reset()
    first, second = module.sample_normalized(cond), module.sample_normalized(cond)
    assert not torch.equal(first, second)
    module.use_initial_noise("episode")
    module.reset()
    same = [module.sample_normalized(cond) for _ in range(3)]
    assert torch.equal(same[0], first) and all(torch.equal(w, first) for w in same)
    assert not torch.equal(module.sample_normalized(cond[:2]), first[:2])  # another batch shape: a new draw
    module.reset(seed=7)
    assert not torch.equal(module.sample_normalized(cond), first)
    module.use_initial_noise("zero")
    from_zeros = module.sample_normalized(cond)
    module.reset(seed=8)
    assert torch.equal(module.sample_normalized(cond), from_zeros) and not torch.equal(from_zeros, first)
    with pytest.raises(ValueError, match="initial_noise must be one of"):
        state_only(initial_noise="warm")
    assert state_only(initial_noise="zero").initial_noise == "zero"


def test_state_noise_perturbs_the_training_condition_only():
    """state_noise_std: training batches condition on the normalised states plus N(0, std^2) per entry, fresh per
    batch; eval mode (validation, acting) conditions on them as given."""
    torch.manual_seed(0)
    module = state_only(state_noise_std=0.5)
    obs = {"qpos": torch.rand(20000, 2, 4)}
    module.eval()
    clean = module.global_condition(obs)
    assert torch.equal(module.global_condition(obs), clean)
    module.train()
    shift = module.global_condition(obs) - clean
    assert abs(shift.std().item() - 0.5) < 0.01 and abs(shift.mean().item()) < 0.01
    assert not torch.equal(module.global_condition(obs), module.global_condition(obs))
    assert torch.equal(state_only().train().global_condition(obs), state_only().eval().global_condition(obs))
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="state_noise_std"):
            state_only(state_noise_std=bad)


def test_bf16_inference_denoises_with_a_bfloat16_unet_and_a_float32_sampler():
    module = state_only(inference_scheduler="ddim", num_inference_steps=4)
    dtypes = []
    module.unet.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    obs = {"qpos": torch.rand(3, 4)}
    module.reset()
    fp32 = module.select_action(obs)
    module.set_inference_precision("bf16-mixed")
    module.reset()
    bf16 = module.select_action(obs)
    assert dtypes == [torch.float32] * 4 + [torch.bfloat16] * 4
    assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)
    assert torch.allclose(fp32, bf16, atol=0.05)  # the same noise, the same chunk up to bfloat16 rounding
    with pytest.raises(ValueError, match="acts in precision"):
        state_only().set_inference_precision("16-mixed")


def test_use_action_steps_changes_how_often_a_trained_policy_replans():
    """use_action_steps(Ta) on a built module: windows are then sliced [To-1, To-1+Ta) with the new Ta and the
    policy queries every Ta steps; a Ta past the horizon is refused and leaves the old one in place."""
    module = state_only(n_obs_steps=2, horizon=8, n_action_steps=4)
    calls = []

    def fake_sample(obs, num_samples=1):
        calls.append(len(calls))
        n = obs["qpos"].shape[0]
        return (torch.arange(8.0).view(1, 1, 8, 1).expand(n, num_samples, 8, 2) + 100 * calls[-1]).clone()

    module.sample_actions = fake_sample
    module.reset()
    obs = {"qpos": np.zeros((1, 4), dtype=np.float32)}
    module.select_action(obs)  # a 4-action window is queued ...
    module.use_action_steps(2)  # ... and dropped: the next step plans with Ta 2
    got = [module.select_action(obs)[0, 0].item() for _ in range(5)]
    assert got == [101, 102, 201, 202, 301] and module.n_action_steps == 2
    with pytest.raises(ValueError, match="do not fit in the horizon"):
        module.use_action_steps(8)
    assert module.n_action_steps == 2


def test_reset_of_some_rows_is_refused_because_the_queues_hold_all_rows():
    module = state_only(num_inference_steps=2)
    module.select_action({"qpos": torch.rand(3, 4)})
    with pytest.raises(ValueError, match=r"cannot reset rows \[1\] alone"):
        module.reset(env_ids=[1])
    module.reset(env_ids=torch.arange(3))  # all rows: fine
    assert not module._action_queue


# ---- acting --------------------------------------------------------------------------------------------
def test_receding_horizon_queries_every_n_action_steps_and_returns_the_right_slice():
    module = state_only(n_obs_steps=2, horizon=8, n_action_steps=3)
    histories = []

    def fake_sample(obs, num_samples=1):
        histories.append(obs["qpos"][:, :, 0].clone())
        call = len(histories) - 1
        n = obs["qpos"].shape[0]
        window = torch.arange(8.0).view(1, 1, 8, 1).expand(n, num_samples, 8, 2) + 100 * call
        return window.clone()

    module.sample_actions = fake_sample
    module.reset()
    actions = []
    for step in range(7):
        obs = {"qpos": np.full((2, 4), float(step), dtype=np.float32)}
        actions.append(module.select_action(obs))
    assert [a[0, 0].item() for a in actions] == [1, 2, 3, 101, 102, 103, 201]  # indices [To-1, To-1+Ta)
    assert all(a.shape == (2, 2) for a in actions)
    assert len(histories) == 3  # queried at steps 0, 3, 6
    assert histories[0][0].tolist() == [0.0, 0.0]  # first observation repeated after reset
    assert histories[1][0].tolist() == [2.0, 3.0]  # the last To observations
    assert histories[2][0].tolist() == [5.0, 6.0]
    module.reset()
    module.select_action({"qpos": np.full((2, 4), 9.0, dtype=np.float32)})
    assert histories[-1][0].tolist() == [9.0, 9.0]
    with pytest.raises(ValueError, match="reset"):
        module.select_action({"qpos": np.zeros((3, 4), dtype=np.float32)})


def test_select_action_with_a_camera_and_restores_training_mode():
    module = DiffusionModule(cameras=["top"], state_dim=4, action_dim=2, horizon=8, n_action_steps=4,
                             crop_ratio=0.9, num_keypoints=4, image_feature_dim=4, **TINY)
    module.load_stats(identity_stats(4, 2))
    module.train()
    module.reset()
    obs = {"qpos": np.zeros((2, 4), np.float32), "images/top": np.zeros((2, 64, 64, 3), np.uint8)}
    action = module.select_action(obs)
    assert action.shape == (2, 2) and torch.isfinite(action).all()
    assert module.training, "select_action must restore the training mode"
    with pytest.raises(KeyError, match="images/top"):
        module.reset()
        module.select_action({"qpos": obs["qpos"]})


def test_actions_are_unnormalised_with_the_stats():
    module = state_only()
    stats = identity_stats(4, 2)
    stats["action"]["min"] = torch.tensor([10.0, -5.0])
    stats["action"]["max"] = torch.tensor([12.0, -4.0])
    module.load_stats(stats)
    module.reset()
    action = module.select_action({"qpos": torch.zeros(5, 4)})
    # clip_sample keeps normalised samples in [-1, 1], so raw actions stay inside the data range
    assert (action[:, 0] >= 10 - 1e-4).all() and (action[:, 0] <= 12 + 1e-4).all()
    assert (action[:, 1] >= -5 - 1e-4).all() and (action[:, 1] <= -4 + 1e-4).all()


def test_diffusion_batch_layout():
    batch = diffusion_batch(batch_size=2, image_shape=(48, 64))
    assert batch["qpos"].shape == (2, 2, 14) and batch["action"].shape == (2, 16, 14)
    assert batch["images/top"].shape == (2, 2, 48, 64, 3) and batch["images/top"].dtype == torch.uint8
    assert batch["action_is_pad"].dtype == torch.bool and batch["weight"].shape == (2,)


def test_checkpoint_with_ema_loads_alone_and_runs_the_averaged_policy(tmp_path):
    from callbacks.ema import EMA

    torch.manual_seed(0)
    samples = synthetic_windows(camera=False)
    module = DiffusionModule(cameras=[], state_dim=4, action_dim=2, horizon=8, n_action_steps=4, lr=3e-3,
                             warmup_steps=2, num_inference_steps=10, **TINY)
    module.load_stats(stats_of(samples))
    ema = EMA()
    trainer = pl.Trainer(max_steps=6, callbacks=[ema], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(samples, batch_size=12), DataLoader(samples, batch_size=12))
    assert "val/loss" in trainer.callback_metrics
    path = tmp_path / "dp.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # what LightningCLI does at parse time
    assert ckpt["lr_schedulers"][0]["lr_lambdas"][0] == {"warmup": 2, "total": 6}
    alone = DiffusionModule.load_from_checkpoint(path, weights_only=True)
    assert bool(alone.stats_initialized)
    torch.testing.assert_close(alone.normalizer.stat("action", "max"), module.normalizer.stat("action", "max"))
    obs = {"qpos": samples[0]["qpos"][-1:].numpy()}
    alone.reset()
    module.reset()
    with ema.averaged(module):
        expected = module.select_action(obs)
    assert torch.equal(alone.select_action(obs), expected)
    module.reset()
    assert not torch.equal(module.select_action(obs), expected), "the live weights should act differently"


def test_trains_on_the_project_dataset_layout(episode_store):
    """ChunkDataset windows (history of 2, actions from the first observation step) feed the module as is."""
    from lit_imit.data.datasets import ChunkDataset, compute_stats

    dataset = ChunkDataset(episode_store, episode_store.ids(), camera_keys=("top",), chunk_size=8, n_obs_steps=2,
                           action_offset=-1)
    module = DiffusionModule(cameras=["top"], horizon=8, n_action_steps=4, crop_ratio=0.9, num_keypoints=4,
                             image_feature_dim=4, **TINY)
    module.load_stats(compute_stats(dataset.lowdim, ["qpos", "action"]))
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()


def test_use_sampler_swaps_the_inference_scheduler_on_the_same_model():
    from diffusers import DDIMScheduler, DDPMScheduler

    module = state_only(inference_scheduler="ddim", num_inference_steps=10)
    assert isinstance(module.sampler, DDIMScheduler) and module.num_inference_steps == 10
    cond = torch.zeros(1, module.obs_encoder.global_cond_dim(2))
    module.use_sampler("ddpm", 100)
    assert isinstance(module.sampler, DDPMScheduler) and module.num_inference_steps == 100
    assert module.sampler.config.beta_schedule == module.hparams.beta_schedule
    module.sampler.set_timesteps(module.num_inference_steps)
    assert len(module.sampler.timesteps) == 100
    out = module.sample_normalized(cond, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 8, 2) and bool(torch.isfinite(out).all())
    with pytest.raises(ValueError, match="unknown scheduler"):
        module.use_sampler("euler", 10)


# ---- auxiliary state estimate (aux_state_keys) ----------------------------------------------------------
def _aux_module(**overrides) -> DiffusionModule:
    """One camera, qpos (4) input, a 7-value env_state the keypoints must estimate; random mean/std statistics."""
    kw = dict(cameras=["top"], state_dim=4, action_dim=2, horizon=8, n_action_steps=4, crop_shape=[40, 40],
              num_keypoints=4, image_feature_dim=8, vision_width=8, channels_last=False,
              aux_state_keys=["env_state"], aux_state_dim=7, **TINY)
    kw.update(overrides)
    module = DiffusionModule(**kw)
    g = torch.Generator().manual_seed(1)
    module.load_stats({key: {"mean": torch.randn(d, generator=g), "std": torch.rand(d, generator=g) + 0.5,
                             "min": -torch.ones(d), "max": torch.ones(d)}
                       for key, d in (("qpos", 4), ("env_state", 7), ("action", 2))})
    return module


def _aux_batch(b: int = 3) -> dict:
    g = torch.Generator().manual_seed(2)
    return {"qpos": torch.randn(b, 2, 4, generator=g), "env_state": torch.randn(b, 2, 7, generator=g),
            "images/top": torch.randint(0, 256, (b, 2, 48, 48, 3), dtype=torch.uint8, generator=g),
            "action": torch.rand(b, 8, 2, generator=g) * 2 - 1}


def test_aux_estimate_is_regressed_and_joins_the_conditioning_detached():
    """The aux term is aux_weight times the MSE of the keypoint MLP against the mean/std-normalised env_state of
    every frame; the estimate is the last aux_dim entries of each frame's conditioning; the denoising loss does not
    train the head, the aux term does and reaches the ResNet; acting needs no env_state."""
    torch.manual_seed(0)
    module = _aux_module(aux_weight=0.5).eval()  # centre crops: every call sees the same pixels
    batch = _aux_batch()
    cond, estimate = module.condition_and_aux(batch)
    assert estimate.shape == (3, 2, 7)
    step = module.obs_encoder.step_dim
    assert step == 4 + 8 + 7 and cond.shape == (3, 2 * step)
    torch.testing.assert_close(cond.view(3, 2, step)[..., -7:], estimate.detach())
    stats = module.normalizer
    target = (batch["env_state"] - stats.stat("env_state", "mean")) / stats.stat("env_state", "std")
    terms = module.per_sample_terms(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(terms["aux"], 0.5 * (estimate - target).square().mean(dim=(1, 2)))
    losses = module.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(losses["loss"], (terms["denoise"] + terms["aux"]).mean())
    torch.testing.assert_close(losses["aux"], terms["aux"].mean())
    terms["denoise"].mean().backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in module.obs_encoder.aux_head.parameters())
    module.zero_grad()
    terms["aux"].mean().backward()
    assert all(p.grad.abs().sum() > 0 for p in module.obs_encoder.aux_head.parameters())
    trunk = module.obs_encoder.encoders["top"].trunk
    assert trunk[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in module.unet.parameters())
    assert module.data_requirements()["state_keys"][1] == ["qpos", "env_state"]
    module.reset()
    obs = {"qpos": torch.zeros(2, 4), "images/top": torch.zeros(2, 48, 48, 3, dtype=torch.uint8)}
    assert module.select_action(obs).shape == (2, 2)  # no env_state in the observation
    del batch["env_state"]
    with pytest.raises(KeyError, match="env_state"):
        module.compute_loss(batch)


def test_aux_target_noise_teacher_forces_the_conditioning_in_training_only():
    """sigma 0: in training the conditioning carries exactly the normalised target; in eval the estimate."""
    torch.manual_seed(0)
    module = _aux_module(aux_target_noise=0.0)
    batch = _aux_batch()
    captured = []
    handle = module.unet.register_forward_hook(lambda mod, args, out: captured.append(args[2].detach().clone()))
    module.train()
    module.compute_loss(batch)
    step = module.obs_encoder.step_dim
    torch.testing.assert_close(captured[-1].view(3, 2, step)[..., -7:], module._aux_targets(batch))
    module.eval()
    module.compute_loss(batch)
    estimate = module.condition_and_aux(batch)[1]
    torch.testing.assert_close(captured[-1].view(3, 2, step)[..., -7:], estimate)
    handle.remove()
    noisy = _aux_module(aux_target_noise=0.5)
    target = noisy._aux_targets(batch)
    assert not torch.equal(noisy._teacher_forced_aux(target), target)
    assert noisy.eval()._teacher_forced_aux(target) is None


def test_aux_state_keys_are_refused_as_inputs_without_cameras_or_with_noise_alone():
    with pytest.raises(ValueError, match="must not be inputs"):
        _aux_module(state_keys=["qpos", "env_state"], state_dim=[4, 7])
    with pytest.raises(ValueError, match="needs cameras"):
        _aux_module(cameras=[])
    with pytest.raises(ValueError, match="aux_target_noise needs aux_state_keys"):
        _aux_module(aux_state_keys=[], aux_target_noise=0.1)


def test_aux_loss_falls_when_the_target_is_in_the_image():
    """A bright square's corner (env_state's first two entries, normalised) becomes readable from the keypoints
    within 150 steps."""
    torch.manual_seed(0)
    module = _aux_module(num_keypoints=8, n_obs_steps=1, crop_shape=None, crop_ratio=None)
    mean, std = module.normalizer.stat("env_state", "mean"), module.normalizer.stat("env_state", "std")
    g = torch.Generator().manual_seed(4)
    corners = torch.randint(0, 40, (16, 2), generator=g)
    images = torch.zeros(16, 48, 48, 3, dtype=torch.uint8)
    for i, (r, c) in enumerate(corners.tolist()):
        images[i, r:r + 8, c:c + 8] = 255
    batch = {"qpos": torch.zeros(16, 4), "images/top": images, "action": torch.zeros(16, 8, 2),
             "env_state": mean + std * torch.cat([corners.float() / 20 - 1, torch.zeros(16, 5)], dim=1)}
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    history = []
    for _ in range(150):
        loss = module.compute_loss(batch)
        opt.zero_grad()
        loss["aux"].backward()
        opt.step()
        history.append(float(loss["aux"].detach()))
    assert history[-1] < 0.1 * history[0], history[::15]
