"""Gymnasium environments and their scripted teachers.

Every task has a short name (used by configs and ``scripts/record_demos.py``) and a gymnasium id
``lit_imit/<Name>-v0``. Entry points are strings so that importing this package stays cheap: MuJoCo,
dm_control and pybullet are only imported when an env of theirs is built.

Tasks live in one registry (:mod:`lit_imit.envs.registry`); each family adds its tasks with
``register_task`` in a light table module listed in ``TASK_TABLES``.

A teacher is a state-feedback policy built from an env: ``teacher = make_teacher(task, env)``,
``teacher.reset()`` at the start of an episode, ``teacher.act(obs) -> action``. It reads the privileged
simulator state through ``env.unwrapped`` and must act sensibly from any state a rollout reaches.
"""

from __future__ import annotations

import importlib
import os

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


from lit_imit.envs.registry import TASKS, TaskSpec, make_env, make_judge, make_teacher, register_task, task_spec  # noqa: E402,F401

#: The light modules holding each family's task table (string entry points only), imported in this order.
TASK_TABLES = (
    "lit_imit.envs.arm_tasks",  # ALOHA, myCobot twin
    "lit_imit.envs.ravens.registry",  # Ravens (CLIPort) tabletop tasks
    "lit_imit.envs.skills_registry",  # PointMaze and FrankaKitchen (skill learning)
)
for _table in TASK_TABLES:
    importlib.import_module(_table)
