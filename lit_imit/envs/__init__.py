"""Gymnasium environments and their scripted teachers.

Every task has a short name (used by configs and ``scripts/record_demos.py``) and a gymnasium id
``lit_imit/<Name>-v0``. Entry points are strings so that importing this package stays cheap: MuJoCo,
dm_control and pybullet are only imported when an env of theirs is built.

A teacher is a state-feedback policy built from an env: ``teacher = make_teacher(task, env)``,
``teacher.reset()`` at the start of an episode, ``teacher.act(obs) -> action``. It reads the privileged
simulator state through ``env.unwrapped`` and must act sensibly from any state a rollout reaches.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

# Headless MuJoCo rendering: EGL works on CPU (Mesa) and GPU. Respect a user's explicit choice.
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] == "egl":
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


def load_triton_before_gl() -> None:
    """Load triton's LLVM before Mesa's, if triton is installed and not loaded yet.

    Headless EGL rendering on Mesa (llvmpipe) loads Mesa's libLLVM; loading triton's own LLVM afterwards
    (``import torch._dynamo``, which torchvision and Lightning do) crashes the process with a segfault.
    The other order is fine. dm_control opens its EGL display when it is imported, so this runs when
    ``lit_imit.envs`` is imported, before any simulator module loads.
    """
    import importlib.util
    import sys

    if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
        try:
            import triton  # noqa: F401
        except Exception:  # a broken triton install must not stop rendering
            pass


if os.environ["MUJOCO_GL"] == "egl":
    load_triton_before_gl()


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to build a task's env and teacher."""

    name: str
    env_id: str
    entry_point: str
    teacher: str
    max_episode_steps: int
    kwargs: dict[str, Any] = field(default_factory=dict)


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> None:
    """Add a task to the table and to gymnasium's registry (idempotent)."""
    TASKS[spec.name] = spec
    if spec.env_id not in gym.registry:
        gym.register(
            id=spec.env_id,
            entry_point=spec.entry_point,
            max_episode_steps=spec.max_episode_steps,
            kwargs=dict(spec.kwargs),
            disable_env_checker=True,
        )


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


register_task(TaskSpec(
    name="transfer_cube", env_id="lit_imit/AlohaTransferCube-v0",
    entry_point="lit_imit.envs.aloha:AlohaEnv", teacher="lit_imit.envs.aloha_teachers:TransferCubeTeacher",
    max_episode_steps=400, kwargs={"task": "transfer_cube"},
))
register_task(TaskSpec(
    name="insertion", env_id="lit_imit/AlohaInsertion-v0",
    entry_point="lit_imit.envs.aloha:AlohaEnv", teacher="lit_imit.envs.aloha_teachers:InsertionTeacher",
    max_episode_steps=400, kwargs={"task": "insertion"},
))
for _suffix, _variant in (("", "move"), ("_occupied", "occupied"), ("_mixed", "mixed")):
    # move: cube A -> B; occupied: B is blocked, place at B2; mixed: either, chosen by the episode seed
    register_task(TaskSpec(
        name=f"mycobot_move_cube{_suffix}",
        env_id=f"lit_imit/MyCobotMoveCube{_variant.capitalize() if _suffix else ''}-v0",
        entry_point="lit_imit.envs.mycobot:MyCobotMoveCubeEnv",
        teacher="lit_imit.envs.mycobot_teachers:MoveCubeTeacher",
        max_episode_steps=300, kwargs={"variant": _variant},
    ))

# Families with many tasks keep their table next to their code (light imports only).
from lit_imit.envs.ravens import registry as _ravens_registry  # noqa: E402,F401
from lit_imit.envs import skills_registry as _skills_registry  # noqa: E402,F401
