"""Ravens tabletop env: registration, heightmap geometry, physical suction pick-place, seeding, snapshots."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("pybullet")

from lit_imit.envs import TASKS, make_env, make_teacher  # noqa: E402
from lit_imit.envs.ravens import geometry as geo  # noqa: E402
from lit_imit.envs.ravens.registry import RAVENS_TASKS, env_id  # noqa: E402
from lit_imit.envs.ravens.sim import TRAVEL_Z, Sim  # noqa: E402
from lit_imit.envs.ravens.tasks import move_action  # noqa: E402

FAST = {"camera_scale": 0.5}  # tests whose outcome does not depend on image resolution


@pytest.fixture
def bowl_env():
    env = make_env("put-block-in-bowl-seen-colors", **FAST)
    yield env
    env.close()


def test_all_tasks_registered_with_gym_ids():
    assert len(RAVENS_TASKS) == 10
    for name in RAVENS_TASKS:
        assert TASKS[name].env_id == env_id(name) == f"lit_imit/Ravens-{name}-v0"
        assert env_id(name) in gym.registry


def test_importing_envs_does_not_load_pybullet():
    code = "import sys, lit_imit.envs; assert 'pybullet' not in sys.modules, 'pybullet imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_heightmap_matches_known_box_geometry():
    """A 8 x 6 x 5 cm box seen by the three RealSense views: height and footprint match to a few mm."""
    env = make_env("put-block-in-bowl-seen-colors")
    try:
        env.reset(seed=0)
        sim = env.unwrapped.sim
        sim.reset_world()
        b = sim.bullet
        size, centre = np.array([0.08, 0.06, 0.05]), np.array([0.55, 0.12])
        col = b.createCollisionShape(b.GEOM_BOX, halfExtents=(size / 2).tolist())
        vis = b.createVisualShape(b.GEOM_BOX, halfExtents=(size / 2).tolist(), rgbaColor=[0.9, 0.1, 0.1, 1])
        b.createMultiBody(0, col, vis, [centre[0], centre[1], size[2] / 2])
        obs = env.unwrapped.render_observation()
    finally:
        env.close()
    height, color = obs["height"], obs["color"]
    assert height.shape == (320, 160) and color.shape == (320, 160, 3)
    u0, v0 = geo.xyz_to_pix((centre[0] - size[0] / 2, centre[1] - size[1] / 2))
    u1, v1 = geo.xyz_to_pix((centre[0] + size[0] / 2, centre[1] + size[1] / 2))
    inner = height[u0 + 2:u1 - 1, v0 + 2:v1 - 1]
    assert np.median(inner) == pytest.approx(0.05, abs=0.002)
    assert (np.abs(inner - 0.05) < 0.004).mean() > 0.95
    expected = np.zeros_like(height, bool)
    expected[u0:u1 + 1, v0:v1 + 1] = True
    seen = height > 0.025
    iou = (seen & expected).sum() / (seen | expected).sum()
    assert iou > 0.9
    ring = np.zeros_like(expected)
    ring[u0 - 8:u1 + 9, v0 - 8:v1 + 9] = True
    assert np.percentile(height[~ring], 99) < 0.003  # the table is flat at height 0
    red = color[u0 + 3:u1 - 2, v0 + 3:v1 - 2].astype(int)
    assert np.median(red[..., 0] - red[..., 1]) > 60  # the box's colour lands on its footprint


def test_reset_is_seeded_and_obs_in_space(bowl_env):
    obs1, info1 = bowl_env.reset(seed=11)
    obs2, info2 = bowl_env.reset(seed=11)
    obs3, info3 = bowl_env.reset(seed=12)
    assert info1["instruction"] == info2["instruction"] == obs1["instruction"]
    assert np.array_equal(obs1["color"], obs2["color"]) and np.array_equal(obs1["height"], obs2["height"])
    assert not np.array_equal(obs1["height"], obs3["height"])
    assert bowl_env.observation_space.contains(obs1)
    assert obs1["color"].dtype == np.uint8 and obs1["height"].dtype == np.float32
    assert bowl_env.unwrapped.instruction == info3["instruction"] == obs3["instruction"]


def test_invalid_actions_are_rejected(bowl_env):
    bowl_env.reset(seed=0)
    with pytest.raises(ValueError, match="14"):
        bowl_env.step(np.zeros(13))
    with pytest.raises(ValueError, match="pick"):
        bowl_env.step({"place": np.zeros(7)})
    bad = np.array([0.5, 0, 0.02, 0, 0, 0, 1, 0.5, 0, np.nan, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        bowl_env.step(bad)
    with pytest.raises(ValueError, match="quaternion"):
        bowl_env.step(np.array([0.5, 0, 0.02, 0, 0, 0, 0, 0.5, 0, 0.02, 0, 0, 0, 1]))
    fresh = make_env("put-block-in-bowl-seen-colors", **FAST)
    with pytest.raises(RuntimeError, match="reset"):
        fresh.unwrapped.step(np.zeros(14))
    fresh.close()


def test_suction_lifts_carries_and_releases_a_block():
    """The suction constraint exists only after contact, holds the block in the air, and gravity takes over."""
    sim = Sim()
    try:
        sim.reset_world()
        block = sim.add_block((0.5, 0.0, 0.02), 0.3, "red")
        sim.settle()
        grip = sim.gripper
        grip.move([0.5, 0.0, TRAVEL_Z], 0.0, 0.02)
        assert grip.activate() is None  # nothing touched: no suction
        hit = grip.descend((0.5, 0.0), 0.0, slow_from_z=0.07)
        assert hit == block
        assert grip.activate() == block
        grip.move([0.6, 0.2, TRAVEL_Z], 0.5, 0.008)
        pos, _ = sim.pose(block)
        assert pos[2] > TRAVEL_Z - 0.05 and np.allclose(pos[:2], [0.6, 0.2], atol=0.005)
        sim.step(60)
        assert sim.pose(block)[0][2] > TRAVEL_Z - 0.05  # still held
        grip.release()
        sim.settle()
        pos, quat = sim.pose(block)
        assert pos[2] == pytest.approx(0.02, abs=0.002)  # fell and rests on the table
        assert np.allclose(pos[:2], [0.6, 0.2], atol=0.05)
    finally:
        sim.close()


def test_pick_place_step_moves_object_and_misses_do_nothing(bowl_env):
    bowl_env.reset(seed=4)
    env = bowl_env.unwrapped
    block = env.task.goals[0].objects[0]
    xy = env.sim.sample_free_xy(np.random.default_rng(0), 0.04, env.sim.footprints(), margin=0.03)
    target = np.array([xy[0], xy[1], 0.02])
    _, _, _, _, info = bowl_env.step(move_action(env.sim, block, target))
    pos, quat = env.sim.pose(block)
    assert info["picked"] and not info["timeout"]
    assert np.linalg.norm(pos[:2] - target[:2]) < 0.01 and pos[2] == pytest.approx(0.02, abs=0.003)
    assert abs(geo.quat_to_matrix(quat)[2, 2]) > 0.99  # lands flat
    before = {u: env.sim.pose(u)[0] for u in env.sim.bodies}
    xy = env.sim.sample_free_xy(np.random.default_rng(1), 0.04, env.sim.footprints(), margin=0.03)
    empty = np.array([xy[0], xy[1], 0.0, 0, 0, 0, 1])
    _, reward, _, _, info = bowl_env.step(np.concatenate([empty, empty + [0.05, 0, 0, 0, 0, 0, 0]]))
    assert not info["picked"] and reward == 0.0
    assert all(np.allclose(env.sim.pose(u)[0], p, atol=1e-3) for u, p in before.items())


def test_snapshot_restore_reproduces_the_outcome():
    env = make_env("stack-block-pyramid-seq-seen-colors", **FAST)
    try:
        env.reset(seed=3)
        u = env.unwrapped
        action = u.oracle_action()
        snapshot = u.get_state()
        obs1, r1, term1, trunc1, info1 = env.step(action)
        poses1 = {k: u.sim.pose(k)[0] for k in u.sim.bodies}
        restored = u.set_state(snapshot)
        assert u.steps == 0 and u.task.score == 0.0 and restored["instruction"] == snapshot.obs["instruction"]
        obs2, r2, term2, trunc2, info2 = env.step(action)
        poses2 = {k: u.sim.pose(k)[0] for k in u.sim.bodies}
        assert r1 == r2 > 0 and info1["instruction"] == info2["instruction"]
        assert max(np.abs(poses1[k] - poses2[k]).max() for k in poses1) < 1e-6
        assert np.array_equal(obs1["height"], obs2["height"])
        env.reset(seed=4)
        with pytest.raises(ValueError, match="another episode"):
            u.set_state(snapshot)
        with pytest.raises(TypeError):
            u.set_state({"not": "a state"})
    finally:
        env.close()


def test_preview_reports_success_without_changing_state(bowl_env):
    bowl_env.reset(seed=2)
    env = bowl_env.unwrapped
    before = {k: env.sim.pose(k)[0] for k in env.sim.bodies}
    outcome = env.preview(env.oracle_action())
    assert outcome["step_success"] and outcome["picked"] and outcome["reward"] > 0
    assert env.steps == 0 and env.task.score == 0.0
    assert all(np.allclose(env.sim.pose(k)[0], p, atol=1e-9) for k, p in before.items())
    _, reward, *_ = bowl_env.step(env.oracle_action())
    assert reward == pytest.approx(outcome["reward"])


def test_teacher_interface_and_time_limit(bowl_env):
    teacher = make_teacher("put-block-in-bowl-seen-colors", bowl_env)
    teacher.reset()
    obs, info = bowl_env.reset(seed=9)
    action = teacher.act(obs)
    assert set(action) == {"pick", "place"} and action["pick"].shape == (7,) and action["pick"].dtype == np.float32
    flat = np.concatenate([action["pick"], action["place"]])
    _, reward, terminated, truncated, info = bowl_env.step(flat)  # the flat layout works too
    assert reward > 0 and info["score"] == pytest.approx(reward)


def test_gymnasium_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    env = gym.make("lit_imit/Ravens-stack-block-pyramid-seq-seen-colors-v0", camera_scale=0.5, render_mode="rgb_array")
    try:
        check_env(env.unwrapped)
        frame = env.unwrapped.render()
        assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8
    finally:
        env.close()
