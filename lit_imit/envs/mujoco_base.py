"""What the MuJoCo envs (ALOHA, the myCobot twin) share: cameras, observation space, rendering,
divergence handling and bit-exact state snapshots.

Each env keeps its own simulator, action mapping, reward and task layout; this base only holds the parts
that were written twice and must behave the same in both (the interactive loop, the parallel rollout and
the episode files rely on ``get_state``/``set_state``, ``physics_error`` and the observation layout).
"""

from __future__ import annotations

import atexit
import weakref
from abc import abstractmethod
from typing import Any, Mapping, Sequence

import gymnasium as gym

import lit_imit.envs  # noqa: F401  (first: sets MUJOCO_GL and loads triton before mujoco)

import mujoco  # noqa: E402
import numpy as np
from gymnasium import spaces

# Renderers still open at interpreter exit are closed before the EGL display goes away (otherwise their
# finalisers fail noisily during shutdown). MuJoCo registers its own EGL teardown with atexit when the
# first GL context is made; ours is registered after it, hence runs before it (atexit is LIFO).
_ENVS_WITH_RENDERERS: weakref.WeakSet = weakref.WeakSet()
_exit_hook_registered = False


def _close_renderers() -> None:
    for env in list(_ENVS_WITH_RENDERERS):
        env.close()


def _track_renderer(env: "MujocoEnv") -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_close_renderers)
        _exit_hook_registered = True
    _ENVS_WITH_RENDERERS.add(env)


class MujocoEnv(gym.Env):
    """Base of the MuJoCo envs with a flat dict observation ``qpos``, ``qvel``, optional ``env_state`` and
    ``images/<cam>``, a staged reward with ``max_reward`` bookkeeping, and privileged snapshots.

    A subclass provides ``model`` / ``data`` (the raw ``mujoco.MjModel`` / ``MjData``, as attributes or
    properties), ``env_label`` (how errors name it), ``state_task`` (the tag its snapshots carry),
    ``_observation()`` and ``_info(reward)``; it calls :meth:`_setup_cameras` once its model exists.
    Snapshots hold anything beyond MuJoCo's integration state through :meth:`_extra_state` and
    :meth:`_restore_extra_state`.
    """

    model: mujoco.MjModel
    data: mujoco.MjData
    env_state: bool = False
    #: drop shadows and multisampling (set per instance by envs that offer it)
    fast_render: bool = False
    #: camera :meth:`render` shows when the env was built without cameras
    default_camera = "top"

    # ---- what a subclass says about itself -------------------------------------------------------

    @property
    @abstractmethod
    def env_label(self) -> str:
        """How error messages name this env, e.g. ``"ALOHA insertion"``."""

    @property
    @abstractmethod
    def state_task(self) -> str:
        """The ``task`` tag of this env's snapshots (a snapshot only restores into the same task)."""

    @abstractmethod
    def _observation(self) -> dict[str, np.ndarray]:
        """The observation of the current state."""

    @abstractmethod
    def _info(self, reward: int) -> dict[str, Any]:
        """The step info for a step that earned ``reward``."""

    def _extra_state(self) -> dict[str, Any]:
        """Snapshot entries beyond MuJoCo's integration state and the counters (none by default)."""
        return {}

    def _restore_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`_extra_state`'s entries; runs before the physics state is set."""

    # ---- construction helpers --------------------------------------------------------------------

    @staticmethod
    def _check_render_mode(render_mode: str | None) -> str | None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        return render_mode

    @property
    def available_cameras(self) -> list[str]:
        """Names of the model's cameras, in model order."""
        return [mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(self.model.ncam)]

    def _setup_cameras(self, cameras: Sequence[str], image_size: Sequence[int],
                       camera_fovy: Mapping[str, float] | None = None) -> None:
        """Check and keep the requested cameras and image size, and set the vertical fields of view asked for;
        the renderer is made on first use."""
        self.cameras = self._check_cameras(cameras)
        self.image_size = self._check_image_size(image_size)
        self.camera_fovy = self._set_camera_fovy(camera_fovy or {})
        self._renderer: mujoco.Renderer | None = None

    def _set_camera_fovy(self, camera_fovy: Mapping[str, float]) -> dict[str, float]:
        """Narrow (or widen) named cameras: ``{"top": 40}`` renders the top camera with a 40-degree vertical field
        of view instead of the model's, about the same view axis. At a fixed pixel count a narrower field puts
        more pixels on what lies near the image centre (at 78 -> 40 degrees, ~2.2x the pixels across the
        transfer-cube's cube), which is what a small CPU image loses first; the rendering cost is unchanged.
        Returns the settings made, so a recording can say which view it was taken with."""
        if isinstance(camera_fovy, str) or not isinstance(camera_fovy, Mapping):
            raise ValueError(f"camera_fovy must map camera names to degrees, e.g. {{'top': 40}}; got {camera_fovy!r}")
        self._check_cameras(list(camera_fovy))
        for cam, fovy in camera_fovy.items():
            if not 0 < float(fovy) < 180:
                raise ValueError(f"camera_fovy[{cam!r}] must be in (0, 180) degrees, got {fovy!r}")
            self.model.cam_fovy[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, cam)] = float(fovy)
        return {cam: float(fovy) for cam, fovy in camera_fovy.items()}

    def _check_cameras(self, cameras: Sequence[str]) -> tuple[str, ...]:
        if isinstance(cameras, str):
            raise ValueError(f"cameras must be a list of names, got the string {cameras!r}")
        available = self.available_cameras
        for cam in cameras:
            if cam not in available:
                raise ValueError(f"unknown camera {cam!r} for {self.env_label}; available: {available}")
        return tuple(cameras)

    @staticmethod
    def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
        if len(image_size) != 2 or any(int(s) != s or s <= 0 for s in image_size):
            raise ValueError(f"image_size must be (height, width) positive ints, got {image_size!r}")
        return int(image_size[0]), int(image_size[1])

    def _make_observation_space(self, proprio_dim: int, env_state_dim: int) -> spaces.Dict:
        """``qpos``/``qvel`` (``proprio_dim``,), ``env_state`` if asked for, one RGB image per camera."""
        vec = spaces.Box(-np.inf, np.inf, (proprio_dim,), np.float32)
        items: dict[str, spaces.Space] = {"qpos": vec, "qvel": vec}
        if self.env_state:
            items["env_state"] = spaces.Box(-np.inf, np.inf, (env_state_dim,), np.float32)
        for cam in self.cameras:
            items[f"images/{cam}"] = spaces.Box(0, 255, (*self.image_size, 3), np.uint8)
        return spaces.Dict(items)

    # ---- rendering -------------------------------------------------------------------------------

    def render(self):
        """The first requested camera (``default_camera`` when none), at ``image_size``; None without
        render_mode."""
        if self.render_mode is None:
            return None
        return self._render_camera(self.cameras[0] if self.cameras else self.default_camera)

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def _render_camera(self, camera: str) -> np.ndarray:
        if self._renderer is None:
            self._renderer = self._make_renderer()
        self._renderer.update_scene(self.data, camera=camera)
        if self.fast_render:
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        return self._renderer.render().copy()

    def _make_renderer(self) -> mujoco.Renderer:
        """One offscreen renderer per env, created on first use (envs without cameras never need GL)."""
        height, width = self.image_size
        model = self.model
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

    # ---- divergence ------------------------------------------------------------------------------

    def _physics_is_finite(self) -> bool:
        return bool(np.all(np.isfinite(self.data.qpos)) and np.all(np.isfinite(self.data.qvel)))

    def _diverged(self, before: dict[str, Any], reason: str):
        """The simulation blew up (e.g. wild actions slamming the arm into something): restore the last
        good state and truncate the episode with ``info["physics_error"]`` instead of crashing a run."""
        obs = self.set_state(before)
        info = self._info(0)
        info["physics_error"] = reason
        return obs, 0.0, False, True, info

    # ---- privileged state (teachers, interactive learning) ----------------------------------------

    @property
    def step_count(self) -> int:
        return self._steps

    @property
    def max_reward(self) -> int:
        return self._max_reward

    def get_state(self) -> dict[str, Any]:
        """Snapshot of everything that determines the future: MuJoCo's full integration state (time,
        qpos, qvel, actuator state, solver warm start, ctrl), the env's own extras and the step counter
        and reward bookkeeping. Plain numpy/python, so it pickles and can sit in an episode file."""
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        physics_state = np.empty(mujoco.mj_stateSize(self.model, spec))
        mujoco.mj_getState(self.model, self.data, physics_state, spec)
        return {"task": self.state_task, "physics": physics_state, **self._extra_state(),
                "steps": int(self._steps), "max_reward": int(self._max_reward)}

    def set_state(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        """Restore a :meth:`get_state` snapshot bit-exactly; returns the observation at that state."""
        if state.get("task") != self.state_task:
            raise ValueError(f"state is for task {state.get('task')!r}, this env runs {self.state_task!r}")
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        size = mujoco.mj_stateSize(self.model, spec)
        physics_state = np.asarray(state["physics"], dtype=np.float64)
        if physics_state.shape != (size,):
            raise ValueError(f"physics state has shape {physics_state.shape}, expected ({size},) "
                             f"for {self.env_label}")
        self._restore_extra_state(state)
        mujoco.mj_setState(self.model, self.data, physics_state, spec)
        mujoco.mj_forward(self.model, self.data)
        self._steps = int(state["steps"])
        self._max_reward = int(state["max_reward"])
        return self._observation()
