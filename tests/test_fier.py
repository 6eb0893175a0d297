"""FIER on a toy deterministic simulator: foresight undoes exactly, feedback follows the reference.

The simulator is a 1-D corridor: the agent stands on a cell, the instruction names a goal cell, an action
is a jump by some number of cells, and a seeded "slip" sometimes moves one cell further. Its state
(position, time, RNG) is snapshot-able, like the ALOHA and Ravens envs. Plans are one-step segments run
by :func:`run_segment`, exactly as the interactive loop runs them.
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
    Label,
    Segment,
    Simulator,
    StepRewardJudge,
    feedback,
    run_segment,
)


class Corridor:
    """Deterministic given its state: jump by ``action`` cells, slip one further with prob. 0.3."""

    def __init__(self, length: int = 10, goal: int = 6, seed: int = 0) -> None:
        self.length, self.goal = length, goal
        self.pos, self.t = 0, 0
        self.rng = np.random.default_rng(seed)
        self.snapshots = 0

    def step(self, action: int):
        slip = int(self.rng.random() < 0.3)
        self.pos = int(np.clip(self.pos + int(action) + slip * np.sign(action), 0, self.length - 1))
        self.t += 1
        success = self.pos == self.goal
        return self.pos, float(success), success, False, {"is_success": success, "slip": bool(slip)}

    def get_state(self):
        self.snapshots += 1
        return (self.pos, self.t, self.rng.bit_generator.state)

    def set_state(self, state) -> None:
        self.pos, self.t, rng_state = state
        self.rng.bit_generator.state = rng_state


def teacher(env: Corridor) -> int:
    """Jump straight to the goal (the slip can still spoil it, so the teacher is not always right)."""
    return env.goal - env.pos


def relabel(segment: Segment) -> str | None:
    """The instruction a jump did fulfil: the cell it reached, if it moved at all."""
    start = segment.observations[0]
    return None if segment.final_observation == start else f"go to cell {segment.final_observation}"


def plan(sim: Corridor, action_fn, actor: str = "novice"):
    """A one-step plan from the simulator's current position (the loop's ``run_segment``)."""
    return lambda: run_segment(sim, lambda obs: action_fn(), sim.pos, 1, actor, sim.t, 0.0)


JUDGE = StepRewardJudge(target=1.0)  # the corridor pays 1 on the goal cell


def decision(query=True, active=True, random=False, u=0.7, version=3) -> Decision:
    return Decision(query=query, active=active, random=random, uncertainty=u, threshold=0.5, version=version)


def never_called():
    raise AssertionError("the teacher must not be asked")


def twin_after(seed_state, actions, goal):
    """Ground truth: a fresh corridor in ``seed_state`` after executing ``actions`` once."""
    twin = Corridor(goal=goal)
    twin.set_state(seed_state)
    for a in actions:
        twin.step(a)
    return twin.pos, twin.t, twin.rng.bit_generator.state


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
# FIER on the simulator: foresight, take-over, and a short interactive loop SAG -> FIER -> PIER
# ------------------------------------------------------------------------------------------------
def test_fier_needs_snapshots():
    class NoState:
        def step(self, a):
            return 0, 0.0, False, False, {}

    with pytest.raises(TypeError, match="get_state"):
        FIER(NoState(), JUDGE)
    assert isinstance(Corridor(), Simulator)


@pytest.mark.parametrize("seed", range(6))
def test_a_valid_queried_plan_stands_and_is_not_executed_twice(seed):
    sim = Corridor(goal=9, seed=seed)  # the last cell: a jump of 9 reaches it, slip or not
    start = sim.get_state()
    step = FIER(sim, JUDGE, relabel).step(decision(), plan(sim, lambda: 9), plan(sim, never_called, "teacher"))
    # the simulator is where one execution of the plan leaves it (its slip RNG drawn once)
    assert (sim.pos, sim.t, sim.rng.bit_generator.state) == twin_after(start, [9], goal=9)
    assert step.executed is step.novice and step.valid
    assert [(d.source, d.action) for d in step.feedback.demos] == [("validated", step.novice)]


def test_an_invalid_plan_is_undone_and_the_teacher_acts_from_the_pre_plan_state():
    sim = Corridor(goal=6, seed=0)
    sim.rng = np.random.default_rng(5)
    start = sim.get_state()
    seen = []

    def teacher_action():
        seen.append((sim.pos, sim.t))  # the teacher sees the restored, pre-plan simulator
        return teacher(sim)

    step = FIER(sim, JUDGE, relabel).step(decision(), plan(sim, lambda: 2), plan(sim, teacher_action, "teacher"))
    assert step.novice_failed and step.feedback.label == Label.KNOWN_FAILURE and step.feedback.execute == "teacher"
    assert seen == [(0, 0)] and step.executed.actor == "teacher" and step.executed.actions == [6]
    # the novice's jump never happened: the state is one teacher step from the start
    assert (sim.pos, sim.t, sim.rng.bit_generator.state) == twin_after(start, [6], goal=6)
    relabeled = [d for d in step.feedback.demos if d.source == "relabeled"]
    assert relabeled and relabeled[0].instruction == f"go to cell {step.novice.final_observation}"
    # the teacher demo is stored only if the judge accepts its segment
    assert any(d.source == "teacher" for d in step.feedback.demos) == JUDGE(step.executed)


def test_a_random_only_query_labels_an_invalid_plan_but_lets_it_stand():
    sim = Corridor(goal=6, seed=0)
    start = sim.get_state()
    step = FIER(sim, JUDGE, relabel).step(decision(active=False, random=True), plan(sim, lambda: 2),
                                          plan(sim, never_called, "teacher"))
    assert step.novice_failed and step.feedback.execute == "novice" and not step.feedback.annotation
    assert [d.source for d in step.feedback.demos] == ["relabeled"]
    assert (sim.pos, sim.t, sim.rng.bit_generator.state) == twin_after(start, [2], goal=6)


def test_an_unqueried_plan_runs_for_real_without_a_snapshot():
    sim = Corridor(goal=6, seed=0)
    step = FIER(sim, JUDGE, relabel).step(decision(query=False, active=False), plan(sim, lambda: 1),
                                          plan(sim, never_called, "teacher"))
    assert sim.snapshots == 0 and sim.t == 1 and step.feedback.demos == ()
    assert step.feedback.label == Label.UNKNOWN and step.executed is step.novice


def test_fier_options_switch_off_its_demo_kinds():
    sim = Corridor(goal=9)  # a jump of 9 reaches the last cell, slip or not: a valid plan
    step = FIER(sim, JUDGE, relabel, validation_demos=False).step(
        decision(), plan(sim, lambda: 9), plan(sim, lambda: teacher(sim), "teacher"))
    assert step.valid and step.feedback.execute == "teacher"  # ActiveDAgger: the teacher annotates instead
    sim = Corridor(goal=6, seed=0)
    step = FIER(sim, JUDGE, relabel, relabeling_demos=False, check_teacher=False).step(
        decision(), plan(sim, lambda: 2), plan(sim, lambda: 0, "teacher"))
    assert [d.source for d in step.feedback.demos] == ["teacher"]  # stored unjudged; no relabel


def test_interactive_loop_bookkeeping():
    """A noisy novice in the corridor, gated by SAG, with FIER feedback and PIER priorities:
    the counts the callback will log must agree with each other."""
    rng = np.random.default_rng(0)
    gate = SAG(mode="sensitivity", target=0.9, p_rand=0.2, n_min=3, n_rep=5, seed=0)
    entries_u, entries_r, entries_k, sources = [], [], [], []
    failed, queried, annotations, active_fail, gated = [], [], 0, 0, 0
    for episode in range(30):
        sim = Corridor(goal=int(rng.integers(3, 9)), seed=episode)
        fier = FIER(sim, JUDGE, relabel)
        version = episode // 5
        done = False
        while not done and sim.t < 4:
            noise = int(rng.choice([-2, -1, 0, 0, 0, 0, 1, 2]))
            novice = teacher(sim) + noise
            u = abs(noise) + rng.random()  # the novice is unsure when it is wrong (mostly)
            d = gate.decide(u, version=version)
            step = fier.step(d, plan(sim, lambda: novice), plan(sim, lambda: teacher(sim), "teacher"))
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
            done = step.executed.done
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
