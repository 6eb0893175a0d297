"""Task table of the joint-controlled MuJoCo arms: ALOHA (bimanual ViperX) and the myCobot 320 twin.

Light imports only: entry points are strings, MuJoCo and dm_control load when an env is built.
"""

from __future__ import annotations

from lit_imit.envs.registry import register_task

ALOHA_ENTRY = "lit_imit.envs.aloha:AlohaEnv"
MYCOBOT_ENTRY = "lit_imit.envs.mycobot:MyCobotMoveCubeEnv"
MYCOBOT_TEACHER = "lit_imit.envs.mycobot_teachers:MoveCubeTeacher"
#: interactive rounds judge an ALOHA segment by its agreement with the teacher's actions; the grippers (action
#: indices 6 and 13, one per arm) are compared on their own scale
ALOHA_JUDGE = "lit_imit.interactive.judges:ActionAgreementJudge"
ALOHA_GRIPPER_DIMS = (6, 13)

#: ALOHA's qpos / action layout (ACT's): per arm six joint angles in radians, then the gripper opening
#: normalised to 0 (closed) .. 1 (open)
ALOHA_JOINT_LABELS = tuple(
    label for side in ("left", "right") for label in (
        *(f"{side} {joint} (rad)" for joint in ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle",
                                                "wrist_rotate")),
        f"{side} gripper (0 closed, 1 open)")
)
#: the myCobot 320's: joints J1..J6 in radians, then the gripper in [0, 1] (1 = open)
MYCOBOT_JOINT_LABELS = (*(f"J{i} (rad)" for i in range(1, 7)), "gripper (0 closed, 1 open)")

#: myCobot task-name suffix -> env variant. move: cube A -> B; occupied: B is blocked, place at B2;
#: mixed: either, chosen by the episode seed.
MYCOBOT_VARIANTS = {"": "move", "_occupied": "occupied", "_mixed": "mixed"}


def register_aloha_tasks() -> None:
    register_task("transfer_cube", env_id="lit_imit/AlohaTransferCube-v0", entry_point=ALOHA_ENTRY,
                  teacher="lit_imit.envs.aloha_teachers:TransferCubeTeacher", max_episode_steps=400,
                  kwargs={"task": "transfer_cube"}, judge=ALOHA_JUDGE,
                  judge_kwargs={"gripper_dims": ALOHA_GRIPPER_DIMS}, joint_labels=ALOHA_JOINT_LABELS)
    register_task("insertion", env_id="lit_imit/AlohaInsertion-v0", entry_point=ALOHA_ENTRY,
                  teacher="lit_imit.envs.aloha_teachers:InsertionTeacher", max_episode_steps=400,
                  kwargs={"task": "insertion"}, judge=ALOHA_JUDGE,
                  judge_kwargs={"gripper_dims": ALOHA_GRIPPER_DIMS}, joint_labels=ALOHA_JOINT_LABELS)


def register_mycobot_tasks() -> None:
    for suffix, variant in MYCOBOT_VARIANTS.items():
        register_task(f"mycobot_move_cube{suffix}",
                      env_id=f"lit_imit/MyCobotMoveCube{variant.capitalize() if suffix else ''}-v0",
                      entry_point=MYCOBOT_ENTRY, teacher=MYCOBOT_TEACHER, max_episode_steps=300,
                      kwargs={"variant": variant}, joint_labels=MYCOBOT_JOINT_LABELS)


register_aloha_tasks()
register_mycobot_tasks()
