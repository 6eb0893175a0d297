"""Pure-numpy geometry of the Ravens tabletop: pixel maps, heightmap projection and fusion, poses."""

from __future__ import annotations

import numpy as np
import pytest

from lit_imit.envs.ravens import geometry as geo
from lit_imit.envs.ravens.tasks import max_matching


def test_heightmap_shape_matches_cliport():
    assert geo.HEIGHTMAP_SHAPE == (320, 160)


def test_pixel_world_round_trip_and_orientation():
    # rows index y, columns index x; pixel (0, 0) is the (x_min, y_min) corner
    assert geo.xyz_to_pix((0.25 + 1e-6, -0.5 + 1e-6, 0)) == (0, 0)
    assert geo.xyz_to_pix((0.75 - 1e-6, 0.5 - 1e-6, 0)) == (319, 159)
    rng = np.random.default_rng(0)
    for _ in range(100):
        p = np.array([rng.uniform(0.25, 0.75), rng.uniform(-0.5, 0.5), 0.0])
        u, v = geo.xyz_to_pix(p)
        back = geo.pix_to_xyz((u, v))
        assert np.all(np.abs(back[:2] - p[:2]) <= geo.PIXEL_SIZE / 2 + 1e-9)
        assert geo.xyz_to_pix(back) == (u, v)


def test_pix_to_xyz_reads_height():
    height = np.zeros(geo.HEIGHTMAP_SHAPE, np.float32)
    height[10, 20] = 0.07
    assert geo.pix_to_xyz((10, 20), height)[2] == pytest.approx(0.07)


def box_surface_points(centre, size, spacing=0.001):
    """Dense points on the top face and sides of an axis-aligned box standing on the table."""
    cx, cy, _ = centre
    sx, sy, sz = size
    xs = np.arange(cx - sx / 2, cx + sx / 2, spacing)
    ys = np.arange(cy - sy / 2, cy + sy / 2, spacing)
    gx, gy = np.meshgrid(xs, ys)
    top = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, sz)], axis=1)
    zs = np.arange(0, sz, spacing)
    side = np.stack([np.full(len(zs), cx - sx / 2), np.full(len(zs), cy), zs], axis=1)
    return np.concatenate([top, side])


def test_heightmap_from_points_keeps_top_and_its_colour():
    table = np.stack(np.meshgrid(np.arange(0.25, 0.75, 0.001), np.arange(-0.5, 0.5, 0.001)), -1).reshape(-1, 2)
    table = np.concatenate([table, np.zeros((len(table), 1))], axis=1)
    box = box_surface_points((0.5, 0.1, 0), (0.08, 0.06, 0.05))
    points = np.concatenate([box, table]).astype(np.float32)  # table points come last: order must not matter
    colors = np.zeros((len(points), 3), np.uint8)
    colors[: len(box)] = (200, 10, 10)
    colors[len(box):] = (50, 50, 50)
    height, color, valid = geo.heightmap_from_points(points, colors)
    assert valid.all()
    u, v = geo.xyz_to_pix((0.5, 0.1, 0))
    assert height[u, v] == pytest.approx(0.05, abs=1e-6)
    assert tuple(color[u, v]) == (200, 10, 10)
    footprint = height > 0.025
    expected = np.round(0.08 / geo.PIXEL_SIZE) * np.round(0.06 / geo.PIXEL_SIZE)
    assert abs(footprint.sum() - expected) <= 2 * (0.08 + 0.06) / geo.PIXEL_SIZE + 4
    assert height[0, 0] == 0.0 and tuple(color[0, 0]) == (50, 50, 50)


def test_points_out_of_bounds_are_dropped_and_slightly_below_table_kept():
    points = np.array([[0.1, 0.0, 0.0], [0.5, 0.0, 0.5], [0.5, 0.0, -0.002], [0.5, 0.2, -0.1]], np.float32)
    colors = np.full((4, 3), 100, np.uint8)
    height, _, valid = geo.heightmap_from_points(points, colors)
    assert valid.sum() == 1
    assert height[geo.xyz_to_pix((0.5, 0.0))] == 0.0 and valid[geo.xyz_to_pix((0.5, 0.0))]


def test_fuse_heightmaps_mean_colour_max_height():
    shape = (2, 2)
    h1, h2 = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    h1[0, 0], h2[0, 0] = 0.03, 0.05
    c1 = np.full((*shape, 3), 100, np.uint8)
    c2 = np.full((*shape, 3), 200, np.uint8)
    v1 = np.ones(shape, bool)
    v2 = np.array([[True, False], [True, False]])
    color, height = geo.fuse_heightmaps([h1, h2], [c1, c2], [v1, v2])
    assert height[0, 0] == pytest.approx(0.05)
    assert tuple(color[0, 0]) == (150, 150, 150)  # both views saw it
    assert tuple(color[0, 1]) == (100, 100, 100)  # only the first did


def test_quaternions_and_yaw():
    for yaw in np.linspace(-3.0, 3.0, 13):
        assert geo.quat_to_yaw(geo.yaw_to_quat(yaw)) == pytest.approx(yaw, abs=1e-9)
    q = geo.quat_multiply(geo.yaw_to_quat(0.4), geo.yaw_to_quat(0.5))
    assert geo.quat_to_yaw(q) == pytest.approx(0.9)
    pose = (np.array([0.1, 0.2, 0.3]), geo.quat_from_euler(0.3, -0.2, 1.0))
    ident = geo.pose_multiply(pose, geo.pose_invert(pose))
    assert np.allclose(ident[0], 0, atol=1e-12) and abs(abs(ident[1][3]) - 1) < 1e-12


def test_symmetric_rotation_helpers():
    sym = np.pi / 2
    assert geo.symmetric_yaw_error(0.1, np.pi / 2 + 0.1, sym) == pytest.approx(0.0, abs=1e-9)
    assert geo.symmetric_yaw_error(0.0, 0.3, None) == 0.0
    delta = geo.smallest_rotation_to(0.2, 1.0, sym)
    assert abs(delta) <= sym / 2
    assert geo.symmetric_yaw_error(0.2 + delta, 1.0, sym) == pytest.approx(0.0, abs=1e-9)


def test_action_pixel_round_trip():
    height = np.full(geo.HEIGHTMAP_SHAPE, 0.02, np.float32)
    action = geo.action_from_pixels((100, 50), (200, 120), 0.7, height)
    assert action["pick"].shape == (7,) and action["place"].shape == (7,)
    assert action["pick"][2] == pytest.approx(0.02)
    pick, place, theta = geo.pixels_from_action(action)
    assert pick == (100, 50) and place == (200, 120)
    assert theta == pytest.approx(0.7, abs=1e-6)


def test_heightmap_input_stacks_six_channels():
    color = np.full((*geo.HEIGHTMAP_SHAPE, 3), 7, np.uint8)
    height = np.full(geo.HEIGHTMAP_SHAPE, 0.01, np.float32)
    img = geo.heightmap_input(color, height)
    assert img.shape == (320, 160, 6) and img.dtype == np.float32
    assert np.all(img[..., :3] == 7) and np.allclose(img[..., 3:], 0.01)
    with pytest.raises(ValueError):
        geo.heightmap_input(color, height[:10])


def test_max_matching_respects_one_to_one():
    allowed = np.array([[1, 0], [1, 0], [1, 1]], bool)  # two objects compete for target 0
    pairs = max_matching(allowed)
    assert len(pairs) == 2
    assert len({j for _, j in pairs}) == 2
