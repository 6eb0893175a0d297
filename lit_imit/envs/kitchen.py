"""FrankaKitchen skill-learning tasks (gymnasium-robotics FrankaKitchen-v1) and scripted sub-task teachers.

The env wraps gymnasium-robotics' ``KitchenEnv`` (9-DoF Franka, joint-velocity actions in [-1, 1]^9,
12.5 Hz) and flattens its observation to ``state`` (59,) float32: robot joint positions (9) and velocities
(9), object positions (21) and velocities (20), with the env's own observation noise; ``qpos`` (9,) repeats
the robot's joint positions (the episode store's proprioception key); ``positions`` (30,) is the state
without the velocities, D4RL kitchen's layout (robot 9, objects 21) that SPiRL, FIST and SkiLD learn from.
Sub-task completion
uses the env's goals and threshold (joint configuration within 0.3 of the goal, D4RL's rule), checked on
the true simulator state for all seven sub-tasks at every step.

* **target tasks** (FIST / SPiRL downstream): a fixed list of four sub-tasks. The reward is +1 for each
  of them the first time it is completed, so the episode return *is* the number of sub-tasks completed
  (out of 4); ``info["subtasks_completed"]`` says the same and ``info["is_success"]`` is True once all
  are done (the episode then ends).
* **play tasks** (task-agnostic data, like D4RL kitchen-mixed): each episode draws a random chain of
  ``n_play_subtasks`` distinct sub-tasks from ``allowed`` (e.g. every sub-task but the top burner, FIST's
  "no-topknob" split); the chain is the episode's ``instruction``. Success = the whole chain done.

The teacher chains scripted sub-task controllers. Each is a small state machine that re-reads the
simulator (handle, knob and kettle poses, joint angles) at every step and commands an end-effector
velocity through a damped least-squares inverse of the Franka's Jacobian (``mujoco.mj_jacSite``), with a
null-space pull towards the start posture; the resulting joint velocities are the env's actions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from lit_imit.envs.kinematics import rotation_error

SUBTASKS = ("microwave", "kettle", "bottom burner", "top burner", "light switch", "slide cabinet", "hinge cabinet")
#: qpos indices of each sub-task's joints and their goal values (gymnasium-robotics / D4RL)
SUBTASK_QPOS = {
    "bottom burner": [11, 12],
    "top burner": [15, 16],
    "light switch": [17, 18],
    "slide cabinet": [19],
    "hinge cabinet": [20, 21],
    "microwave": [22],
    "kettle": [23, 24, 25, 26, 27, 28, 29],
}
SUBTASK_GOALS = {
    "bottom burner": [-0.88, -0.01],
    "top burner": [-0.92, -0.01],
    "light switch": [-0.69, -0.05],
    "slide cabinet": [0.37],
    "hinge cabinet": [0.0, 1.45],
    "microwave": [-0.75],
    "kettle": [-0.23, 0.75, 1.62, 0.99, 0.0, 0.0, -0.06],
}
COMPLETION_THRESHOLD = 0.3
#: the model's site on each sub-task's handle, lever or knob (where the teacher's end effector goes)
SUBTASK_SITE = {
    "bottom burner": "knob2_site",
    "top burner": "knob4_site",
    "light switch": "light_site",
    "slide cabinet": "slide_site",
    "hinge cabinet": "hinge_site2",
    "microwave": "microhandle_site",
    "kettle": "kettle_site",
}
#: (a, b): a play chain with both does a before b. The opened hinge door swings into the space in front of
#: the sliding door's handle, so the slide cabinet cannot be reached after it.
PRECEDENCE = (("slide cabinet", "hinge cabinet"),)
ARM_DOF = 7
STATE_DIM = 59
#: ``positions``: the robot's joint positions and the objects' positions, the entries of ``state`` that D4RL's
#: kitchen observation has (it carries no velocities)
POSITION_INDEX = np.r_[0:9, 18:39]
ACTION_SCALE = 2.0  # the env maps an action of 1 to a 2 rad/s set-point velocity (act_rng)
#: the damped position servos realise roughly half of the set-point velocity; the teacher asks for more
SERVO_EFFICIENCY = 0.55


def check_subtasks(names: Sequence[str]) -> list[str]:
    """Validate sub-task names (a clear error naming the known ones)."""
    names = list(names)
    for name in names:
        if name not in SUBTASKS:
            raise ValueError(f"unknown kitchen sub-task {name!r}; known: {list(SUBTASKS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"sub-tasks repeat in {names}")
    return names


def respect_precedence(chain: Sequence[str]) -> list[str]:
    """The chain with every PRECEDENCE pair in order (their two slots are swapped when reversed)."""
    chain = list(chain)
    for first, second in PRECEDENCE:
        if first in chain and second in chain:
            i, j = chain.index(first), chain.index(second)
            if i > j:
                chain[i], chain[j] = chain[j], chain[i]
    return chain


def subtask_distance(qpos: np.ndarray, name: str) -> float:
    """Distance of a sub-task's joints from its goal (completed below COMPLETION_THRESHOLD)."""
    return float(np.linalg.norm(qpos[SUBTASK_QPOS[name]] - np.asarray(SUBTASK_GOALS[name])))


class KitchenSkillEnv(gym.Env):
    """FrankaKitchen-v1 with a flat ``state`` observation, target-task or play-chain bookkeeping.

    Args:
        tasks: the ordered target sub-tasks (target mode).
        mode: "target" or "play".
        allowed: sub-tasks a play chain may use (play mode; default all seven).
        n_play_subtasks: length of a play chain.
        terminate_on_success: end the episode once every sub-task of the episode is done.
        render_mode: None or "rgb_array" (gymnasium-robotics' default camera, ``image_size`` (H, W)).
        robot_noise_ratio / object_noise_ratio: the env's observation noise (its defaults).
        cameras: must stay empty (accepted so generic recorders can pass "no cameras").
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}

    def __init__(
        self,
        tasks: Sequence[str] = ("microwave", "kettle", "top burner", "light switch"),
        mode: str = "target",
        allowed: Sequence[str] | None = None,
        n_play_subtasks: int = 4,
        terminate_on_success: bool = True,
        render_mode: str | None = "rgb_array",
        robot_noise_ratio: float = 0.01,
        object_noise_ratio: float = 0.0005,
        image_size: Sequence[int] = (240, 320),
        cameras: Sequence[str] = (),
    ) -> None:
        from gymnasium_robotics.envs.franka_kitchen.kitchen_env import KitchenEnv

        if cameras:
            raise ValueError(f"the kitchen skill env observes the state only; got cameras {list(cameras)}")
        if mode not in ("play", "target"):
            raise ValueError(f"mode must be 'play' or 'target', got {mode!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.mode = mode
        self.target_tasks = check_subtasks(tasks)
        self.allowed = check_subtasks(allowed if allowed is not None else SUBTASKS)
        if mode == "play" and not 1 <= n_play_subtasks <= len(self.allowed):
            raise ValueError(f"n_play_subtasks must be in [1, {len(self.allowed)}], got {n_play_subtasks}")
        if mode == "target" and not self.target_tasks:
            raise ValueError("a target kitchen task needs at least one sub-task")
        self.n_play_subtasks = n_play_subtasks
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        height, width = (int(v) for v in image_size)
        self._sim = KitchenEnv(
            tasks_to_complete=list(SUBTASKS), terminate_on_tasks_completed=False,
            remove_task_when_completed=True, object_noise_ratio=object_noise_ratio,
            robot_noise_ratio=robot_noise_ratio, render_mode=render_mode, width=width, height=height,
        )
        self.model, self.data = self._sim.model, self._sim.data
        self.action_space = spaces.Box(-1.0, 1.0, (9,), np.float32)
        self.observation_space = spaces.Dict({
            "state": spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
            "qpos": spaces.Box(-np.inf, np.inf, (9,), np.float32),
            "positions": spaces.Box(-np.inf, np.inf, (len(POSITION_INDEX),), np.float32),
        })
        self.episode_tasks: list[str] = list(self.target_tasks)
        self.completed: list[str] = []  # every sub-task completed this episode, in order
        self.episode_rng = np.random.default_rng(0)
        self._obs = np.zeros(STATE_DIM)

    # ---- gymnasium API -----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.episode_rng = np.random.default_rng(self.np_random.integers(2**63 - 1))
        if self.mode == "play":
            order = self.np_random.permutation(len(self.allowed))[: self.n_play_subtasks]
            self.episode_tasks = respect_precedence([self.allowed[i] for i in order])
        else:
            self.episode_tasks = list(self.target_tasks)
        obs, _ = self._sim.reset(seed=int(self.np_random.integers(2**31 - 1)))
        self._obs = np.asarray(obs["observation"], dtype=np.float64)
        self.completed = []
        return self._observation(), self._info()

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(9), -1.0, 1.0)
        obs, _, _, _, _ = self._sim.step(action)
        self._obs = np.asarray(obs["observation"], dtype=np.float64)
        reward = 0.0
        for name in SUBTASKS:
            if name not in self.completed and subtask_distance(self.data.qpos, name) < COMPLETION_THRESHOLD:
                self.completed.append(name)
                reward += float(name in self.episode_tasks)
        info = self._info()
        terminated = bool(self.terminate_on_success and info["is_success"])
        return self._observation(), reward, terminated, False, info

    def render(self):
        return self._sim.render() if self.render_mode is not None else None

    def close(self):
        self._sim.close()

    # ---- bookkeeping -------------------------------------------------------------------------------
    def _observation(self) -> dict[str, np.ndarray]:
        return {"state": self._obs.astype(np.float32), "qpos": self._obs[:9].astype(np.float32),
                "positions": self._obs[POSITION_INDEX].astype(np.float32)}

    def _info(self) -> dict[str, Any]:
        done = [t for t in self.episode_tasks if t in self.completed]
        success = len(done) == len(self.episode_tasks)
        if self.mode == "play":  # a held-out sub-task done by accident spoils a "no-X" play episode
            success = success and all(t in self.allowed for t in self.completed)
        return {
            "subtasks_completed": len(done),
            "n_subtasks": len(self.episode_tasks),
            "completed": list(self.completed),
            "is_success": success,
            "instruction": ", ".join(self.episode_tasks),
        }

    def get_state(self) -> dict[str, Any]:
        """Simulator qpos/qvel/ctrl/time plus the episode's bookkeeping (plain numpy / python)."""
        return {"qpos": self.data.qpos.copy(), "qvel": self.data.qvel.copy(), "ctrl": self.data.ctrl.copy(),
                "time": float(self.data.time), "episode_tasks": list(self.episode_tasks),
                "completed": list(self.completed), "mode": self.mode}

    def set_state(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        if state.get("mode") != self.mode:
            raise ValueError(f"state is for mode {state.get('mode')!r}, this env runs {self.mode!r}")
        self.data.qpos[:] = state["qpos"]
        self.data.qvel[:] = state["qvel"]
        self.data.ctrl[:] = state["ctrl"]
        self.data.time = state["time"]
        mujoco.mj_forward(self.model, self.data)
        self._sim.robot_env._last_robot_qpos = self.data.qpos[:9].copy()
        self.episode_tasks = list(state["episode_tasks"])
        self.completed = list(state["completed"])
        robot = np.concatenate([self.data.qpos[:9], self.data.qvel[:9]])
        self._obs = np.concatenate([robot, self.data.qpos[9:], self.data.qvel[9:]])
        return self._observation()


# --------------------------------------------------------------------------------------------------
# Cartesian control through the Jacobian.
# --------------------------------------------------------------------------------------------------


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


class CartesianController:
    """End-effector pose control of the Franka by damped least squares on the site Jacobian.

    ``command(pos, rot, gripper)`` returns a 9-D action: arm joint velocities that move the
    ``end_effector`` site towards ``pos`` (and orientation ``rot``), saturated at ``max_speed`` m/s, plus
    a finger velocity (+1 opens, -1 closes). A null-space term keeps the arm near its start posture.
    """

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, max_speed: float = 0.6,
                 max_rot_speed: float = 2.0, kp: float = 6.0, kr: float = 4.0, damping: float = 0.05, dt: float = 0.08) -> None:
        self.model, self.data = model, data
        self.site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "end_effector")
        self.max_speed, self.max_rot_speed = max_speed, max_rot_speed
        self.kp, self.kr, self.damping = kp, kr, damping
        self.home = np.array([0.15, -1.4, 1.84, -2.3, 0.26, 1.2, 1.6])
        self.low = np.maximum(model.jnt_range[:ARM_DOF, 0], -2.85)
        self.high = np.minimum(model.jnt_range[:ARM_DOF, 1], 2.85)
        self.dt = dt
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    @property
    def pos(self) -> np.ndarray:
        return self.data.site_xpos[self.site].copy()

    def _solve(self, jac: np.ndarray, twist: np.ndarray) -> np.ndarray:
        """Damped least squares with a null-space pull to ``home``; joints that sit at a limit and would be
        pushed further are locked and the solve is repeated without them (they cannot help)."""
        q = self.data.qpos[:ARM_DOF]
        free = np.ones(ARM_DOF, dtype=bool)
        qdot = np.zeros(ARM_DOF)
        for _ in range(3):
            j = jac[:, free]
            jjt = j @ j.T + self.damping**2 * np.eye(len(twist))
            pinv = j.T @ np.linalg.inv(jjt)
            sub = pinv @ twist
            null = np.eye(int(free.sum())) - pinv @ j
            sub += null @ (0.5 * (self.home[free] - q[free]))
            qdot = np.zeros(ARM_DOF)
            qdot[free] = sub
            pushing = ((q < self.low + 0.05) & (qdot < 0)) | ((q > self.high - 0.05) & (qdot > 0))
            if not (pushing & free).any():
                break
            free &= ~pushing
        return qdot

    @property
    def rot(self) -> np.ndarray:
        return self.data.site_xmat[self.site].reshape(3, 3).copy()

    def joint_command(self, qdot: np.ndarray, gripper: float, max_speed: float = 1.2) -> np.ndarray:
        """Action for desired arm joint velocities (rad/s, saturated), with the same servo corrections."""
        qdot = np.clip(np.asarray(qdot, dtype=np.float64), -max_speed, max_speed)
        hold = self.data.qfrc_bias[:ARM_DOF] / (self.model.actuator_gainprm[:ARM_DOF, 0] * self.dt)
        action = np.zeros(9)
        action[:ARM_DOF] = (qdot / SERVO_EFFICIENCY + hold) / ACTION_SCALE
        action[ARM_DOF:] = gripper
        return np.clip(action, -1.0, 1.0)

    def command(self, pos: np.ndarray, rot: np.ndarray | None, gripper: float,
                speed: float | None = None) -> np.ndarray:
        mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site)
        err = np.asarray(pos) - self.pos
        vel = self.kp * err
        limit = self.max_speed if speed is None else speed
        norm = np.linalg.norm(vel)
        if norm > limit:
            vel *= limit / norm
        if rot is not None:
            omega = self.kr * rotation_error(rot, self.rot)
            norm = np.linalg.norm(omega)
            if norm > self.max_rot_speed:
                omega *= self.max_rot_speed / norm
            jac = np.vstack([self._jacp[:, :ARM_DOF], self._jacr[:, :ARM_DOF]])
            twist = np.concatenate([vel, omega])
        else:
            jac, twist = self._jacp[:, :ARM_DOF], vel
        qdot = self._solve(jac, twist)
        # The actuators are position servos: holding against gravity needs the set-point offset by
        # bias / gain, which we ask for as a velocity over one control period (removes the sag).
        hold = self.data.qfrc_bias[:ARM_DOF] / (self.model.actuator_gainprm[:ARM_DOF, 0] * self.dt)
        action = np.zeros(9)
        action[:ARM_DOF] = (qdot / SERVO_EFFICIENCY + hold) / ACTION_SCALE
        action[ARM_DOF:] = gripper
        return np.clip(action, -1.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Scripted sub-task controllers.
# --------------------------------------------------------------------------------------------------

#: the gripper pointing forward (+y, towards the kitchen), fingers apart along x: the start orientation
R_FORWARD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
#: the gripper pointing forward with the fingers above and below each other (for horizontal bars)
R_SIDE = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
OPEN, CLOSE = 1.0, -1.0


class Phase:
    """One step of a sub-task script: a pose target computed from the simulator, a gripper command, and
    when to move on (target reached within ``tol`` metres, after ``min_steps``, or ``max_steps`` elapsed)."""

    def __init__(self, name: str, target, rot, gripper: float, tol: float = 0.02, min_steps: int = 0,
                 max_steps: int = 40, speed: float | None = None, done=None, latch: bool = False) -> None:
        self.name, self.target, self.rot, self.gripper, self.latch = name, target, rot, gripper, latch
        self.tol, self.min_steps, self.max_steps, self.speed, self.done = tol, min_steps, max_steps, speed, done


class SubtaskController(ABC):
    """Runs the phases of one sub-task in order; each phase re-reads the simulator every step.

    Subclasses define ``phases()``. After the sub-task's completion the controller releases and backs away
    (``retreat``), then reports ``finished``. ``jitter`` (metres) perturbs approach points per episode so
    recorded demonstrations are not all identical.
    """

    name = ""
    #: the script keeps going until the sub-task is this far inside the completion threshold
    margin = 0.12
    #: control steps spent opening the gripper before backing away, and where to back away to
    release_steps = 3
    retreat_offset = (0.0, -0.12, 0.04)

    def __init__(self, env: KitchenSkillEnv, ctrl: CartesianController, rng: np.random.Generator,
                 jitter: float = 0.0) -> None:
        self.env, self.ctrl, self.rng = env, ctrl, rng
        self.offset = rng.uniform(-jitter, jitter, size=3) if jitter > 0 else np.zeros(3)
        self.plan = self.phases()
        self.index, self.steps = 0, 0
        self.retreat_to: np.ndarray | None = None
        self.retreat_rot = R_FORWARD
        self.retreat_steps = 0
        self.finished = False
        self._latched = np.zeros(3)

    # geometry helpers
    def site(self, name: str) -> np.ndarray:
        return self.env.data.site_xpos[mujoco.mj_name2id(self.env.model, mujoco.mjtObj.mjOBJ_SITE, name)].copy()

    def qpos(self, index: int) -> float:
        return float(self.env.data.qpos[index])

    def completed(self) -> bool:
        return subtask_distance(self.env.data.qpos, self.name) < COMPLETION_THRESHOLD - self.margin

    @abstractmethod
    def phases(self) -> list[Phase]:
        """The sub-task's script, in order."""

    def act(self) -> np.ndarray:
        if self.retreat_to is not None or self.completed() or self.index >= len(self.plan):
            return self._retreat()
        phase = self.plan[self.index]
        if phase.latch:
            if self.steps == 0:
                self._latched = phase.target()
            target = self._latched
        else:
            target = phase.target()
        rot = phase.rot() if callable(phase.rot) else phase.rot
        action = self.ctrl.command(target, rot, phase.gripper, speed=phase.speed)
        self.steps += 1
        reached = np.linalg.norm(target - self.ctrl.pos) < phase.tol
        custom = phase.done() if phase.done is not None else reached
        if (custom and self.steps >= phase.min_steps) or self.steps >= phase.max_steps:
            self.index, self.steps = self.index + 1, 0
        return action

    def _retreat(self) -> np.ndarray:
        """Open the gripper and back off towards the robot, then hand over to the next sub-task."""
        if self.retreat_to is None:
            self.retreat_to = self.ctrl.pos + np.asarray(self.retreat_offset)
            self.retreat_rot = self.ctrl.rot
        self.retreat_steps += 1
        gripper = OPEN
        if self.retreat_steps <= self.release_steps:  # let go before moving
            return self.ctrl.command(self.ctrl.pos, self.retreat_rot, gripper)
        if self.retreat_steps > 15 or np.linalg.norm(self.retreat_to - self.ctrl.pos) < 0.03:
            self.finished = True
        return self.ctrl.command(self.retreat_to, self.retreat_rot, gripper)


class SlideCabinet(SubtaskController):
    """Straddle the sliding door's vertical handle with open fingers, close, and push it to the right."""

    name = "slide cabinet"

    def phases(self) -> list[Phase]:
        handle = lambda: self.site("slide_site") + self.offset * [0, 0, 1]  # noqa: E731
        return [
            Phase("pre", lambda: handle() + [0.0, -0.15, 0.0], R_FORWARD, OPEN, tol=0.03),
            Phase("approach", lambda: handle() + [0.0, -0.035, 0.0], R_FORWARD, OPEN, tol=0.01, max_steps=25),
            Phase("grasp", lambda: handle() + [0.0, -0.035, 0.0], R_FORWARD, CLOSE, min_steps=4, max_steps=4),
            Phase("slide", lambda: handle() + [0.12, -0.035, 0.0], R_FORWARD, CLOSE, max_steps=60, speed=0.3,
                  done=lambda: self.qpos(19) > 0.42),
        ]


class LightSwitch(SubtaskController):
    """Put the closed fingers to the right of the switch lever and sweep it to the left."""

    name = "light switch"

    def phases(self) -> list[Phase]:
        lever = lambda: self.site("light_site") + self.offset * [0, 0, 1]  # noqa: E731
        return [
            Phase("pre", lambda: lever() + [0.08, -0.14, 0.0], R_FORWARD, CLOSE, tol=0.03),
            Phase("approach", lambda: lever() + [0.08, -0.03, 0.0], R_FORWARD, CLOSE, tol=0.015, max_steps=25),
            Phase("sweep", lambda: lever() + [-0.12, -0.03, 0.0], R_FORWARD, CLOSE, max_steps=40, speed=0.25),
        ]


class Knob(SubtaskController):
    """Grasp an oven knob from the front and turn the wrist about the knob's axis (world y) by ``turn`` rad,
    past the goal angle (the knob slips a little in the fingers)."""

    site_name = ""
    joint = 0
    grip_depth = -0.065  # end-effector site in front of the knob's site: the knob's grip between the pads
    turn = 1.3

    def knob(self) -> np.ndarray:
        return self.site(self.site_name) + self.offset * [0.3, 0.0, 0.3]

    def phases(self) -> list[Phase]:
        grip = np.array([0.0, self.grip_depth, 0.0])
        turned = rot_y(self.turn) @ R_FORWARD
        return [
            Phase("pre", lambda: self.knob() + [0.0, -0.15, 0.0], R_FORWARD, OPEN, tol=0.02),
            Phase("approach", lambda: self.knob() + grip, R_FORWARD, OPEN, tol=0.008, max_steps=25),
            Phase("grasp", lambda: self.knob() + grip, R_FORWARD, CLOSE, min_steps=4, max_steps=4),
            Phase("turn", lambda: self.knob() + grip, turned, CLOSE, max_steps=30,
                  done=lambda: self.qpos(self.joint) < -1.0),
        ]


class BottomBurner(Knob):
    name, site_name, joint = "bottom burner", "knob2_site", 11


class TopBurner(Knob):
    name, site_name, joint = "top burner", "knob4_site", 15


class HingedDoor(SubtaskController):
    """Straddle a door's vertical handle, close, then walk the handle along its arc about the hinge,
    turning the hand with the door, until the door angle passes ``open_angle``. Approach and grasp are
    expressed in the door's frame, so a grasp that slips (fingers closed on nothing) restarts from the
    pre-grasp pose in front of the handle wherever the door now is."""

    handle_site = ""
    joint_name = ""
    joint = 0
    direction = 1.0  # +1: the door opens counter-clockwise seen from above
    open_angle = 0.0
    lead = 0.2  # rad ahead of the current door angle
    grip_depth = -0.005  # end-effector site relative to the handle along the approach: handle deep in the pads

    def hinge(self) -> np.ndarray:
        jid = mujoco.mj_name2id(self.env.model, mujoco.mjtObj.mjOBJ_JOINT, self.joint_name)
        return self.env.data.xanchor[jid].copy()

    def door_frame(self, extra: float = 0.0) -> np.ndarray:
        return rot_z(self.qpos(self.joint) + self.direction * extra)

    def handle(self) -> np.ndarray:
        return self.site(self.handle_site) + self.offset * [0, 0, 1]

    def phases(self) -> list[Phase]:
        grip = np.array([0.0, self.grip_depth, 0.0])

        def arc_target() -> np.ndarray:
            hinge = self.hinge()
            rel = self.handle() - hinge
            return hinge + rot_z(self.direction * self.lead) @ rel + self.door_frame() @ grip

        def opened() -> bool:
            return self.direction * self.qpos(self.joint) > self.open_angle

        return [
            Phase("pre", lambda: self.handle() + self.door_frame() @ [0.0, -0.12, 0.0],
                  lambda: self.door_frame() @ R_FORWARD, OPEN, tol=0.015),
            Phase("approach", lambda: self.handle() + self.door_frame() @ grip, lambda: self.door_frame() @ R_FORWARD,
                  OPEN, tol=0.008, max_steps=25, speed=0.25),
            Phase("grasp", lambda: self.handle() + self.door_frame() @ grip, lambda: self.door_frame() @ R_FORWARD,
                  CLOSE, min_steps=4, max_steps=4),
            Phase("open", arc_target, lambda: self.door_frame() @ R_FORWARD, CLOSE, max_steps=80,
                  speed=0.3, done=opened),
        ]

    def act(self) -> np.ndarray:
        fingers = self.env.data.qpos[7:9]
        if self.index == 3 and self.steps > 2 and float(fingers.sum()) < 0.006 and self.retreat_to is None:
            self.index, self.steps = 0, 0  # the handle slipped out: grasp again
        return super().act()


class Microwave(HingedDoor):
    name, handle_site, joint_name, joint = "microwave", "microhandle_site", "microwave", 22
    direction, open_angle = -1.0, 0.85


class HingeCabinet(HingedDoor):
    name, handle_site, joint_name, joint = "hinge cabinet", "hinge_site2", "right_hinge_cabinet", 21
    direction, open_angle = 1.0, 1.5


#: the kettle's handle axis (site) relative to the kettle's origin when it stands upright
HANDLE_FROM_KETTLE = np.array([-0.004, -0.002, 0.259])


class KettleToBackBurner(SubtaskController):
    """Grasp the kettle's handle bar from the front with the fingers above and below it, lift the kettle,
    carry it to the top-left burner and set it down.

    Clamping the horizontal bar between an upper and a lower finger makes the lower finger carry the
    kettle's weight; a grasp that squeezes the bar from the sides would rely on friction alone, and MuJoCo's
    soft contacts let it creep out."""

    name = "kettle"
    goal = np.array([-0.23, 0.75, 1.62])
    grip_depth = -0.005  # end-effector site relative to the bar along the approach: the bar deep in the pads
    lift = 0.08
    release_steps = 6
    retreat_offset = (0.0, -0.15, -0.006)  # straight back, the bar centred between the open fingers

    def completed(self) -> bool:
        """Only once the kettle has been set down (it counts as moved while still in the air)."""
        return self.index >= len(self.plan) and super().completed()

    def kettle(self) -> np.ndarray:
        return self.env.data.qpos[23:26].copy()

    def handle(self) -> np.ndarray:
        return self.site("kettle_site") + self.offset * [0.5, 0, 0]

    def phases(self) -> list[Phase]:
        grip = np.array([0.0, self.grip_depth, 0.0])
        up = np.array([0.0, 0.0, 1.0])

        def carry_target(dz: float):
            return lambda: self.goal + HANDLE_FROM_KETTLE + grip + up * dz

        return [
            Phase("pre", lambda: self.handle() + [0.0, -0.15, 0.0], R_SIDE, OPEN, tol=0.015),
            Phase("approach", lambda: self.handle() + grip, R_SIDE, OPEN, tol=0.008, max_steps=25, speed=0.25),
            Phase("grasp", lambda: self.handle() + grip, R_SIDE, CLOSE, min_steps=5, max_steps=5),
            Phase("lift", lambda: self.handle() + grip + up * self.lift, R_SIDE, CLOSE, tol=0.015, max_steps=20,
                  speed=0.2, latch=True),
            Phase("carry", carry_target(self.lift), R_SIDE, CLOSE, tol=0.015, max_steps=50, speed=0.2),
            Phase("lower", carry_target(0.0), R_SIDE, CLOSE, tol=0.01, max_steps=25, speed=0.15),
        ]


SUBTASK_CONTROLLERS: dict[str, type[SubtaskController]] = {
    cls.name: cls for cls in (Microwave, KettleToBackBurner, BottomBurner, TopBurner, LightSwitch, SlideCabinet,
                              HingeCabinet)
}


#: the arm's start posture (gymnasium-robotics' initial joint positions), restored between sub-tasks
HOME_QPOS = np.array([0.148, -1.768, 1.844, -2.477, 0.260, 0.713, 1.595])


class KitchenTeacher:
    """Chains the scripted sub-task controllers over the episode's sub-tasks (``env.episode_tasks``).

    A sub-task already completed (e.g. by accident) is skipped. Play episodes draw a per-episode speed
    and small approach offsets and add Gaussian action noise, so the task-agnostic data covers more
    than one motion; target-task demonstrations only get the small offsets.
    """

    def __init__(self, env: gym.Env, noise: float | None = None, jitter: float = 0.01) -> None:
        self.env = env
        self.fixed_noise = noise
        self.jitter = jitter
        self.rng = np.random.default_rng(0)
        self.queue: list[str] = []
        self.current: SubtaskController | None = None
        self.ctrl: CartesianController | None = None
        self.noise = 0.0

    @property
    def sim(self) -> KitchenSkillEnv:
        return self.env.unwrapped

    def reset(self) -> None:
        sim = self.sim
        self.rng = np.random.default_rng(sim.episode_rng.integers(2**63 - 1))
        play = sim.mode == "play"
        self.ctrl = CartesianController(sim.model, sim.data,
                                        max_speed=float(self.rng.uniform(0.45, 0.75)) if play else 0.6)
        self.noise = self.fixed_noise if self.fixed_noise is not None else (0.03 if play else 0.0)
        self.queue = list(sim.episode_tasks)
        self.current = None
        self.home_steps = 0

    def _go_home(self) -> np.ndarray | None:
        """Between sub-tasks: back to the start posture in joint space (None once there), so every sub-task
        script starts from the arm configuration it was written for, whatever the previous one left (a
        Cartesian move could arrive on another inverse-kinematics branch, e.g. with the wrist at its limit)."""
        q = self.sim.data.qpos[:ARM_DOF]
        err = HOME_QPOS - q
        if self.home_steps >= 40 or np.abs(err).max() < 0.08:
            return None
        self.home_steps += 1
        return self.ctrl.joint_command(err * 3.0, OPEN)

    def _next_controller(self) -> SubtaskController | None:
        while self.queue:
            name = self.queue.pop(0)
            if name not in self.sim.completed:
                return SUBTASK_CONTROLLERS[name](self.sim, self.ctrl, self.rng, jitter=self.jitter)
        return None

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.ctrl is None:
            raise RuntimeError("call reset() after env.reset() before act()")
        action = self._control()
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _control(self) -> np.ndarray:
        if self.current is not None and self.current.finished:
            action = self._go_home()
            if action is not None:
                return action
            self.current = None
        if self.current is None:
            self.current = self._next_controller()
            self.home_steps = 0
        if self.current is None:  # everything done: hold the pose
            return self.ctrl.command(self.ctrl.pos, self.ctrl.rot, OPEN)
        return self.current.act()
