"""FIER: Foresight Interactive Experience Replay (ASkDAgger, Luijkx et al., TMLR 2025), environment-agnostic.

When the gate queries the teacher, the teacher judges the novice's *plan* before it is executed
("foresight"); in simulation this is emulated by snapshotting the simulator, executing the plan, judging
the outcome, and restoring the snapshot. The teacher's answer is turned into demonstrations:

- **validated** demo: the plan is valid -> the novice's own action is stored (and executed);
- **relabeled** demo: the plan is invalid but achieved *something* the task can describe -> the novice's
  action is stored with the instruction it did fulfil (``relabel`` returns it, or None);
- **teacher** demo (annotation): an *active* query on an invalid plan -> the teacher's action is stored
  and executed instead. A *random-only* query (``p_rand`` draw) on an invalid plan gives the label and
  possibly a relabeled demo, but no annotation, and the novice's action is executed.

The pieces are small and separately testable: :class:`Foresight` (simulator protocol), :func:`feedback`
(pure decision table), :class:`FIER` (foresight + feedback for one decision point). Executing the chosen
action on the real (wrapped) environment stays with the caller, so wrappers such as time limits count
each decision once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

from .sag import Decision, Label

__all__ = [
    "Simulator",
    "Outcome",
    "ForesightResult",
    "Foresight",
    "Demo",
    "Feedback",
    "feedback",
    "FIER",
    "FIERStep",
    "reward_judge",
    "info_judge",
    "SOURCES",
]

SOURCES = ("validated", "relabeled", "teacher")
Source = Literal["validated", "relabeled", "teacher"]


@runtime_checkable
class Simulator(Protocol):
    """What foresight needs from ``env.unwrapped``: a gymnasium ``step`` plus exact state snapshots.

    ``get_state()`` must capture everything that determines future steps (physics, task bookkeeping,
    any RNG), so that ``set_state(s)`` followed by the same actions reproduces the same outcome.
    """

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]: ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """What executing a plan on the simulator produced (input to the judge)."""

    observation: Any
    rewards: tuple[float, ...]
    terminated: bool
    truncated: bool
    info: dict
    steps: int

    @property
    def reward(self) -> float:
        """Reward of the last executed step (the reference judges the step reward)."""
        return self.rewards[-1] if self.rewards else math.nan


@dataclass(frozen=True)
class ForesightResult:
    """A judged plan: the outcome, the verdict, task descriptions before/after, and the post state."""

    outcome: Outcome
    success: bool
    before: Any = None
    after: Any = None
    state_after: Any = None


Judge = Callable[[Outcome], bool]


def reward_judge(target: float | None = None, tol: float = 0.01, target_key: str = "max_step_reward") -> Judge:
    """Success iff the last step reward is within ``tol`` of the target step reward.

    This is the reference's test for Ravens: step reward equal to the maximal reward of one goal step
    (total goal reward / number of goal objects). With ``target=None`` the target is read from the
    step's ``info[target_key]`` (the Ravens env reports ``max_step_reward`` there).
    """

    def judge(outcome: Outcome) -> bool:
        goal = outcome.info[target_key] if target is None else target
        return bool(abs(outcome.reward - float(goal)) < tol)

    return judge


def info_judge(key: str = "is_success") -> Judge:
    """Success iff the final ``info[key]`` is truthy (gymnasium convention for task success)."""

    def judge(outcome: Outcome) -> bool:
        return bool(outcome.info.get(key, False))

    return judge


class Foresight:
    """Executes a plan on the simulator, judges it, and restores the simulator exactly.

    ``env`` may be wrapped: foresight acts on ``env.unwrapped`` so wrapper bookkeeping (time limits,
    order enforcement, recorders) is not disturbed. ``describe(sim)`` (optional) summarises the task
    state before and after the plan, e.g. which objects sit on which targets, for relabeling.
    ``keep_state_after`` also snapshots the post-plan state (``ForesightResult.state_after``), for
    callers that commit the foreseen state instead of re-executing; off by default because a snapshot
    can be costly (a saved physics-server state in pybullet).
    """

    def __init__(self, env: Any, judge: Judge, describe: Callable[[Any], Any] | None = None,
                 keep_state_after: bool = False) -> None:
        sim = getattr(env, "unwrapped", env)
        if not isinstance(sim, Simulator):
            raise TypeError("foresight needs env.unwrapped with step(), get_state() and set_state()")
        self.sim = sim
        self.judge = judge
        self.describe = describe
        self.keep_state_after = keep_state_after

    def predict(self, action: Any) -> ForesightResult:
        """Judge one action (a skill, or one control step)."""
        return self.predict_plan([action])

    def predict_plan(self, actions: Sequence[Any]) -> ForesightResult:
        """Judge a sequence of actions (e.g. an action chunk); stops early when the episode ends.

        The simulator is always restored, even if the judge or the simulator raises.
        """
        if len(actions) == 0:
            raise ValueError("a plan needs at least one action")
        snapshot = self.sim.get_state()
        try:
            before = self.describe(self.sim) if self.describe else None
            rewards: list[float] = []
            obs, terminated, truncated, info = None, False, False, {}
            for a in actions:
                obs, rew, terminated, truncated, info = self.sim.step(a)
                rewards.append(float(rew))
                if terminated or truncated:
                    break
            outcome = Outcome(obs, tuple(rewards), bool(terminated), bool(truncated), dict(info), len(rewards))
            after = self.describe(self.sim) if self.describe else None
            success = bool(self.judge(outcome))
            state_after = self.sim.get_state() if self.keep_state_after else None
        finally:
            self.sim.set_state(snapshot)
        return ForesightResult(outcome, success, before, after, state_after)


@dataclass(frozen=True)
class Demo:
    """One demonstration produced by FIER, with the PIER fields of its entry.

    ``instruction`` is None when the demo keeps the episode's instruction; relabeled demos carry the
    new one. ``label``/``uncertainty`` are what PIER needs: a relabeled entry has UNKNOWN_RELABELING
    and u = NaN, the others inherit the decision's label and uncertainty. ``version`` is the model
    version of the decision. The observation is the one the decision was made on; the caller holds
    it and writes (observation, action, instruction) into the episode store.
    """

    source: Source
    action: Any
    label: Label
    uncertainty: float
    version: int
    instruction: str | None = None


@dataclass(frozen=True)
class Feedback:
    """The teacher's answer to one decision point.

    ``label`` updates the decision's SAG entry (KNOWN_* if queried, UNKNOWN otherwise); ``execute`` says
    whose action the system executes for real; ``demos`` lists the demos in the reference's order
    (validated or teacher first, then relabeled).
    """

    label: Label
    execute: Literal["novice", "teacher"]
    demos: tuple[Demo, ...] = field(default_factory=tuple)
    teacher_action: Any = None

    @property
    def annotation(self) -> bool:
        """True if the teacher provided a demonstration (the costly kind of feedback)."""
        return any(d.source == "teacher" for d in self.demos)

    def count(self, source: str) -> int:
        return sum(d.source == source for d in self.demos)


def _resolve(value: Any) -> Any:
    return value() if callable(value) else value


def feedback(
    decision: Decision,
    valid: bool,
    novice_action: Any,
    teacher_action: Any = None,
    relabel_fn: Callable[[], str | None] | None = None,
    *,
    teacher_ok: bool | Callable[[Any], bool] = True,
    validation_demos: bool = True,
    relabeling_demos: bool = True,
) -> Feedback:
    """Turn a gating decision and the teacher's verdict on the novice plan into demos (pure logic).

    ``valid`` is the foresight verdict (only used when the decision queried the teacher).
    ``teacher_action`` is the teacher's action or a zero-argument callable producing it; it is only
    evaluated when an annotation is due, because asking the teacher is what SAG tries to save.
    ``teacher_ok`` says whether the teacher's action succeeds (a bool or a predicate on the action);
    as in the reference, a failing teacher action is still executed but not stored.
    ``relabel_fn()`` returns the instruction the invalid plan did fulfil, or None.
    With ``validation_demos=False`` an active query on a valid plan asks the teacher for an annotation
    instead (the reference's ablation).
    """
    u, v = float(decision.uncertainty), int(decision.version)
    if not decision.query:
        return Feedback(Label.UNKNOWN, "novice")
    if valid:
        if validation_demos:
            demo = Demo("validated", novice_action, Label.KNOWN_SUCCESS, u, v)
            return Feedback(Label.KNOWN_SUCCESS, "novice", (demo,))
        if not decision.active:
            return Feedback(Label.KNOWN_SUCCESS, "novice")
        return _annotate(Label.KNOWN_SUCCESS, (), teacher_action, teacher_ok, u, v)
    relabeled: tuple[Demo, ...] = ()
    if relabeling_demos and relabel_fn is not None:
        instruction = relabel_fn()
        if instruction is not None:
            relabeled = (Demo("relabeled", novice_action, Label.UNKNOWN_RELABELING, math.nan, v, instruction),)
    if not decision.active:  # random-only query: label (+ relabel), no annotation, novice executes
        return Feedback(Label.KNOWN_FAILURE, "novice", relabeled)
    return _annotate(Label.KNOWN_FAILURE, relabeled, teacher_action, teacher_ok, u, v)


def _annotate(label: Label, relabeled: tuple[Demo, ...], teacher_action: Any,
              teacher_ok: bool | Callable[[Any], bool], u: float, v: int) -> Feedback:
    """Ask the teacher: its action is executed, and stored as a demo if it succeeds."""
    action = _resolve(teacher_action)
    if action is None:
        raise ValueError("an annotation is due but no teacher action was given")
    ok = teacher_ok(action) if callable(teacher_ok) else bool(teacher_ok)
    demos = ((Demo("teacher", action, label, u, v),) if ok else ()) + relabeled
    return Feedback(label, "teacher", demos, teacher_action=action)


@dataclass(frozen=True)
class FIERStep:
    """Result of one FIER decision point: the feedback, the novice foresight, the action to execute."""

    feedback: Feedback
    novice: ForesightResult
    action: Any

    @property
    def novice_failed(self) -> bool:
        """Privileged ground truth (from foresight) for logging sensitivity/specificity."""
        return not self.novice.success


class FIER:
    """Foresight + feedback for one decision point of an interactive episode.

    ``relabel(before, after)`` receives the ``describe`` summaries of the novice foresight and returns
    the instruction the plan fulfilled, or None. With ``check_teacher`` the teacher's action is
    judged by foresight too and stored only if it succeeds (as in the reference).
    """

    def __init__(self, foresight: Foresight, relabel: Callable[[Any, Any], str | None] | None = None,
                 validation_demos: bool = True, relabeling_demos: bool = True, check_teacher: bool = True,
                 plan: bool = False) -> None:
        self.foresight = foresight
        self.relabel = relabel
        self.validation_demos = validation_demos
        self.relabeling_demos = relabeling_demos
        self.check_teacher = check_teacher
        self.plan = plan  # actions are sequences (chunks) executed step by step

    def _predict(self, action: Any) -> ForesightResult:
        return self.foresight.predict_plan(action) if self.plan else self.foresight.predict(action)

    def step(self, decision: Decision, novice_action: Any, teacher_action: Any = None) -> FIERStep:
        """Judge the novice plan (always: the verdict is also the logging ground truth) and build the
        feedback. ``teacher_action`` is a value or a zero-argument callable evaluated on the restored,
        pre-plan simulator only if an annotation is due. Execute ``result.action`` afterwards.
        """
        novice = self._predict(novice_action)
        relabel_fn = None
        if self.relabel is not None:
            relabel = self.relabel

            def relabel_fn() -> str | None:
                return relabel(novice.before, novice.after)

        teacher_ok: bool | Callable[[Any], bool] = (lambda a: self._predict(a).success) if self.check_teacher else True
        fb = feedback(decision, novice.success, novice_action, teacher_action, relabel_fn,
                      teacher_ok=teacher_ok, validation_demos=self.validation_demos,
                      relabeling_demos=self.relabeling_demos)
        action = novice_action if fb.execute == "novice" else fb.teacher_action
        return FIERStep(fb, novice, action)
