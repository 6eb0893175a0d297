"""myCobot 320 digital twin (MuJoCo): move a cube from A to B, or to B2 when B is occupied.

The arm is a six-joint chain whose joint frames follow Elephant Robotics' published myCobot 320 M5
description (shoulder 0.173 m above the base, upper arm 0.136 m, forearm 0.120 m, wrist offsets
0.094 m and 0.055 m), so that joint angles mean the same thing as on the real robot: all zeros is the
upright "candle" pose with the flange 0.523 m above the base, which is the top of pymycobot's z range.
Links are capsules, the gripper is a parallel two-finger gripper (6 cm stroke). Joint limits are the
controller's (J1 +-168, J2 +-135, J3 +-145, J4 +-145, J5 +-168, J6 +-180 degrees).

Observation and action use the layout of :class:`lit_imit.robots.MyCobot320Robot`:

* ``qpos`` (7,) float32: six joint angles in radians and the gripper in [0, 1] (1 = open). The real
  adapter cannot read its gripper back and reports the last *command*; ``gripper_obs="commanded"``
  (the default) does the same here so that twin and robot observations agree, ``"measured"`` reports
  the finger opening instead.
* ``qvel`` (7,) float32 (the real robot has no such key; policies for the robot should use ``qpos`` only).
* ``images/<cam>`` (H, W, 3) uint8 RGB for each requested camera (``top``, ``front``, ``wrist``).
* action (7,): absolute joint targets in radians and the gripper command in [0, 1].

The twin applies the robot adapter's safety clamps to every action: joint limits, and (by default) at
most ``max_delta_deg`` = 5 degrees of change per step around the measured joints. What was actually
executed is ``env.last_action_sent`` and ``info["action_sent"]``.

Variants: ``"move"`` (pick the cube at A, place it on the green mark B), ``"occupied"`` (a blue block
stands on B; place on the yellow mark B2 instead) and ``"mixed"`` (B is occupied in half the episodes,
decided by the seed: the policy must look). A and B are jittered per episode from the seed.

The staged reward is 0-4: a finger touches the cube (1), the cube is lifted (2), the cube is over the
target (3), the cube rests released at the target (4 = ``info["is_success"]``).

The scripted state-feedback teacher lives in :mod:`lit_imit.envs.mycobot_teachers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import lit_imit.envs  # noqa: F401  (first: sets MUJOCO_GL and loads triton before mujoco)

import mujoco  # noqa: E402
import numpy as np
from gymnasium import spaces

from lit_imit.envs.mujoco_base import MujocoEnv
from lit_imit.envs.mycobot_limits import MYCOBOT320_JOINT_LIMITS_DEG

# ---------------------------------------------------------------------------------------------- constants
JOINT_LIMITS_DEG = np.array([hi for _, hi in MYCOBOT320_JOINT_LIMITS_DEG])  # symmetric limits: +-max
JOINT_LIMITS = np.deg2rad(JOINT_LIMITS_DEG)
ARM_DOF = 6
ACTION_DIM = 7
FINGER_STROKE = 0.03  # m each finger travels from closed (pads touch) to open (pads 6 cm apart)
CUBE_HALF = 0.015  # 3 cm cube
OBSTACLE_HALF = np.array([0.022, 0.022, 0.03])  # the block that occupies B
TIP_BELOW_TOOL = 0.015  # finger tips reach this far past the tool point
TOOL_FROM_FLANGE = 0.085  # tool point (between the pads) along the flange axis
PHYSICS_DT = 0.002
MAX_REWARD = 4
VARIANTS = ("move", "occupied", "mixed")
CAMERAS = ("top", "front", "wrist")

#: Start pose (degrees): the tool points straight down 0.16 m above the table at x = 0.22 m, y = 0.
#: Top-down grasps on the table reach 0.19-0.35 m from the base axis (J3's +-145 degree limit keeps
#: the arm from folding closer), so the places below lie 0.22-0.3 m out.
HOME_DEG = np.array([22.0, 4.0, -98.0, 4.0, 90.0, 22.0])
HOME_QPOS = np.deg2rad(HOME_DEG)

# Nominal places on the table (x forward from the base, y to the left), metres.
PLACE_A = np.array([0.22, -0.12])
PLACE_B = np.array([0.22, 0.12])
PLACE_B2 = np.array([0.29, 0.03])
JITTER_A = 0.02  # +- m on x and y
JITTER_B = 0.01
SUCCESS_TOLERANCE = 0.02  # m between the cube centre and the target, horizontally


def _look_at(position: Sequence[float], target: Sequence[float], up: Sequence[float]) -> str:
    """MJCF ``xyaxes`` of a camera at ``position`` looking at ``target`` (image up close to ``up``)."""
    forward = np.asarray(target, float) - np.asarray(position, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    image_up = np.cross(right, forward)
    return " ".join(f"{v:.5f}" for v in (*right, *image_up))


def _fmt(values: Sequence[float]) -> str:
    return " ".join(f"{float(v):.5g}" for v in values)


def build_mjcf() -> str:
    """The scene as an MJCF string: table, myCobot 320 with a parallel gripper, cube, marks, obstacle.

    Frames of the arm (body ``pos``/``euler``, extrinsic XYZ like URDF rpy) follow the published
    myCobot 320 M5 description; the geometry around them is a coarse capsule model. Arm geoms collide
    with the world (table, cube, obstacle) but not with each other (contype 2 / conaffinity 1).
    Bodies of the arm are gravity-compensated, as the servos' own position loops hold them in place.
    """
    lo = [-x for x in JOINT_LIMITS]
    hi = list(JOINT_LIMITS)
    top = _look_at((0.34, 0.0, 0.5), (0.23, 0.0, 0.0), (1.0, 0.0, 0.0))
    front = _look_at((0.62, 0.0, 0.32), (0.15, 0.0, 0.04), (0.0, 0.0, 1.0))
    # kp per joint (N m / rad) and torque limits (N m): stiff shoulder/elbow, lighter wrist.
    kp = (400, 400, 300, 100, 100, 60)
    torque = (30, 30, 20, 8, 8, 5)
    arm_actuators = "\n".join(
        f'    <position name="a{i + 1}" joint="j{i + 1}" kp="{kp[i]}" dampratio="1" '
        f'ctrlrange="{lo[i]:.9f} {hi[i]:.9f}" forcerange="-{torque[i]} {torque[i]}"/>'
        for i in range(ARM_DOF)
    )

    def joint(i: int) -> str:
        armature = 0.05 if i < 3 else 0.01
        return (f'<joint name="j{i + 1}" axis="0 0 1" range="{lo[i]:.9f} {hi[i]:.9f}" '
                f'armature="{armature}" damping="0.5"/>')

    return f"""
<mujoco model="mycobot320_move_cube">
  <compiler angle="radian" eulerseq="XYZ" autolimits="true"/>
  <option timestep="{PHYSICS_DT}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5" specular="0.1 0.1 0.1"/>
    <global offwidth="640" offheight="480"/>
  </visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.62 0.66 0.72" rgb2="0.25 0.26 0.3"
             width="64" height="64"/>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.55 0.5 0.45" rgb2="0.5 0.46 0.41"
             width="256" height="256"/>
    <material name="table" texture="grid" texrepeat="6 6"/>
    <material name="arm" rgba="0.92 0.92 0.92 1"/>
    <material name="joint" rgba="0.25 0.25 0.28 1"/>
  </asset>
  <default>
    <default class="robot">
      <geom contype="2" conaffinity="1" material="arm" friction="0.8 0.01 0.001"/>
    </default>
    <default class="world">
      <geom contype="1" conaffinity="1" friction="1 0.01 0.001"/>
    </default>
    <default class="mark">
      <geom type="box" contype="0" conaffinity="0" group="2"/>
    </default>
  </default>
  <worldbody>
    <light name="sun" pos="0.3 -0.3 1.2" dir="-0.2 0.2 -1" directional="true" diffuse="0.6 0.6 0.6" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="2 2 0.1" rgba="0.3 0.3 0.32 1" contype="1" conaffinity="1"/>
    <geom name="table" class="world" type="box" pos="0.15 0 -0.02" size="0.4 0.45 0.02" material="table"/>
    <camera name="top" pos="0.34 0 0.5" xyaxes="{top}" fovy="52"/>
    <camera name="front" pos="0.62 0 0.32" xyaxes="{front}" fovy="50"/>
    <body name="mark_b" pos="{_fmt(PLACE_B)} 0.0005">
      <geom name="mark_b" class="mark" size="0.025 0.025 0.0005" rgba="0.2 0.7 0.25 1"/>
    </body>
    <body name="mark_b2" pos="{_fmt(PLACE_B2)} 0.0005">
      <geom name="mark_b2" class="mark" size="0.025 0.025 0.0005" rgba="0.9 0.8 0.15 1"/>
    </body>
    <body name="obstacle" pos="0 0 -2">
      <geom name="obstacle" class="world" type="box" size="{_fmt(OBSTACLE_HALF)}" rgba="0.15 0.3 0.85 1"/>
    </body>
    <geom name="base" class="robot" type="cylinder" pos="0 0 0.055" size="0.06 0.055"/>
    <body name="link1" pos="0 0 0.173" gravcomp="1">
      {joint(0)}
      <geom class="robot" type="cylinder" pos="0 0 -0.03" size="0.045 0.035" mass="0.6"/>
      <geom class="robot" type="capsule" fromto="0 0 0 0 -0.05 0" size="0.04" material="joint"/>
      <body name="link2" pos="0 -0.086 0" euler="0 -1.5708 1.5708" gravcomp="1">
        {joint(1)}
        <geom class="robot" type="capsule" fromto="0 0 -0.035 0.13635 0 -0.045" size="0.032" mass="0.6"/>
        <body name="link3" pos="0.13635 0 -0.086" gravcomp="1">
          {joint(2)}
          <geom class="robot" type="capsule" fromto="0 0 0.02 0.1195 0 0.03" size="0.028" mass="0.4"/>
          <geom class="robot" type="cylinder" pos="0.1195 0 0.06" size="0.027 0.025" material="joint"/>
          <body name="link4" pos="0.1195 0 0.082" euler="0 0 1.5708" gravcomp="1">
            {joint(3)}
            <geom class="robot" type="capsule" fromto="0 0 0 0 -0.07 0" size="0.026" mass="0.25"/>
            <body name="link5" pos="0 -0.09415 0" euler="1.5708 0 0" gravcomp="1">
              {joint(4)}
              <geom class="robot" type="capsule" fromto="0 0 0 0 0.035 0" size="0.025" mass="0.2" material="joint"/>
              <body name="link6" pos="0 0.055 0" euler="-1.5708 0 0" gravcomp="1">
                {joint(5)}
                <geom class="robot" type="cylinder" pos="0 0 -0.005" size="0.025 0.006" mass="0.05" material="joint"/>
                <body name="gripper" pos="0 0 0" gravcomp="1">
                  <geom name="gripper_base" class="robot" type="box" pos="0 0 0.02" size="0.045 0.02 0.02" mass="0.2"/>
                  <site name="tool" pos="0 0 {TOOL_FROM_FLANGE}" size="0.004" rgba="1 0 1 0.5" group="3"/>
                  <camera name="wrist" pos="0 0.045 0.03" xyaxes="1 0 0 0 -0.94 -0.34" fovy="75"/>
                  <body name="finger_left" pos="0 0 0.04" gravcomp="1">
                    <joint name="finger_left" type="slide" axis="1 0 0" range="0 {FINGER_STROKE}"
                           damping="2" armature="0.01"/>
                    <geom name="pad_left" class="robot" type="box" pos="0.004 0 0.025" size="0.004 0.012 0.025"
                          mass="0.02" friction="1.2 0.02 0.001" condim="4" material="joint"/>
                  </body>
                  <body name="finger_right" pos="0 0 0.04" gravcomp="1">
                    <joint name="finger_right" type="slide" axis="-1 0 0" range="0 {FINGER_STROKE}"
                           damping="2" armature="0.01"/>
                    <geom name="pad_right" class="robot" type="box" pos="-0.004 0 0.025" size="0.004 0.012 0.025"
                          mass="0.02" friction="1.2 0.02 0.001" condim="4" material="joint"/>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>
    <body name="cube" pos="{_fmt(PLACE_A)} {CUBE_HALF}">
      <freejoint name="cube"/>
      <geom name="cube" class="world" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" mass="0.03"
            rgba="0.85 0.15 0.12 1" condim="4" friction="1 0.02 0.001"/>
    </body>
  </worldbody>
  <actuator>
{arm_actuators}
    <position name="grip_left" joint="finger_left" kp="300" dampratio="1" ctrlrange="0 {FINGER_STROKE}"
              forcerange="-6 6"/>
    <position name="grip_right" joint="finger_right" kp="300" dampratio="1" ctrlrange="0 {FINGER_STROKE}"
              forcerange="-6 6"/>
  </actuator>
</mujoco>
"""


# ---------------------------------------------------------------------------------------------- the environment
@dataclass
class Layout:
    """Where things are in one episode (sampled at reset, part of the state)."""

    cube_xy: np.ndarray
    cube_yaw: float
    b_xy: np.ndarray
    b2_xy: np.ndarray
    occupied: bool

    @property
    def target_xy(self) -> np.ndarray:
        return self.b2_xy if self.occupied else self.b_xy

    def to_dict(self) -> dict[str, Any]:
        return {"cube_xy": self.cube_xy.tolist(), "cube_yaw": float(self.cube_yaw), "b_xy": self.b_xy.tolist(),
                "b2_xy": self.b2_xy.tolist(), "occupied": bool(self.occupied)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Layout":
        return cls(np.asarray(d["cube_xy"], float), float(d["cube_yaw"]), np.asarray(d["b_xy"], float),
                   np.asarray(d["b2_xy"], float), bool(d["occupied"]))


def sample_layout(rng: np.random.Generator, variant: str, occupied: bool | None = None) -> Layout:
    """A (seeded) episode layout: A jittered +-2 cm with any yaw, B +-1 cm, B2 +-1 cm."""
    if occupied is None:
        occupied = {"move": False, "occupied": True}.get(variant)
        if occupied is None:  # mixed
            occupied = bool(rng.random() < 0.5)
    cube_xy = PLACE_A + rng.uniform(-JITTER_A, JITTER_A, 2)
    cube_yaw = float(rng.uniform(-np.pi / 4, np.pi / 4))
    b_xy = PLACE_B + rng.uniform(-JITTER_B, JITTER_B, 2)
    b2_xy = PLACE_B2 + rng.uniform(-JITTER_B, JITTER_B, 2)
    return Layout(cube_xy, cube_yaw, b_xy, b2_xy, bool(occupied))


class MyCobotMoveCubeEnv(MujocoEnv):
    """myCobot 320 twin: pick the cube at A and place it at B (or B2 when B is occupied).

    Args:
        variant: ``"move"``, ``"occupied"`` or ``"mixed"`` (see the module docstring).
        cameras: camera names among ``top``, ``front``, ``wrist``; ``()`` for none (fast, state only).
        image_size: (height, width) of the camera images.
        control_hz: control rate; the real adapter's default is 20 Hz.
        max_delta_deg: largest joint change per step around the measured joints, as the real adapter's
            ``max_delta_deg`` (None disables the cap).
        gripper_obs: ``"commanded"`` (what the real adapter reports) or ``"measured"``.
        gripper_speed: m/s at which each finger's target follows a command (the 320's gripper takes about
            half a second for its full stroke).
        terminate_on_success: end the episode at the first successful step.
        env_state: add ``env_state`` to the observation: the cube's pose (x, y, z, qw, qx, qy, qz) and the
            target position (x, y, z), 10 values, the low-dimensional observation of state-based policies.
        camera_fovy: vertical fields of view in degrees by camera name (e.g. ``{"top": 40}``), replacing the
            MJCF's; the recording and the rollouts must use the same.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, variant: str = "move", cameras: Sequence[str] = ("top",),
                 image_size: Sequence[int] = (240, 320), control_hz: float = 20.0,
                 render_mode: str | None = "rgb_array", max_delta_deg: float | None = 5.0,
                 gripper_obs: str = "commanded", gripper_speed: float = 0.06,
                 terminate_on_success: bool = False, env_state: bool = False,
                 camera_fovy: Mapping[str, float] | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
        self._check_render_mode(render_mode)
        if gripper_obs not in ("commanded", "measured"):
            raise ValueError(f"gripper_obs must be 'commanded' or 'measured', got {gripper_obs!r}")
        if not control_hz > 0 or PHYSICS_DT * control_hz > 1:
            raise ValueError(f"control_hz must be in (0, {1 / PHYSICS_DT:g}], got {control_hz}")
        if max_delta_deg is not None and not max_delta_deg > 0:
            raise ValueError(f"max_delta_deg must be positive or None, got {max_delta_deg}")
        self.variant = variant
        self.render_mode = render_mode
        self.control_hz = float(control_hz)
        self.dt = 1.0 / self.control_hz
        self.n_substeps = max(1, int(round(self.dt / PHYSICS_DT)))
        self.max_delta = None if max_delta_deg is None else float(np.deg2rad(max_delta_deg))
        self.gripper_obs = gripper_obs
        self.gripper_speed = float(gripper_speed)
        self.terminate_on_success = bool(terminate_on_success)
        self.env_state = bool(env_state)
        self.metadata = {**self.metadata, "render_fps": int(round(self.control_hz))}
        self.model = mujoco.MjModel.from_xml_string(build_mjcf())
        self.data = mujoco.MjData(self.model)
        self._setup_cameras(cameras, image_size, camera_fovy)
        self._index_model()
        self.action_space = spaces.Box(np.append(-JOINT_LIMITS, 0.0).astype(np.float32),
                                       np.append(JOINT_LIMITS, 1.0).astype(np.float32), dtype=np.float32)
        self.observation_space = self._make_observation_space(ACTION_DIM, 10)
        self.layout = sample_layout(np.random.default_rng(0), variant)
        self._gripper_cmd = 1.0
        self.last_action_sent = np.append(HOME_QPOS, 1.0).astype(np.float32)
        self._steps = 0
        self._max_reward = 0

    # ---- construction helpers --------------------------------------------------------------------
    @property
    def env_label(self) -> str:
        return "the myCobot twin"

    @property
    def state_task(self) -> str:
        return "mycobot_move_cube"

    def _index_model(self) -> None:
        m = self.model
        self._arm_qpos = np.array([m.jnt_qposadr[m.joint(f"j{i + 1}").id] for i in range(ARM_DOF)])
        self._arm_dof = np.array([m.jnt_dofadr[m.joint(f"j{i + 1}").id] for i in range(ARM_DOF)])
        self._finger_qpos = np.array([m.jnt_qposadr[m.joint(n).id] for n in ("finger_left", "finger_right")])
        self._finger_dof = np.array([m.jnt_dofadr[m.joint(n).id] for n in ("finger_left", "finger_right")])
        cube = m.joint("cube").id
        self._cube_qpos = slice(int(m.jnt_qposadr[cube]), int(m.jnt_qposadr[cube]) + 7)
        self._cube_dof = slice(int(m.jnt_dofadr[cube]), int(m.jnt_dofadr[cube]) + 6)
        self._arm_ctrl = np.array([m.actuator(f"a{i + 1}").id for i in range(ARM_DOF)])
        self._grip_ctrl = np.array([m.actuator(n).id for n in ("grip_left", "grip_right")])
        self._tool_site = m.site("tool").id
        self._geom = {name: m.geom(name).id for name in ("cube", "table", "obstacle", "pad_left", "pad_right")}
        self._robot_geoms = {i for i in range(m.ngeom) if m.geom_contype[i] == 2}
        self._bodies = {name: m.body(name).id for name in ("mark_b", "mark_b2", "obstacle")}

    # ---- gymnasium API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Home pose, gripper open, a seeded layout. ``options={"occupied": bool}`` forces B's state
        (in any variant), ``options={"layout": Layout}`` a whole layout, ``options={"arm_qpos": (6,) rad,
        "gripper": [0, 1]}`` another start pose (replaying a recording that began elsewhere)."""
        super().reset(seed=seed)
        options = options or {}
        start = HOME_QPOS if options.get("arm_qpos") is None else np.asarray(options["arm_qpos"], dtype=np.float64)
        if start.shape != (ARM_DOF,) or not np.all(np.isfinite(start)):
            raise ValueError(f"arm_qpos must be {ARM_DOF} finite joint angles in radians, got {options['arm_qpos']!r}")
        start = np.clip(start, -JOINT_LIMITS, JOINT_LIMITS)
        gripper = float(np.clip(options.get("gripper", 1.0), 0.0, 1.0))
        layout = options.get("layout")
        if layout is None:
            layout = sample_layout(self.np_random, self.variant, options.get("occupied"))
        self._apply_layout(layout)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[self._arm_qpos] = start
        d.ctrl[self._arm_ctrl] = start
        d.qpos[self._finger_qpos] = gripper * FINGER_STROKE
        d.ctrl[self._grip_ctrl] = gripper * FINGER_STROKE
        half_turn = np.array([np.cos(layout.cube_yaw / 2), 0.0, 0.0, np.sin(layout.cube_yaw / 2)])
        d.qpos[self._cube_qpos] = np.concatenate([[*layout.cube_xy, CUBE_HALF], half_turn])
        mujoco.mj_forward(m, d)
        self._gripper_cmd = gripper
        self.last_action_sent = np.append(start, gripper).astype(np.float32)
        self._steps = 0
        self._max_reward = 0
        return self._observation(), self._info(0)

    def _apply_layout(self, layout: Layout) -> None:
        """Move the static marks and the obstacle (model data: not part of MuJoCo's integration state)."""
        self.layout = layout
        m = self.model
        m.body_pos[self._bodies["mark_b"]][:2] = layout.b_xy
        m.body_pos[self._bodies["mark_b2"]][:2] = layout.b2_xy
        obstacle = self._bodies["obstacle"]
        if layout.occupied:
            m.body_pos[obstacle] = [*layout.b_xy, OBSTACLE_HALF[2]]
        else:
            m.body_pos[obstacle] = [0.0, 0.0, -2.0]  # parked below the floor: unseen, touches nothing

    def step(self, action):
        sent = self.clamp_action(action)
        before = self.get_state()
        d = self.data
        d.ctrl[self._arm_ctrl] = sent[:ARM_DOF]
        self._gripper_cmd = float(sent[ARM_DOF])
        goal = self._gripper_cmd * FINGER_STROKE
        step = self.gripper_speed * self.dt / self.n_substeps
        for _ in range(self.n_substeps):
            current = d.ctrl[self._grip_ctrl[0]]
            d.ctrl[self._grip_ctrl] = current + np.clip(goal - current, -step, step)
            mujoco.mj_step(self.model, d)
        if not self._physics_is_finite():
            return self._diverged(before, "non-finite state after mj_step")
        self.last_action_sent = sent
        self._steps += 1
        reward = self.reward_stage()
        self._max_reward = max(self._max_reward, reward)
        info = self._info(reward)
        terminated = self.terminate_on_success and info["is_success"]
        return self._observation(), float(reward), bool(terminated), False, info

    def clamp_action(self, action) -> np.ndarray:
        """The action the twin executes: the real adapter's checks and clamps, in the same order.

        Rejects wrong shapes and non-finite values (``ValueError``, nothing executed), clamps joints to
        their limits, then each joint's change to ``max_delta_deg`` around the measured joints, and the
        gripper to [0, 1] on the adapter's 0..100 integer grid.
        """
        if hasattr(action, "detach"):
            action = action.detach().cpu().numpy()
        a = np.asarray(action, dtype=np.float64)
        if a.shape == (1, ACTION_DIM):
            a = a[0]
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"myCobot action must have shape ({ACTION_DIM},) = 6 joints [rad] + gripper, "
                             f"got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"myCobot action has non-finite entries: {a.tolist()}; nothing was executed")
        joints = np.clip(a[:ARM_DOF], -JOINT_LIMITS, JOINT_LIMITS)
        if self.max_delta is not None:
            measured = self.data.qpos[self._arm_qpos]
            joints = np.clip(joints, measured - self.max_delta, measured + self.max_delta)
            joints = np.clip(joints, -JOINT_LIMITS, JOINT_LIMITS)
        gripper = np.round(np.clip(a[ARM_DOF], 0.0, 1.0) * 100.0) / 100.0
        return np.append(joints, gripper).astype(np.float32)

    # ---- observation, reward, info ---------------------------------------------------------------
    def _observation(self) -> dict[str, np.ndarray]:
        d = self.data
        qpos = np.empty(ACTION_DIM, dtype=np.float32)
        qpos[:ARM_DOF] = d.qpos[self._arm_qpos]
        qpos[ARM_DOF] = self._gripper_cmd if self.gripper_obs == "commanded" else self.gripper_opening()
        qvel = np.empty(ACTION_DIM, dtype=np.float32)
        qvel[:ARM_DOF] = d.qvel[self._arm_dof]
        qvel[ARM_DOF] = d.qvel[self._finger_dof].mean() / FINGER_STROKE
        obs = {"qpos": qpos, "qvel": qvel}
        if self.env_state:
            obs["env_state"] = np.concatenate([self.cube_pose(), self.target_position()]).astype(np.float32)
        for cam in self.cameras:
            obs[f"images/{cam}"] = self._render_camera(cam)
        return obs

    def _info(self, reward: int) -> dict[str, Any]:
        return {"reward_stage": int(reward), "max_reward": int(self._max_reward), "is_success": reward == MAX_REWARD,
                "occupied": self.layout.occupied, "action_sent": self.last_action_sent.copy()}

    def reward_stage(self) -> int:
        """0-4: touched (1), lifted (2), over the target (3), resting released at the target (4)."""
        contacts = self.contacts()
        cube, table = self._geom["cube"], self._geom["table"]
        pads = {self._geom["pad_left"], self._geom["pad_right"]}
        touched = any(frozenset((cube, p)) in contacts for p in pads)
        robot_touch = any(frozenset((cube, g)) in contacts for g in self._robot_geoms)
        on_table = frozenset((cube, table)) in contacts
        pos = self.cube_pose()[:3]
        over_target = np.linalg.norm(pos[:2] - self.layout.target_xy) < SUCCESS_TOLERANCE
        resting = float(np.linalg.norm(self.data.qvel[self._cube_dof][:3])) < 0.05
        if over_target and on_table and not robot_touch and resting and pos[2] < CUBE_HALF + 0.005:
            return 4
        if over_target and (touched or on_table):
            return 3
        if touched and not on_table:
            return 2
        return 1 if touched else 0

    # ---- privileged state (teachers, tests, interactive learning) ---------------------------------
    @property
    def arm_qpos(self) -> np.ndarray:
        return self.data.qpos[self._arm_qpos].copy()

    def cube_pose(self) -> np.ndarray:
        """(x, y, z, qw, qx, qy, qz) of the cube."""
        return self.data.qpos[self._cube_qpos].copy()

    def target_position(self) -> np.ndarray:
        """Where the cube should end up: (x, y, z of the resting cube centre)."""
        return np.array([*self.layout.target_xy, CUBE_HALF])

    def tool_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """World position and rotation of the tool point (between the pads; z points out of the flange,
        x along the finger travel)."""
        d = self.data
        return d.site_xpos[self._tool_site].copy(), d.site_xmat[self._tool_site].reshape(3, 3).copy()

    def gripper_opening(self) -> float:
        """Measured opening, normalised (0 = pads touch, 1 = fully open)."""
        return float(self.data.qpos[self._finger_qpos].mean() / FINGER_STROKE)

    def contacts(self) -> set[frozenset[int]]:
        """Geom id pairs in contact now."""
        d = self.data
        return {frozenset(pair) for pair in d.contact.geom[: d.ncon].tolist()}

    def touching(self, a: str, b: str) -> bool:
        """Do the geoms named ``a`` and ``b`` touch now (e.g. ``touching("cube", "pad_left")``)?"""
        return frozenset((self.model.geom(a).id, self.model.geom(b).id)) in self.contacts()

    def _extra_state(self) -> dict[str, Any]:
        """The layout (marks and obstacle are model data, outside MuJoCo's integration state), the gripper
        command the fingers' targets follow and the last executed action."""
        return {"variant": self.variant, "layout": self.layout.to_dict(), "gripper_cmd": float(self._gripper_cmd),
                "last_action_sent": self.last_action_sent.copy()}

    def _restore_extra_state(self, state: dict[str, Any]) -> None:
        self._apply_layout(Layout.from_dict(state["layout"]))
        self._gripper_cmd = float(state["gripper_cmd"])
        self.last_action_sent = np.asarray(state["last_action_sent"], dtype=np.float32).copy()
