"""One interactive episode: gated novice decisions, teacher feedback, demonstrations (no Lightning).

A *decision* is the unit the gate judges and the teacher may take over: one env step for skill policies
(CLIPort on Ravens: one pick-and-place), one executed action chunk for chunking policies (ACT: the
``n_action_steps`` actions of a chunk). At each decision point of an episode:

1. the novice proposes its next action and the uncertainty of the decision (``Novice.step``);
2. the gate (:class:`~lit_imit.interactive.sag.SAG`) decides whether to query the teacher;
3. :class:`~lit_imit.interactive.fier.FIER` runs the novice's decision on the simulator and judges it
   (:mod:`~lit_imit.interactive.judges`). When the teacher was queried this is *foresight*: the simulator
   was snapshot first, so an invalid plan can be undone before it "happened" (the teacher judged the
   plan, not its consequences). When it was not queried, the plan runs for real and the verdict is only
   privileged ground truth for logging sensitivity and specificity;
4. FIER's feedback turns (decision, verdict) into demonstrations: a *validated* novice segment, a
   *relabeled* one (the instruction it did fulfil), or a *teacher* segment: the snapshot is restored and
   the teacher acts for the decision's steps (HG-DAgger style take-over), its actions executed and
   recorded.

DAgger (``mode="dagger"``) has no gate: at every decision the teacher labels the novice-visited state
with its own segment, rolled out on a snapshot, and the novice then executes its decision (or, with
probability ``dagger_beta``, the teacher drives). For a chunking policy the decision states are exactly
the states the policy conditions on (it executes open loop in between), so labelling them is labelling
every state the novice acts from; the label is a whole teacher segment, i.e. a chunk target.

Everything here works on ``env.unwrapped`` with ``get_state()/set_state()`` (ALOHA, Ravens); the episode
length is capped by ``max_steps`` (wrappers are bypassed so foresight never counts as a step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from .fier import FIER, Feedback, Simulator
from .judges import SegmentJudge
from .sag import SAG, Decision, Label
from .segments import Segment, run_segment, segment_arrays

__all__ = [
    "MODES",
    "ModeSpec",
    "Novice",
    "Teacher",
    "PolicyNovice",
    "DecisionRecord",
    "DemoSegment",
    "EpisodeOutcome",
    "InteractiveConfig",
    "run_interactive_episode",
    "pier_inputs",
    "annotated_steps",
    "round_summary",
]


# ----------------------------------------------------------------------------------------------
# modes
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeSpec:
    """What a method uses: a gate (else every decision is labelled), FIER's demo kinds, PIER."""

    gated: bool
    validation_demos: bool
    relabeling_demos: bool
    pier: bool


MODES: dict[str, ModeSpec] = {
    # teacher labels every decision state; no gate, no FIER, uniform replay
    "dagger": ModeSpec(gated=False, validation_demos=False, relabeling_demos=False, pier=False),
    # SAG gating, teacher annotations on (active) queries only (ASkDAgger minus FIER and PIER)
    "active_dagger": ModeSpec(gated=True, validation_demos=False, relabeling_demos=False, pier=False),
    "askdagger": ModeSpec(gated=True, validation_demos=True, relabeling_demos=True, pier=True),
    "askdagger_no_pier": ModeSpec(gated=True, validation_demos=True, relabeling_demos=True, pier=False),
    "askdagger_no_fier": ModeSpec(gated=True, validation_demos=False, relabeling_demos=False, pier=True),
}


# ----------------------------------------------------------------------------------------------
# protocols
# ----------------------------------------------------------------------------------------------


class Novice(Protocol):
    """The learner as the loop sees it: one env, one step at a time.

    ``step(obs)`` returns the action to execute now and the uncertainty of the decision it belongs to
    (for a chunking policy the uncertainty of the chunk, computed when the chunk was predicted).
    ``reset()`` starts a fresh decision: the loop calls it at episode start and after the teacher took
    over, so a chunking novice predicts a new chunk at the next decision point.
    """

    def reset(self) -> None: ...

    def step(self, obs: Mapping[str, Any]) -> tuple[Any, float]: ...


class Teacher(Protocol):
    """A state-feedback teacher (``lit_imit.envs.make_teacher``): acts from whatever state the env is in."""

    def reset(self) -> None: ...

    def act(self, obs: Any) -> Any: ...


class PolicyNovice:
    """Adapter from a :class:`~lit_imit.modules.base.PolicyModule` (``reset``/``predict``) to :class:`Novice`.

    Observations get a batch axis of one (strings, e.g. a language goal, become a one-element list).
    """

    def __init__(self, module: Any) -> None:
        self.module = module

    def reset(self) -> None:
        self.module.reset()

    def step(self, obs: Mapping[str, Any]) -> tuple[Any, float]:
        batch = {key: [value] if isinstance(value, str) else np.asarray(value)[None] for key, value in obs.items()}
        prediction = self.module.predict(batch)
        action = prediction.action
        if isinstance(action, Mapping):  # pick-and-place style dict actions
            out: Any = {key: _row(value) for key, value in action.items()}
        else:
            out = _row(action)
        return out, float(_row(prediction.uncertainty))


def _row(value: Any) -> np.ndarray:
    """First row of a batched tensor/array as numpy (float32 for floating tensors)."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)[0]


# ----------------------------------------------------------------------------------------------
# records (plain data: gathered across DDP ranks, summarised into checkpoints)
# ----------------------------------------------------------------------------------------------


@dataclass
class DecisionRecord:
    """One decision point: what the gate did, what the teacher said, what became data."""

    episode: int
    index: int
    step: int
    uncertainty: float
    threshold: float
    query: bool
    active: bool
    random: bool
    label: int
    failed: bool  # privileged ground truth: the novice's plan was judged invalid
    executed: str  # "novice" or "teacher"
    version: int
    judged: bool = True  # False when the teacher drove without the novice's plan being tried (DAgger beta)
    n_validated: int = 0
    n_relabeled: int = 0
    n_teacher: int = 0


@dataclass
class DemoSegment:
    """A demonstration to store: arrays in the on-disk layout plus its PIER fields."""

    source: str  # teacher | validated | relabeled
    label: int
    uncertainty: float
    version: int
    episode: int
    decision: int
    start_step: int
    arrays: dict[str, np.ndarray]
    instruction: str | None = None
    steps: int = 0  # env steps of the segment: a teacher demo's steps are the teacher's time (annotated steps)

    def meta(self) -> dict[str, Any]:
        """What the DataModule keeps per episode (PIER inputs and provenance), plain Python."""
        return {"source": self.source, "label": int(self.label), "uncertainty": float(self.uncertainty),
                "version": int(self.version), "episode": int(self.episode), "decision": int(self.decision)}

    def attrs(self, task: str, sim: str, seed: int) -> dict[str, Any]:
        """Episode-file attributes (``round`` is the model version that collected the demo)."""
        return {"sim": sim, "task": task, "source": self.source, "round": int(self.version),
                "label": int(self.label), "uncertainty": float(self.uncertainty), "rollout_seed": int(seed),
                "interactive_episode": int(self.episode), "decision": int(self.decision),
                "start_step": int(self.start_step), "instruction": self.instruction}


@dataclass
class EpisodeOutcome:
    """Everything one interactive episode produced."""

    index: int
    seed: int
    success: bool
    length: int
    episode_return: float
    decisions: list[DecisionRecord]
    demos: list[DemoSegment]
    novice_steps: int = 0
    teacher_steps: int = 0


@dataclass
class InteractiveConfig:
    """Knobs of the episode loop. ``decision_steps``: env steps per decision (1, or a chunk's executed
    length); ``max_steps``: episode cap; ``dagger_beta``: probability that the teacher drives a decision
    in DAgger mode; ``store_failed_teacher``: keep teacher segments the judge rejects (the reference
    drops them)."""

    mode: str = "askdagger"
    decision_steps: int = 1
    max_steps: int = 400
    dagger_beta: float = 0.0
    store_failed_teacher: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {self.mode!r}")
        if self.decision_steps < 1 or self.max_steps < 1:
            raise ValueError("decision_steps and max_steps must be >= 1")
        if not 0.0 <= self.dagger_beta <= 1.0:
            raise ValueError("dagger_beta must lie in [0, 1]")

    @property
    def spec(self) -> ModeSpec:
        return MODES[self.mode]


# ----------------------------------------------------------------------------------------------
# the episode
# ----------------------------------------------------------------------------------------------


class _Episode:
    """State of one running episode; its methods are the steps of the module docstring."""

    def __init__(self, sim: Any, novice: Novice, teacher: Teacher, gate: SAG | None, judge: SegmentJudge,
                 config: InteractiveConfig, index: int, seed: int, version: int,
                 relabel: Callable[[Segment], str | None] | None, rng: np.random.Generator) -> None:
        self.sim, self.novice, self.teacher, self.gate, self.judge = sim, novice, teacher, gate, judge
        self.config, self.index, self.seed, self.version = config, index, seed, version
        self.relabel, self.rng = relabel, rng
        self.spec = config.spec
        if self.spec.gated and gate is None:
            raise ValueError(f"mode {config.mode!r} needs a gate (SAG)")
        self.fier = FIER(sim, judge, relabel, validation_demos=self.spec.validation_demos,
                         relabeling_demos=self.spec.relabeling_demos) if self.spec.gated else None
        self.decisions: list[DecisionRecord] = []
        self.demos: list[DemoSegment] = []
        self.step = 0
        self.reward = 0.0
        self.total_reward = 0.0
        self.success = False
        self.novice_steps = 0
        self.teacher_steps = 0

    # -- helpers ---------------------------------------------------------------------------------
    def _label_fn(self) -> Callable[[Any], Any] | None:
        if not self.judge.needs_teacher_labels:
            return None
        return lambda obs: np.asarray(self.teacher.act(obs))

    def _novice_segment(self, obs: Any, first_action: Any, steps: int) -> Segment:
        act = lambda o: self.novice.step(o)[0]  # noqa: E731  (within a decision the uncertainty is the decision's)
        return run_segment(self.sim, act, obs, steps, "novice", self.step, self.reward, first_action=first_action,
                           label=self._label_fn())

    def _teacher_segment(self, obs: Any, steps: int) -> Segment:
        return run_segment(self.sim, self.teacher.act, obs, steps, "teacher", self.step, self.reward,
                           actions_are_labels=True)

    def _commit(self, segment: Segment) -> Any:
        """The segment happened: advance the episode's clock, reward and success."""
        self.step += len(segment)
        if segment.rewards:
            self.reward = segment.rewards[-1]
            self.total_reward += float(sum(segment.rewards))
        self.success = self.success or any(bool(info.get("is_success", False)) for info in segment.infos)
        if segment.actor == "teacher":
            self.teacher_steps += len(segment)
        else:
            self.novice_steps += len(segment)
        return segment.final_observation

    def _demo(self, source: str, segment: Segment, label: int, uncertainty: float, decision: int,
              instruction: str | None = None) -> DemoSegment:
        """A demo of ``segment``; its instruction is the relabeled one (written into every step), else the
        goal the observations carried (language-conditioned tasks), else None."""
        relabeled = instruction
        if instruction is None and segment.observations:
            goal = segment.observations[0].get("instruction") if isinstance(segment.observations[0], Mapping) else None
            instruction = goal if isinstance(goal, str) else None
        arrays = segment_arrays(segment, relabeled, getattr(self.sim, "action_space", None))
        return DemoSegment(source=source, label=int(label), uncertainty=float(uncertainty), version=self.version,
                           episode=self.index, decision=decision, start_step=segment.start_step,
                           arrays=arrays, instruction=instruction, steps=len(segment))

    # -- one decision ----------------------------------------------------------------------------
    def gated_decision(self, obs: Any, steps: int, number: int) -> tuple[Any, bool]:
        """SAG + FIER for one decision; returns (next obs, episode over)."""
        first_action, u = self.novice.step(obs)
        assert self.gate is not None and self.fier is not None
        decision = self.gate.decide(u, self.version)
        result = self.fier.step(decision, lambda: self._novice_segment(obs, first_action, steps),
                                lambda: self._teacher_segment(obs, steps))
        fb, executed = result.feedback, result.executed
        if fb.execute == "teacher" and self.config.store_failed_teacher and not fb.annotation:
            self.demos.append(self._demo("teacher", executed, fb.label, u, number))
        self._store_feedback(fb, result.novice, executed, u, number)
        self._record(decision, fb.label, failed=result.novice_failed, executed=fb.execute, number=number, fb=fb)
        next_obs = self._commit(executed)
        if fb.execute == "teacher":
            self.novice.reset()
        return next_obs, executed.done

    def _store_feedback(self, fb: Feedback, novice_seg: Segment, executed: Segment, u: float, number: int) -> None:
        for demo in fb.demos:
            segment = executed if demo.source == "teacher" else novice_seg
            self.demos.append(self._demo(demo.source, segment, int(demo.label), demo.uncertainty, number,
                                         demo.instruction))

    def dagger_decision(self, obs: Any, steps: int, number: int) -> tuple[Any, bool]:
        """DAgger: the teacher labels the decision state with its own segment; the novice executes."""
        first_action, u = self.novice.step(obs)
        decision = Decision(query=True, active=True, random=False, uncertainty=float(u), threshold=-math.inf,
                            version=self.version)
        if self.rng.random() < self.config.dagger_beta:  # the teacher drives this decision
            seg = self._teacher_segment(obs, steps)
            ok = bool(self.judge(seg))
            if ok or self.config.store_failed_teacher:
                self.demos.append(self._demo("teacher", seg, Label.UNKNOWN, u, number))
            self._record(decision, Label.UNKNOWN, failed=False, executed="teacher", number=number,
                         n_teacher=int(ok or self.config.store_failed_teacher), ground_truth=False)
            next_obs = self._commit(seg)
            self.novice.reset()
            return next_obs, seg.done
        snapshot = self.sim.get_state()
        label_seg = self._teacher_segment(obs, steps)
        ok = bool(self.judge(label_seg))
        self.sim.set_state(snapshot)
        novice_seg = self._novice_segment(obs, first_action, steps)
        valid = bool(self.judge(novice_seg))
        label = Label.KNOWN_SUCCESS if valid else Label.KNOWN_FAILURE
        if ok or self.config.store_failed_teacher:
            self.demos.append(self._demo("teacher", label_seg, label, u, number))
        self._record(decision, label, failed=not valid, executed="novice", number=number,
                     n_teacher=int(ok or self.config.store_failed_teacher))
        return self._commit(novice_seg), novice_seg.done

    def _record(self, decision: Decision, label: int, failed: bool, executed: str, number: int,
                fb: Feedback | None = None, n_teacher: int | None = None, ground_truth: bool = True) -> None:
        self.decisions.append(DecisionRecord(
            episode=self.index, index=number, step=self.step, uncertainty=float(decision.uncertainty),
            threshold=float(decision.threshold), query=bool(decision.query), active=bool(decision.active),
            random=bool(decision.random), label=int(label), failed=bool(failed) if ground_truth else False,
            executed=executed, version=self.version, judged=ground_truth,
            n_validated=fb.count("validated") if fb else 0,
            n_relabeled=fb.count("relabeled") if fb else 0,
            n_teacher=(fb.count("teacher") if fb else 0) if n_teacher is None else int(n_teacher),
        ))
        if self.gate is not None and self.spec.gated:
            self.gate.record(decision.uncertainty, label, self.version)
            for _ in range(fb.count("relabeled") if fb else 0):
                self.gate.record(math.nan, Label.UNKNOWN_RELABELING, self.version)

    # -- the whole episode -----------------------------------------------------------------------
    def run(self) -> EpisodeOutcome:
        obs, _ = self.sim.reset(seed=int(self.seed))
        self.novice.reset()
        self.teacher.reset()
        number = 0
        done = False
        while not done and self.step < self.config.max_steps:
            steps = min(self.config.decision_steps, self.config.max_steps - self.step)
            if self.spec.gated:
                obs, done = self.gated_decision(obs, steps, number)
            else:
                obs, done = self.dagger_decision(obs, steps, number)
            number += 1
        return EpisodeOutcome(index=self.index, seed=int(self.seed), success=self.success, length=self.step,
                              episode_return=self.total_reward, decisions=self.decisions, demos=self.demos,
                              novice_steps=self.novice_steps, teacher_steps=self.teacher_steps)


def run_interactive_episode(sim: Any, novice: Novice, teacher: Teacher, gate: SAG | None, judge: SegmentJudge,
                            config: InteractiveConfig, index: int, seed: int, version: int,
                            relabel: Callable[[Segment], str | None] | None = None,
                            rng: np.random.Generator | None = None) -> EpisodeOutcome:
    """Run one interactive episode on ``sim`` (an ``env.unwrapped`` with get_state/set_state).

    ``gate`` decides and records every decision (its history grows as the episode goes, as in the
    reference, where the threshold is recomputed at every decision); it is unused in DAgger mode.
    ``version`` is the model version (training rounds done) stamped on decisions and demos; ``rng`` draws
    DAgger's beta mixture. The novice is reset at the start; decisions, demos and statistics come back in
    an :class:`EpisodeOutcome`.
    """
    if not isinstance(sim, Simulator) or not callable(getattr(sim, "reset", None)):
        raise TypeError("interactive episodes need a simulator with reset(), step(), get_state() and set_state() "
                        "(pass env.unwrapped)")
    episode = _Episode(sim, novice, teacher, gate, judge, config, index, seed, version, relabel,
                       rng if rng is not None else np.random.default_rng(seed))
    return episode.run()


# ----------------------------------------------------------------------------------------------
# after the episodes: PIER inputs and round statistics
# ----------------------------------------------------------------------------------------------


def pier_inputs(metas: Sequence[Mapping[str, Any] | None]) -> tuple[list[float], list[int], list[int]]:
    """(uncertainty, label, version) per training episode for PIER; episodes without interactive metadata
    are offline demos (u = NaN, UNKNOWN_OFFLINE, version 0)."""
    u, r, k = [], [], []
    for meta in metas:
        meta = meta or {}
        value = meta.get("uncertainty")
        u.append(math.nan if value is None else float(value))
        r.append(int(meta.get("label", Label.UNKNOWN_OFFLINE)))
        k.append(int(meta.get("version", 0)))
    return u, r, k


def annotated_steps(demos: Sequence[DemoSegment]) -> int:
    """The teacher's time in env steps: the steps of its demos (annotations). In DAgger mode its labels are
    rolled out on a snapshot and never executed, so ``EpisodeOutcome.teacher_steps`` would miss them."""
    return int(sum(d.steps for d in demos if d.source == "teacher"))


def round_summary(outcomes: Sequence[EpisodeOutcome]) -> dict[str, float]:
    """Counts and rates of one round's episodes (decision-level rates come from ``gating_metrics``)."""
    decisions = [d for o in outcomes for d in o.decisions]
    demos = [d for o in outcomes for d in o.demos]
    thresholds = [d.threshold for d in decisions if math.isfinite(d.threshold)]
    n = len(outcomes)
    return {
        "episodes": float(n),
        "episode_success": float(np.mean([o.success for o in outcomes])) if n else math.nan,
        "decisions": float(len(decisions)),
        "queries": float(sum(d.query for d in decisions)),
        "threshold": float(np.mean(thresholds)) if thresholds else math.nan,
        "teacher_steps": float(sum(o.teacher_steps for o in outcomes)),
        "novice_steps": float(sum(o.novice_steps for o in outcomes)),
        "demos": float(len(demos)),
        "annotations": float(sum(d.source == "teacher" for d in demos)),
        "annotated_steps": float(annotated_steps(demos)),
        "validations": float(sum(d.source == "validated" for d in demos)),
        "relabels": float(sum(d.source == "relabeled" for d in demos)),
    }
