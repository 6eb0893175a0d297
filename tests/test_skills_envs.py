"""Skill-learning envs: PointMaze planner teacher, FrankaKitchen scripted sub-task controllers, task table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_imit.envs import make_env, make_teacher, skills_registry, task_spec  # noqa: F401  (registers the tasks)
from lit_imit.envs.kitchen import (
    COMPLETION_THRESHOLD,
    SUBTASK_CONTROLLERS,
    SUBTASKS,
    CartesianController,
    KitchenSkillEnv,
    KitchenTeacher,
    respect_precedence,
    subtask_distance,
)
from lit_imit.envs.maze import MAZES, MazeGeometry, PointMazeSkillEnv, blocked_map, shortest_path

@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models on a shared CPU: one intra-op thread avoids oversubscription stalls (10x slower otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



def run(env, teacher, seed: int, max_steps: int):
    obs, info = env.reset(seed=seed)
    teacher.reset()
    states, steps = [obs["state"]], 0
    for steps in range(1, max_steps + 1):
        obs, _, terminated, truncated, info = env.step(teacher.act(obs))
        states.append(obs["state"])
        if terminated or truncated:
            break
    return info, steps, np.stack(states)


# ---- point maze ------------------------------------------------------------------------------------


def test_shortest_path_goes_around_walls_and_rejects_impossible_tasks():
    grid = MAZES["medium"]
    path = shortest_path(grid, (1, 5), (6, 2))
    assert path[0] == (1, 5) and path[-1] == (6, 2)
    assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(path, path[1:]))
    assert all(grid[r][c] != 1 for r, c in path)
    assert (5, 3) in path  # the "bottom" passage is the short way
    detour = shortest_path(blocked_map("medium", [(5, 3)]), (1, 5), (6, 2))
    assert (5, 3) not in detour and len(detour) > len(path)
    with pytest.raises(ValueError, match="wall"):
        shortest_path(grid, (0, 0), (1, 1))
    with pytest.raises(ValueError, match="cannot be reached"):
        shortest_path(blocked_map("medium", [(2, 4)]), (6, 1), (1, 6))
    with pytest.raises(ValueError, match="unknown maze"):
        blocked_map("huge")


def test_maze_geometry_round_trip():
    geo = MazeGeometry(MAZES["medium"])
    for cell in [(1, 1), (6, 5), (3, 4)]:
        assert geo.xy_to_cell(geo.cell_to_xy(cell)) == cell
    assert geo.segment_clear(geo.cell_to_xy((1, 1)), geo.cell_to_xy((1, 2)))
    assert not geo.segment_clear(geo.cell_to_xy((1, 2)), geo.cell_to_xy((2, 4)))  # through a wall


@pytest.mark.parametrize("region", sorted(skills_registry.MAZE_REGIONS))
def test_maze_teacher_reaches_the_target_goal(region):
    env = make_env(f"pointmaze-medium-{region}")
    teacher = make_teacher(f"pointmaze-medium-{region}", env)
    for seed in range(3):
        info, steps, _ = run(env, teacher, seed, 400)
        assert info["is_success"], (region, seed, steps)
        assert steps < 400
    env.close()


def test_maze_play_resamples_goals_and_never_enters_the_blocked_region():
    env = make_env("pointmaze-medium-play-no-bottom")
    teacher = make_teacher("pointmaze-medium-play-no-bottom", env)
    geo = MazeGeometry(MAZES["medium"])
    info, steps, states = run(env, teacher, seed=3, max_steps=500)
    assert steps == 500 and info["goals_reached"] >= 2
    cells = {geo.xy_to_cell(s[:2]) for s in states}
    assert (5, 3) not in cells
    assert len(cells) >= 6  # it travels
    env.close()


def test_maze_reset_is_seeded_and_state_round_trips():
    env = PointMazeSkillEnv("medium", "target", start_cell=(1, 5), goal_cell=(6, 2), render_mode=None)
    a, _ = env.reset(seed=5)
    b, _ = env.reset(seed=5)
    assert np.array_equal(a["state"], b["state"]) and np.array_equal(a["goal"], b["goal"])
    assert a["state"].dtype == np.float32 and a["state"].shape == (4,) and a["qpos"].shape == (2,)
    env.step(np.array([0.5, -0.2]))
    snapshot = env.get_state()
    after = env.step(np.array([1.0, 0.0]))[0]
    env.set_state(snapshot)
    again = env.step(np.array([1.0, 0.0]))[0]
    assert np.allclose(after["state"], again["state"])
    with pytest.raises(ValueError, match="start_cell and goal_cell"):
        PointMazeSkillEnv("medium", "target")
    with pytest.raises(ValueError, match="cameras"):
        PointMazeSkillEnv("medium", cameras=["top"])


# ---- kitchen ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kitchen_env():
    env = KitchenSkillEnv(tasks=["microwave"], terminate_on_success=False, render_mode=None)
    yield env
    env.close()


def run_subtask(env: KitchenSkillEnv, name: str, seed: int, max_steps: int = 160) -> bool:
    env.target_tasks = [name]
    env.reset(seed=seed)
    controller = SUBTASK_CONTROLLERS[name](env, CartesianController(env.model, env.data),
                                           np.random.default_rng(seed), jitter=0.01)
    for _ in range(max_steps):
        env.step(controller.act())
        if controller.finished:
            break
    return name in env.completed


@pytest.mark.parametrize("name", SUBTASKS)
def test_each_kitchen_subtask_controller_completes_its_subtask_from_reset(kitchen_env, name):
    successes = [run_subtask(kitchen_env, name, seed) for seed in range(2)]
    assert sum(successes) == len(successes), (name, successes)


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBTASKS)
def test_kitchen_subtask_controllers_succeed_90_percent_over_ten_seeds(kitchen_env, name):
    successes = [run_subtask(kitchen_env, name, seed) for seed in range(10)]
    assert np.mean(successes) >= 0.9, (name, successes)


def test_kitchen_target_task_teacher_completes_all_four_and_return_counts_them():
    env = make_env("kitchen-mktl", render_mode=None)
    teacher = make_teacher("kitchen-mktl", env)
    obs, _ = env.reset(seed=0)
    teacher.reset()
    total = 0.0
    for _ in range(450):
        obs, reward, terminated, truncated, info = env.step(teacher.act(obs))
        total += reward
        if terminated or truncated:
            break
    assert info["is_success"] and info["subtasks_completed"] == 4 and total == 4.0
    assert terminated  # the episode ends once all four are done
    assert obs["state"].shape == (59,) and obs["state"].dtype == np.float32
    env.close()


def test_kitchen_play_chains_respect_holdout_and_precedence():
    env = KitchenSkillEnv(mode="play", allowed=[t for t in SUBTASKS if t != "top burner"], render_mode=None)
    for seed in range(20):
        env.reset(seed=seed)
        chain = env.episode_tasks
        assert len(chain) == 4 and len(set(chain)) == 4 and "top burner" not in chain
        if "slide cabinet" in chain and "hinge cabinet" in chain:
            assert chain.index("slide cabinet") < chain.index("hinge cabinet")
    assert respect_precedence(["hinge cabinet", "kettle", "slide cabinet"]) == ["slide cabinet", "kettle",
                                                                                  "hinge cabinet"]
    env.close()


def test_kitchen_completion_uses_the_env_goals(kitchen_env):
    kitchen_env.reset(seed=0)
    qpos = kitchen_env.data.qpos.copy()
    assert subtask_distance(qpos, "microwave") > COMPLETION_THRESHOLD
    qpos[22] = -0.75
    assert subtask_distance(qpos, "microwave") < 1e-6
    with pytest.raises(ValueError, match="unknown kitchen sub-task"):
        KitchenSkillEnv(tasks=["dishwasher"], render_mode=None)


def test_kitchen_positions_are_the_state_without_velocities():
    """``positions`` is D4RL kitchen's observation layout: the robot's 9 joint positions and the 21 object positions
    of ``state``, none of its velocities; noise-free, they are the simulator's qpos."""
    env = KitchenSkillEnv(render_mode=None, robot_noise_ratio=0.0, object_noise_ratio=0.0)
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        obs, *_ = env.step(np.full(9, 0.5, dtype=np.float32))
    assert obs["positions"].shape == (30,) and obs["positions"].dtype == np.float32
    np.testing.assert_array_equal(obs["positions"], np.concatenate([obs["state"][:9], obs["state"][18:39]]))
    np.testing.assert_allclose(obs["positions"], env.data.qpos[:30], atol=1e-6)
    assert np.abs(env.data.qvel[:9]).max() > 1e-3  # the arm moves, and none of its velocities is in positions
    env.close()


def test_kitchen_teacher_requires_reset():
    env = KitchenSkillEnv(render_mode=None)
    teacher = KitchenTeacher(env)
    obs, _ = env.reset(seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        teacher.act(obs)
    env.close()


def test_skill_tasks_are_registered():
    for name in ["pointmaze-medium-play", "pointmaze-medium-bottom", "kitchen-play", "kitchen-play-no-topknob",
                 "kitchen-mktl", "kitchen-mbls", "kitchen-mksh"]:
        assert task_spec(name).name == name
    no_topknob = task_spec("kitchen-play-no-topknob").kwargs["allowed"]
    assert "top burner" not in no_topknob and len(no_topknob) == 6


@pytest.mark.slow
def test_record_demos_script_writes_maze_episodes(tmp_path):
    from lit_imit.tools.record_demos import main as record_main
    from lit_imit.data.episodes import EpisodeStore

    out = tmp_path / "maze"
    assert record_main(["--task", "pointmaze-medium-bottom", "--episodes", "2", "--out", str(out)]) == 0
    store = EpisodeStore(out)
    assert len(store) == 2
    episode = store.read(store.ids()[0])
    assert episode.obs("state").shape[1] == 4 and episode.arrays["action"].shape[1] == 2
    assert episode.attrs["success"]
