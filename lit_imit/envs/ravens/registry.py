"""Task table of the Ravens family: one gymnasium id per task, short names are the Ravens task names.

Kept free of heavy imports (``lit_imit.envs`` imports it): entry points are strings, pybullet loads only when
an env is built. ``max_episode_steps`` is an upper bound for the TimeLimit wrapper; each episode also ends
itself (truncated) after its own ``task.max_steps`` pick-places, which depends on the drawn scene.
"""

from __future__ import annotations

from lit_imit.envs.registry import register_task

ENTRY_POINT = "lit_imit.envs.ravens.env:RavensEnv"
TEACHER = "lit_imit.envs.ravens.env:RavensOracle"
#: interactive rounds judge a pick-place by the reward it earns (ASkDAgger's test)
JUDGE = "lit_imit.interactive.judges:StepRewardJudge"

#: Ravens task name -> gymnasium id stem and the largest number of pick-places an episode may take.
RAVENS_TASKS = {
    "put-block-in-bowl-seen-colors": 4,
    "put-block-in-bowl-unseen-colors": 4,
    "packing-seen-shapes": 1,
    "packing-unseen-shapes": 1,
    "stack-block-pyramid-seq-seen-colors": 7,
    "stack-block-pyramid-seq-unseen-colors": 7,
    "packing-seen-objects-seq": 6,
    "packing-unseen-objects-seq": 6,
    "packing-seen-objects-group": 3,
    "packing-unseen-objects-group": 3,
}


def env_id(task: str) -> str:
    """Gymnasium id of a Ravens task, e.g. ``lit_imit/Ravens-put-block-in-bowl-seen-colors-v0``."""
    return f"lit_imit/Ravens-{task}-v0"


for _name, _max_steps in RAVENS_TASKS.items():
    register_task(_name, env_id=env_id(_name), entry_point=ENTRY_POINT, teacher=TEACHER,
                  max_episode_steps=_max_steps, kwargs={"task": _name}, judge=JUDGE)
