"""Rotation helpers and damped least-squares inverse kinematics shared by the MuJoCo arms' teachers
(ALOHA, the myCobot twin, the kitchen's Cartesian controller).

The ALOHA ViperX arms and the myCobot twin both steer a tool point with the same solver; only how the
tool point hangs off the chain (a body plus an offset, or a site) and the per-joint damping differ.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import mujoco
import numpy as np


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """World-frame rotation vector turning ``current`` into ``target`` (3x3 matrices): the one rotation
    distance of the package (its norm is the angle between the two, in [0, pi]).

    Target first, like ``position - tool``: ``rotate(rotation_error(target, current), current)`` is
    ``target``. The quaternion's sign needs no care: ``mju_quat2Vel`` maps angles over pi to the short way.
    """
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, (target @ current.T).reshape(-1))
    rotvec = np.empty(3)
    mujoco.mju_quat2Vel(rotvec, quat, 1.0)
    return rotvec


def rotate(rotvec: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply the world-frame rotation vector ``rotvec`` to the rotation ``matrix``."""
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return matrix.copy()
    quat = np.empty(4)
    mujoco.mju_axisAngle2Quat(quat, rotvec / angle, angle)
    rot = np.empty(9)
    mujoco.mju_quat2Mat(rot, quat)
    return rot.reshape(3, 3) @ matrix


def quat_to_matrix(quat_wxyz: np.ndarray) -> np.ndarray:
    rot = np.empty(9)
    mujoco.mju_quat2Mat(rot, np.asarray(quat_wxyz, dtype=float))
    return rot.reshape(3, 3)


def capped(step: np.ndarray, largest: float) -> np.ndarray:
    """``step`` scaled down (direction kept) so that no joint moves more than ``largest``."""
    peak = np.abs(step).max()
    return step if peak <= largest else step * (largest / peak)


class DampedLeastSquaresIK(ABC):
    """Forward kinematics and damped least-squares IK of one arm's tool point.

    Works on a private ``MjData`` so that solving never disturbs the simulation. A solve starts from given
    joints and takes damped Gauss-Newton steps on position and (weighted) orientation error, each step
    capped so that a far target cannot fling the arm, clipped to ``lower``/``upper``. Subclasses say where
    the tool point is (:meth:`tool_pose`) and how its Jacobian is taken (:meth:`tool_jacobian`).
    """

    def __init__(self, model: mujoco.MjModel, qpos_index: np.ndarray, dof_index: np.ndarray,
                 lower: np.ndarray, upper: np.ndarray) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.qpos_index = np.asarray(qpos_index)
        self.dof_index = np.asarray(dof_index)
        self.lower = np.asarray(lower, dtype=float).copy()
        self.upper = np.asarray(upper, dtype=float).copy()
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    @property
    def dof(self) -> int:
        return len(self.qpos_index)

    @abstractmethod
    def tool_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Tool position and rotation of the private data after ``mj_kinematics``."""

    @abstractmethod
    def tool_jacobian(self, tool: np.ndarray) -> None:
        """Fill ``self._jacp`` / ``self._jacr`` for the tool point at ``tool`` (after ``mj_comPos``)."""

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tool position and rotation for arm joints ``q``."""
        self.data.qpos[self.qpos_index] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.tool_pose()

    def pose_error(self, q: np.ndarray, position: np.ndarray, rotation: np.ndarray,
                   rotation_weight: float = 0.1) -> float:
        tool, rot = self.forward(q)
        return float(np.linalg.norm(position - tool) + rotation_weight * np.linalg.norm(rotation_error(rotation, rot)))

    def solve(self, q_start: np.ndarray, position: np.ndarray, rotation: np.ndarray, *, iterations: int,
              rotation_weight: float, damping_sq: float | np.ndarray, max_joint_step: float,
              tolerance: float) -> np.ndarray:
        """Joints putting the tool at ``position`` with ``rotation`` (best effort within the limits).

        Each iteration solves ``min |J dq - e|^2 + sum_j damping_sq_j dq_j^2``; ``damping_sq`` is one value
        or one per joint (a joint that should move reluctantly gets more).
        """
        damping_sq = np.broadcast_to(np.asarray(damping_sq, dtype=float), (self.dof,))
        q = np.clip(np.asarray(q_start, dtype=float), self.lower, self.upper)
        for _ in range(iterations):
            tool, rot = self.forward(q)
            error = np.concatenate([position - tool, rotation_weight * rotation_error(rotation, rot)])
            if np.linalg.norm(error) < tolerance:
                break
            mujoco.mj_comPos(self.model, self.data)
            self.tool_jacobian(tool)
            jac = np.vstack([self._jacp[:, self.dof_index], rotation_weight * self._jacr[:, self.dof_index]])
            step = np.linalg.solve(jac.T @ jac + np.diag(damping_sq), jac.T @ error)
            q = np.clip(q + capped(step, max_joint_step), self.lower, self.upper)
        return q
