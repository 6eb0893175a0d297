"""CLIPort network pieces: rotated crops, the transport correlation, rotation equivariance, label geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_imit.data.cliport import pick_place_labels
from lit_imit.envs.ravens import geometry as geo
from lit_imit.nets.transporter import (
    bin_to_yaw,
    correlate,
    rotate_images,
    rotated_crops,
    rotation_angles,
    transform_pixels,
    yaw_to_bin,
)

L_SHAPE = np.array([[-0.03, -0.02], [0.04, -0.02], [0.04, 0.0], [-0.01, 0.0], [-0.01, 0.03], [-0.03, 0.03]])


def point_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule for (N, 2) points."""
    inside = np.zeros(len(points), dtype=bool)
    x, y = points[:, 0], points[:, 1]
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0)):
        crosses = (y0 > y) != (y1 > y)
        x_cross = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1e-12, y1 - y0)
        inside ^= crosses & (x < x_cross)
    return inside


def rasterize(center_xy, yaw: float, shape=geo.HEIGHTMAP_SHAPE) -> np.ndarray:
    """Heightmap mask of the L-shaped object at a world pose (pixel centres via geometry.pix_to_xyz)."""
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    x = geo.BOUNDS[0, 0] + (cols + 0.5) * geo.PIXEL_SIZE
    y = geo.BOUNDS[1, 0] + (rows + 0.5) * geo.PIXEL_SIZE
    rot = geo.quat_to_matrix(geo.yaw_to_quat(yaw))[:2, :2]
    polygon = L_SHAPE @ rot.T + np.asarray(center_xy)
    return point_in_polygon(np.stack([x.ravel(), y.ravel()], 1), polygon).reshape(shape).astype(np.float32)


def test_bins_round_trip_and_wrap():
    n = 36
    bins = torch.arange(n)
    assert torch.equal(yaw_to_bin(bin_to_yaw(bins, n), n), bins)
    assert yaw_to_bin(torch.tensor([-math.radians(10)]), n).item() == 35
    assert yaw_to_bin(torch.tensor([math.radians(364)]), n).item() == 0
    assert abs(bin_to_yaw(torch.tensor([18]), n).item()) == pytest.approx(math.pi)  # -pi or pi: the same yaw
    assert bin_to_yaw(torch.tensor([27]), n).item() == pytest.approx(-math.pi / 2)


def test_rotated_crop_without_rotation_is_a_plain_crop_centred_on_the_pivot():
    img = torch.arange(2 * 3 * 40 * 30, dtype=torch.float32).reshape(2, 3, 40, 30)
    pivots = torch.tensor([[20, 15], [10, 12]])
    crops = rotated_crops(img, pivots, torch.zeros(1), 8)
    assert crops.shape == (2, 1, 3, 8, 8)
    for b, (u, v) in enumerate(pivots.tolist()):
        torch.testing.assert_close(crops[b, 0], img[b, :, u - 4:u + 4, v - 4:v + 4], atol=1e-3, rtol=0)


def test_rotated_crop_turns_content_counter_clockwise_in_the_world_frame():
    """+90 degrees moves what lies at +x (one column right) of the pivot to +y (one row down)."""
    img = torch.zeros(1, 1, 21, 21)
    img[0, 0, 10, 13] = 1.0  # 3 columns (+x) from the pivot (10, 10)
    crop = rotated_crops(img, torch.tensor([[10, 10]]), torch.tensor([math.pi / 2]), 8)[0, 0, 0]
    row, col = divmod(int(crop.argmax()), 8)
    assert (row - 4, col - 4) == (3, 0)


def test_fft_and_grouped_conv_correlations_agree_and_align_on_the_pick_pixel():
    torch.manual_seed(0)
    b, c, r, k, h, w = 2, 3, 4, 8, 20, 12
    key = torch.randn(b, c, h + k, w + k)
    kernels = torch.randn(b, r, c, k, k)
    conv = correlate(key, kernels, (h, w), "conv")
    fft = correlate(key, kernels, (h, w), "fft")
    assert conv.shape == (b, r, h, w)
    torch.testing.assert_close(fft, conv, atol=1e-3, rtol=1e-4)
    # entry (r, u, v) = kernel r centred at its pixel (k/2, k/2) on unpadded pixel (u, v), i.e. padded (u+k/2, v+k/2)
    u, v = 5, 7
    window = key[1, :, u:u + k, v:v + k]
    assert conv[1, 2, u, v].item() == pytest.approx(float((window * kernels[1, 2]).sum()), abs=1e-4)
    with pytest.raises(ValueError):
        correlate(key, kernels, (h + 1, w), "conv")


@pytest.mark.parametrize("k_bins", [0, 3, 9, 14, 27])
def test_transport_geometry_recovers_the_place_pose_of_a_rotated_object(k_bins):
    """An object at the pick pose and a copy turned by k bins at the place pose: correlating the rotated pick
    crops (as the query) with the place scene (as the key) peaks at the label that ``pick_place_labels``
    derives from the two poses — rotation bins, crop rotation and labels share one convention."""
    n_rot, crop = 36, 32
    yaw = k_bins * 2 * math.pi / n_rot
    pick_xy, place_xy = (0.45, -0.25), (0.6, 0.2)
    pick_pose = np.r_[pick_xy, 0.02, geo.IDENTITY_QUAT]
    place_pose = np.r_[place_xy, 0.02, geo.yaw_to_quat(yaw)]
    pick_pix, place_pix, theta = pick_place_labels(pick_pose[None], place_pose[None])
    pad = crop // 2
    query_scene = torch.from_numpy(rasterize(pick_xy, 0.0))[None, None]
    key_scene = torch.from_numpy(rasterize(place_xy, yaw))[None, None]
    crops = rotated_crops(torch.nn.functional.pad(query_scene, [pad] * 4), torch.from_numpy(pick_pix) + pad,
                          rotation_angles(n_rot), crop)
    kernels = 2 * crops - 1  # object +1, surroundings -1: the best match is an exact overlay
    logits = correlate(torch.nn.functional.pad(key_scene, [pad] * 4), kernels, geo.HEIGHTMAP_SHAPE)
    r, u, v = np.unravel_index(int(logits.argmax()), logits.shape[1:])
    assert r == yaw_to_bin(torch.tensor(theta), n_rot).item() == k_bins
    assert abs(u - place_pix[0, 0]) <= 1 and abs(v - place_pix[0, 1]) <= 1


def test_query_kernels_are_exactly_equivariant_to_quarter_turns_of_the_scene():
    """Turning the scene by +90 degrees about the pick (an exact pixel permutation) gives the kernels of bin
    r + n/4: the transport's rotations are a property of the crops, not something the network must learn."""
    from lit_imit.modules.cliport import TINY_CLIP
    from lit_imit.nets.cliport import CLIPortNet

    torch.manual_seed(0)
    net = CLIPortNet(spatial_width=4, clip_overrides=TINY_CLIP, n_rotations=8, crop_size=32).eval()
    side = 48
    scene = torch.rand(1, 6, side, side) * torch.tensor([255.0] * 3 + [0.05] * 3).view(1, 6, 1, 1)
    turned = scene.transpose(-1, -2).flip(-1)  # content turned +90 deg (x -> y): turned[j, N-1-i] = scene[i, j]
    pick = torch.tensor([[20.0, 27.0]])
    pick_turned = torch.tensor([[pick[0, 1], side - 1 - pick[0, 0]]])
    text = net.encode_text(["pack the letter in the box"])
    with torch.no_grad():
        kernels = net.query_kernels(scene, pick, text)[0]
        kernels_turned = net.query_kernels(turned, pick_turned, text)[0]
    shift = 8 // 4
    torch.testing.assert_close(kernels_turned, torch.roll(kernels, -shift, dims=0), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(kernels[0], kernels[shift], atol=1e-3)  # the property is not vacuous


def test_rigid_image_transform_and_pixel_transform_agree():
    img = torch.zeros(1, 1, 40, 30)
    img[0, 0, 12, 7] = 1.0
    angle, pivot, shift = torch.tensor([0.7]), torch.tensor([[19.5, 14.5]]), torch.tensor([[3.0, -2.0]])
    out = rotate_images(img, angle, pivot, shift, mode="bilinear")
    expected = transform_pixels(torch.tensor([[12, 7]]), angle, pivot, shift)[0]
    rows, cols = torch.meshgrid(torch.arange(40.0), torch.arange(30.0), indexing="ij")
    mass = out[0, 0]
    centroid = torch.stack([(mass * rows).sum(), (mass * cols).sum()]) / mass.sum()
    torch.testing.assert_close(centroid, expected, atol=0.05, rtol=0)


def test_labels_match_the_pixel_geometry():
    pick = np.array([[0.3, -0.4, 0.02, *geo.IDENTITY_QUAT], [0.74, 0.49, 0.0, *geo.yaw_to_quat(0.5)]])
    place = np.array([[0.5, 0.1, 0.05, *geo.yaw_to_quat(-0.3)], [0.9, -0.7, 0.0, *geo.yaw_to_quat(0.2)]])
    pick_pix, place_pix, theta = pick_place_labels(pick, place)
    assert pick_pix[0].tolist() == list(geo.xyz_to_pix(pick[0, :3]))
    np.testing.assert_allclose(geo.pix_to_xyz(pick_pix[0])[:2], pick[0, :2], atol=geo.PIXEL_SIZE / 2 + 1e-9)
    np.testing.assert_allclose(theta, [-0.3, 0.2 - 0.5], atol=1e-6)
    assert place_pix[1].tolist() == [0, geo.HEIGHTMAP_SHAPE[1] - 1]  # y below, x beyond the workspace: clipped


def test_uncached_clip_weights_stop_unless_random_init_is_allowed(monkeypatch, tmp_path):
    """Offline, "openai" weights can only come from open_clip's caches (empty here). Then the encoder stops
    with an error that says how to provide them; with ``allow_random_init`` it warns and builds a random
    CLIP instead. A weights *file* that does not exist is a typo and fails at once either way. Nothing tries
    the network (open_clip's download would retry for ~45 s; its loaders raise here if called)."""
    import huggingface_hub.constants
    import open_clip

    import lit_imit.nets.cliport as cliport_nets
    from lit_imit.nets.cliport import CLIPEncoders
    from lit_imit.nets.pretrained import PretrainedWeightsUnavailable

    def no_download(*args, **kwargs):
        raise AssertionError("open_clip was asked to download weights")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    monkeypatch.setattr(cliport_nets, "CLIP_URL_CACHE", tmp_path / "clip_cache")
    with pytest.raises(PretrainedWeightsUnavailable, match="allow_random_init: true"):
        CLIPEncoders("RN50", pretrained="openai")
    with pytest.warns(UserWarning, match="RANDOM INIT") as record:
        clip = CLIPEncoders("RN50", pretrained="openai", allow_random_init=True)
    assert sum("RANDOM INIT" in str(w.message) for w in record) == 1  # loud, once
    assert clip.pretrained_loaded is False
    assert clip.encode_text(["put the red blocks in a green bowl"]).shape[-1] == 1024
    for allow_random_init in (False, True):
        with pytest.raises(FileNotFoundError, match="RN50.bin"):
            CLIPEncoders("RN50", pretrained=str(tmp_path / "RN50.bin"), allow_random_init=allow_random_init)
