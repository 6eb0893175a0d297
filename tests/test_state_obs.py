"""Low-dimensional state observations (env_state) and the reward timing of the ALOHA envs."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from lit_imit.data.datamodule import EpisodeDataModule
from lit_imit.data.datasets import ChunkDataset
from lit_imit.data.episodes import EpisodeStore
from lit_imit.data.recording import record_teacher_episodes
from lit_imit.envs import make_env, make_teacher
from lit_imit.envs.aloha import ContactSet


@pytest.mark.parametrize("task,dim", [("transfer_cube", 7), ("insertion", 14)])
def test_env_state_holds_the_object_poses(task, dim):
    env = make_env(task, cameras=[], env_state=True)
    obs, _ = env.reset(seed=3)
    assert env.observation_space["env_state"].shape == (dim,)
    assert obs["env_state"].shape == (dim,) and obs["env_state"].dtype == np.float32
    poses = np.concatenate(list(env.unwrapped.object_poses().values()))
    np.testing.assert_allclose(obs["env_state"], poses, rtol=0, atol=1e-6)
    obs, *_ = env.step(env.action_space.sample() * 0 + obs["qpos"])
    assert env.observation_space.contains(obs)
    plain, _ = make_env(task, cameras=[]).reset(seed=3)
    assert "env_state" not in plain


def test_env_state_is_recorded_and_loaded(tmp_path):
    store = EpisodeStore(tmp_path / "demos", create=True)
    report = record_teacher_episodes("transfer_cube", 2, store, cameras=[], env_kwargs={"env_state": True})
    assert len(report.ids) == 2
    ds = ChunkDataset(store, report.ids, state_keys=["qpos", "env_state"], camera_keys=[], chunk_size=5)
    sample = ds[10]
    assert sample["env_state"].shape == (7,)
    # the cube starts where the episode's seed put it, and the recorded poses follow the simulator
    env = make_env("transfer_cube", cameras=[], env_state=True)
    first, _ = env.reset(seed=store.info(report.ids[0])["attrs"]["seed"])
    np.testing.assert_allclose(ds[0]["env_state"].numpy(), first["env_state"], atol=1e-6)


def test_datamodule_records_env_state_when_the_policy_reads_it(tmp_path):
    dm = EpisodeDataModule(str(tmp_path / "d"), task="transfer_cube", cameras=[], state_keys=["qpos", "env_state"],
                           generate_if_missing=1, chunk_size=5, val_episodes=0)
    assert dm.recording_env_kwargs() == {"env_state": True}
    dm.prepare_data()
    dm.setup("fit")
    assert set(dm.stats) == {"qpos", "env_state", "action"}
    assert len(dm.stats["env_state"]["mean"]) == 7


def _reward_of_current_state(env) -> int:
    """The reward recomputed from scratch on the env's current state (as gym-aloha's legacy step sees it)."""
    physics = env.unwrapped.physics
    mujoco.mj_forward(physics.model.ptr, physics.data.ptr)
    return env.unwrapped.task.reward(ContactSet(physics.model.ptr, physics.data.ptr))


@pytest.mark.parametrize("task", ["transfer_cube", "insertion"])
def test_reward_is_read_after_the_physics_step(task):
    """Every step's reward equals the reward of the state the step ends in (contacts of the last substep
    included); before the fix the contacts were those of the state one substep earlier."""
    env = make_env(task, cameras=[])
    teacher = make_teacher(task, env)
    obs, _ = env.reset(seed=0)
    teacher.reset()
    rewards, fresh = [], []
    for _ in range(400):
        obs, reward, terminated, truncated, info = env.step(teacher.act(obs))
        state = env.unwrapped.get_state()
        rewards.append(int(reward))
        fresh.append(_reward_of_current_state(env))
        env.unwrapped.set_state(state)  # the check must not perturb the episode
        if terminated or truncated:
            break
    assert rewards == fresh
    assert max(rewards) == 4  # the teacher succeeds, so the comparison covers every stage


def test_mycobot_twin_env_state_is_cube_pose_and_target():
    env = make_env("mycobot_move_cube", cameras=[], env_state=True)
    obs, _ = env.reset(seed=4)
    twin = env.unwrapped
    assert env.observation_space["env_state"].shape == (10,)
    np.testing.assert_allclose(obs["env_state"][:7], twin.cube_pose(), atol=1e-6)
    np.testing.assert_allclose(obs["env_state"][7:], twin.target_position(), atol=1e-6)
    assert "env_state" not in make_env("mycobot_move_cube", cameras=[]).reset(seed=4)[0]
