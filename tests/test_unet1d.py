"""The Diffusion Policy networks: conditional 1-D U-Net, spatial softmax, GroupNorm ResNet keypoint encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_imit.nets.diffusion_obs import (
    CameraKeypointEncoder,
    DiffusionObsEncoder,
    crop_images,
    crop_size,
    resnet18_groupnorm_trunk,
)
from lit_imit.nets.spatial_softmax import SpatialSoftmax
from lit_imit.nets.unet1d import ConditionalUnet1d, SinusoidalStepEmbedding


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP spinning when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_unet(**kw) -> ConditionalUnet1d:
    torch.manual_seed(0)
    args = dict(action_dim=3, global_cond_dim=6, down_dims=[16, 32, 64], kernel_size=5, n_groups=8,
                diffusion_step_embed_dim=16)
    args.update(kw)
    return ConditionalUnet1d(**args)


@pytest.mark.parametrize("horizon", [4, 8, 12, 16, 32])
def test_unet_output_shape_matches_input_for_several_horizons(horizon):
    net = small_unet()
    x = torch.randn(2, horizon, 3)
    out = net(x, torch.tensor([0, 57]), torch.randn(2, 6))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_unet_accepts_scalar_timestep_and_no_cond():
    net = small_unet(global_cond_dim=0)
    assert net(torch.randn(4, 8, 3), 10).shape == (4, 8, 3)


def test_film_conditioning_changes_the_output():
    net = small_unet().eval()
    x, steps = torch.randn(2, 8, 3), torch.tensor([5, 5])
    cond = torch.randn(2, 6)
    base = net(x, steps, cond)
    assert not torch.allclose(base, net(x, steps, cond + 1.0), atol=1e-4), "global cond is ignored"
    assert not torch.allclose(base, net(x, torch.tensor([50, 50]), cond), atol=1e-4), "diffusion step is ignored"
    # the same inputs give the same output (no hidden state)
    assert torch.equal(base, net(x, steps, cond))


def test_film_bias_only_variant_runs_and_conditions():
    net = small_unet(film_scale=False).eval()
    x, steps, cond = torch.randn(2, 8, 3), torch.tensor([1, 2]), torch.randn(2, 6)
    assert net.down[0][0].film[1].out_features == 16  # bias only: C outputs, not 2C
    assert not torch.allclose(net(x, steps, cond), net(x, steps, -cond), atol=1e-4)


def test_film_scale_and_bias_are_per_channel():
    net = small_unet()
    block = net.down[1][0]  # 16 -> 32 channels
    assert block.film[1].out_features == 2 * 32
    assert isinstance(block.residual, nn.Conv1d)  # width changes: 1x1 residual projection


def test_horizon_not_divisible_gives_a_clear_error():
    net = small_unet()  # 3 levels: two halvings -> multiple of 4
    assert net.horizon_multiple == 4
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.randn(1, 6, 3), 0, torch.randn(1, 6))
    with pytest.raises(ValueError, match="multiple of 4"):
        net.check_horizon(10)


def test_bad_widths_are_rejected_at_construction():
    with pytest.raises(ValueError, match="n_groups"):
        small_unet(down_dims=[12, 24])
    with pytest.raises(ValueError, match="odd"):
        small_unet(kernel_size=4)


def test_step_embedding_distinguishes_steps():
    emb = SinusoidalStepEmbedding(16)(torch.arange(100))
    assert emb.shape == (100, 16)
    assert torch.cdist(emb, emb).add(torch.eye(100) * 10).min() > 1e-3  # all distinct


def test_spatial_softmax_finds_a_hot_spot():
    pool = SpatialSoftmax(in_channels=2, num_keypoints=None, temperature=0.01)
    features = torch.zeros(1, 2, 5, 7)
    features[0, 0, 1, 6] = 1.0  # row 1 of 5 -> y = -0.5, col 6 of 7 -> x = 1.0
    features[0, 1, 4, 0] = 1.0  # row 4 -> y = 1.0, col 0 -> x = -1.0
    keypoints = pool(features)
    assert keypoints.shape == (1, 2, 2)
    torch.testing.assert_close(keypoints[0], torch.tensor([[1.0, -0.5], [-1.0, 1.0]]), atol=1e-3, rtol=0)


def test_spatial_softmax_uniform_map_is_centred_and_size_agnostic():
    pool = SpatialSoftmax(in_channels=8, num_keypoints=4)
    for h, w in ((3, 4), (6, 9)):
        out = pool(torch.zeros(2, 8, h, w))
        assert out.shape == (2, 4, 2)
        torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-6, rtol=0)


def test_resnet_trunk_has_groupnorm_only():
    trunk = resnet18_groupnorm_trunk()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())
    norms = [m for m in trunk.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == m.num_channels // 16 for m in norms)
    assert trunk(torch.zeros(1, 3, 64, 96)).shape == (1, 512, 2, 3)


def coordinate_images(n: int, h: int, w: int) -> torch.Tensor:
    """uint8 images whose channels 0/1 hold the row/column index and channel 2 the image index."""
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    img = torch.stack((rows, cols, torch.zeros(h, w, dtype=torch.long)), dim=-1)
    out = img.expand(n, h, w, 3).clone()
    out[..., 2] = torch.arange(n)[:, None, None]
    return out.to(torch.uint8)


def test_random_crop_takes_one_valid_window_per_image():
    torch.manual_seed(0)
    images = coordinate_images(64, 20, 30)
    crops = crop_images(images, (12, 16), random=True)
    assert crops.shape == (64, 12, 16, 3)
    top, left = crops[:, 0, 0, 0].long(), crops[:, 0, 0, 1].long()
    assert (top >= 0).all() and (top <= 8).all() and (left >= 0).all() and (left <= 14).all()
    # contiguous windows of the right image
    assert torch.equal(crops[..., 0].long(), top[:, None, None] + torch.arange(12)[None, :, None].expand(64, 12, 16))
    assert torch.equal(crops[..., 1].long(), left[:, None, None] + torch.arange(16)[None, None, :].expand(64, 12, 16))
    assert torch.equal(crops[:, 0, 0, 2], torch.arange(64, dtype=torch.uint8))
    assert len(set(zip(top.tolist(), left.tolist()))) > 10, "windows are not drawn independently per image"


def test_centre_crop_is_the_middle_window():
    images = coordinate_images(2, 20, 30)
    crops = crop_images(images, (12, 16), random=False)
    assert crops[0, 0, 0, 0] == 4 and crops[0, 0, 0, 1] == 7


def test_crop_size_resolution():
    assert crop_size(480, 640, [440, 560], None) == (440, 560)
    assert crop_size(480, 640, None, 0.9) == (432, 576)
    assert crop_size(480, 640, None, None) == (480, 640)
    with pytest.raises(ValueError):
        crop_size(48, 64, [50, 10], None)


def test_obs_encoder_flattens_history_and_crops_by_mode():
    torch.manual_seed(0)
    enc = DiffusionObsEncoder(["top", "wrist"], state_dim=5, crop_shape=[48, 56], feature_dim=8)
    assert enc.global_cond_dim(2) == 2 * (5 + 2 * 8)
    state = torch.randn(3, 2, 5)
    images = {cam: torch.randint(0, 256, (3, 2, 64, 64, 3), dtype=torch.uint8) for cam in ("top", "wrist")}
    enc.eval()
    out = enc(state, images)
    assert out.shape == (3, 42)
    torch.testing.assert_close(out.view(3, 2, 21)[..., :5], state)  # state first, per frame
    assert torch.equal(out, enc(state, images)), "eval (centre crop) must be deterministic"
    enc.train()
    assert not torch.allclose(enc(state, images), enc(state, images)), "training crops must be random"
    with pytest.raises(KeyError, match="wrist"):
        enc(state, {"top": images["top"]})


def test_state_only_encoder_is_the_flattened_state():
    enc = DiffusionObsEncoder([], state_dim=4)
    state = torch.randn(2, 3, 4)
    assert torch.equal(enc(state, {}), state.flatten(1))
    assert len(list(enc.parameters())) == 0


def test_camera_encoder_channels_last_matches_default_layout():
    torch.manual_seed(0)
    enc = CameraKeypointEncoder(num_keypoints=8, feature_dim=4).eval()
    x = torch.rand(2, 3, 64, 64)
    ref = enc(x)
    enc.to(memory_format=torch.channels_last)
    torch.testing.assert_close(enc(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_gemm_conv_matches_conv1d_forward_and_backward(kernel):
    from lit_imit.nets.unet1d import GemmConv1d

    torch.manual_seed(0)
    gemm = GemmConv1d(6, 10, kernel, padding=kernel // 2)
    ref = nn.Conv1d(6, 10, kernel, padding=kernel // 2)
    ref.load_state_dict(gemm.state_dict())
    x = torch.randn(3, 6, 7, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = gemm(x), ref(x_ref)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gemm.weight.grad, ref.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gemm.bias.grad, ref.bias.grad, atol=1e-5, rtol=1e-5)
