"""Bimanual ViperX (ALOHA) simulation tasks and their state-feedback scripted teachers.

The scene (two ViperX 300 6-DoF arms, table, cube or peg/socket) is gym-aloha's shipped MJCF, loaded
from the installed ``gym_aloha/assets`` directory (Apache-2.0) without importing ``gym_aloha`` itself.
Conventions follow ACT's joint-control sim envs: 50 Hz control, 14-D absolute joint actions
``[left arm (6), left gripper (1), right arm (6), right gripper (1)]`` with normalised grippers
(0 = closed, 1 = open, un-normalised to symmetric finger positions), staged reward 0-4 from contacts.

Teachers are *state-feedback* policies: every call re-decides the phase from the simulator state
(who touches or holds the object, where it is), aims the grippers at targets computed from the
current object poses, solves inverse kinematics for both arms and rate-limits the motion. They can
therefore take over from any state a novice has driven the robot into (interactive learning).
"""

from __future__ import annotations

import atexit
import importlib.util
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium as gym

import lit_imit.envs  # noqa: F401  (first: sets MUJOCO_GL and loads triton before mujoco/dm_control)

import mujoco  # noqa: E402
import numpy as np
from dm_control import mujoco as dm_mujoco
from dm_control.rl.control import PhysicsError
from gymnasium import spaces

from lit_imit.envs.kinematics import DampedLeastSquaresIK, capped, quat_to_matrix, rotate, rotation_error

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


def sample_cube(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"box": _upright_pose(rng, x=(0.0, 0.2), y=(0.4, 0.6))}


def sample_peg_and_socket(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"peg": _upright_pose(rng, x=(0.1, 0.2), y=(0.4, 0.6)),
            "socket": _upright_pose(rng, x=(-0.2, -0.1), y=(0.4, 0.6))}


def _upright_pose(rng: np.random.Generator, x: tuple[float, float], y: tuple[float, float]) -> np.ndarray:
    """Uniform position in the box (z = 0.05, objects drop onto the table), identity orientation (wxyz)."""
    return np.array([rng.uniform(*x), rng.uniform(*y), 0.05, 1.0, 0.0, 0.0, 0.0])


@dataclass(frozen=True)
class AlohaTask:
    xml: str
    objects: dict[str, str]  # object name -> its free joint
    sample: Callable[[np.random.Generator], dict[str, np.ndarray]]
    reward: Callable[[ContactSet], int]


ALOHA_TASKS = {
    "transfer_cube": AlohaTask("bimanual_viperx_transfer_cube.xml", {"box": "red_box_joint"},
                               sample_cube, transfer_cube_reward),
    "insertion": AlohaTask("bimanual_viperx_insertion.xml",
                           {"peg": "red_peg_joint", "socket": "blue_socket_joint"},
                           sample_peg_and_socket, insertion_reward),
}


# --------------------------------------------------------------------------------------------------
# The environment.
# --------------------------------------------------------------------------------------------------

# Renderers still open at interpreter exit are closed before the EGL display goes away (otherwise their
# finalisers fail noisily during shutdown). MuJoCo registers its own EGL teardown with atexit when the
# first GL context is made; ours is registered after it, hence runs before it (atexit is LIFO).
_ENVS_WITH_RENDERERS: weakref.WeakSet = weakref.WeakSet()
_exit_hook_registered = False


def _close_renderers() -> None:
    for env in list(_ENVS_WITH_RENDERERS):
        env.close()


def _track_renderer(env: "AlohaEnv") -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_close_renderers)
        _exit_hook_registered = True
    _ENVS_WITH_RENDERERS.add(env)



class AlohaEnv(gym.Env):
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

    ``fast_render`` (the default) drops the MJCF's shadows (4096-pixel shadow map) and 4x multisampling:
    about 9x faster frames on a CPU's software OpenGL (~30 ms instead of ~290 ms at 480x640), same scene
    (mean pixel difference < 5). ``fast_render=False`` renders the MJCF's full look.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / DT))}

    def __init__(self, task: str = "transfer_cube", cameras: Sequence[str] = ("top",),
                 image_size: tuple[int, int] = (480, 640), render_mode: str | None = "rgb_array",
                 terminate_on_success: bool = False, fast_render: bool = True, env_state: bool = False):
        if task not in ALOHA_TASKS:
            raise ValueError(f"unknown ALOHA task {task!r}; choose one of {sorted(ALOHA_TASKS)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.task_name = task
        self.task = ALOHA_TASKS[task]
        self.render_mode = render_mode
        self.terminate_on_success = bool(terminate_on_success)
        self.fast_render = bool(fast_render)
        self.env_state = bool(env_state)
        self.physics = dm_mujoco.Physics.from_xml_path(str(aloha_assets_dir() / self.task.xml))
        self.physics.legacy_step = False  # one plain mj_step per substep (no split step1/step2 bookkeeping)
        self.n_substeps = int(round(DT / self.physics.model.opt.timestep))
        self.cameras = self._check_cameras(cameras)
        self.image_size = self._check_image_size(image_size)
        self._renderer: mujoco.Renderer | None = None
        self._object_qpos = {name: self._joint_qpos_slice(joint) for name, joint in self.task.objects.items()}
        self.action_space = self._make_action_space()
        self.observation_space = self._make_observation_space()
        self._steps = 0
        self._max_reward = 0

    # ---- construction helpers --------------------------------------------------------------------

    @property
    def available_cameras(self) -> list[str]:
        model = self.physics.model
        return [model.id2name(i, "camera") for i in range(model.ncam)]

    def _check_cameras(self, cameras: Sequence[str]) -> tuple[str, ...]:
        if isinstance(cameras, str):
            raise ValueError(f"cameras must be a list of names, got the string {cameras!r}")
        available = self.available_cameras
        for cam in cameras:
            if cam not in available:
                raise ValueError(f"unknown camera {cam!r} for ALOHA {self.task_name}; available: {available}")
        return tuple(cameras)

    @staticmethod
    def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
        if len(image_size) != 2 or any(int(s) != s or s <= 0 for s in image_size):
            raise ValueError(f"image_size must be (height, width) positive ints, got {image_size!r}")
        return int(image_size[0]), int(image_size[1])

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

    def _make_observation_space(self) -> spaces.Dict:
        vec = spaces.Box(-np.inf, np.inf, (ACTION_DIM,), np.float32)
        items: dict[str, spaces.Space] = {"qpos": vec, "qvel": vec}
        if self.env_state:
            items["env_state"] = spaces.Box(-np.inf, np.inf, (7 * len(self.task.objects),), np.float32)
        for cam in self.cameras:
            items[f"images/{cam}"] = spaces.Box(0, 255, (*self.image_size, 3), np.uint8)
        return spaces.Dict(items)

    # ---- gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start pose, objects placed from ``self.np_random`` (seeded by ``seed``)."""
        super().reset(seed=seed)
        physics = self.physics
        mujoco.mj_resetData(physics.model.ptr, physics.data.ptr)
        physics.data.qpos[: len(START_ARM_POSE)] = START_ARM_POSE
        physics.data.ctrl[:] = START_ARM_POSE
        for name, pose in self.task.sample(self.np_random).items():
            physics.data.qpos[self._object_qpos[name]] = pose
        physics.forward()
        self._steps = 0
        self._max_reward = 0
        return self._observation(), self._info(0)

    def step(self, action):
        physics = self.physics
        ctrl = self._action_to_ctrl(action)
        before = self.get_state()
        physics.data.ctrl[:] = ctrl
        try:
            physics.step(self.n_substeps)
        except PhysicsError as error:
            return self._diverged(before, error)
        # mj_step leaves the contacts of the state before its last integration; recompute the position
        # stage (kinematics + collisions) so the reward sees the state the observation shows. This changes
        # no state variable, so the dynamics stay bit-identical.
        mujoco.mj_fwdPosition(physics.model.ptr, physics.data.ptr)
        reward = self.task.reward(ContactSet(physics.model.ptr, physics.data.ptr))
        self._steps += 1
        self._max_reward = max(self._max_reward, reward)
        terminated = self.terminate_on_success and self._max_reward == MAX_REWARD
        return self._observation(), float(reward), terminated, False, self._info(reward)

    def _diverged(self, before: dict[str, Any], error: PhysicsError):
        """The simulation blew up (e.g. wild actions slamming the arms into each other): restore the
        last good state and truncate the episode instead of crashing a training run."""
        obs = self.set_state(before)
        info = self._info(0)
        info["physics_error"] = str(error)
        return obs, 0.0, False, True, info

    def render(self):
        """The first requested camera (``top`` when none), at ``image_size``; None without render_mode."""
        if self.render_mode is None:
            return None
        return self._render_camera(self.cameras[0] if self.cameras else "top")

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

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

    def _render_camera(self, camera: str) -> np.ndarray:
        if self._renderer is None:
            self._renderer = self._make_renderer()
        self._renderer.update_scene(self.physics.data.ptr, camera=camera)
        if self.fast_render:
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        return self._renderer.render().copy()

    def _make_renderer(self) -> mujoco.Renderer:
        """One offscreen renderer per env, created on first use (envs without cameras never need GL)."""
        height, width = self.image_size
        model = self.physics.model.ptr
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)  # buffer must fit the image
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        if self.fast_render:
            model.vis.quality.offsamples = 0
        try:
            renderer = mujoco.Renderer(model, height=height, width=width)
        except mujoco.FatalError as error:
            raise RuntimeError(
                f"MuJoCo could not create an OpenGL context ({error}). Headless rendering needs "
                "MUJOCO_GL=egl (or osmesa) set before mujoco is first imported; lit_imit.envs sets it "
                "when imported first, so import it before mujoco/dm_control or export MUJOCO_GL=egl."
            ) from error
        _track_renderer(self)
        return renderer

    # ---- privileged state (teachers, interactive learning) ----------------------------------------

    @property
    def step_count(self) -> int:
        return self._steps

    @property
    def max_reward(self) -> int:
        return self._max_reward

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

    def get_state(self) -> dict[str, Any]:
        """Snapshot of everything that determines the future: MuJoCo's full integration state (time,
        qpos, qvel, actuator state, solver warm start, ctrl) plus the step counter and reward
        bookkeeping. Plain numpy/python, so it pickles and can sit in an episode file."""
        model, data = self.physics.model.ptr, self.physics.data.ptr
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        physics_state = np.empty(mujoco.mj_stateSize(model, spec))
        mujoco.mj_getState(model, data, physics_state, spec)
        return {"task": self.task_name, "physics": physics_state, "steps": int(self._steps),
                "max_reward": int(self._max_reward)}

    def set_state(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        """Restore a :meth:`get_state` snapshot bit-exactly; returns the observation at that state."""
        if state.get("task") != self.task_name:
            raise ValueError(f"state is for task {state.get('task')!r}, this env runs {self.task_name!r}")
        model, data = self.physics.model.ptr, self.physics.data.ptr
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        physics_state = np.asarray(state["physics"], dtype=np.float64)
        if physics_state.shape != (mujoco.mj_stateSize(model, spec),):
            raise ValueError(f"physics state has shape {physics_state.shape}, expected "
                             f"({mujoco.mj_stateSize(model, spec)},) for ALOHA {self.task_name}")
        mujoco.mj_setState(model, data, physics_state, spec)
        mujoco.mj_forward(model, data)
        self._steps = int(state["steps"])
        self._max_reward = int(state["max_reward"])
        return self._observation()


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
