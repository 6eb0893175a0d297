"""Diffusion Policy presets (act_plus_plus, robust_rearrangement), act-plus-plus's image augmentation, and the
shipped configs that name their reference."""

from __future__ import annotations

import pytest
import torch
import yaml
from torchvision.transforms.v2 import functional as TF

from lit_imit.benchmarking import identity_stats
from lit_imit.modules.diffusion import PRESETS, DiffusionModule, preset_kwargs
from lit_imit.nets.augment import (
    act_plus_plus_augment,
    augment_images,
    color_jitter,
    crop_size,
    rotate_images,
)
from lit_imit.nets.diffusion_obs import DiffusionObsEncoder
from tests.conftest import ROOT

TINY = dict(down_dims=[16, 32], diffusion_step_embed_dim=16, kernel_size=3, n_groups=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_images(n=4, h=40, w=60, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g)


# ---- act-plus-plus augmentation ------------------------------------------------------------------------
def test_act_plus_plus_eval_is_the_centre_crop_resized_back():
    images = random_images()
    size = crop_size(40, 60, None, 0.95)
    assert size == (38, 57)
    out = act_plus_plus_augment(images, size, training=False)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, act_plus_plus_augment(images, size, training=False)), "eval must be deterministic"
    # act-plus-plus's get_image(rand_crop_resize=True): slice the middle 95 %, then Resize(antialias=True)
    r = 0.95
    chw = images.permute(0, 3, 1, 2)
    middle = chw[..., int(40 * (1 - r) / 2) : int(40 * (1 + r) / 2), int(60 * (1 - r) / 2) : int(60 * (1 + r) / 2)]
    reference = TF.resize(middle.float() / 255, [40, 60], antialias=True)
    diff = (out.permute(0, 3, 1, 2).float() / 255 - reference).abs()
    assert diff.max() <= 1 / 255 + 1e-6


def test_act_plus_plus_training_is_random_seeded_and_keeps_the_shape():
    images = random_images()
    size = (38, 57)
    torch.manual_seed(1)
    first = act_plus_plus_augment(images, size, training=True)
    second = act_plus_plus_augment(images, size, training=True)
    assert first.shape == images.shape == second.shape and first.dtype == torch.uint8
    assert not torch.equal(first, second), "training augmentation must be random"
    assert not torch.equal(first, act_plus_plus_augment(images, size, training=False))
    torch.manual_seed(1)
    assert torch.equal(first, act_plus_plus_augment(images, size, training=True)), "seeded by torch's global RNG"
    # parameters are drawn per image: identical input images come out different
    same = images[:1].expand(6, -1, -1, -1).contiguous()
    out = act_plus_plus_augment(same, size, training=True)
    assert len({bytes(o.flatten().numpy()) for o in out}) == 6


def test_act_plus_plus_without_randomness_is_the_identity():
    images = random_images()
    out = act_plus_plus_augment(images, (40, 60), training=True, degrees=0.0, brightness=0.0, contrast=0.0,
                                saturation=0.0)
    assert torch.equal(out, images)


def test_rotation_matches_torchvision():
    x = torch.rand(2, 3, 30, 44)
    for angle in (-5.0, 2.5):
        ours = rotate_images(x, torch.tensor([angle, angle]))
        torch.testing.assert_close(ours, TF.rotate(x, angle, interpolation=TF.InterpolationMode.NEAREST))
    both = rotate_images(x, torch.tensor([-5.0, 2.5]))  # one angle per image
    torch.testing.assert_close(both[1], TF.rotate(x[1], 2.5, interpolation=TF.InterpolationMode.NEAREST))


def test_brightness_jitter_scales_each_image_within_its_range():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8) * 0.5 + 0.1  # no clipping at 1.3x
    out = color_jitter(x, brightness=0.3, contrast=0.0, saturation=0.0)
    ratio = out / x
    per_image = ratio.flatten(1)
    torch.testing.assert_close(per_image.amin(1), per_image.amax(1))  # one factor per image
    assert per_image.min() >= 0.7 - 1e-5 and per_image.max() <= 1.3 + 1e-5
    assert per_image[:, 0].std() > 0.1  # spread over the range
    # a saturation change leaves grey images grey (up to the luma weights' sum, 0.9999, as in torchvision)
    grey = torch.rand(4, 1, 8, 8).expand(4, 3, 8, 8)
    torch.testing.assert_close(color_jitter(grey, brightness=0.0, contrast=0.0, saturation=0.5), grey, atol=1e-3,
                               rtol=0)


def test_augmentation_modes_of_the_encoder():
    torch.manual_seed(0)
    images = random_images(6, 40, 60)
    assert torch.equal(augment_images(images, "none", (38, 57), training=True),
                       augment_images(images, "crop", (38, 57), training=False))
    assert augment_images(images, "crop", (38, 57), training=True).shape == (6, 38, 57, 3)
    assert augment_images(images, "act_plus_plus", (38, 57), training=True).shape == (6, 40, 60, 3)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_images(images, "mixup", (38, 57), training=True)
    with pytest.raises(ValueError, match="unknown augmentation"):
        DiffusionObsEncoder(["top"], 4, augmentation="mixup")

    enc = DiffusionObsEncoder(["top"], 4, crop_ratio=0.95, num_keypoints=4, feature_dim=4,
                              augmentation="act_plus_plus", keypoint_relu=False)
    state = torch.zeros(3, 1, 4)
    frames = {"top": random_images(3, 40, 60).unsqueeze(1)}
    enc.eval()
    assert torch.equal(enc(state, frames), enc(state, frames))
    enc.train()
    assert not torch.allclose(enc(state, frames), enc(state, frames))


# ---- presets -------------------------------------------------------------------------------------------
def test_preset_values():
    app = PRESETS["act_plus_plus"]
    assert (app["noise_scheduler"], app["num_train_timesteps"]) == ("ddpm", 50)
    assert (app["inference_scheduler"], app["num_inference_steps"]) == ("ddim", 10)
    assert (app["n_obs_steps"], app["horizon"], app["n_action_steps"]) == (1, 16, 16)
    assert app["mask_padding"] is True and app["augmentation"] == "act_plus_plus" and app["crop_ratio"] == 0.95
    assert app["crop_shape"] is None and app["keypoint_relu"] is False
    rr = PRESETS["robust_rearrangement"]
    assert (rr["noise_scheduler"], rr["num_train_timesteps"]) == ("ddpm", 100)
    assert (rr["inference_scheduler"], rr["num_inference_steps"]) == ("ddim", 16)
    assert (rr["n_obs_steps"], rr["horizon"], rr["n_action_steps"]) == (1, 32, 8)
    assert rr["mask_padding"] is False
    kwargs = preset_kwargs("act_plus_plus", horizon=32)
    assert kwargs["horizon"] == 32 and PRESETS["act_plus_plus"]["horizon"] == 16  # the table is not changed
    kwargs["down_dims"].append(1)
    assert PRESETS["act_plus_plus"]["down_dims"] == [256, 512, 1024]
    with pytest.raises(ValueError, match="unknown preset"):
        preset_kwargs("aloha")


def act_plus_plus_module(**kw) -> DiffusionModule:
    args = dict(cameras=["top"], state_dim=4, action_dim=2, num_keypoints=4, image_feature_dim=4, **TINY)
    args.update(kw)
    module = DiffusionModule.from_preset("act_plus_plus", **args)
    module.load_stats(identity_stats(4, 2))
    return module


def test_act_plus_plus_preset_builds_the_documented_module():
    module = act_plus_plus_module()
    assert type(module.train_scheduler).__name__ == "DDPMScheduler"
    assert module.train_scheduler.config.num_train_timesteps == 50
    assert type(module.sampler).__name__ == "DDIMScheduler" and module.num_inference_steps == 10
    module.sampler.set_timesteps(module.num_inference_steps)
    assert module.sampler.timesteps.tolist() == list(range(45, -1, -5))
    assert (module.n_obs_steps, module.horizon, module.n_action_steps) == (1, 16, 16)
    assert module.hparams.mask_padding is True
    assert module.obs_encoder.augmentation == "act_plus_plus" and module.obs_encoder.crop_ratio == 0.95
    assert module.obs_encoder.encoders["top"].relu is False
    group = module.configure_optimizers()["optimizer"].param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["weight_decay"] == 0.0
    assert dict(module.hparams)["horizon"] == 16  # explicit values in the hyperparameters, no preset name

    # the dataset's To = 1 layout (no time axis) trains; acting executes the whole chunk per query
    torch.manual_seed(0)
    batch = {"qpos": torch.rand(2, 4) * 2 - 1, "images/top": random_images(2, 40, 60),
             "action": torch.rand(2, 16, 2) * 2 - 1, "action_is_pad": torch.zeros(2, 16, dtype=torch.bool)}
    assert torch.isfinite(module.training_step(batch, 0))
    module.reset()
    obs = {"qpos": torch.zeros(2, 4), "images/top": random_images(2, 40, 60)}
    module.select_action(obs)
    assert len(module._action_queue) == 15


def test_robust_rearrangement_preset_builds_the_documented_module():
    module = DiffusionModule.from_preset("robust_rearrangement", cameras=[], state_dim=4, action_dim=2, **TINY)
    module.load_stats(identity_stats(4, 2))
    assert type(module.train_scheduler).__name__ == "DDPMScheduler"
    assert module.train_scheduler.config.num_train_timesteps == 100
    assert type(module.sampler).__name__ == "DDIMScheduler" and module.num_inference_steps == 16
    assert (module.n_obs_steps, module.horizon, module.n_action_steps) == (1, 32, 8)
    assert module.hparams.mask_padding is False and module.hparams.warmup_steps == 10_000
    module.reset()
    action = module.select_action({"qpos": torch.zeros(3, 4)})
    assert action.shape == (3, 2) and len(module._action_queue) == 7


# ---- shipped configs -----------------------------------------------------------------------------------
def print_config(name: str, capsys) -> dict:
    from lit_imit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "diffusion" / name), "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_shipped_preset_config_sets_the_preset(preset, capsys):
    """``configs/diffusion/transfer_cube_<preset>.yaml`` parses with the CLI and ``--print_config`` shows the
    preset's every value; the data leaves the windows to the model (it adopts them at fit)."""
    name = f"transfer_cube_{preset}.yaml"
    printed = print_config(name, capsys)
    model = printed["model"]["init_args"]
    assert printed["model"]["class_path"] == "lit_imit.modules.diffusion.DiffusionModule"
    for key, value in PRESETS[preset].items():
        assert model[key] == value, (key, model[key], value)
    data = printed["data"]["init_args"]
    for key in ("cameras", "chunk_size", "n_obs_steps", "action_offset", "action_dim"):
        assert data[key] is None, (key, data[key])  # said once, in the model: the data adopts it at fit
    header = (ROOT / "configs" / "diffusion" / name).read_text().split("\nseed_everything")[0]
    assert f"Preset {preset}" in header


@pytest.mark.parametrize("name", ["transfer_cube.yaml", "insertion.yaml"])
def test_image_configs_follow_chi_et_al_and_lerobot(name, capsys):
    model = print_config(name, capsys)["model"]["init_args"]
    assert model["noise_scheduler"] == model["inference_scheduler"] == "ddpm"
    assert model["num_train_timesteps"] == 100 and model["num_inference_steps"] in (None, 100)
    assert model["mask_padding"] is False and model["keypoint_relu"] is True and model["augmentation"] == "crop"
    assert (model["n_obs_steps"], model["horizon"], model["n_action_steps"]) == (2, 16, 8)
    header = (ROOT / "configs" / "diffusion" / name).read_text().split("\nseed_everything")[0]
    assert "Chi et al." in header and "LeRobot" in header
