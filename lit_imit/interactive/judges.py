"""Judges: the teacher's verdict on a novice segment, emulated in simulation (no Lightning).

A judge answers "was this a valid plan?" for one :class:`~.segments.Segment`. FIER asks it about the
novice's plan (foresight) and about the teacher's take-over (a failing teacher segment is not stored); the
task table (``lit_imit.envs.make_judge``) names each task's default judge.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import partial
from typing import Callable, Sequence

import numpy as np

from .segments import Segment

__all__ = ["SegmentJudge", "ActionAgreementJudge", "StepRewardJudge", "info_relabel"]


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

    Ravens puts it in ``info["achieved_instruction"]``; tasks without language goals never relabel. The
    result pickles (episodes may run in worker processes).
    """
    return partial(_instruction_in_info, key=key)


def _instruction_in_info(segment: Segment, key: str) -> str | None:
    value = segment.last_info.get(key)
    return str(value) if value else None
