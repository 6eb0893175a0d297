"""Task table of the skill-learning family (SPiRL, FIST, SkiLD): PointMaze and FrankaKitchen.

Light imports only (the env modules load gymnasium-robotics lazily through their entry points).

Point maze (gymnasium-robotics' medium map, state = (x, y, vx, vy)):

* ``pointmaze-medium-play``: task-agnostic play, random goals resampled when reached (500 steps).
* ``pointmaze-medium-play-no-<region>``: the same with the region's entrance walled off, so the play data
  never visits it (FIST's held-out maze regions).
* ``pointmaze-medium-<region>``: the few-shot target task, a fixed start and a goal whose shortest path
  goes through that region; ends on success (0.45 m), at most 400 steps.

  ==============  ==================  ==========  =========  ==========================================
  region          walled-off cell     start       goal       what the play data lacks
  ==============  ==================  ==========  =========  ==========================================
  ``topright``    (2, 4)              (6, 1)      (1, 6)     the whole top-right room
  ``bottomright`` (5, 6)              (1, 1)      (6, 5)     the bottom-right pocket
  ``bottom``      (5, 3)              (1, 5)      (6, 2)     the short passage to the bottom-left corner
  ==============  ==================  ==========  =========  ==========================================

Kitchen (FrankaKitchen-v1, state 59-D, joint-velocity actions 9-D):

* ``kitchen-play``: chains of 4 random sub-tasks out of 7 (like D4RL kitchen-mixed), 500 steps at most;
  ``kitchen-play-no-{topknob,microwave,kettle,slide}`` leave one sub-task out (FIST's splits).
* Target tasks (FIST's table, the held-out sub-task in brackets), 450 steps at most (the scripted teacher
  needs 220-420 steps for four sub-tasks; FIST's human-demo setting caps at 280):
  ``kitchen-mktl`` microwave, kettle, [top burner], light switch;
  ``kitchen-mbls`` [microwave], bottom burner, light switch, slide cabinet;
  ``kitchen-mksh`` microwave, [kettle] / [slide cabinet], slide cabinet, hinge cabinet.
"""

from __future__ import annotations

from lit_imit.envs.registry import register_task

MAZE_ENTRY = "lit_imit.envs.maze:PointMazeSkillEnv"
MAZE_TEACHER = "lit_imit.envs.maze:MazeTeacher"
KITCHEN_ENTRY = "lit_imit.envs.kitchen:KitchenSkillEnv"
KITCHEN_TEACHER = "lit_imit.envs.kitchen:KitchenTeacher"

#: region -> (walled-off cells in the play data, start cell, goal cell) on the medium maze
MAZE_REGIONS = {
    "topright": ([(2, 4)], (6, 1), (1, 6)),
    "bottomright": ([(5, 6)], (1, 1), (6, 5)),
    "bottom": ([(5, 3)], (1, 5), (6, 2)),
}

KITCHEN_SUBTASKS = ("microwave", "kettle", "bottom burner", "top burner", "light switch", "slide cabinet",
                    "hinge cabinet")
#: FIST's pre-training splits: the sub-task left out of the play data
KITCHEN_HOLDOUTS = {"topknob": "top burner", "microwave": "microwave", "kettle": "kettle", "slide": "slide cabinet"}
#: FIST's target tasks
KITCHEN_TARGETS = {
    "mktl": ["microwave", "kettle", "top burner", "light switch"],
    "mbls": ["microwave", "bottom burner", "light switch", "slide cabinet"],
    "mksh": ["microwave", "kettle", "slide cabinet", "hinge cabinet"],
}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", " ").split())


def register_maze_tasks() -> None:
    register_task(
        "pointmaze-medium-play", env_id="lit_imit/PointMazeMediumPlay-v0", entry_point=MAZE_ENTRY,
        teacher=MAZE_TEACHER, max_episode_steps=500, kwargs={"maze": "medium", "mode": "play"},
    )
    for region, (blocked, start, goal) in MAZE_REGIONS.items():
        register_task(
            f"pointmaze-medium-play-no-{region}", env_id=f"lit_imit/PointMazeMediumPlayNo{_camel(region)}-v0",
            entry_point=MAZE_ENTRY, teacher=MAZE_TEACHER, max_episode_steps=500,
            kwargs={"maze": "medium", "mode": "play", "blocked": [list(c) for c in blocked]},
        )
        register_task(
            f"pointmaze-medium-{region}", env_id=f"lit_imit/PointMazeMedium{_camel(region)}-v0",
            entry_point=MAZE_ENTRY, teacher=MAZE_TEACHER, max_episode_steps=400,
            kwargs={"maze": "medium", "mode": "target", "start_cell": list(start), "goal_cell": list(goal)},
        )


def register_kitchen_tasks() -> None:
    register_task(
        "kitchen-play", env_id="lit_imit/KitchenPlay-v0", entry_point=KITCHEN_ENTRY, teacher=KITCHEN_TEACHER,
        max_episode_steps=500, kwargs={"mode": "play", "allowed": list(KITCHEN_SUBTASKS)},
    )
    for short, held_out in KITCHEN_HOLDOUTS.items():
        allowed = [t for t in KITCHEN_SUBTASKS if t != held_out]
        register_task(
            f"kitchen-play-no-{short}", env_id=f"lit_imit/KitchenPlayNo{_camel(short)}-v0",
            entry_point=KITCHEN_ENTRY, teacher=KITCHEN_TEACHER, max_episode_steps=500,
            kwargs={"mode": "play", "allowed": allowed},
        )
    for short, tasks in KITCHEN_TARGETS.items():
        register_task(
            f"kitchen-{short}", env_id=f"lit_imit/Kitchen{short.upper()}-v0", entry_point=KITCHEN_ENTRY,
            teacher=KITCHEN_TEACHER, max_episode_steps=450, kwargs={"mode": "target", "tasks": list(tasks)},
        )


register_maze_tasks()
register_kitchen_tasks()
