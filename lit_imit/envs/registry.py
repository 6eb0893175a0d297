"""The one task registry: every task, whatever its family, is added with :func:`register_task`.

A task has a short name (configs, ``scripts/record_demos.py``), a gymnasium id ``lit_imit/<Name>-v0``, an env
and a teacher given as ``"module:attr"`` strings, and a horizon for the TimeLimit. Strings keep a family's
task table light: MuJoCo, dm_control and pybullet load only when an env or teacher of theirs is built.

Families keep their table in a light module next to their code (``lit_imit.envs.TASK_TABLES`` lists them);
callers only use :func:`make_env`, :func:`make_teacher`, :func:`make_judge` and :func:`task_spec`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to build a task's env and teacher."""

    name: str
    env_id: str
    entry_point: str
    teacher: str
    max_episode_steps: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: ``"module:Class"`` of the segment judge interactive rounds use by default (None: none fits the task)
    judge: str | None = None
    #: keyword arguments of the judge: what it must know of the task, e.g. the gripper action indices
    judge_kwargs: dict[str, Any] = field(default_factory=dict)
    #: name and unit of each ``qpos`` / action dimension, for plots (empty: the task's envs do not say)
    joint_labels: tuple[str, ...] = ()


#: short name -> spec, in registration order
TASKS: dict[str, TaskSpec] = {}


def register_task(name: str, *, env_id: str, entry_point: str, teacher: str, max_episode_steps: int,
                  kwargs: dict[str, Any] | None = None, judge: str | None = None,
                  judge_kwargs: dict[str, Any] | None = None, joint_labels: tuple[str, ...] = ()) -> TaskSpec:
    """Add a task to the table and to gymnasium's registry (idempotent, so re-imports are harmless).

    ``entry_point`` builds the env (``"module:Class"``, called with ``kwargs`` and the caller's keyword
    arguments); ``teacher`` builds the teacher from the env (``"module:Class"``, called as ``Teacher(env)``);
    ``judge`` (``"module:Class"``, called with ``judge_kwargs``) is the default test of a novice segment
    in interactive rounds (``lit_imit.interactive.judges.SegmentJudge``).
    """
    spec = TaskSpec(name=name, env_id=env_id, entry_point=entry_point, teacher=teacher,
                    max_episode_steps=max_episode_steps, kwargs=dict(kwargs or {}), judge=judge,
                    judge_kwargs=dict(judge_kwargs or {}), joint_labels=tuple(joint_labels))
    TASKS[spec.name] = spec
    if spec.env_id not in gym.registry:
        gym.register(
            id=spec.env_id,
            entry_point=spec.entry_point,
            max_episode_steps=spec.max_episode_steps,
            kwargs=dict(spec.kwargs),
            disable_env_checker=True,
        )
    return spec


def task_spec(task: str) -> TaskSpec:
    """Look a task up by short name or gymnasium id; unknown names get a clear error."""
    if task in TASKS:
        return TASKS[task]
    for spec in TASKS.values():
        if spec.env_id == task:
            return spec
    known = ", ".join(sorted(TASKS))
    raise ValueError(f"unknown task {task!r}; known tasks: {known}")


def make_env(task: str, **kwargs: Any) -> gym.Env:
    """Build a task's env (with its TimeLimit) by short name or gymnasium id."""
    spec = task_spec(task)
    return gym.make(spec.env_id, **kwargs)


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_teacher(task: str, env: gym.Env) -> Any:
    """Build the scripted state-feedback teacher of ``task`` bound to ``env``."""
    return _load(task_spec(task).teacher)(env)


def make_judge(task: str, **overrides: Any) -> Any:
    """The task's default segment judge for interactive rounds (its ``judge_kwargs`` updated by ``overrides``)."""
    spec = task_spec(task)
    if spec.judge is None:
        raise ValueError(f"task {spec.name!r} has no default judge: configure `judge` "
                         "(a lit_imit.interactive.judges.SegmentJudge)")
    return _load(spec.judge)(**{**spec.judge_kwargs, **overrides})
