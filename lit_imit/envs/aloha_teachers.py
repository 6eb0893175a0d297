"""State-feedback scripted teachers of the ALOHA tasks (transfer cube, insertion).

Kept apart from :mod:`lit_imit.envs.aloha` so that the env reads as a simulator only; the teachers read
its privileged state (object poses, contacts, joints) through ``env.unwrapped``.

The teachers are *state-feedback* policies: every call re-decides the phase from the simulator state
(who touches or holds the object, where it is), aims the grippers at targets computed from the current
object poses, solves inverse kinematics for both arms and rate-limits the motion. They can therefore
take over from any state a novice has driven the robot into (interactive learning).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import gymnasium as gym

import lit_imit.envs  # noqa: F401  (first: sets MUJOCO_GL and loads triton before mujoco/dm_control)

import mujoco  # noqa: E402
import numpy as np

from lit_imit.envs.aloha import (
    ARM_DOF,
    ARM_JOINTS,
    DT,
    QPOS_PER_ARM,
    SIDES,
    SOCKET_WALLS,
    START_ARM_POSE,
    AlohaEnv,
    finger_geom,
    normalize_gripper_position,
)
from lit_imit.envs.kinematics import DampedLeastSquaresIK, capped, quat_to_matrix, rotate, rotation_error


# --------------------------------------------------------------------------------------------------
# Geometry helpers shared by the teachers.
# --------------------------------------------------------------------------------------------------

# Point between the finger pads in the gripper_link frame, 1.9 cm short of the finger tips (x = 0.154).
# The pads are 9 cm long (along x) and 6 cm wide (along z); the fingers slide along y.
TOOL_OFFSET = np.array([0.135, 0.0, 0.0])
TIP_BEYOND_TOOL = 0.019
FOREARM_ROLL_LIMIT = 1.6  # rad, the forearm-roll range the teachers' IK may use
MAX_JOINT_STEP = 0.12  # rad per control step a teacher's joint target may lead the measured joints
DOWN = np.array([0.0, 0.0, -1.0])
WORLD_X = np.array([1.0, 0.0, 0.0])
WORLD_Y = np.array([0.0, 1.0, 0.0])
FINGER_AXIS_AT_START = {"left": WORLD_Y, "right": -WORLD_Y}  # gripper y axes at START_ARM_POSE


def gripper_frame(finger_axis: Sequence[float], pointing: Sequence[float],
                  preferred_finger_axis: np.ndarray | None = None) -> np.ndarray:
    """Gripper rotation with the exact ``finger_axis`` as y and x (where the fingers point) as close to
    ``pointing`` as possible. The parallel gripper is symmetric, so the finger-axis sign is free: it is
    chosen to agree with ``preferred_finger_axis`` (the arm's own at its start pose), which keeps the
    wrist-rotate joint near the middle of its range instead of winding it into a limit."""
    y = np.asarray(finger_axis, dtype=float)
    y = y / np.linalg.norm(y)
    if preferred_finger_axis is not None and y @ preferred_finger_axis < 0:
        y = -y
    x = np.asarray(pointing, dtype=float)
    x = x - y * (x @ y)
    x = x / np.linalg.norm(x)
    return np.column_stack([x, y, np.cross(x, y)])


def face_normal_nearest(rotation: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The box face normal (a column of the object's rotation, up to sign) closest to ``direction``."""
    dots = rotation.T @ direction
    i = int(np.argmax(np.abs(dots)))
    return rotation[:, i] * np.sign(dots[i])


def horizontal(direction: np.ndarray) -> np.ndarray:
    """``direction`` projected onto the table plane (top-down grasps keep the finger axis level even
    when the object lies tilted; it settles flat as the fingers close)."""
    flat = np.array([direction[0], direction[1], 0.0])
    norm = np.linalg.norm(flat)
    return flat / norm if norm > 1e-6 else WORLD_Y.copy()


def long_axis(rotation: np.ndarray) -> np.ndarray:
    """An elongated object's x axis, signed toward world +x (peg and socket are end-to-end symmetric)."""
    axis = rotation[:, 0]
    return axis if axis[0] >= 0 else -axis


def most_horizontal_cross_axis(rotation: np.ndarray) -> np.ndarray:
    """Of an elongated object's cross axes (local y, z), the more horizontal: the fingers close on it."""
    y, z = rotation[:, 1], rotation[:, 2]
    return y if abs(y[2]) <= abs(z[2]) else z


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation vector of the smallest rotation taking direction ``a`` onto direction ``b``."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    axis = np.cross(a, b)
    sine = np.linalg.norm(axis)
    if sine < 1e-9:
        return np.zeros(3)
    return axis / sine * np.arctan2(sine, a @ b)


class ArmKinematics(DampedLeastSquaresIK):
    """Forward and damped-least-squares inverse kinematics of one ViperX arm's tool point.

    A solve starts from the measured joints and takes a few capped damped Gauss-Newton steps; it is cheap
    because the teachers' targets are rate-limited, hence always close.
    """

    def __init__(self, model: mujoco.MjModel, side: str, tool_offset: np.ndarray = TOOL_OFFSET):
        joint_ids = [model.joint(f"vx300s_{side}/{name}").id for name in ARM_JOINTS]
        lower, upper = model.jnt_range[joint_ids].T.copy()
        # Keep the forearm roll within about a half turn: the wrist can flip to an equivalent branch (roll
        # by pi, wrist angle mirrored) that then runs into the wrist-angle limit and stalls the arm.
        roll = ARM_JOINTS.index("forearm_roll")
        lower[roll], upper[roll] = -FOREARM_ROLL_LIMIT, FOREARM_ROLL_LIMIT
        super().__init__(model, model.jnt_qposadr[joint_ids], model.jnt_dofadr[joint_ids], lower, upper)
        self.body = model.body(f"vx300s_{side}/gripper_link").id
        self.tool_offset = np.asarray(tool_offset, dtype=float)

    def tool_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Tool-point position and gripper rotation."""
        rot = self.data.xmat[self.body].reshape(3, 3).copy()
        return self.data.xpos[self.body] + rot @ self.tool_offset, rot

    def tool_jacobian(self, tool: np.ndarray) -> None:
        mujoco.mj_jac(self.model, self.data, self._jacp, self._jacr, tool, self.body)

    def solve(self, q_start: np.ndarray, position: np.ndarray, rotation: np.ndarray, iterations: int = 12,
              rotation_weight: float = 0.3, damping: float = 0.02, roll_weight: float = 0.05,
              max_joint_step: float = 0.2, tolerance: float = 2e-4) -> np.ndarray:
        """Joints that put the tool at ``position`` with ``rotation`` (best effort within joint limits).

        Near the start pose the forearm-roll and wrist-rotate axes are almost parallel, and unless moving
        the forearm roll costs a little more than the other joints (``roll_weight``) the two wind up
        against each other. (It penalises the roll's motion, not its value, so converged solutions stay
        exact.)
        """
        damping_sq = np.full(ARM_DOF, damping ** 2)
        damping_sq[ARM_JOINTS.index("forearm_roll")] += roll_weight ** 2
        return super().solve(q_start, position, rotation, iterations=iterations, rotation_weight=rotation_weight,
                             damping_sq=damping_sq, max_joint_step=max_joint_step, tolerance=tolerance)


# --------------------------------------------------------------------------------------------------
# Teachers.
# --------------------------------------------------------------------------------------------------


@dataclass
class ArmCommand:
    """Where one arm's tool point should go, the gripper orientation there, and the gripper opening."""

    position: np.ndarray
    rotation: np.ndarray
    gripper: float  # normalised: 0 closed, 1 open
    speed: float = 1.2  # m/s cap on how far the commanded tool point may lead the measured one
    joints: np.ndarray | None = None  # if given, go to these arm joints in joint space instead


@dataclass
class ArmState:
    """Measured pose of one arm, read from the simulator each step."""

    q: np.ndarray
    tool: np.ndarray
    rotation: np.ndarray
    opening: float

    def holds(self, obj_pos: np.ndarray, touching: bool, opening_range: tuple[float, float]) -> bool:
        """Is the object grasped? Its centre lies between the finger pads, the fingers touch it and the
        gripper stopped at an opening that fits the object. Geometric rather than two-finger contact,
        because single contacts flicker from step to step while an object is carried."""
        local = self.rotation.T @ (obj_pos - self.tool)
        between = (abs(local[1]) < 0.012 and -0.08 < local[0] < TIP_BEYOND_TOOL + 0.015
                   and abs(local[2]) < 0.05)
        return between and touching and opening_range[0] < self.opening < opening_range[1]


class BimanualTeacher(ABC):
    """Machinery shared by the ALOHA teachers: read the state, ask the task for one command per arm,
    rate-limit the commands and turn them into joint targets with IK.

    :meth:`plan` is a function of the current simulator state only, so a teacher can label or take
    over any state (DAgger queries it on states it never produced). ``phase`` names the last decision.
    """

    angular_speed = 3.0  # rad/s cap on how far the commanded orientation may lead the measured one
    approach_speed = 0.3  # m/s for the last centimetres to a grasp
    pregrasp_height = 0.08  # m above the grasp point, where top-down grasps line up
    transit_distance = 0.10  # m: farther commands are reached by joint-space moves
    transit_joint_step = 0.06  # rad per control step of a joint-space move

    def __init__(self, env: gym.Env):
        self.env = env.unwrapped
        if not isinstance(self.env, AlohaEnv):
            raise TypeError(f"{type(self).__name__} needs an AlohaEnv, got {type(self.env).__name__}")
        model = self.env.physics.model.ptr
        self.arms = {side: ArmKinematics(model, side) for side in SIDES}
        self.phase = "start"

    def reset(self) -> None:
        """Nothing to forget (decisions come from the state); part of the teacher interface."""
        self.phase = "start"

    def arm_state(self, side: str) -> ArmState:
        qpos = self.env.physics.data.qpos
        offset = SIDES.index(side) * QPOS_PER_ARM
        q = qpos[offset: offset + ARM_DOF].copy()
        tool, rot = self.arms[side].forward(q)
        return ArmState(q, tool, rot, float(normalize_gripper_position(qpos[offset + ARM_DOF])))

    def act(self, obs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Joint-space action (14,) float32 for the env's current state, inside the action space.
        ``obs`` is accepted for the policy interface but not needed: the teacher reads privileged state
        from the env."""
        states = {side: self.arm_state(side) for side in SIDES}
        commands = self.plan(states)
        action = []
        for side in SIDES:
            action += [*self._joint_target(side, states[side], commands[side]), commands[side].gripper]
        space = self.env.action_space
        return np.clip(np.asarray(action, dtype=np.float32), space.low, space.high)

    def _joint_target(self, side: str, state: ArmState, command: ArmCommand) -> np.ndarray:
        """Joint target for one arm: normally a Cartesian lead (straight tool path); a joint-space
        transit toward the command's IK solution when the command is far, or when the arm is in a
        posture the lead cannot leave (e.g. a wrist flipped against a joint limit by a novice).
        Transits only while the gripper is open: carrying stays gentle."""
        if command.joints is not None:
            return state.q + capped(command.joints - state.q, self.transit_joint_step)
        free = command.gripper > 0.5
        if free and np.linalg.norm(command.position - state.tool) > self.transit_distance:
            return self._transit(side, state, command)
        lead_q, lead_position, lead_rotation = self._cartesian_lead(side, state, command)
        tool, rotation = self.arms[side].forward(lead_q)
        stuck = (np.linalg.norm(tool - lead_position) > 0.005
                 or np.linalg.norm(rotation_error(lead_rotation, rotation)) > 0.05)
        if free and stuck:
            return self._transit(side, state, command)
        return state.q + capped(lead_q - state.q, MAX_JOINT_STEP)

    def _transit(self, side: str, state: ArmState, command: ArmCommand) -> np.ndarray:
        return state.q + capped(self._ik_goal(side, state.q, command) - state.q, self.transit_joint_step)

    def _cartesian_lead(self, side: str, state: ArmState,
                        command: ArmCommand) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """IK toward a lead pose at most ``speed * DT`` and ``angular_speed * DT`` from the measured one;
        the lead (not a timed trajectory) sets the pace, so the arm goes on from wherever it is.
        Returns the joints and the lead pose they aim at."""
        delta = command.position - state.tool
        distance = np.linalg.norm(delta)
        max_step = command.speed * DT
        position = command.position if distance <= max_step else state.tool + delta * (max_step / distance)
        turn = rotation_error(command.rotation, state.rotation)
        angle = np.linalg.norm(turn)
        if angle > self.angular_speed * DT:
            turn *= self.angular_speed * DT / angle
        rotation = rotate(turn, state.rotation)
        return self.arms[side].solve(state.q, position, rotation), position, rotation

    def _ik_goal(self, side: str, q: np.ndarray, command: ArmCommand) -> np.ndarray:
        """Joints reaching the command, solved from the current joints; if that gets stuck (a novice may
        have left the arm folded, turned away or against a joint limit), solved again from the start
        pose, whose branch always reaches the workspace, and the better of the two is kept."""
        arm = self.arms[side]
        best, best_error = None, np.inf
        for seed in (q, START_ARM_POSE[SIDES.index(side) * QPOS_PER_ARM:][:ARM_DOF]):
            goal = arm.solve(seed, command.position, command.rotation, iterations=30)
            tool, rot = arm.forward(goal)
            error = (np.linalg.norm(tool - command.position)
                     + 0.1 * np.linalg.norm(rotation_error(command.rotation, rot)))
            if error < best_error:
                best, best_error = goal, error
            if error < 0.005:
                break
        return best

    def top_down_grasp(self, side: str, arm: ArmState, grasp: np.ndarray,
                       finger_axis: np.ndarray) -> ArmCommand:
        """Pick from above: line up over ``grasp`` with the gripper open, go down, close once there.

        Each branch is decided from the measured pose, with a looser tolerance once the arm has started
        to descend (so small object shifts do not bounce it back up) and a re-opening hover when the
        gripper is found closed above the object.
        """
        rotation = gripper_frame(finger_axis, DOWN, FINGER_AXIS_AT_START[side])
        pregrasp = grasp + np.array([0.0, 0.0, self.pregrasp_height])
        if np.linalg.norm(arm.tool - grasp) < 0.008:
            return ArmCommand(grasp, rotation, 0.0)
        descending = arm.tool[2] < pregrasp[2] - 0.01
        lined_up = (np.linalg.norm(arm.tool[:2] - grasp[:2]) < (0.015 if descending else 0.008)
                    and np.linalg.norm(rotation_error(rotation, arm.rotation)) < 0.15)
        if lined_up and (arm.opening > 0.85 or descending):
            return ArmCommand(grasp, rotation, 1.0, speed=self.approach_speed)
        return ArmCommand(pregrasp, rotation, 1.0)

    def standby(self, side: str, gripper: float = 1.0) -> ArmCommand:
        """Back to the arm's joints at the start of an episode (a safe place to wait)."""
        start = START_ARM_POSE[SIDES.index(side) * QPOS_PER_ARM:][:ARM_DOF]
        tool, rotation = self.arms[side].forward(start)
        return ArmCommand(tool, rotation, gripper, joints=start)

    def objects_lost(self) -> bool:
        """An object fell off the table: nothing left to do but wait safely (not chase it)."""
        return any(pose[2] < -0.05 for pose in self.env.object_poses().values())

    def plan(self, states: dict[str, ArmState]) -> dict[str, ArmCommand]:
        """One command per arm for the current state; sets ``self.phase``."""
        if self.objects_lost():
            self.phase = "object_lost"
            return {side: self.standby(side) for side in SIDES}
        return self.plan_task(states)

    @abstractmethod
    def plan_task(self, states: dict[str, ArmState]) -> dict[str, ArmCommand]:
        """The task's decision for the current state (objects on the table); sets ``self.phase``."""


class TransferCubeTeacher(BimanualTeacher):
    """Right arm picks the cube from above (finger tips at the cube's mid-height, so its lower half stays
    free) and brings it to a meeting point in the air; the left arm comes in level from the left, closes
    on the lower half of the same two faces, the right arm lets go and backs off upward, and the left
    arm carries the cube away. Every step the phase is read off the state: who holds the cube (see
    :meth:`ArmState.holds`), how high it is and whether it is at the meeting point.
    """

    meet = np.array([0.0, 0.5, 0.25])  # cube centre during the hand-over
    right_grasp_above_centre = TIP_BEYOND_TOOL  # right finger tips level with the cube centre
    left_grasp_offset = np.array([0.005, 0.0, -0.032])  # left tool point relative to the cube centre
    left_approach = 0.07  # m the left arm lines up short of its grasp, along its pointing direction
    left_hold_offset = np.array([-0.1, 0.0, 0.0])  # where the left carries the cube after the hand-over
    cube_opening = (0.4, 0.78)  # normalised gripper opening when closed on the 4 cm cube (~0.61)
    carry_speed = 0.8  # m/s: the cube hangs from its upper half, faster carries let it slide down

    def plan_task(self, states: dict[str, ArmState]) -> dict[str, ArmCommand]:
        box = self.env.object_poses()["box"]
        box_pos, box_rot = box[:3], quat_to_matrix(box[3:])
        contacts = self.env.contacts()
        left, right = states["left"], states["right"]
        touching = {side: contacts.touching("red_box", [finger_geom(side, f) for f in ("left", "right")])
                    for side in SIDES}
        left_holds = left.holds(box_pos, touching["left"], self.cube_opening)
        right_holds = right.holds(box_pos, touching["right"], self.cube_opening)
        if left_holds and right_holds:
            self.phase = "release_right"
            return {"left": self._left_grasp(left, box_pos, box_rot), "right": self._right_release(right)}
        if left_holds:
            self.phase = "left_carries"
            return {"left": self._left_carry(left, box_pos),
                    "right": self._right_clear(right, touching["right"])}
        if right_holds:
            return self._bring_to_meeting(left, right, box_pos, box_rot)
        self.phase = "pick"
        finger_axis = horizontal(face_normal_nearest(box_rot, WORLD_Y))
        grasp = box_pos + np.array([0.0, 0.0, self.right_grasp_above_centre])
        return {"left": self._left_wait(),
                "right": self.top_down_grasp("right", right, grasp, finger_axis)}

    @staticmethod
    def _carry_rotation() -> np.ndarray:
        """Right gripper pointing straight down, fingers closing along y (as it picked the cube)."""
        return gripper_frame(WORLD_Y, DOWN, FINGER_AXIS_AT_START["right"])

    def _bring_to_meeting(self, left: ArmState, right: ArmState, box_pos: np.ndarray,
                          box_rot: np.ndarray) -> dict[str, ArmCommand]:
        """Lift straight up first (no dragging on the table), then carry to the meeting point; the left
        arm grasps once the cube is there. Targets move the tool by the cube's error (in-hand offsets)."""
        in_hand = right.tool - box_pos
        rotation = self._carry_rotation()
        if box_pos[2] < 0.08:
            self.phase = "lift"
            above = np.array([box_pos[0], box_pos[1], 0.15])
            return {"left": self._left_wait(), "right": ArmCommand(above + in_hand, rotation, 0.0)}
        carry = ArmCommand(self.meet + in_hand, rotation, 0.0, speed=self.carry_speed)
        if np.linalg.norm(box_pos - self.meet) > 0.02:
            self.phase = "carry"
            return {"left": self._left_wait(), "right": carry}
        self.phase = "left_grasp"
        return {"left": self._left_grasp(left, box_pos, box_rot), "right": carry}

    def _right_release(self, right: ArmState) -> ArmCommand:
        """Open in place (the left gripper has closed on the cube)."""
        return ArmCommand(right.tool, self._carry_rotation(), 1.0)

    def _right_clear(self, right: ArmState, touching: bool) -> ArmCommand:
        """Back straight up out of the hand-over while still near the cube, then go to a rest pose."""
        rotation = self._carry_rotation()
        if touching or right.opening < 0.8:
            return ArmCommand(right.tool + np.array([0.0, 0.0, 0.1]), rotation, 1.0, speed=0.3)
        return ArmCommand(self.meet + np.array([0.15, 0.0, 0.05]), rotation, 1.0)

    def _left_rotation(self, left: ArmState, box_rot: np.ndarray) -> np.ndarray:
        return gripper_frame(face_normal_nearest(box_rot, WORLD_Y), WORLD_X, FINGER_AXIS_AT_START["left"])

    def _left_wait(self) -> ArmCommand:
        """Level, fingers closing along y, lined up short of where the hand-over grasp will be."""
        rotation = gripper_frame(WORLD_Y, WORLD_X, FINGER_AXIS_AT_START["left"])
        standby = self.meet + self.left_grasp_offset - self.left_approach * WORLD_X
        return ArmCommand(standby, rotation, 1.0)

    def _left_grasp(self, left: ArmState, box_pos: np.ndarray, box_rot: np.ndarray) -> ArmCommand:
        """Line up short of the cube, move in along the pointing direction, close when there."""
        rotation = self._left_rotation(left, box_rot)
        pointing = rotation[:, 0]
        grasp = box_pos + self.left_grasp_offset
        offset = left.tool - grasp
        along = offset @ pointing
        lateral = np.linalg.norm(offset - along * pointing)
        if np.linalg.norm(offset) < 0.006:
            return ArmCommand(grasp, rotation, 0.0)
        moving_in = along > -self.left_approach + 0.02
        lined_up = (lateral < (0.015 if moving_in else 0.008)
                    and np.linalg.norm(rotation_error(rotation, left.rotation)) < 0.15)
        if lined_up and left.opening > 0.85:
            return ArmCommand(grasp, rotation, 1.0, speed=0.25)
        return ArmCommand(grasp - self.left_approach * pointing, rotation, 1.0)

    def _left_carry(self, left: ArmState, box_pos: np.ndarray) -> ArmCommand:
        rotation = gripper_frame(WORLD_Y, WORLD_X, FINGER_AXIS_AT_START["left"])
        target = self.meet + self.left_hold_offset + (left.tool - box_pos)
        return ArmCommand(target, rotation, 0.0, speed=0.3)


class InsertionTeacher(BimanualTeacher):
    """Left arm picks the socket and right arm the peg, both from above and off-centre (the socket's
    +x opening and the peg's -x end stay free), lift them, the left holds the socket at a fixed spot
    with its axis along x, and the right lines the peg tip up with the socket opening, then pushes it
    in until it meets the pin. Targets are corrected by the measured object poses every step (in-hand
    offsets, a peg tilted about the finger axis), so a slipped or nudged object is simply re-aimed, and
    a dropped one is picked up again.
    """

    socket_target = np.array([-0.08, 0.5, 0.18])  # socket centre while the peg goes in
    half_length = 0.06  # of the peg and of the socket
    grip_from_centre = 0.02  # grasp this far from the centre, away from the mating end
    peg_grasp_height = 0.012  # tool above the peg centre (finger tips 3 mm above the table)
    socket_grasp_height = 0.005
    pre_insert = 0.03  # peg tip this far outside the opening before pushing in
    inserted = -0.025  # push target for the tip, inside the opening (the pin starts 0.02 inside)
    peg_opening = (0.15, 0.6)  # normalised opening when closed on the 2 cm peg (~0.36)
    socket_opening = (0.4, 0.85)  # ... on the 4.4 cm socket (~0.66)

    def plan_task(self, states: dict[str, ArmState]) -> dict[str, ArmCommand]:
        poses = self.env.object_poses()
        peg_pos, peg_rot = poses["peg"][:3], quat_to_matrix(poses["peg"][3:])
        socket_pos, socket_rot = poses["socket"][:3], quat_to_matrix(poses["socket"][3:])
        contacts = self.env.contacts()
        left, right = states["left"], states["right"]
        fingers = {side: [finger_geom(side, "left"), finger_geom(side, "right")] for side in SIDES}
        peg_held = right.holds(peg_pos, contacts.touching("red_peg", fingers["right"]), self.peg_opening)
        socket_held = left.holds(socket_pos, contacts.touching(SOCKET_WALLS, fingers["left"]),
                                 self.socket_opening)
        left_command = self._left(left, socket_pos, socket_rot, socket_held)
        if not peg_held:
            self.phase = "pick"
            grasp = peg_pos + self.grip_from_centre * long_axis(peg_rot) + [0.0, 0.0, self.peg_grasp_height]
            return {"left": left_command,
                    "right": self.top_down_grasp("right", right, grasp,
                                                 horizontal(most_horizontal_cross_axis(peg_rot)))}
        socket_ready = (socket_held and socket_pos[2] > 0.08
                        and np.linalg.norm(socket_pos - self.socket_target) < 0.03)
        return {"left": left_command, "right": self._right_with_peg(right, peg_pos, peg_rot, socket_pos,
                                                                    socket_rot, socket_ready)}

    def _left(self, left: ArmState, socket_pos: np.ndarray, socket_rot: np.ndarray,
              held: bool) -> ArmCommand:
        """Pick the socket, lift it straight up, hold it at ``socket_target``."""
        if not held:
            grasp = (socket_pos - self.grip_from_centre * long_axis(socket_rot)
                     + [0.0, 0.0, self.socket_grasp_height])
            return self.top_down_grasp("left", left, grasp,
                                       horizontal(most_horizontal_cross_axis(socket_rot)))
        rotation = gripper_frame(WORLD_Y, DOWN, FINGER_AXIS_AT_START["left"])
        if socket_pos[2] > 0.08:
            target = self.socket_target
        else:  # lift straight up before moving sideways
            target = np.array([socket_pos[0], socket_pos[1], self.socket_target[2]])
        return ArmCommand(left.tool + (target - socket_pos), rotation, 0.0)

    def _right_with_peg(self, right: ArmState, peg_pos: np.ndarray, peg_rot: np.ndarray,
                        socket_pos: np.ndarray, socket_rot: np.ndarray, socket_ready: bool) -> ArmCommand:
        """Lift, wait beside the socket's spot, line the tip up with the opening, push in."""
        rotation = gripper_frame(WORLD_Y, DOWN, FINGER_AXIS_AT_START["right"])
        if peg_pos[2] < 0.08:
            self.phase = "lift"
            above = np.array([peg_pos[0], peg_pos[1], self.socket_target[2]])
            return ArmCommand(right.tool + (above - peg_pos), rotation, 0.0)
        peg_axis = long_axis(peg_rot)
        tip = peg_pos - self.half_length * peg_axis
        socket_axis = long_axis(socket_rot) if socket_ready else WORLD_X
        rotation = self._untilt(right, rotation, peg_axis, socket_axis)
        if not socket_ready:
            self.phase = "wait"
            standby = self.socket_target + (self.half_length + self.pre_insert + 0.03) * WORLD_X
            return ArmCommand(right.tool + (standby - tip), rotation, 0.0)
        opening = socket_pos + self.half_length * socket_axis
        offset = tip - opening
        depth = offset @ socket_axis  # > 0: tip still outside the opening
        lateral = np.linalg.norm(offset - depth * socket_axis)
        pushing = depth < self.pre_insert - 0.005
        if lateral < (0.006 if pushing else 0.003) and depth < self.pre_insert + 0.01:
            self.phase = "insert"
            target_tip = opening + self.inserted * socket_axis
            return ArmCommand(right.tool + (target_tip - tip), rotation, 0.0, speed=0.2)
        self.phase = "align"
        target_tip = opening + self.pre_insert * socket_axis
        return ArmCommand(right.tool + (target_tip - tip), rotation, 0.0, speed=0.5)

    @staticmethod
    def _untilt(right: ArmState, nominal: np.ndarray, peg_axis: np.ndarray,
                goal_axis: np.ndarray) -> np.ndarray:
        """Pitch the nominal gripper frame about the finger axis so the peg, as it sits in the hand now,
        points along ``goal_axis``. Only the pitch: the yaw of a peg between two small contact patches
        is not rigid, and correcting it fed back into oscillation."""
        peg_in_nominal = nominal @ (right.rotation.T @ peg_axis)
        finger = nominal[:, 1]
        return rotate(finger * (rotation_between(peg_in_nominal, goal_axis) @ finger), nominal)
