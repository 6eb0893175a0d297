"""The myCobot 320 digital twin: layout, seeding, clamps, state round trip, and the scripted teacher.

Default tests run a handful of camera-less episodes (about a second each); the 20-seed success rates per
variant and the 20-seed take-over test are marked slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lit_imit.envs import make_env, make_teacher, task_spec
from lit_imit.envs.mycobot import (
    HOME_QPOS,
    JOINT_LIMITS,
    JOINT_LIMITS_DEG,
    MyCobotMoveCubeEnv,
    build_mjcf,
)
from lit_imit.envs.mycobot_teachers import MoveCubeTeacher


def run_teacher(env: MyCobotMoveCubeEnv, teacher: MoveCubeTeacher, steps: int = 300, obs=None) -> dict:
    if obs is None:
        obs = env._observation()
    info: dict = {}
    for _ in range(steps):
        obs, _, terminated, truncated, info = env.step(teacher.act(obs))
        if terminated or truncated:
            break
    return info


def perturb(env: MyCobotMoveCubeEnv, rng: np.random.Generator, steps: int = 15) -> None:
    """Drive the arm along a random joint-space direction with a random gripper (a novice's mistakes)."""
    drift = rng.normal(0.0, 0.1, 6)
    gripper = float(rng.random())
    for _ in range(steps):
        env.step(np.append(env.arm_qpos + drift, gripper).astype(np.float32))


# ---------------------------------------------------------------------------------------------- model
def test_model_matches_the_published_kinematics():
    env = MyCobotMoveCubeEnv(cameras=())
    m = env.model
    np.testing.assert_allclose(np.rad2deg(m.jnt_range[env._arm_qpos]), np.c_[-JOINT_LIMITS_DEG, JOINT_LIMITS_DEG])
    env.data.qpos[env._arm_qpos] = 0.0  # the "candle" pose: the flange at the top of pymycobot's z range
    import mujoco

    mujoco.mj_kinematics(m, env.data)
    flange = env.data.xpos[m.body("link6").id]
    assert flange[2] == pytest.approx(0.523, abs=0.002)
    assert "<mujoco" in build_mjcf() and m.nu == 8


def test_registered_task_builds_env_and_teacher():
    spec = task_spec("mycobot_move_cube")
    env = make_env("mycobot_move_cube", cameras=[], image_size=(48, 64))
    assert spec.max_episode_steps == 300 and isinstance(env.unwrapped, MyCobotMoveCubeEnv)
    assert isinstance(make_teacher("mycobot_move_cube", env), MoveCubeTeacher)
    env.close()


# ---------------------------------------------------------------------------------------------- reset, obs, action
def test_observation_layout_matches_the_robot_adapter():
    env = MyCobotMoveCubeEnv(cameras=("top", "wrist"), image_size=(48, 64))
    obs, info = env.reset(seed=0)
    assert set(obs) == {"qpos", "qvel", "images/top", "images/wrist"}
    assert obs["qpos"].shape == (7,) and obs["qpos"].dtype == np.float32
    np.testing.assert_allclose(obs["qpos"][:6], HOME_QPOS, atol=1e-6)
    assert obs["qpos"][6] == 1.0  # open, as the adapter reports after connect()
    assert obs["images/top"].shape == (48, 64, 3) and obs["images/top"].dtype == np.uint8
    assert obs["images/top"].std() > 5  # something is rendered
    assert env.action_space.shape == (7,)
    np.testing.assert_allclose(env.action_space.high[:6], JOINT_LIMITS, rtol=1e-6)
    assert not info["is_success"] and info["reward_stage"] == 0
    obs, *_ = env.step(np.append(HOME_QPOS, 0.0))
    assert obs["qpos"][6] == 0.0  # commanded gripper, like the real adapter
    env.close()


def test_reset_is_seeded_and_jitters_the_places():
    env = MyCobotMoveCubeEnv(variant="mixed", cameras=())
    env.reset(seed=3)
    first = (env.cube_pose(), env.target_position(), env.layout.occupied)
    env.reset(seed=3)
    np.testing.assert_array_equal(env.cube_pose(), first[0])
    np.testing.assert_array_equal(env.target_position(), first[1])
    cubes, occupied = [], []
    for seed in range(12):
        env.reset(seed=seed)
        cubes.append(env.cube_pose()[:2])
        occupied.append(env.layout.occupied)
        obstacle = env.data.xpos[env.model.body("obstacle").id]
        if env.layout.occupied:  # the block stands on B and the target is B2
            np.testing.assert_allclose(obstacle[:2], env.layout.b_xy)
            np.testing.assert_allclose(env.target_position()[:2], env.layout.b2_xy)
        else:
            assert obstacle[2] < -1 and np.allclose(env.target_position()[:2], env.layout.b_xy)
    assert np.ptp(np.array(cubes), axis=0).min() > 0.01
    assert any(occupied) and not all(occupied)
    assert MyCobotMoveCubeEnv(variant="occupied", cameras=()).reset(seed=0)[1]["occupied"]
    assert not MyCobotMoveCubeEnv(variant="move", cameras=()).reset(seed=0)[1]["occupied"]


def test_actions_are_clamped_like_on_the_robot():
    env = MyCobotMoveCubeEnv(cameras=())
    env.reset(seed=0)
    before = env.arm_qpos
    _, _, _, _, info = env.step(np.array([3.0, -3.0, 3.0, -3.0, 3.0, -3.0, 7.0]))
    sent = info["action_sent"]
    np.testing.assert_allclose(np.abs(sent[:6] - before), np.deg2rad(5.0), atol=1e-6)
    assert sent[6] == 1.0
    env.max_delta = None
    _, _, _, _, info = env.step(np.full(7, 10.0))
    np.testing.assert_allclose(info["action_sent"][:6], JOINT_LIMITS, rtol=1e-6)
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([0, 0, 0, np.nan, 0, 0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match="unknown variant"):
        MyCobotMoveCubeEnv(variant="stack")
    with pytest.raises(ValueError, match="unknown camera"):
        MyCobotMoveCubeEnv(cameras=("side",))


def test_state_round_trip_replays_exactly():
    env = MyCobotMoveCubeEnv(variant="occupied", cameras=())
    teacher = MoveCubeTeacher(env)
    obs, _ = env.reset(seed=1)
    for _ in range(40):
        obs, *_ = env.step(teacher.act(obs))
    state = env.get_state()
    actions, trajectory = [], []
    for _ in range(30):
        actions.append(teacher.act(obs))
        obs, *_ = env.step(actions[-1])
        trajectory.append(env.data.qpos.copy())
    env.reset(seed=99)  # a different layout in between
    env.set_state(state)
    assert env.layout.occupied and env.step_count == 40
    for action, expected in zip(actions, trajectory):
        env.step(action)
        np.testing.assert_array_equal(env.data.qpos, expected)


# ---------------------------------------------------------------------------------------------- teacher
@pytest.mark.parametrize("variant,seed", [("move", 0), ("occupied", 1)])
def test_teacher_moves_the_cube(variant, seed):
    env = MyCobotMoveCubeEnv(variant=variant, cameras=())
    teacher = MoveCubeTeacher(env)
    obs, _ = env.reset(seed=seed)
    phases = set()
    info: dict = {}
    for _ in range(300):
        obs, _, _, _, info = env.step(teacher.act(obs))
        phases.add(teacher.phase)
    assert info["is_success"] and info["max_reward"] == 4
    assert {"approach", "descend", "grasp", "lift", "carry", "place", "release", "retreat"} <= phases
    cube = env.cube_pose()[:3]
    assert np.linalg.norm(cube[:2] - env.target_position()[:2]) < 0.02
    if variant == "occupied":  # on B2, well clear of the block on B
        assert np.linalg.norm(cube[:2] - env.layout.b_xy) > 0.08


def test_teacher_takes_over_after_a_perturbation():
    env = MyCobotMoveCubeEnv(variant="move", cameras=())
    teacher = MoveCubeTeacher(env)
    rng = np.random.default_rng(5)
    obs, _ = env.reset(seed=5)
    for _ in range(60):  # mid-grasp ...
        obs, *_ = env.step(teacher.act(obs))
    perturb(env, rng)  # ... the novice takes over and messes up
    info = run_teacher(env, teacher)
    assert info["is_success"]


def _takeover_rate(variant: str, seeds: range) -> tuple[int, int]:
    env = MyCobotMoveCubeEnv(variant=variant, cameras=())
    teacher = MoveCubeTeacher(env)
    successes = reachable = 0
    for seed in seeds:
        rng = np.random.default_rng(seed)
        obs, _ = env.reset(seed=seed)
        for _ in range(int(rng.integers(0, 120))):
            obs, *_ = env.step(teacher.act(obs))
        perturb(env, rng)
        if not teacher.reachable(env.cube_pose()[:3]):
            continue  # knocked out of the arm's reach: no teacher could finish
        reachable += 1
        successes += bool(run_teacher(env, teacher)["is_success"])
    return successes, reachable


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["move", "occupied", "mixed"])
def test_teacher_success_rate_over_20_seeds(variant):
    env = MyCobotMoveCubeEnv(variant=variant, cameras=())
    teacher = MoveCubeTeacher(env)
    successes = 0
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        successes += bool(run_teacher(env, teacher, obs=obs)["is_success"])
    assert successes >= 18, f"{variant}: teacher succeeded in {successes}/20"


@pytest.mark.slow
def test_teacher_takes_over_from_random_states_over_20_seeds():
    successes, reachable = _takeover_rate("mixed", range(20))
    assert reachable >= 15 and successes >= 0.9 * reachable, (successes, reachable)


# ---------------------------------------------------------------------------------------------- recording
def test_record_demos_script_records_twin_episodes(tmp_path):
    from lit_imit.data import EpisodeStore
    from lit_imit.tools import record_demos

    out = tmp_path / "demos"
    assert record_demos.main(["--task", "mycobot_move_cube", "--episodes", "1", "--out", str(out),
                              "--cameras", "top", "--image-size", "48x64"]) == 0
    store = EpisodeStore(out)
    assert store.verify() == []
    episode = store.read(store.ids()[0])
    assert episode.arrays["observations/qpos"].shape == (300, 7) and episode.arrays["action"].shape == (300, 7)
    assert episode.arrays["observations/images/top"].shape == (300, 48, 64, 3)
    assert episode.attrs["success"] and episode.attrs["source"] == "teacher"
    assert episode.attrs["task"] == "mycobot_move_cube"


# ---------------------------------------------------------------------------------------------- replay
def test_reset_can_start_from_a_recorded_pose():
    env = MyCobotMoveCubeEnv(cameras=[])
    pose = HOME_QPOS + np.deg2rad([10, -5, 8, 0, 3, -20])
    obs, _ = env.reset(seed=0, options={"arm_qpos": pose, "gripper": 0.4})
    np.testing.assert_allclose(obs["qpos"][:6], pose, atol=1e-6)
    assert obs["qpos"][6] == pytest.approx(0.4) and env.last_action_sent[6] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="arm_qpos"):
        env.reset(seed=0, options={"arm_qpos": [0.0, np.nan, 0, 0, 0, 0]})
    assert np.allclose(env.reset(seed=0)[0]["qpos"][:6], HOME_QPOS, atol=1e-6)  # the default is unchanged


def test_replaying_a_twin_recording_reproduces_it_and_a_bad_recording_is_flagged(tmp_path):
    """A teacher episode replayed from its file follows its own joints (float32 storage aside) and ends in
    the same success; actions corrupted halfway (a slipped joint) show up as tracking error and clamps."""
    from lit_imit.data.episodes import EpisodeStore, read_episode, write_episode
    from lit_imit.data.recording import record_teacher_episodes
    from lit_imit.robots.replay import replay_episode
    from scripts.replay_in_twin import main as replay_main

    store = EpisodeStore(tmp_path / "twin")
    record_teacher_episodes("mycobot_move_cube", 1, store, cameras=[], seed=4)
    path = store.path(store.ids()[0])
    report = replay_episode(path)
    assert report.layout_known and report.success is True and report.max_reward == 4
    assert report.max_error_deg < 0.5 and report.clamped_steps == 0
    assert len(report.rms_error_deg) == 6 and report.steps == store.length(store.ids()[0])

    episode = read_episode(path)
    bad = {k: v.copy() for k, v in episode.arrays.items()}
    bad["action"][150:, 1] += np.deg2rad(20.0)  # shoulder commanded 20 deg off from step 150 on
    bad_path = tmp_path / "slipped.hdf5"
    write_episode(bad_path, bad, {**episode.attrs, "sim": False, "source": "robot", "fps": 20.0})
    flagged = replay_episode(bad_path)
    assert not flagged.layout_known and flagged.success is None
    assert flagged.max_error_deg > 10 and flagged.clamped_steps >= 1

    assert replay_main([str(path)]) == 0
    assert replay_main([str(path), str(bad_path), "--json"]) == 1
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(Path(path).read_bytes()[:2000])
    assert replay_main([str(truncated)]) == 1


def test_the_twin_offers_the_cameras_its_constant_names():
    """``CAMERAS`` documents the twin's cameras; the check itself reads them off the MJCF (MujocoEnv)."""
    from lit_imit.envs.mycobot import CAMERAS

    assert MyCobotMoveCubeEnv(cameras=()).available_cameras == list(CAMERAS)
