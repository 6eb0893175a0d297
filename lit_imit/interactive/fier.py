"""FIER: Foresight Interactive Experience Replay (ASkDAgger, Luijkx et al., TMLR 2025), environment-agnostic.

When the gate queries the teacher, the teacher judges the novice's *plan* before it is executed
("foresight"); in simulation this is emulated by snapshotting the simulator, executing the plan, judging
it, and restoring the snapshot if the plan must not happen. The teacher's answer becomes demonstrations:

- **validated** demo: the plan is valid -> the novice's own segment is stored (and has happened);
- **relabeled** demo: the plan is invalid but achieved *something* the task can describe -> the novice's
  segment is stored with the instruction it did fulfil (``relabel`` returns it, or None);
- **teacher** demo (annotation): an *active* query on an invalid plan -> the simulator is restored and the
  teacher acts instead; its segment is stored if the judge accepts it. A *random-only* query (``p_rand``
  draw) on an invalid plan gives the label and possibly a relabeled demo, but no annotation, and the
  novice's plan stands.

Two pieces: :func:`feedback` (the pure decision table) and :class:`FIER` (foresight on the simulator +
feedback, for one decision point). A plan is a zero-argument callable that runs an actor on the simulator
from its current state and returns the :class:`~.segments.Segment`; the episode loop (:mod:`.loop`)
builds them. A plan that stands is not executed twice: its foreseen segment is what happened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, runtime_checkable

from .judges import SegmentJudge
from .sag import Decision, Label
from .segments import Segment

__all__ = ["Simulator", "Demo", "Feedback", "feedback", "FIER", "FIERStep"]

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
class Demo:
    """One demonstration produced by FIER, with the PIER fields of its entry.

    ``instruction`` is None when the demo keeps the episode's instruction; relabeled demos carry the
    new one. ``label``/``uncertainty`` are what PIER needs: a relabeled entry has UNKNOWN_RELABELING
    and u = NaN, the others inherit the decision's label and uncertainty. ``version`` is the model
    version of the decision. ``action`` is the plan that becomes data: in the episode loop the novice's or
    the teacher's :class:`~.segments.Segment` (its observations and actions); :func:`feedback` itself
    treats plans as opaque values.
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


Plan = Callable[[], Segment]


@dataclass(frozen=True)
class FIERStep:
    """One FIER decision point: the teacher's feedback, the novice's plan as it ran, and what happened.

    ``executed`` is the novice segment when the novice's plan stands, else the teacher's take-over; the
    simulator is in the state after it. ``valid`` is the judge's verdict on the novice plan: the
    teacher's answer when the decision queried, privileged ground truth for logging otherwise.
    """

    feedback: Feedback
    novice: Segment
    executed: Segment
    valid: bool

    @property
    def novice_failed(self) -> bool:
        return not self.valid


class FIER:
    """Foresight + feedback for one decision point of an interactive episode.

    ``judge`` gives the verdict on a segment (:mod:`.judges`); ``relabel(segment)`` returns the instruction
    an invalid novice segment did fulfil, or None. With ``check_teacher`` a teacher take-over is stored
    only if the judge accepts it (the reference drops failing teacher demos). ``validation_demos`` and
    ``relabeling_demos`` switch FIER's two demo kinds (off: ActiveDAgger and the ablations).
    """

    def __init__(self, sim: Simulator, judge: SegmentJudge, relabel: Callable[[Segment], str | None] | None = None,
                 validation_demos: bool = True, relabeling_demos: bool = True, check_teacher: bool = True) -> None:
        if not isinstance(sim, Simulator):
            raise TypeError("foresight needs a simulator with step(), get_state() and set_state() (env.unwrapped)")
        self.sim = sim
        self.judge = judge
        self.relabel = relabel
        self.validation_demos = bool(validation_demos)
        self.relabeling_demos = bool(relabeling_demos)
        self.check_teacher = bool(check_teacher)

    def step(self, decision: Decision, novice_plan: Plan, teacher_plan: Plan) -> FIERStep:
        """Run the novice's plan (on a snapshot when the decision queried), judge it, and build the feedback.

        ``teacher_plan`` runs only if an annotation is due, from the restored pre-plan state: asking the
        teacher is what the gate tries to save.
        """
        snapshot = self.sim.get_state() if decision.query else None
        novice = novice_plan()
        valid = bool(self.judge(novice))
        taken_over: list[Segment] = []

        def teacher_takes_over() -> Segment:
            self.sim.set_state(snapshot)
            segment = teacher_plan()
            taken_over.append(segment)
            return segment

        relabel_fn = None
        if self.relabel is not None:
            relabel = self.relabel

            def relabel_fn() -> str | None:
                return relabel(novice)

        fb = feedback(decision, valid, novice, teacher_takes_over, relabel_fn,
                      teacher_ok=self.judge if self.check_teacher else True,
                      validation_demos=self.validation_demos, relabeling_demos=self.relabeling_demos)
        executed = taken_over[0] if fb.execute == "teacher" else novice
        return FIERStep(fb, novice, executed, valid)
