"""Ravens tasks: oracle success, partial credit, splits, and hindsight relabeling of novice actions."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pybullet")

from lit_imit.envs import make_env, make_teacher  # noqa: E402
from lit_imit.envs.ravens import assets  # noqa: E402
from lit_imit.envs.ravens.registry import RAVENS_TASKS  # noqa: E402
from lit_imit.envs.ravens.tasks import PAD_NAMES, make_task, move_action  # noqa: E402

FAST = {"camera_scale": 0.5}


def run_oracle(task: str, seed: int, **kwargs) -> dict:
    env = make_env(task, **FAST, **kwargs)
    teacher = make_teacher(task, env)
    try:
        obs, info = env.reset(seed=seed)
        teacher.reset()
        instructions, rewards, steps = [info["instruction"]], [], 0
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(teacher.act(obs))
            rewards.append(reward)
            instructions.append(info["instruction"])
            steps += 1
            done = terminated or truncated
        return {"info": info, "rewards": rewards, "instructions": instructions, "steps": steps,
                "terminated": terminated, "max_steps": info["max_steps"]}
    finally:
        env.close()


@pytest.mark.parametrize("task", sorted(RAVENS_TASKS))
@pytest.mark.parametrize("seed", [0, 1])
def test_oracle_solves_task(task, seed):
    out = run_oracle(task, seed)
    info = out["info"]
    assert info["is_success"] and info["score"] == pytest.approx(1.0)
    assert out["terminated"] and out["steps"] <= out["max_steps"] <= RAVENS_TASKS[task]
    assert sum(out["rewards"]) == pytest.approx(1.0)  # the return is the partial-credit score
    assert all(0 <= r <= 1 for r in out["rewards"])
    assert out["instructions"][0] != out["instructions"][-1]  # the last one is the "done" description


@pytest.mark.parametrize("task", ["put-block-in-bowl-unseen-colors", "packing-unseen-shapes",
                                  "packing-unseen-objects-group"])
def test_oracle_solves_unseen_eval_split(task):
    info = run_oracle(task, 3, split="test")["info"]
    assert info["is_success"]


def test_splits_use_ravens_colours_shapes_and_objects():
    rng = np.random.default_rng(0)
    assert make_task("stack-block-pyramid-seq-seen-colors", "test").sample_colors("test", False) == assets.TRAIN_COLORS
    assert make_task("stack-block-pyramid-seq-unseen-colors", "test").sample_colors("test", True) == assets.EVAL_COLORS
    assert make_task("stack-block-pyramid-seq-unseen-colors", "train").sample_colors("train", True) == assets.TRAIN_COLORS
    unseen = make_task("packing-unseen-shapes", "test")
    seen = make_task("packing-seen-shapes", "test")
    train = make_task("packing-seen-shapes", "train")
    for _ in range(20):
        assert set(unseen.choose_shapes(rng)) <= set(range(14, 20))
        assert set(seen.choose_shapes(rng)) <= set(range(14))
        assert train.choose_shapes(rng)[0] in range(14)
    assert make_task("packing-unseen-objects-seq", "test").names() == assets.UNSEEN_OBJECTS
    assert make_task("packing-seen-objects-seq", "test").names() == assets.SEEN_OBJECTS
    assert not set(assets.SEEN_OBJECTS) & set(assets.UNSEEN_OBJECTS)
    assert len(assets.SHAPE_NAMES) == 20 and len(set(assets.SHAPE_NAMES.values())) == 20
    with pytest.raises(ValueError, match="unknown Ravens task"):
        make_task("no-such-task")
    with pytest.raises(ValueError, match="split"):
        make_task("packing-seen-shapes", "holdout")


def test_every_shape_and_object_builds_and_rests_in_its_bounds():
    from lit_imit.envs.ravens.sim import Sim

    sim = Sim()
    try:
        sim.reset_world()
        uids = [sim.add_shape(i, (0.3 + 0.1 * (i % 5), -0.4 + 0.1 * (i // 5)), 0.0, "red") for i in range(20)]
        for k, name in enumerate(assets.MESH_OBJECTS):
            uids.append(sim.add_mesh_object(name, (0.3 + 0.1 * (k % 5), 0.1 + 0.12 * (k // 5)), 0.0))
        sim.settle()
        for uid in uids:
            body = sim.bodies[uid]
            gaps = [c[8] for c in sim.bullet.getClosestPoints(uid, sim.table, 0.01)]
            assert gaps and min(gaps) > -0.003, body.name  # resting on the table, not sunk into it
            assert sim.pose(uid)[0][2] < max(body.size), body.name
            assert max(body.size[:2]) <= 0.08, body.name  # fits the packing boxes
    finally:
        sim.close()


def novice_episode(task: str, seed: int):
    env = make_env(task, **FAST)
    env.reset(seed=seed)
    return env, env.unwrapped


def test_relabel_block_put_in_another_colour_bowl():
    env, u = novice_episode("put-block-in-bowl-seen-colors", 0)
    try:
        def other_bowls():
            target_colour = u.task.bowl_colors[u.task.goals[0].targets[0].key]
            return [b for b, c in u.task.bowl_colors.items() if c != target_colour]

        seed = 0
        while not other_bowls():  # find a scene with a distractor bowl
            seed += 1
            env.reset(seed=seed)
        block = u.task.goals[0].objects[0]
        wrong = other_bowls()[0]
        wrong_pos = u.sim.pose(wrong)[0]
        before = u.matches()
        _, reward, _, _, info = env.step(move_action(u.sim, block, [wrong_pos[0], wrong_pos[1], 0.03]))
        expected = f"put the {u.task.block_colors[block]} blocks in a {u.task.bowl_colors[wrong]} bowl"
        assert reward == 0.0 and not info["is_success"]
        assert info["achieved_instruction"] == expected
        assert u.relabel(before, u.matches()) == expected
        assert u.matches()[block] == wrong
    finally:
        env.close()


def test_relabel_packing_a_distractor_shape():
    env, u = novice_episode("packing-seen-shapes", 1)
    try:
        goal_shape = u.task.goals[0].objects[0]
        distractor = next(s for s in u.task.shape_names if s != goal_shape)
        box = u.task.goals[0].targets[0].position
        _, reward, terminated, truncated, info = env.step(move_action(u.sim, distractor, box))
        assert reward == 0.0 and truncated and not terminated  # packing shapes is a single pick-place
        assert info["achieved_instruction"] == f"pack the {u.task.shape_names[distractor]} in the brown box"
    finally:
        env.close()


def test_relabel_pyramid_wrong_block_and_oracle_recovery():
    env, u = novice_episode("stack-block-pyramid-seq-seen-colors", 2)
    try:
        second = u.task.goals[1].objects[0]  # the block of goal 2 put where goal 1's block belongs
        colour = u.task.block_colors[second]
        _, reward, *_, info = env.step(move_action(u.sim, second, u.task.slots[0], u.task.stand_yaw, np.pi / 2))
        assert reward == 0.0 and info["score"] == 0.0
        assert info["achieved_instruction"] == f"put the {colour} block on {PAD_NAMES[0]}"
        oracle = make_teacher("stack-block-pyramid-seq-seen-colors", env)
        _, r1, *_, info = env.step(oracle.act())  # the oracle first clears the pad its goal needs...
        assert r1 == 0.0 and info["achieved_instruction"] is None
        assert u.task.slot_of(u.sim, second) is None
        _, r2, *_, info = env.step(oracle.act())  # ...then completes goal 1: partial credit 1/6
        assert r2 == pytest.approx(1 / 6) and info["score"] == pytest.approx(1 / 6)
        assert info["instruction"] == u.task.goals[0].instruction != u.task.completed_instruction
    finally:
        env.close()


def test_relabel_objects_group_and_partial_credit():
    env, u = novice_episode("packing-seen-objects-group", 5)
    try:
        goal = u.task.goals[0]
        name = u.task.object_names[goal.objects[0]]
        action = u.oracle_action()
        _, reward, terminated, _, info = env.step(action)
        assert reward == pytest.approx(0.5) and not terminated  # one of the two instances packed
        assert info["achieved_instruction"] == f"pack all the {name} objects in the brown box"
        distractor = next(o for o, n in u.task.object_names.items() if n != name)
        slot = u.task.place_position(u.sim, goal.targets[0], distractor)
        _, reward, *_, info = env.step(move_action(u.sim, distractor, slot))
        assert reward == 0.0
        assert info["achieved_instruction"] == f"pack all the {u.task.object_names[distractor]} objects in the brown box"
    finally:
        env.close()


def test_relabel_is_none_when_nothing_was_achieved():
    env, u = novice_episode("packing-seen-objects-seq", 0)
    try:
        before = u.matches()
        assert u.relabel(before, before) is None
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(RAVENS_TASKS))
def test_oracle_success_over_20_seeds(task):
    """The oracle reaches >= 95% over 20 episodes per task with the default (full-resolution) cameras."""
    from lit_imit.envs.ravens.evaluate import oracle_sweep

    result = oracle_sweep(task, range(20))
    print(result)
    assert result["success_rate"] >= 0.95, result


@pytest.mark.slow
@pytest.mark.parametrize("task", [t for t in sorted(RAVENS_TASKS) if "unseen" in t])
def test_oracle_success_over_20_seeds_eval_split(task):
    from lit_imit.envs.ravens.evaluate import oracle_sweep

    result = oracle_sweep(task, range(10000, 10020), split="test")
    print(result)
    assert result["success_rate"] >= 0.95, result
