"""Segments: what happened while one actor drove the simulator for one decision (no Lightning).

A decision of an interactive episode (see :mod:`.loop`) is executed as a :class:`Segment`: the states the
actor acted from, its actions, the rewards and infos. Judges (:mod:`.judges`) read segments, FIER
(:mod:`.fier`) turns them into demonstrations, and :func:`segment_arrays` lays a segment out as an episode
file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["Segment", "run_segment", "segment_arrays"]


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
