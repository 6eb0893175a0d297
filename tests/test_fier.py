"""FIER on a toy deterministic simulator: foresight restores exactly, feedback follows the reference.

The simulator is a 1-D corridor: the agent stands on a cell, the instruction names a goal cell, an action
is a jump by some number of cells, and a seeded "slip" sometimes moves one cell further. Its state
(position, time, RNG) is snapshot-able, like the ALOHA and Ravens envs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lit_imit.interactive import (
    FIER,
    PIER,
    SAG,
    Decision,
    Foresight,
    Label,
    Simulator,
    feedback,
    info_judge,
    reward_judge,
)


class Corridor:
    """Deterministic given its state: jump by ``action`` cells, slip one further with prob. 0.3."""

    def __init__(self, length: int = 10, goal: int = 6, seed: int = 0) -> None:
        self.length, self.goal = length, goal
        self.pos, self.t = 0, 0
        self.rng = np.random.default_rng(seed)

    @property
    def unwrapped(self) -> "Corridor":
        return self

    def step(self, action: int):
        slip = int(self.rng.random() < 0.3)
        self.pos = int(np.clip(self.pos + int(action) + slip * np.sign(action), 0, self.length - 1))
        self.t += 1
        success = self.pos == self.goal
        return self.pos, float(success), success, False, {"is_success": success, "slip": bool(slip)}

    def get_state(self):
        return (self.pos, self.t, self.rng.bit_generator.state)

    def set_state(self, state) -> None:
        self.pos, self.t, rng_state = state
        self.rng.bit_generator.state = rng_state


class TimeLimit:
    """A wrapper with its own bookkeeping, which foresight must not disturb."""

    def __init__(self, env: Corridor, max_steps: int = 5) -> None:
        self.env, self.max_steps, self.elapsed = env, max_steps, 0

    @property
    def unwrapped(self) -> Corridor:
        return self.env

    def step(self, action):
        obs, rew, term, trunc, info = self.env.step(action)
        self.elapsed += 1
        return obs, rew, term, trunc or self.elapsed >= self.max_steps, info


def teacher(env: Corridor) -> int:
    """Jump straight to the goal (the slip can still spoil it, so the teacher is not always right)."""
    return env.goal - env.pos


def describe(sim: Corridor) -> int:
    return sim.pos


def relabel(before: int, after: int) -> str | None:
    """The instruction a jump did fulfil: the cell it reached, if it moved at all."""
    return None if after == before else f"go to cell {after}"


def decision(query=True, active=True, random=False, u=0.7, version=3) -> Decision:
    return Decision(query=query, active=active, random=random, uncertainty=u, threshold=0.5, version=version)


def never_called():
    raise AssertionError("the teacher must not be asked")


# ------------------------------------------------------------------------------------------------
# foresight
# ------------------------------------------------------------------------------------------------
def test_foresight_restores_state_and_predicts_the_real_outcome():
    env = TimeLimit(Corridor(seed=1))
    fs = Foresight(env, info_judge(), describe=describe, keep_state_after=True)
    for action in [3, 2, 1, 4, 2]:
        before = env.unwrapped.get_state()
        pred = fs.predict(action)
        assert env.unwrapped.get_state() == before and env.elapsed == 0
        # executing for real gives exactly what foresight saw (slip RNG included)
        obs, rew, term, _, info = env.unwrapped.step(action)
        assert (obs, rew, term, info) == (pred.outcome.observation, pred.outcome.reward, pred.outcome.terminated,
                                          pred.outcome.info)
        assert pred.after == obs and pred.before == before[0]
        assert pred.success == info["is_success"]
        assert env.unwrapped.get_state() == pred.state_after
        if term:
            break


def _replay(seed, actions, goal=3):
    """Ground truth: execute the plan on a fresh copy of the corridor, stopping at termination."""
    twin = Corridor(goal=goal, seed=seed)
    for n, a in enumerate(actions, 1):
        obs, _, term, _, _ = twin.step(a)
        if term:
            break
    return n, obs, term


@pytest.mark.parametrize("seed", [0, 1, 4])  # reaches the goal in 2 steps / overshoots it / 3 steps
def test_foresight_plan_stops_at_termination_and_state_after_commits(seed):
    env = Corridor(goal=3, seed=seed)
    plan = [1] * 6
    steps, last_obs, reached = _replay(seed, plan)
    res = Foresight(env, reward_judge(1.0), keep_state_after=True).predict_plan(plan)
    assert (res.outcome.steps, res.outcome.observation, res.success) == (steps, last_obs, reached)
    assert res.outcome.terminated == reached and len(res.outcome.rewards) == steps
    assert env.pos == 0 and env.t == 0
    env.set_state(res.state_after)  # a caller may commit the foreseen state instead of re-executing
    assert env.pos == last_obs and env.t == steps


def test_foresight_restores_even_if_the_judge_fails():
    env = Corridor()

    def broken(outcome):
        raise RuntimeError("judge crashed")

    with pytest.raises(RuntimeError):
        Foresight(env, broken).predict(2)
    assert env.pos == 0 and env.t == 0


def test_foresight_requires_snapshots():
    class NoState:
        def step(self, a):
            return 0, 0.0, False, False, {}

    with pytest.raises(TypeError):
        Foresight(NoState(), info_judge())
    assert isinstance(Corridor(), Simulator)


def test_judges():
    from lit_imit.interactive import Outcome

    out = Outcome(observation=None, rewards=(0.0, 0.495), terminated=False, truncated=False, info={}, steps=2)
    assert reward_judge(0.5)(out) and not reward_judge(0.5, tol=0.001)(out)
    assert Foresight(Corridor(), info_judge()).predict(1).state_after is None  # only on request
    ravens_like = Outcome(None, (0.25,), False, False, {"max_step_reward": 0.25}, 1)
    ravens_miss = Outcome(None, (0.0,), False, False, {"max_step_reward": 0.25}, 1)
    assert reward_judge()(ravens_like) and not reward_judge()(ravens_miss)  # target read from info
    assert not info_judge()(out)


# ------------------------------------------------------------------------------------------------
# the feedback decision table (ASkDAgger, Luijkx et al., TMLR 2025; askdagger_cliport)
# ------------------------------------------------------------------------------------------------
def test_no_query_no_feedback():
    fb = feedback(decision(query=False, active=False), valid=False, novice_action=2, teacher_action=never_called,
                  relabel_fn=lambda: "never")
    assert fb.label == Label.UNKNOWN and fb.execute == "novice" and fb.demos == ()


def test_valid_plan_becomes_validation_demo():
    fb = feedback(decision(), valid=True, novice_action=2, teacher_action=never_called)
    assert fb.label == Label.KNOWN_SUCCESS and fb.execute == "novice" and not fb.annotation
    (demo,) = fb.demos
    assert (demo.source, demo.action, demo.label, demo.uncertainty, demo.version) == ("validated", 2, Label.KNOWN_SUCCESS, 0.7, 3)
    assert demo.instruction is None


def test_active_query_on_invalid_plan_gives_annotation_and_relabel():
    fb = feedback(decision(), valid=False, novice_action=2, teacher_action=lambda: 5, relabel_fn=lambda: "go to cell 2")
    assert fb.label == Label.KNOWN_FAILURE and fb.execute == "teacher" and fb.teacher_action == 5
    assert [d.source for d in fb.demos] == ["teacher", "relabeled"]
    t, r = fb.demos
    assert t.action == 5 and t.label == Label.KNOWN_FAILURE and t.uncertainty == 0.7
    assert r.action == 2 and r.label == Label.UNKNOWN_RELABELING and math.isnan(r.uncertainty)
    assert r.instruction == "go to cell 2" and r.version == 3
    assert fb.annotation and fb.count("relabeled") == 1


def test_random_only_query_on_failure_gives_no_annotation():
    d = decision(active=False, random=True)
    assert d.random_only
    fb = feedback(d, valid=False, novice_action=2, teacher_action=never_called, relabel_fn=lambda: "go to cell 2")
    assert fb.label == Label.KNOWN_FAILURE and fb.execute == "novice"
    assert [x.source for x in fb.demos] == ["relabeled"] and not fb.annotation
    fb = feedback(d, valid=False, novice_action=2, teacher_action=never_called, relabel_fn=lambda: None)
    assert fb.demos == ()
    fb = feedback(d, valid=True, novice_action=2, teacher_action=never_called)
    assert [x.source for x in fb.demos] == ["validated"]


def test_random_and_active_together_counts_as_active():
    d = decision(active=True, random=True)
    assert not d.random_only
    fb = feedback(d, valid=False, novice_action=2, teacher_action=4)
    assert [x.source for x in fb.demos] == ["teacher"]


def test_options_and_teacher_failure():
    # validation demos off: an active query on a valid plan asks the teacher instead (label stays +1)
    fb = feedback(decision(), valid=True, novice_action=2, teacher_action=4, validation_demos=False)
    assert fb.label == Label.KNOWN_SUCCESS and fb.execute == "teacher"
    assert [(x.source, x.label) for x in fb.demos] == [("teacher", Label.KNOWN_SUCCESS)]
    fb = feedback(decision(active=False, random=True), valid=True, novice_action=2, teacher_action=never_called,
                  validation_demos=False)
    assert fb.demos == () and fb.execute == "novice"
    # relabeling off: relabel_fn is not even asked
    fb = feedback(decision(), valid=False, novice_action=2, teacher_action=4,
                  relabel_fn=lambda: pytest.fail("relabel asked"), relabeling_demos=False)
    assert [x.source for x in fb.demos] == ["teacher"]
    # a failing teacher action is executed but not stored
    fb = feedback(decision(), valid=False, novice_action=2, teacher_action=4, teacher_ok=lambda a: a == 3)
    assert fb.execute == "teacher" and fb.demos == () and not fb.annotation
    with pytest.raises(ValueError):
        feedback(decision(), valid=False, novice_action=2, teacher_action=None)


# ------------------------------------------------------------------------------------------------
# FIER on the simulator, and a short interactive loop SAG -> FIER -> PIER
# ------------------------------------------------------------------------------------------------
def _fier(env):
    return FIER(Foresight(env, info_judge(), describe=describe), relabel=relabel)


def test_fier_step_on_invalid_plan():
    env = TimeLimit(Corridor(goal=6, seed=0))
    sim = env.unwrapped
    sim.rng = np.random.default_rng(5)
    fier = _fier(env)
    seen = []

    def ask_teacher():
        seen.append(sim.get_state())  # the teacher sees the restored, pre-plan simulator
        return teacher(sim)

    step = fier.step(decision(), novice_action=2, teacher_action=ask_teacher)
    assert step.novice_failed and step.feedback.label == Label.KNOWN_FAILURE
    assert seen and seen[0][0] == 0
    assert step.action == 6 and step.feedback.execute == "teacher"
    relabeled = [d for d in step.feedback.demos if d.source == "relabeled"]
    assert relabeled and relabeled[0].instruction == f"go to cell {step.novice.after}"
    # the teacher demo is stored only if its own foresight succeeds
    teacher_demos = [d for d in step.feedback.demos if d.source == "teacher"]
    assert bool(teacher_demos) == Foresight(env, info_judge()).predict(6).success
    assert sim.pos == 0 and env.elapsed == 0  # nothing executed yet: that is the caller's move


def test_fier_step_on_valid_plan_and_unqueried():
    env = Corridor(goal=2, seed=0)
    env.rng = np.random.default_rng(0)
    fier = _fier(env)
    step = fier.step(decision(), novice_action=2, teacher_action=never_called)
    if step.novice.success:
        assert [d.source for d in step.feedback.demos] == ["validated"] and step.action == 2
    step = fier.step(decision(query=False, active=False), novice_action=1, teacher_action=never_called)
    assert step.feedback.demos == () and step.action == 1 and step.feedback.label == Label.UNKNOWN


def test_interactive_loop_bookkeeping():
    """A noisy novice in the corridor, gated by SAG, with FIER feedback and PIER priorities:
    the counts the callback will log must agree with each other."""
    rng = np.random.default_rng(0)
    gate = SAG(mode="sensitivity", target=0.9, p_rand=0.2, n_min=3, n_rep=5, seed=0)
    entries_u, entries_r, entries_k, sources = [], [], [], []
    failed, queried, annotations, active_fail, gated = [], [], 0, 0, 0
    for episode in range(30):
        env = TimeLimit(Corridor(goal=int(rng.integers(3, 9)), seed=episode), max_steps=4)
        fier = _fier(env)
        sim = env.unwrapped
        version = episode // 5
        done = False
        while not done:
            noise = int(rng.choice([-2, -1, 0, 0, 0, 0, 1, 2]))
            novice = teacher(sim) + noise
            u = abs(noise) + rng.random()  # the novice is unsure when it is wrong (mostly)
            d = gate.decide(u, version=version)
            step = fier.step(d, novice, teacher_action=lambda: teacher(sim))
            gate.record(u, step.feedback.label, version=version)
            for demo in step.feedback.demos:
                if demo.source == "relabeled":
                    gate.record(math.nan, Label.UNKNOWN_RELABELING, version=version)
                entries_u.append(demo.uncertainty)
                entries_r.append(int(demo.label))
                entries_k.append(demo.version)
                sources.append(demo.source)
            failed.append(step.novice_failed)
            queried.append(d.query)
            gated += math.isfinite(d.threshold)
            annotations += step.feedback.annotation
            active_fail += d.active and step.novice_failed
            _, _, term, trunc, _ = env.step(step.action)
            done = term or trunc
    assert gated > len(queried) // 2 and not all(queried)  # past warm-up, the gate really gates
    assert annotations <= active_fail  # annotations only after active queries on failures
    assert sources.count("validated") == sum(1 for f, q in zip(failed, queried) if q and not f)
    assert all(r == Label.UNKNOWN_RELABELING for r, s in zip(entries_r, sources) if s == "relabeled")
    assert sum(q and f for q, f in zip(queried, failed)) / max(sum(failed), 1) > 0.7
    res = PIER().compute(entries_u, entries_r, entries_k, n_interactive=30)
    assert res.probs.sum() == pytest.approx(1.0) and res.weights.max() == pytest.approx(1.0)
    by_source = {s: res.priorities[[x == s for x in sources]] for s in set(sources)}
    assert np.all(by_source["teacher"] >= 1) and np.all(by_source["validated"] <= 1)
    assert np.all(by_source["relabeled"] == 1)
