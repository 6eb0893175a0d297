"""State-feedback scripted teacher of the myCobot 320 twin's move-cube tasks, and the IK it steers with.

Kept apart from :mod:`lit_imit.envs.mycobot` so that the twin reads as a simulator only (the same file
layout as the robot adapter it stands in for); the teacher reads the twin's privileged state (cube pose,
contacts, gripper command) through ``env.unwrapped``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym

import lit_imit.envs  # noqa: F401  (first: sets MUJOCO_GL and loads triton before mujoco)

import mujoco  # noqa: E402
import numpy as np

from lit_imit.envs.kinematics import DampedLeastSquaresIK, capped, quat_to_matrix, rotate, rotation_error
from lit_imit.envs.mycobot import (
    ARM_DOF,
    CUBE_HALF,
    HOME_QPOS,
    JOINT_LIMITS,
    SUCCESS_TOLERANCE,
    MyCobotMoveCubeEnv,
)


# ---------------------------------------------------------------------------------------------- geometry helpers
def tool_down(yaw: float) -> np.ndarray:
    """Tool rotation pointing straight down (z = -world z) with the finger axis (x) at ``yaw``."""
    x = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    z = np.array([0.0, 0.0, -1.0])
    return np.column_stack([x, np.cross(z, x), z])


def wrap_angle(angle: float, period: float = 2 * np.pi) -> float:
    """``angle`` wrapped into [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


def _yaw_of(rotation: np.ndarray, column: int = 0) -> float:
    axis = rotation[:, column]
    return float(np.arctan2(axis[1], axis[0]))


# ---------------------------------------------------------------------------------------------- kinematics
class ArmKinematics(DampedLeastSquaresIK):
    """Forward and damped-least-squares inverse kinematics of the twin's tool point (the ``tool`` site),
    a degree inside the joint limits."""

    def __init__(self, model: mujoco.MjModel):
        joints = [model.joint(f"j{i + 1}").id for i in range(ARM_DOF)]
        margin = np.deg2rad(1.0)
        super().__init__(model, model.jnt_qposadr[joints], model.jnt_dofadr[joints],
                         -JOINT_LIMITS + margin, JOINT_LIMITS - margin)
        self.site = model.site("tool").id

    def tool_pose(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def tool_jacobian(self, tool: np.ndarray) -> None:
        mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site)

    def solve(self, q_start: np.ndarray, position: np.ndarray, rotation: np.ndarray, iterations: int = 15,
              rotation_weight: float = 0.2, damping: float = 0.01, max_joint_step: float = 0.15,
              tolerance: float = 1e-5) -> np.ndarray:
        """Joints putting the tool at ``position`` with ``rotation`` (best effort within the limits)."""
        return super().solve(q_start, position, rotation, iterations=iterations, rotation_weight=rotation_weight,
                             damping_sq=damping ** 2, max_joint_step=max_joint_step, tolerance=tolerance)


# ---------------------------------------------------------------------------------------------- the teacher
@dataclass
class ToolCommand:
    """Where the tool point should go, its orientation there, the gripper command and a speed cap."""

    position: np.ndarray
    rotation: np.ndarray
    gripper: float  # 0 closed, 1 open
    speed: float = 0.15  # m/s cap on how far the commanded tool point may lead the measured one


class MoveCubeTeacher:
    """State-feedback pick-and-place for the twin: every call reads the cube, the tool and the gripper
    from the simulator, decides the phase from that state alone, and returns a joint-space action.

    Phases: ``approach`` (above the cube, fingers across two faces, open), ``descend``, ``grasp``
    (close at the cube), ``reopen`` (closed on nothing: open and back up), ``lift`` (straight up),
    ``carry`` (over the target at carry height), ``place`` (down until the cube nearly touches the
    table), ``release`` (open), ``retreat`` (up, then home), ``lost`` (the cube left the table: home).
    Because nothing but the state decides, the teacher takes over from wherever a novice left the
    robot (interactive learning), re-grasps a dropped cube and re-places a cube set down off target.

    Joint targets come from damped-least-squares IK toward a lead pose a short distance from the
    measured one (the pace is set by ``speed``), or, for long free moves with nothing in the hand,
    from steps along a joint-space line to the IK solution of the goal. Every joint step stays below
    ``max_joint_step`` (4 degrees), inside the robot adapter's 5-degree safety clamp.
    """

    pregrasp_height = 0.07  # tool above the grasp point when lining up
    grasp_above_centre = 0.004  # tool point above the cube centre at the grasp (tips 4 mm above the table)
    carry_height = 0.13  # tool height while carrying (the cube clears the obstacle by ~4 cm)
    retreat_height = 0.15
    place_clearance = 0.003  # cube bottom above the table when it is let go
    free_speed = 0.2
    slow_speed = 0.05
    angular_speed = 1.5  # rad/s
    transit_distance = 0.08  # m: farther free commands move in joint space
    transit_joint_step = np.deg2rad(3.5)
    max_joint_step = np.deg2rad(4.0)
    holding_opening = (0.3, 0.65)  # measured opening when closed on the 3 cm cube (~0.5)
    tilt_from = 0.20  # m from the base axis: closer cubes are grasped with a tilted tool ...
    full_tilt_at = 0.12  # ... tilted by max_tilt at this distance
    max_tilt = np.deg2rad(45.0)

    def __init__(self, env: gym.Env):
        self.env = env.unwrapped
        if not isinstance(self.env, MyCobotMoveCubeEnv):
            raise TypeError(f"MoveCubeTeacher needs a MyCobotMoveCubeEnv, got {type(self.env).__name__}")
        self.kin = ArmKinematics(self.env.model)
        self.phase = "start"
        self._wrist_cache: tuple[Any, float] = (None, 0.0)

    def reset(self) -> None:
        """Nothing to forget (decisions come from the state); part of the teacher interface."""
        self.phase = "start"

    # ---- reading the state -----------------------------------------------------------------------
    def _cube(self) -> tuple[np.ndarray, float]:
        pose = self.env.cube_pose()
        rot = quat_to_matrix(pose[3:])
        # yaw of the most horizontal cube axis: a face normal, meaningful modulo 90 degrees
        axes = [rot[:, i] for i in range(3)]
        horizontal = max(axes, key=lambda a: np.hypot(a[0], a[1]) if abs(a[2]) < 0.7 else -1.0)
        return pose[:3], float(np.arctan2(horizontal[1], horizontal[0]))

    def holds(self, cube: np.ndarray, tool: np.ndarray, rotation: np.ndarray, opening: float) -> bool:
        """The cube sits between the pads, a pad touches it and the gripper stopped at the cube's width."""
        local = rotation.T @ (cube - tool)
        between = abs(local[0]) < 0.02 and abs(local[1]) < 0.015 and -0.02 < local[2] < 0.02
        touching = self.env.touching("cube", "pad_left") or self.env.touching("cube", "pad_right")
        return between and touching and self.holding_opening[0] < opening < self.holding_opening[1]

    # ---- the decision ------------------------------------------------------------------------------
    def act(self, obs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Joint-space action (7,) float32 for the env's current state (``obs`` is not needed)."""
        q = self.env.arm_qpos
        tool, rotation = self.kin.forward(q)
        command = self.plan(q, tool, rotation)
        joints = self._joint_target(q, tool, rotation, command)
        return np.append(joints, np.clip(command.gripper, 0.0, 1.0)).astype(np.float32)

    def plan(self, q: np.ndarray, tool: np.ndarray, rotation: np.ndarray) -> ToolCommand:
        """The tool command for the current state (sets ``phase``): holding the cube -> take it to the
        target; cube resting at the target -> retreat; otherwise -> (re)pick it."""
        cube, cube_yaw = self._cube()
        opening = self.env.gripper_opening()
        target = self.env.target_position()
        if cube[2] < -0.05:
            self.phase = "lost"  # fell off the table
            return self._home(1.0)
        if self.holds(cube, tool, rotation, opening):
            return self._with_cube(cube, tool, rotation, target)
        if np.linalg.norm(cube[:2] - target[:2]) < 0.75 * SUCCESS_TOLERANCE and cube[2] < CUBE_HALF + 0.006:
            return self._retreat(cube, tool, rotation)
        return self._pick(cube, cube_yaw, q, tool, rotation, opening)

    def _grasp_frame(self, cube: np.ndarray, cube_yaw: float, q: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """Tool rotation for grasping the cube: fingers across two faces, pointing down.

        Top-down grasps on the table only reach 0.19 m from the base axis (J3's limit); closer cubes are
        taken with the tool tilted toward the base about the finger axis (up to 45 degrees at 0.12 m),
        which moves the wrist outward. Untilted, any of the four horizontal face normals can be the
        finger axis; tilted, the two closest to the tangential direction (so the tilt is about it).
        Of those, the one needing the smallest turn of J6 without leaving J6's range is chosen.
        """
        radius = float(np.linalg.norm(cube[:2]))
        tilt = self.max_tilt * float(np.clip((self.tilt_from - radius) / (self.tilt_from - self.full_tilt_at), 0, 1))
        down = np.array([0.0, 0.0, -1.0])
        if tilt <= 0.0:
            candidates = [tool_down(cube_yaw + k * np.pi / 2) for k in range(4)]
        else:
            radial = np.array([*(cube[:2] / max(radius, 1e-6)), 0.0])
            tangential_yaw = float(np.arctan2(radial[0], -radial[1]))
            yaw = tangential_yaw + wrap_angle(cube_yaw - tangential_yaw, np.pi / 2)
            candidates = []
            for sign in (1.0, -1.0):
                x = sign * np.array([np.cos(yaw), np.sin(yaw), 0.0])
                inward = -(radial - x * (radial @ x))
                inward /= max(np.linalg.norm(inward), 1e-9)
                z = np.cos(tilt) * down + np.sin(tilt) * inward
                candidates.append(np.column_stack([x, np.cross(z, x), z]))
        return self._least_wrist_turn(candidates, q, cube)

    def _least_wrist_turn(self, candidates: list[np.ndarray], q: np.ndarray, position: np.ndarray) -> np.ndarray:
        """The candidate frame whose grasp has J6 closest to its current angle, 5 degrees inside J6's range.

        The candidates differ only by turns about the tool axis, which is J6's axis, so their grasp
        configurations differ only in J6, by those turns: one IK solve (from the home pose, so on the
        home branch) gives J6 for all of them.
        """
        base = candidates[0]
        key = (tuple(np.round(position, 3)), tuple(np.round(base.ravel(), 2)))
        if self._wrist_cache[0] != key:
            self._wrist_cache = (key, float(self.kin.solve(HOME_QPOS, position, base, iterations=60)[5]))
        base_j6 = self._wrist_cache[1]
        margin = JOINT_LIMITS[5] - np.deg2rad(5.0)
        best, best_cost = base, np.inf
        for frame in candidates:
            z = base[:, 2]
            turn = float(np.arctan2(np.cross(base[:, 0], frame[:, 0]) @ z, base[:, 0] @ frame[:, 0]))
            j6 = wrap_angle(base_j6 + turn)
            cost = abs(j6 - q[5]) + (10.0 if abs(j6) > margin else 0.0)
            if cost < best_cost:
                best, best_cost = frame, cost
        return best

    def reachable(self, cube: np.ndarray) -> bool:
        """Is the cube on the table within the grasping range (0.12-0.34 m from the base axis)?"""
        radius = float(np.linalg.norm(cube[:2]))
        return cube[2] > -0.01 and self.full_tilt_at <= radius <= 0.34

    def _pick(self, cube: np.ndarray, cube_yaw: float, q: np.ndarray, tool: np.ndarray, rotation: np.ndarray,
              opening: float) -> ToolCommand:
        if not self.reachable(cube):
            self.phase = "unreachable"  # nothing sensible to do: wait at home with the gripper open
            return self._home(1.0)
        frame = self._grasp_frame(cube, cube_yaw, q, rotation)
        pointing = frame[:, 2]
        lift = self.grasp_above_centre + 0.012 * float(np.hypot(pointing[0], pointing[1]))  # tilted pads reach lower
        grasp = cube + np.array([0.0, 0.0, lift])
        pregrasp = grasp - self.pregrasp_height * pointing
        offset = tool - grasp
        along = float(offset @ -pointing)  # distance still to go along the tool axis
        across = float(np.linalg.norm(offset + along * pointing))
        aligned = np.linalg.norm(rotation_error(frame, rotation)) < 0.1
        near_cube = across < 0.03 and along < self.pregrasp_height - 0.01
        if np.linalg.norm(offset) < 0.006 and aligned:
            self.phase = "grasp"
            return ToolCommand(grasp, frame, 0.0, self.slow_speed)
        if opening < 0.8 and self.env._gripper_cmd < 0.5 and near_cube:
            self.phase = "reopen"  # closed on nothing (or on a corner): open before anything else
            return ToolCommand(tool, frame, 1.0, 0.0)
        descending = along < self.pregrasp_height - 0.01
        lined_up = across < (0.012 if descending else 0.005) and aligned
        if lined_up and (opening > 0.9 or descending):
            self.phase = "descend"
            return ToolCommand(grasp, frame, 1.0, self.slow_speed if along < 0.04 else 0.1)
        if descending and near_cube:
            self.phase = "reopen"  # low and off: back out along the tool axis before lining up again
            return ToolCommand(tool - (self.pregrasp_height - along) * pointing, frame, 1.0, self.slow_speed)
        self.phase = "approach"
        return ToolCommand(pregrasp, frame, 1.0, self.free_speed)

    def _with_cube(self, cube: np.ndarray, tool: np.ndarray, rotation: np.ndarray,
                   target: np.ndarray) -> ToolCommand:
        in_hand = tool - cube  # targets move the tool by the cube's error
        keep = tool_down(_yaw_of(rotation))
        off = np.linalg.norm(cube[:2] - target[:2])
        carry_cube_z = self.carry_height - in_hand[2]
        place_z = CUBE_HALF + self.place_clearance
        lowering = cube[2] < carry_cube_z - 0.02
        low = cube[2] < place_z + 0.01
        if off > 0.006 and low and off < 0.05:
            self.phase = "adjust"  # set down (or re-grasped) a little off: lift a bit and shift over
            above = np.array([*(target[:2] + in_hand[:2]), place_z + 0.02 + in_hand[2]])
            return ToolCommand(above, keep, 0.0, self.slow_speed)
        if off > (0.02 if lowering else 0.006):
            if lowering and off > 0.03:
                self.phase = "lift"
                return ToolCommand(np.array([*tool[:2], self.carry_height]), keep, 0.0, 0.1)
            self.phase = "carry"
            return ToolCommand(np.array([*(target[:2] + in_hand[:2]), self.carry_height]), keep, 0.0, self.free_speed)
        if cube[2] > place_z + 0.002 and not self.env.touching("cube", "table"):
            self.phase = "place"
            speed = self.slow_speed if cube[2] - place_z < 0.04 else 0.12
            return ToolCommand(np.array([*(target[:2] + in_hand[:2]), place_z + in_hand[2]]), keep, 0.0, speed)
        self.phase = "release"
        return ToolCommand(tool, keep, 1.0, 0.0)

    def _retreat(self, cube: np.ndarray, tool: np.ndarray, rotation: np.ndarray) -> ToolCommand:
        self.phase = "retreat"
        keep = tool_down(_yaw_of(rotation))
        if np.linalg.norm(tool[:2] - cube[:2]) < 0.05 and tool[2] < cube[2] + self.retreat_height - 0.03:
            return ToolCommand(np.array([*tool[:2], cube[2] + self.retreat_height]), keep, 1.0, 0.1)
        return self._home(1.0)

    def _home(self, gripper: float) -> ToolCommand:
        tool, rotation = self.kin.forward(HOME_QPOS)
        return ToolCommand(tool, rotation, gripper, self.free_speed)

    # ---- from a tool command to joints -----------------------------------------------------------
    def _joint_target(self, q: np.ndarray, tool: np.ndarray, rotation: np.ndarray,
                      command: ToolCommand) -> np.ndarray:
        free = command.gripper > 0.5 and self.phase not in ("release", "place")
        if free and np.linalg.norm(command.position - tool) > self.transit_distance:
            goal = self._ik_goal(q, command)
            return q + capped(goal - q, self.transit_joint_step)
        lead = self._lead(tool, rotation, command)
        solved = self.kin.solve(q, *lead)
        return q + capped(solved - q, self.max_joint_step)

    def _lead(self, tool: np.ndarray, rotation: np.ndarray, command: ToolCommand) -> tuple[np.ndarray, np.ndarray]:
        """A pose at most ``speed * dt`` and ``angular_speed * dt`` from the measured one, toward the
        command: the lead (not a timed trajectory) sets the pace, so motion resumes from any state."""
        dt = self.env.dt
        delta = command.position - tool
        distance = np.linalg.norm(delta)
        max_step = command.speed * dt
        position = command.position if distance <= max_step else tool + delta * (max_step / distance)
        turn = rotation_error(command.rotation, rotation)
        angle = np.linalg.norm(turn)
        if angle > self.angular_speed * dt:
            turn *= self.angular_speed * dt / angle
        return position, rotate(turn, rotation)

    def _ik_goal(self, q: np.ndarray, command: ToolCommand) -> np.ndarray:
        """Joints reaching the command, solved from the current joints and, if that gets stuck (a novice
        may have left the arm folded or against a limit), from the home pose; the better one is kept."""
        best, best_error = q, np.inf
        for seed in (q, HOME_QPOS):
            goal = self.kin.solve(seed, command.position, command.rotation, iterations=60)
            error = self.kin.pose_error(goal, command.position, command.rotation)
            if error < best_error:
                best, best_error = goal, error
            if error < 0.003:
                break
        return best
