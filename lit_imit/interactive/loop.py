"""One interactive episode: gated novice decisions, teacher feedback, demonstrations (no Lightning).

A *decision* is the unit the gate judges and the teacher may take over: one env step for skill policies
(CLIPort on Ravens: one pick-and-place), one executed action chunk for chunking policies (ACT: the
``n_action_steps`` actions of a chunk). At each decision point of an episode:

1. the novice proposes its next action and the uncertainty of the decision (``Novice.step``);
2. the gate (:class:`~lit_imit.interactive.sag.SAG`) decides whether to query the teacher;
3. the novice's decision is executed on the simulator and judged (``SegmentJudge``). When the teacher
   was queried this is *foresight*: the simulator was snapshot first, so an invalid plan can be undone
   before it "happened" (the teacher judged the plan, not its consequences). When it was not queried,
   the plan is executed for real and the verdict is only privileged ground truth for logging
   sensitivity and specificity;
4. :func:`~lit_imit.interactive.fier.feedback` turns (decision, verdict) into demonstrations: a
   *validated* novice segment, a *relabeled* one (the instruction it did fulfil), or a *teacher*
   segment: the snapshot is restored and the teacher acts for the decision's steps (HG-DAgger style
   take-over), its actions executed and recorded.

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
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from .fier import Feedback, feedback
from .sag import SAG, Decision, Label

__all__ = [
    "MODES",
    "ModeSpec",
    "Novice",
    "Teacher",
    "PolicyNovice",
    "Segment",
    "SegmentJudge",
    "ActionAgreementJudge",
    "StepRewardJudge",
    "info_relabel",
    "DecisionRecord",
    "DemoSegment",
    "EpisodeOutcome",
    "InteractiveConfig",
    "run_segment",
    "run_interactive_episode",
    "segment_arrays",
    "pier_inputs",
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
# segments and judges
# ----------------------------------------------------------------------------------------------


@dataclass
class Segment:
    """What happened while one actor drove for one decision: the states it acted from and its actions.

    ``teacher_actions`` holds the teacher's action at each visited state when the segment was labelled
    (judges compare them with ``actions``); for a teacher segment they equal ``actions``.
    ``start_reward`` is the reward of the step before the segment (the stage the segment started in).
    """

    actor: str
    start_step: int
    start_reward: float
    observations: list[Any] = field(default_factory=list)
    actions: list[Any] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    infos: list[dict] = field(default_factory=list)
    teacher_actions: list[Any] = field(default_factory=list)
    final_observation: Any = None
    terminated: bool = False
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def last_info(self) -> dict:
        return self.infos[-1] if self.infos else {}


class SegmentJudge(ABC):
    """Decides whether a segment was a valid plan (the teacher's verdict, emulated in simulation).

    ``needs_teacher_labels`` asks the loop to record the teacher's action at every state the novice
    visits (costly for teachers that solve IK; only judges that compare actions need it).
    """

    needs_teacher_labels: bool = False

    @abstractmethod
    def __call__(self, segment: Segment) -> bool:
        """True if the segment is a valid plan."""


def _physics_failed(segment: Segment) -> bool:
    return any("physics_error" in info for info in segment.infos)


class ActionAgreementJudge(SegmentJudge):
    """A continuous-control segment is valid when it moves the way the teacher would, step by step.

    At each visited state the state-feedback teacher says what it would do there. For the position
    dimensions the novice's commanded displacement ``a - q`` is compared with the teacher's: the error is
    ``|d_novice - d_teacher| / max(|d_teacher|, motion_floor)`` (norms over those dimensions), i.e.
    relative to how far the teacher wants to move, because a rate-limited teacher's actions all lie
    within a few centirad of the current joints and absolute errors cannot tell "slightly off" from
    "not moving at all". Gripper dimensions are compared directly (absolute error). The segment is
    valid when the mean relative error is at most ``tolerance``, the mean gripper error at most
    ``gripper_tolerance``, the staged reward at its end is not below the one it started from
    (``no_regression``: nothing dropped or let go) and the simulation did not blow up.

    Calibrated on ALOHA transfer cube with 100-step segments (tests/test_interactive_callback.py): the
    teacher scores 0; the teacher's actions plus 0.005 rad joint noise (which still succeed) 0.2-0.35,
    plus 0.01 rad (which succeed about two times in three) 0.4-0.7; plus 0.02 or 0.05 rad (which fail the
    task) 0.7-1.6; standing still 1.0 (and gripper error ~0.8). Hence ``tolerance=0.6``.
    """

    needs_teacher_labels = True

    def __init__(self, gripper_dims: Sequence[int] = (), tolerance: float = 0.6, gripper_tolerance: float = 0.3,
                 motion_floor: float = 0.05, state_key: str | None = "qpos", no_regression: bool = True) -> None:
        if tolerance <= 0 or gripper_tolerance <= 0 or motion_floor <= 0:
            raise ValueError("tolerances and motion_floor must be positive")
        self.gripper_dims = [int(d) for d in gripper_dims]
        self.tolerance = float(tolerance)
        self.gripper_tolerance = float(gripper_tolerance)
        self.motion_floor = float(motion_floor)
        self.state_key = state_key
        self.no_regression = bool(no_regression)

    def errors(self, segment: Segment) -> tuple[float, float]:
        """(mean relative position error, mean absolute gripper error) of a labelled segment."""
        if len(segment.teacher_actions) != len(segment.actions) or not segment.actions:
            raise ValueError("the segment has no teacher label for every step: run it with the teacher labelling")
        novice = np.asarray(segment.actions, dtype=np.float64)
        teacher = np.asarray(segment.teacher_actions, dtype=np.float64)
        dims = novice.shape[-1]
        position = [d for d in range(dims) if d not in self.gripper_dims]
        if self.state_key is not None:
            state = np.asarray([obs[self.state_key] for obs in segment.observations], dtype=np.float64)
            if state.shape != novice.shape:
                raise ValueError(f"{self.state_key} {state.shape} and actions {novice.shape} must share a layout")
        else:
            state = np.zeros_like(novice)
        d_novice = novice[:, position] - state[:, position]
        d_teacher = teacher[:, position] - state[:, position]
        scale = np.maximum(np.linalg.norm(d_teacher, axis=1), self.motion_floor)
        relative = float(np.mean(np.linalg.norm(d_novice - d_teacher, axis=1) / scale)) if position else 0.0
        grip = float(np.mean(np.abs(novice[:, self.gripper_dims] - teacher[:, self.gripper_dims]))) \
            if self.gripper_dims else 0.0
        return relative, grip

    def regressed(self, segment: Segment) -> bool:
        return bool(segment.rewards) and segment.rewards[-1] < segment.start_reward

    def __call__(self, segment: Segment) -> bool:
        if not segment.actions or _physics_failed(segment):
            return False
        if self.no_regression and self.regressed(segment):
            return False
        relative, grip = self.errors(segment)
        return relative <= self.tolerance and grip <= self.gripper_tolerance


class StepRewardJudge(SegmentJudge):
    """ASkDAgger's Ravens test: the last step reward equals the reward of one goal step (within ``tol``).

    The target is read from ``info[target_key]`` (Ravens reports ``max_step_reward``) unless given.
    """

    def __init__(self, tol: float = 0.01, target: float | None = None, target_key: str = "max_step_reward") -> None:
        self.tol, self.target, self.target_key = float(tol), target, target_key

    def __call__(self, segment: Segment) -> bool:
        if not segment.rewards or _physics_failed(segment):
            return False
        goal = self.target if self.target is not None else segment.last_info.get(self.target_key)
        if goal is None or not goal > 0:
            return False
        return abs(segment.rewards[-1] - float(goal)) < self.tol


def info_relabel(key: str = "achieved_instruction") -> Callable[[Segment], str | None]:
    """Relabeling from the env's own report: the instruction the segment's last step fulfilled.

    Ravens puts it in ``info["achieved_instruction"]``; tasks without language goals never relabel.
    """

    def relabel(segment: Segment) -> str | None:
        value = segment.last_info.get(key)
        return str(value) if value else None

    return relabel


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


def run_segment(sim: Any, act: Callable[[Any], Any], obs: Any, steps: int, actor: str, start_step: int,
                start_reward: float, first_action: Any = None, label: Callable[[Any], Any] | None = None,
                actions_are_labels: bool = False) -> Segment:
    """Let ``act`` drive ``sim`` for up to ``steps`` steps from ``obs``, recording everything.

    ``first_action`` is used for the first step instead of calling ``act`` (the novice's first action is
    computed before the gate decides). ``label(obs)`` records the teacher's action at each visited state,
    called before the step (teachers read the simulator state); ``actions_are_labels`` marks a teacher
    segment, whose labels are its own actions.
    """
    seg = Segment(actor=actor, start_step=start_step, start_reward=float(start_reward))
    for j in range(steps):
        action = first_action if (j == 0 and first_action is not None) else act(obs)
        if label is not None:
            seg.teacher_actions.append(label(obs))
        seg.observations.append(obs)
        seg.actions.append(action)
        obs, reward, terminated, truncated, info = sim.step(action)
        seg.rewards.append(float(reward))
        seg.infos.append(dict(info))
        if terminated or truncated:
            seg.terminated, seg.truncated = bool(terminated), bool(truncated)
            break
    if actions_are_labels:
        seg.teacher_actions = list(seg.actions)
    seg.final_observation = obs
    return seg


def segment_arrays(segment: Segment, instruction: str | None = None,
                   action_space: Any = None) -> dict[str, np.ndarray]:
    """The segment's (observation, action) pairs in the episode-file layout.

    Observation keys go to ``observations/<key>`` (strings such as language goals as per-step text);
    ``instruction`` (a relabeled goal) replaces ``observations/instruction`` at every step. Dict actions
    go to ``action/<name>``; a flat action of an env whose action space is a ``Dict`` is split into its
    parts in the order of the space's keys (Ravens: a 14-vector is pick then place), so novice (flat) and
    teacher (dict) demos of one task share a layout.
    """
    parts = _dict_action_parts(action_space)
    columns: dict[str, list[np.ndarray]] = {}
    for obs, action in zip(segment.observations, segment.actions):
        for key, value in obs.items():
            columns.setdefault(f"observations/{key}", []).append(np.asarray(value))
        if not isinstance(action, Mapping) and parts:
            flat = np.asarray(action, dtype=np.float32).reshape(-1)
            if flat.size != sum(size for _, size in parts):
                raise ValueError(f"a flat action of {flat.size} values does not split into {parts}")
            bounds = np.cumsum([0] + [size for _, size in parts])
            action = {name: flat[a:b] for (name, _), a, b in zip(parts, bounds[:-1], bounds[1:])}
        if isinstance(action, Mapping):
            for key, value in action.items():
                columns.setdefault(f"action/{key}", []).append(np.asarray(value, dtype=np.float32))
        else:
            columns.setdefault("action", []).append(np.asarray(action, dtype=np.float32))
    if instruction is not None and segment.observations:
        columns["observations/instruction"] = [np.asarray(instruction)] * len(segment.observations)
    arrays = {}
    for key, values in columns.items():
        arr = np.stack(values)
        arrays[key] = arr.astype(np.float32) if arr.dtype == np.float64 else arr
    return arrays


def _dict_action_parts(action_space: Any) -> list[tuple[str, int]]:
    """[(name, size)] of a gymnasium ``Dict`` action space of boxes; [] for any other space."""
    spaces = getattr(action_space, "spaces", None)
    if not isinstance(spaces, Mapping):
        return []
    return [(str(name), int(np.prod(space.shape))) for name, space in spaces.items()]


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
                           arrays=arrays, instruction=instruction)

    # -- one decision ----------------------------------------------------------------------------
    def gated_decision(self, obs: Any, steps: int, number: int) -> tuple[Any, bool]:
        """SAG + foresight + FIER feedback for one decision; returns (next obs, episode over)."""
        first_action, u = self.novice.step(obs)
        assert self.gate is not None
        decision = self.gate.decide(u, self.version)
        snapshot = self.sim.get_state() if decision.query else None
        novice_seg = self._novice_segment(obs, first_action, steps)
        valid = bool(self.judge(novice_seg))
        taken_over: list[Segment] = []

        def teacher_takes_over() -> Segment:
            self.sim.set_state(snapshot)
            seg = self._teacher_segment(obs, steps)
            taken_over.append(seg)
            return seg

        fb = feedback(decision, valid, novice_seg, teacher_takes_over,
                      relabel_fn=(lambda: self.relabel(novice_seg)) if self.relabel is not None else None,
                      teacher_ok=self._teacher_ok, validation_demos=self.spec.validation_demos,
                      relabeling_demos=self.spec.relabeling_demos)
        executed = taken_over[0] if fb.execute == "teacher" else novice_seg
        if fb.execute == "teacher" and self.config.store_failed_teacher and not fb.annotation:
            self.demos.append(self._demo("teacher", executed, fb.label, u, number))
        self._store_feedback(fb, novice_seg, executed, u, number)
        self._record(decision, fb.label, failed=not valid, executed=fb.execute, number=number, fb=fb)
        next_obs = self._commit(executed)
        if fb.execute == "teacher":
            self.novice.reset()
        return next_obs, executed.done

    def _teacher_ok(self, segment: Segment) -> bool:
        return bool(self.judge(segment))

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
            ok = self._teacher_ok(seg)
            if ok or self.config.store_failed_teacher:
                self.demos.append(self._demo("teacher", seg, Label.UNKNOWN, u, number))
            self._record(decision, Label.UNKNOWN, failed=False, executed="teacher", number=number,
                         n_teacher=int(ok or self.config.store_failed_teacher), ground_truth=False)
            next_obs = self._commit(seg)
            self.novice.reset()
            return next_obs, seg.done
        snapshot = self.sim.get_state()
        label_seg = self._teacher_segment(obs, steps)
        ok = self._teacher_ok(label_seg)
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
    for name in ("get_state", "set_state", "step", "reset"):
        if not callable(getattr(sim, name, None)):
            raise TypeError(f"interactive episodes need a simulator with {name}() (pass env.unwrapped)")
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
        "validations": float(sum(d.source == "validated" for d in demos)),
        "relabels": float(sum(d.source == "relabeled" for d in demos)),
    }
