"""The ALOHA bimanual envs: spaces, seeding, cameras, actions, reward stages, snapshots, vector envs."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest

from lit_imit.envs import make_env, make_teacher
from lit_imit.envs.aloha import (
    ACTION_DIM,
    MAX_REWARD,
    START_ARM_POSE,
    AlohaEnv,
    ContactSet,
    finger_geom,
    insertion_reward,
    normalize_gripper_position,
    transfer_cube_reward,
)

TASKS = ("transfer_cube", "insertion")


def hold_action(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Keep the arms where they are (the observed joints are valid absolute targets)."""
    return obs["qpos"].copy()


@pytest.mark.parametrize("task", TASKS)
def test_spaces_and_first_observation(task):
    env = make_env(task, cameras=[])
    obs, info = env.reset(seed=0)
    assert set(obs) == {"qpos", "qvel"} == set(env.observation_space.spaces)
    assert obs["qpos"].shape == obs["qvel"].shape == (ACTION_DIM,)
    assert obs["qpos"].dtype == obs["qvel"].dtype == np.float32
    assert env.observation_space.contains(obs)
    assert env.action_space.shape == (ACTION_DIM,) and env.action_space.dtype == np.float32
    # grippers are normalised to [0, 1], arm joints bounded by the MJCF's actuator ranges
    assert env.action_space.low[6] == env.action_space.low[13] == 0.0
    assert env.action_space.high[6] == env.action_space.high[13] == 1.0
    assert env.action_space.low[1] == pytest.approx(-1.85005)  # shoulder range from the MJCF
    assert env.action_space.high[1] == pytest.approx(1.25664)
    # start pose (ACT's START_ARM_POSE) in the action layout
    for arm in range(2):
        start = START_ARM_POSE[arm * 8: arm * 8 + 6]
        np.testing.assert_allclose(obs["qpos"][arm * 7: arm * 7 + 6], start, atol=1e-6)
        assert obs["qpos"][arm * 7 + 6] == pytest.approx(normalize_gripper_position(0.02239), abs=1e-6)
    assert info == {"reward_stage": 0, "max_reward": 0, "is_success": False}
    assert env.spec.max_episode_steps == 400
    assert env.unwrapped.n_substeps * env.unwrapped.physics.model.opt.timestep == pytest.approx(0.02)


@pytest.mark.parametrize("task, ranges", [
    ("transfer_cube", {"box": ((0.0, 0.2), (0.4, 0.6))}),
    ("insertion", {"peg": ((0.1, 0.2), (0.4, 0.6)), "socket": ((-0.2, -0.1), (0.4, 0.6))}),
])
def test_seeded_object_placement(task, ranges):
    env = make_env(task, cameras=[])
    placements = []
    for seed in range(15):
        env.reset(seed=seed)
        poses = env.unwrapped.object_poses()
        for name, ((x0, x1), (y0, y1)) in ranges.items():
            x, y, z = poses[name][:3]
            assert x0 <= x <= x1 and y0 <= y <= y1 and z == pytest.approx(0.05)
            np.testing.assert_allclose(poses[name][3:], [1, 0, 0, 0])
        placements.append(np.concatenate([poses[name][:2] for name in ranges]))
    env.reset(seed=3)
    again = np.concatenate([env.unwrapped.object_poses()[name][:2] for name in ranges])
    np.testing.assert_array_equal(again, placements[3])
    assert len({tuple(p) for p in placements}) == len(placements)  # different seeds, different scenes


def test_cameras_image_size_and_render():
    env = make_env("insertion", cameras=["top", "left_wrist"], image_size=(60, 80))
    obs, _ = env.reset(seed=0)
    assert obs["images/top"].shape == obs["images/left_wrist"].shape == (60, 80, 3)
    assert obs["images/top"].dtype == np.uint8 and obs["images/top"].std() > 5  # a real picture, not blank
    assert not np.array_equal(obs["images/top"], obs["images/left_wrist"])
    assert env.observation_space["images/top"].shape == (60, 80, 3)
    np.testing.assert_array_equal(env.render(), obs["images/top"])  # render() shows the first camera
    env.close()


def test_full_size_top_camera_and_fast_render():
    env = make_env("transfer_cube", fast_render=False)  # defaults: cameras=("top",), 480x640
    obs, _ = env.reset(seed=0)
    assert obs["images/top"].shape == (480, 640, 3)
    fast = make_env("transfer_cube")  # default fast_render: no shadows, no multisampling: same scene
    fast_obs, _ = fast.reset(seed=0)
    assert fast_obs["images/top"].shape == (480, 640, 3)
    difference = np.abs(fast_obs["images/top"].astype(int) - obs["images/top"].astype(int))
    assert 0 < difference.mean() < 5
    env.close()
    fast.close()


def red_pixels(image: np.ndarray) -> int:
    """Pixels of the transfer-cube's red cube (red well above green and blue)."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return int(((r > 150) & (g < 80) & (b < 80)).sum())


def test_camera_fovy_narrows_the_view_onto_the_table_centre():
    wide = make_env("transfer_cube", image_size=(96, 128))
    narrow = make_env("transfer_cube", image_size=(96, 128), camera_fovy={"top": 40})
    assert narrow.unwrapped.camera_fovy == {"top": 40.0}
    for seed in range(3):
        wide_obs, _ = wide.reset(seed=seed)
        narrow_obs, _ = narrow.reset(seed=seed)
        np.testing.assert_array_equal(wide_obs["qpos"], narrow_obs["qpos"])  # same scene, another view
        # tan(39 deg) / tan(20 deg) = 2.2x the cube's width and height: ~4.8x its pixels
        assert red_pixels(narrow_obs["images/top"]) > 3 * red_pixels(wide_obs["images/top"]) > 0
    with pytest.raises(ValueError, match="'side_cam'.*available"):
        make_env("transfer_cube", camera_fovy={"side_cam": 40})
    with pytest.raises(ValueError, match=r"camera_fovy\['top'\] must be in \(0, 180\)"):
        make_env("transfer_cube", camera_fovy={"top": 0})
    with pytest.raises(ValueError, match="must map camera names to degrees"):
        make_env("transfer_cube", camera_fovy=40)
    wide.close()
    narrow.close()


def test_no_cameras_renders_nothing_but_render_shows_top():
    env = make_env("transfer_cube", cameras=[], image_size=(30, 40))
    obs, _ = env.reset(seed=0)
    assert not any(key.startswith("images/") for key in obs)
    assert env.unwrapped._renderer is None  # nothing rendered during reset/step
    env.step(hold_action(obs))
    assert env.unwrapped._renderer is None
    assert env.render().shape == (30, 40, 3)
    env.close()


def test_bad_constructor_arguments_are_named():
    with pytest.raises(ValueError, match="'side_cam'.*available.*top"):
        AlohaEnv(cameras=["top", "side_cam"])
    with pytest.raises(ValueError, match="list of names"):
        AlohaEnv(cameras="top")
    with pytest.raises(ValueError, match="unknown ALOHA task 'stack'"):
        AlohaEnv(task="stack")
    with pytest.raises(ValueError, match="image_size"):
        AlohaEnv(cameras=[], image_size=(0, 64))
    with pytest.raises(ValueError, match="render_mode"):
        AlohaEnv(cameras=[], render_mode="human")


def test_bad_actions_are_rejected():
    env = make_env("transfer_cube", cameras=[])
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(14,\)"):
        env.step(np.zeros(16))
    action = hold_action(obs)
    action[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        env.step(action)


def test_gripper_commands_open_and_close_the_fingers():
    env = make_env("transfer_cube", cameras=[])
    obs, _ = env.reset(seed=0)
    action = hold_action(obs)
    # closed fingers meet at ~0.10 (their pads touch before the 0.021 m slide limit)
    for opening, check in ((1.0, lambda g: g > 0.9), (0.0, lambda g: g < 0.15)):
        action[6] = action[13] = opening
        for _ in range(40):
            obs, *_ = env.step(action)
        assert check(obs["qpos"][6]) and check(obs["qpos"][13]), obs["qpos"][[6, 13]]
        assert all(check(v) for v in env.unwrapped.gripper_opening().values())


def test_physics_divergence_truncates_instead_of_crashing():
    env = make_env("transfer_cube", cameras=[])
    obs, _ = env.reset(seed=0)
    env.unwrapped.physics.data.qvel[:] = 1e12  # an absurd state: MuJoCo flags it unstable
    obs, reward, terminated, truncated, info = env.step(hold_action(obs))
    assert truncated and not terminated and "physics_error" in info
    assert np.all(np.isfinite(obs["qpos"]))


def _contacts(env: AlohaEnv, *pairs: tuple[str, str]) -> ContactSet:
    """A ContactSet of the real model holding exactly ``pairs`` (to walk through the stage table)."""
    contacts = env.contacts()
    contacts.pairs = {frozenset(contacts._ids([a, b])) for a, b in pairs}
    return contacts


def test_transfer_cube_reward_stages():
    env = AlohaEnv("transfer_cube", cameras=[])
    right, left = ("red_box", finger_geom("right", "right")), ("red_box", finger_geom("left", "left"))
    table = ("red_box", "table")
    assert transfer_cube_reward(_contacts(env, table)) == 0
    assert transfer_cube_reward(_contacts(env, right, table)) == 1
    assert transfer_cube_reward(_contacts(env, right)) == 2
    assert transfer_cube_reward(_contacts(env, left, table)) == 3
    assert transfer_cube_reward(_contacts(env, left)) == 4
    assert transfer_cube_reward(_contacts(env, left, right)) == 4


def test_insertion_reward_stages():
    env = AlohaEnv("insertion", cameras=[])
    right, left = ("red_peg", finger_geom("right", "right")), ("socket-3", finger_geom("left", "left"))
    peg_table, socket_table = ("red_peg", "table"), ("socket-1", "table")
    assert insertion_reward(_contacts(env, right, peg_table, socket_table)) == 0
    assert insertion_reward(_contacts(env, right, left, peg_table, socket_table)) == 1
    assert insertion_reward(_contacts(env, right, left)) == 2
    assert insertion_reward(_contacts(env, right, left, ("red_peg", "socket-2"))) == 3
    assert insertion_reward(_contacts(env, right, left, ("red_peg", "socket-2"), socket_table)) == 1
    assert insertion_reward(_contacts(env, ("red_peg", "pin"))) == 4


def test_success_is_sticky_and_terminate_on_success_ends_early():
    env = make_env("transfer_cube", cameras=[], terminate_on_success=True)
    obs, _ = env.reset(seed=0)
    teacher = make_teacher("transfer_cube", env)
    rewards = []
    for _ in range(400):
        obs, reward, terminated, truncated, info = env.step(teacher.act(obs))
        rewards.append(reward)
        assert info["max_reward"] == max(rewards) and info["is_success"] == (max(rewards) == MAX_REWARD)
        if terminated:
            break
    assert terminated and info["is_success"] and len(rewards) < 400
    assert rewards[-1] == MAX_REWARD and {1.0, 2.0} & set(rewards)  # passed through the lower stages


@pytest.mark.parametrize("task", TASKS)
def test_state_snapshot_restores_bit_exactly(task):
    env = make_env(task, cameras=[])
    obs, _ = env.reset(seed=4)
    teacher = make_teacher(task, env)
    for _ in range(60):  # somewhere mid-task, with contacts
        obs, *_ = env.step(teacher.act(obs))
    env_u = env.unwrapped
    state = pickle.loads(pickle.dumps(env_u.get_state()))  # plain data: survives pickling
    rng = np.random.default_rng(0)
    actions = [hold_action(obs) + rng.normal(0, 0.05, ACTION_DIM).astype(np.float32) for _ in range(20)]

    def roll():
        return [env_u.step(a) for a in actions]

    first = roll()
    restored_obs = env_u.set_state(state)
    np.testing.assert_array_equal(restored_obs["qpos"], obs["qpos"])
    second = roll()
    for (o1, r1, *_, i1), (o2, r2, *_, i2) in zip(first, second):
        np.testing.assert_array_equal(o1["qpos"], o2["qpos"])
        np.testing.assert_array_equal(o1["qvel"], o2["qvel"])
        assert r1 == r2 and i1 == i2
    assert env_u.step_count == 80 and env_u.get_state()["steps"] == 80
    with pytest.raises(ValueError, match="state is for task"):
        AlohaEnv("insertion" if task == "transfer_cube" else "transfer_cube", cameras=[]).set_state(state)


def test_privileged_accessors():
    env = make_env("insertion", cameras=[])
    env.reset(seed=0)
    env_u = env.unwrapped
    assert set(env_u.object_poses()) == {"peg", "socket"}
    position, rotation = env_u.gripper_pose("left")
    assert position.shape == (3,) and np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
    assert position[0] < 0 < env_u.gripper_pose("right")[0][0]  # left arm on the -x side
    with pytest.raises(ValueError, match="side"):
        env_u.gripper_pose("middle")
    assert env_u.contacts().touching("red_peg", "table") is False  # still falling at t = 0
    with pytest.raises(ValueError, match="no geom named 'peg'"):
        env_u.contacts().touching("peg", "table")


def test_sync_vector_env_rollout():
    n = 3
    venv = gym.vector.SyncVectorEnv([lambda: make_env("transfer_cube", cameras=[]) for _ in range(n)])
    obs, info = venv.reset(seed=[0, 1, 2])
    assert obs["qpos"].shape == (n, ACTION_DIM)
    teachers = [make_teacher("transfer_cube", env) for env in venv.envs]
    boxes = [env.unwrapped.object_poses()["box"][:2] for env in venv.envs]
    assert not np.allclose(boxes[0], boxes[1])
    for _ in range(30):
        actions = np.stack([teacher.act() for teacher in teachers])
        obs, reward, terminated, truncated, info = venv.step(actions)
    assert reward.shape == (n,) and obs["qvel"].shape == (n, ACTION_DIM) and info["is_success"].shape == (n,)
    venv.close()


def _small_top_camera_env():
    return make_env("transfer_cube", cameras=["top"], image_size=(24, 32))


@pytest.mark.slow
def test_async_vector_env_with_spawn_renders():
    """MuJoCo's EGL context does not survive fork: AsyncVectorEnv needs the spawn start method."""
    venv = gym.vector.AsyncVectorEnv([_small_top_camera_env, _small_top_camera_env], context="spawn")
    try:
        obs, _ = venv.reset(seed=[0, 1])
        assert obs["images/top"].shape == (2, 24, 32, 3)
        obs, reward, *_ = venv.step(obs["qpos"])
        assert obs["images/top"].std() > 5 and reward.shape == (2,)
    finally:
        venv.close()
