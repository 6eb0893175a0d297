"""Bimanual ViperX (ALOHA) simulation tasks.

The scene (two ViperX 300 6-DoF arms, table, cube or peg/socket) is gym-aloha's shipped MJCF, loaded
from the installed ``gym_aloha/assets`` directory (Apache-2.0) without importing ``gym_aloha`` itself.
Conventions follow ACT's joint-control sim envs: 50 Hz control, 14-D absolute joint actions
``[left arm (6), left gripper (1), right arm (6), right gripper (1)]`` with normalised grippers
(0 = closed, 1 = open, un-normalised to symmetric finger positions), staged reward 0-4 from contacts.

The scripted state-feedback teachers of these tasks live in :mod:`lit_imit.envs.aloha_teachers`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import lit_imit.envs  # noqa: F401  (first: sets MUJOCO_GL and loads triton before mujoco/dm_control)

import mujoco  # noqa: E402
import numpy as np
from dm_control import mujoco as dm_mujoco
from dm_control.rl.control import PhysicsError
from gymnasium import spaces

from lit_imit.envs.mujoco_base import MujocoEnv

DT = 0.02  # control period (50 Hz), as in ACT
MAX_REWARD = 4
# Per arm: waist, shoulder, elbow, forearm_roll, wrist_angle, wrist_rotate, left finger, right finger.
START_ARM_POSE = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.02239, -0.02239] * 2)
# ACT's "puppet" finger positions that normalised gripper values 0 (closed) and 1 (open) map to.
GRIPPER_POSITION_CLOSE = 0.01844
GRIPPER_POSITION_OPEN = 0.05800
SIDES = ("left", "right")
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
ARM_DOF = len(ARM_JOINTS)
QPOS_PER_ARM = ARM_DOF + 2  # six joints + two finger slides
ACTION_DIM = 2 * (ARM_DOF + 1)


def normalize_gripper_position(finger_position: np.ndarray | float) -> np.ndarray | float:
    """Finger slide position (m) -> normalised gripper opening (0 closed, 1 open)."""
    return (finger_position - GRIPPER_POSITION_CLOSE) / (GRIPPER_POSITION_OPEN - GRIPPER_POSITION_CLOSE)


def unnormalize_gripper_position(normalized: np.ndarray | float) -> np.ndarray | float:
    """Normalised gripper opening -> finger slide position (m); the MJCF clamps it to its ctrlrange."""
    return GRIPPER_POSITION_CLOSE + normalized * (GRIPPER_POSITION_OPEN - GRIPPER_POSITION_CLOSE)


def aloha_assets_dir() -> Path:
    """Directory of gym-aloha's MJCF and meshes, found without importing gym_aloha (no side effects)."""
    spec = importlib.util.find_spec("gym_aloha")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the ALOHA envs need gym-aloha for its MJCF assets: pip install gym-aloha")
    assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
    if not assets.is_dir():
        raise FileNotFoundError(f"gym-aloha is installed but has no assets directory at {assets}")
    return assets


def finger_geom(side: str, finger: str) -> str:
    return f"vx300s_{side}/10_{finger}_gripper_finger"


# --------------------------------------------------------------------------------------------------
# Tasks: MJCF file, movable objects, placement sampling and the staged reward.
# --------------------------------------------------------------------------------------------------


class ContactSet:
    """The geom pairs in contact at one instant, queried by geom names (unordered)."""

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData):
        self.model = model
        self.pairs = {frozenset(pair) for pair in data.contact.geom[: data.ncon].tolist()}

    def _ids(self, names: str | Sequence[str]) -> list[int]:
        ids = []
        for name in (names,) if isinstance(names, str) else names:
            geom_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, name)
            if geom_id < 0:
                raise ValueError(f"no geom named {name!r} in this model")
            ids.append(geom_id)
        return ids

    def touching(self, a: str | Sequence[str], b: str | Sequence[str]) -> bool:
        """True if any geom named in ``a`` touches any geom named in ``b``."""
        return any(frozenset((x, y)) in self.pairs for x in self._ids(a) for y in self._ids(b))

    def names(self) -> set[frozenset[str]]:
        """All touching pairs by name (for debugging and logs)."""
        return {frozenset(self.model.geom(i).name for i in pair) for pair in self.pairs}


SOCKET_WALLS = ("socket-1", "socket-2", "socket-3", "socket-4")


def transfer_cube_reward(contacts: ContactSet) -> int:
    """ACT's stages: right finger touches the box (1), lifted (2), left finger touches (3), left touches
    and the box is off the table (4). ACT checks one finger geom per arm; so do we, so that success rates
    stay comparable with ACT's."""
    right = contacts.touching("red_box", finger_geom("right", "right"))
    left = contacts.touching("red_box", finger_geom("left", "left"))
    on_table = contacts.touching("red_box", "table")
    if left:
        return 3 if on_table else 4
    if right:
        return 1 if on_table else 2
    return 0


def insertion_reward(contacts: ContactSet) -> int:
    """ACT's stages: both grippers touch (1), both objects lifted (2), peg touches the socket while
    lifted (3), peg touches the pin inside the socket (4)."""
    right = contacts.touching("red_peg", finger_geom("right", "right"))
    left = contacts.touching(SOCKET_WALLS, finger_geom("left", "left"))
    lifted = not contacts.touching("red_peg", "table") and not contacts.touching(SOCKET_WALLS, "table")
    if contacts.touching("red_peg", "pin"):
        return 4
    if contacts.touching("red_peg", SOCKET_WALLS) and lifted:
        return 3
    if left and right:
        return 2 if lifted else 1
    return 0


#: (x range, y range) of each object's uniform spawn box, in draw order: the original ACT sim's
#: ``sample_box_pose`` and ``sample_insertion_pose``
Box2D = tuple[tuple[float, float], tuple[float, float]]
CUBE_SPAWN: dict[str, Box2D] = {"box": ((0.0, 0.2), (0.4, 0.6))}
PEG_AND_SOCKET_SPAWN: dict[str, Box2D] = {"peg": ((0.1, 0.2), (0.4, 0.6)), "socket": ((-0.2, -0.1), (0.4, 0.6))}
#: where a shifted spawn box may lie: the tabletop mesh (x -0.61..0.61, y 0.22..0.98) less 5 cm at each edge
TABLE_XY: Box2D = ((-0.56, 0.56), (0.27, 0.93))


def _upright_pose(rng: np.random.Generator, x: tuple[float, float], y: tuple[float, float]) -> np.ndarray:
    """Uniform position in the box (z = 0.05, objects drop onto the table), identity orientation (wxyz)."""
    return np.array([rng.uniform(*x), rng.uniform(*y), 0.05, 1.0, 0.0, 0.0, 0.0])


@dataclass(frozen=True)
class AlohaTask:
    xml: str
    objects: dict[str, str]  # object name -> its free joint
    spawn: dict[str, Box2D]  # object name -> its spawn box, in draw order
    reward: Callable[[ContactSet], int]

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Each object's start pose, drawn from ``rng`` in ``spawn`` order (x, then y, per object)."""
        return {name: _upright_pose(rng, x, y) for name, (x, y) in self.spawn.items()}

    def check_spawn_offset(self, offset: Sequence[float] | None) -> tuple[float, float]:
        """``spawn_offset`` as two finite floats (metres; None: no shift). Every shifted spawn box must stay on
        the table (``TABLE_XY``), so a typo (centimetres for metres) fails here, not as objects falling off."""
        if offset is None:
            return (0.0, 0.0)
        if isinstance(offset, (str, bytes, Mapping)) or not hasattr(offset, "__len__") or len(offset) != 2:
            raise ValueError(f"spawn_offset must be two numbers (dx, dy) in metres, got {offset!r}")
        dx, dy = (float(v) for v in offset)
        if not (np.isfinite(dx) and np.isfinite(dy)):
            raise ValueError(f"spawn_offset must be finite, got {offset!r}")
        (tx0, tx1), (ty0, ty1) = TABLE_XY
        for name, ((x0, x1), (y0, y1)) in self.spawn.items():
            if x0 + dx < tx0 or x1 + dx > tx1 or y0 + dy < ty0 or y1 + dy > ty1:
                raise ValueError(
                    f"spawn_offset {offset!r} moves the {name}'s spawn box x {x0}..{x1}, y {y0}..{y1} to "
                    f"x {x0 + dx:.3f}..{x1 + dx:.3f}, y {y0 + dy:.3f}..{y1 + dy:.3f}: off the usable table "
                    f"x {tx0}..{tx1}, y {ty0}..{ty1}")
        return (dx, dy)


ALOHA_TASKS = {
    "transfer_cube": AlohaTask("bimanual_viperx_transfer_cube.xml", {"box": "red_box_joint"},
                               CUBE_SPAWN, transfer_cube_reward),
    "insertion": AlohaTask("bimanual_viperx_insertion.xml",
                           {"peg": "red_peg_joint", "socket": "blue_socket_joint"},
                           PEG_AND_SOCKET_SPAWN, insertion_reward),
}


# --------------------------------------------------------------------------------------------------
# The environment.
# --------------------------------------------------------------------------------------------------

class AlohaEnv(MujocoEnv):
    """Bimanual ViperX joint-position-control env (transfer cube or insertion), ACT conventions.

    Observation (flat dict): ``qpos`` (14,) and ``qvel`` (14,) float32 in the action layout with
    normalised grippers, and ``images/<cam>`` (H, W, 3) uint8 for each requested camera. Reward is the
    current stage (0-4); ``info["max_reward"]`` is the best stage so far and ``info["is_success"]``
    (sticky) says whether stage 4 was reached. Episodes run a fixed horizon (the registered TimeLimit)
    unless ``terminate_on_success``.

    ``env_state=True`` adds ``env_state``: the object poses (x, y, z, qw, qx, qy, qz) as the original ACT
    sim's ``env_state`` — the cube (7) for transfer cube, peg then socket (14) for insertion — the
    low-dimensional observation of state-based policies.

    The reward is read from the contacts of the state *after* the control step, as gym-aloha and the
    original ACT (dm_control's legacy step ends with the position stage of the next step) compute it.

    ``spawn_offset=(dx, dy)`` (metres) moves every object's spawn box (ACT's ``sample_box_pose`` /
    ``sample_insertion_pose`` ranges) by that much on the table: a domain shift for interactive learning
    (``InteractiveAggregation(domain_shifts=...)``). The placement draws the same random numbers and adds the
    offset after them, so seed ``s`` puts the object at the same spot shifted; None (the default) adds nothing
    and keeps the original placement bit for bit.

    ``camera_fovy={"top": 40}`` renders a camera with another vertical field of view (the MJCF's cameras have
    78 degrees), about the same axis: more pixels on the table's centre at the same image size (a CPU recipe's
    choice; the recording and the rollouts must use the same view).

    ``fast_render`` (the default) drops the MJCF's shadows (4096-pixel shadow map) and 4x multisampling:
    about 9x faster frames on a CPU's software OpenGL (~30 ms instead of ~290 ms at 480x640), same scene
    (mean pixel difference < 5). ``fast_render=False`` renders the MJCF's full look.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / DT))}

    def __init__(self, task: str = "transfer_cube", cameras: Sequence[str] = ("top",),
                 image_size: tuple[int, int] = (480, 640), render_mode: str | None = "rgb_array",
                 terminate_on_success: bool = False, fast_render: bool = True, env_state: bool = False,
                 spawn_offset: Sequence[float] | None = None, camera_fovy: Mapping[str, float] | None = None):
        if task not in ALOHA_TASKS:
            raise ValueError(f"unknown ALOHA task {task!r}; choose one of {sorted(ALOHA_TASKS)}")
        self.task_name = task
        self.task = ALOHA_TASKS[task]
        self.spawn_offset = self.task.check_spawn_offset(spawn_offset)
        self.render_mode = self._check_render_mode(render_mode)
        self.terminate_on_success = bool(terminate_on_success)
        self.fast_render = bool(fast_render)
        self.env_state = bool(env_state)
        self.physics = dm_mujoco.Physics.from_xml_path(str(aloha_assets_dir() / self.task.xml))
        self.physics.legacy_step = False  # one plain mj_step per substep (no split step1/step2 bookkeeping)
        self.n_substeps = int(round(DT / self.physics.model.opt.timestep))
        self._setup_cameras(cameras, image_size, camera_fovy)
        self._object_qpos = {name: self._joint_qpos_slice(joint) for name, joint in self.task.objects.items()}
        self.action_space = self._make_action_space()
        self.observation_space = self._make_observation_space(ACTION_DIM, 7 * len(self.task.objects))
        self._steps = 0
        self._max_reward = 0

    # ---- construction helpers --------------------------------------------------------------------

    @property
    def model(self) -> mujoco.MjModel:
        """The raw MuJoCo model under dm_control's ``physics``."""
        return self.physics.model.ptr

    @property
    def data(self) -> mujoco.MjData:
        """The raw MuJoCo data under dm_control's ``physics``."""
        return self.physics.data.ptr

    @property
    def env_label(self) -> str:
        return f"ALOHA {self.task_name}"

    @property
    def state_task(self) -> str:
        return self.task_name

    def _joint_qpos_slice(self, joint: str) -> slice:
        start = int(self.physics.model.jnt_qposadr[self.physics.model.name2id(joint, "joint")])
        return slice(start, start + 7)

    def _make_action_space(self) -> spaces.Box:
        ranges = self.physics.model.actuator_ctrlrange
        low, high = [], []
        for arm in range(2):
            arm_ranges = ranges[arm * QPOS_PER_ARM: arm * QPOS_PER_ARM + ARM_DOF]
            low += list(arm_ranges[:, 0]) + [0.0]
            high += list(arm_ranges[:, 1]) + [1.0]
        return spaces.Box(np.array(low, np.float32), np.array(high, np.float32), dtype=np.float32)

    # ---- gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start pose, objects placed from ``self.np_random`` (seeded by ``seed``)."""
        super().reset(seed=seed)
        physics = self.physics
        mujoco.mj_resetData(physics.model.ptr, physics.data.ptr)
        physics.data.qpos[: len(START_ARM_POSE)] = START_ARM_POSE
        physics.data.ctrl[:] = START_ARM_POSE
        for name, pose in self.task.sample(self.np_random).items():
            physics.data.qpos[self._object_qpos[name]] = self._shifted(pose)
        physics.forward()
        self._steps = 0
        self._max_reward = 0
        return self._observation(), self._info(0)

    def _shifted(self, pose: np.ndarray) -> np.ndarray:
        """``pose`` moved by ``spawn_offset`` on the table; untouched without one (bit-identical default)."""
        if self.spawn_offset == (0.0, 0.0):
            return pose
        moved = pose.copy()
        moved[:2] += self.spawn_offset
        return moved

    def step(self, action):
        physics = self.physics
        ctrl = self._action_to_ctrl(action)
        before = self.get_state()
        physics.data.ctrl[:] = ctrl
        try:
            physics.step(self.n_substeps)
        except PhysicsError as error:
            return self._diverged(before, str(error))
        # mj_step leaves the contacts of the state before its last integration; recompute the position
        # stage (kinematics + collisions) so the reward sees the state the observation shows. This changes
        # no state variable, so the dynamics stay bit-identical.
        mujoco.mj_fwdPosition(physics.model.ptr, physics.data.ptr)
        reward = self.task.reward(ContactSet(physics.model.ptr, physics.data.ptr))
        self._steps += 1
        self._max_reward = max(self._max_reward, reward)
        terminated = self.terminate_on_success and self._max_reward == MAX_REWARD
        return self._observation(), float(reward), terminated, False, self._info(reward)

    # ---- observation, action, info ---------------------------------------------------------------

    def _action_to_ctrl(self, action) -> np.ndarray:
        """14-D normalised action -> 16 actuator targets; rejects bad shapes and non-finite values."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"ALOHA action must have shape ({ACTION_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"ALOHA action has non-finite entries: {action}")
        action = np.clip(action, self.action_space.low, self.action_space.high)
        ctrl = []
        for arm in range(2):
            joints = action[arm * 7: arm * 7 + ARM_DOF]
            finger = unnormalize_gripper_position(action[arm * 7 + ARM_DOF])
            ctrl += [*joints, finger, -finger]
        return np.array(ctrl)

    def _observation(self) -> dict[str, np.ndarray]:
        obs = {"qpos": self._arm_layout(self.physics.data.qpos, normalize_gripper_position),
               "qvel": self._arm_layout(self.physics.data.qvel, self._normalize_gripper_velocity)}
        if self.env_state:
            obs["env_state"] = np.concatenate(list(self.object_poses().values())).astype(np.float32)
        for cam in self.cameras:
            obs[f"images/{cam}"] = self._render_camera(cam)
        return obs

    @staticmethod
    def _normalize_gripper_velocity(v):
        return v / (GRIPPER_POSITION_OPEN - GRIPPER_POSITION_CLOSE)

    @staticmethod
    def _arm_layout(values: np.ndarray, gripper_fn) -> np.ndarray:
        """Per arm: six joints then the normalised left-finger value (the right finger mirrors it)."""
        out = []
        for arm in range(2):
            block = values[arm * QPOS_PER_ARM: (arm + 1) * QPOS_PER_ARM]
            out += [*block[:ARM_DOF], gripper_fn(block[ARM_DOF])]
        return np.asarray(out, dtype=np.float32)

    def _info(self, reward: int) -> dict[str, Any]:
        return {"reward_stage": int(reward), "max_reward": int(self._max_reward),
                "is_success": self._max_reward == MAX_REWARD}

    # ---- privileged state (teachers, interactive learning) ----------------------------------------

    def object_poses(self) -> dict[str, np.ndarray]:
        """Pose (x, y, z, qw, qx, qy, qz) of each movable object: ``box``, or ``peg`` and ``socket``."""
        return {name: self.physics.data.qpos[sl].copy() for name, sl in self._object_qpos.items()}

    def gripper_pose(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """World position and 3x3 rotation of ``vx300s_<side>/gripper_link`` (x points along the
        fingers, y is the axis the fingers slide on)."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        body = f"vx300s_{side}/gripper_link"
        named = self.physics.named.data
        return named.xpos[body].copy(), named.xmat[body].reshape(3, 3).copy()

    def gripper_opening(self) -> dict[str, float]:
        """Measured normalised gripper opening per side (0 closed, 1 open)."""
        qpos = self.physics.data.qpos
        return {side: float(normalize_gripper_position(qpos[i * QPOS_PER_ARM + ARM_DOF]))
                for i, side in enumerate(SIDES)}

    def contacts(self) -> ContactSet:
        """Geom pairs in contact now (e.g. ``env.contacts().touching("red_box", "table")``)."""
        return ContactSet(self.physics.model.ptr, self.physics.data.ptr)
