"""Gymnasium environment of the Ravens tabletop tasks (pybullet, DIRECT mode, offscreen rendering).

One ``step`` is one whole pick-and-place; an episode lasts at most ``task.max_steps`` of them (the number of
objects to move plus one mistake, as Ravens). The step reward is the *change* of the task score, so the
return of an episode is its final partial-credit score in [0, 1].

Observation (``spaces.Dict``):

* ``"color"``: (320, 160, 3) uint8 — fused top-down colour heightmap (rows = y, cols = x; see ``geometry``);
* ``"height"``: (320, 160) float32 — height above the table in metres (max over the three views);
* ``"instruction"``: the current language goal (``spaces.Text``); also ``info["instruction"]`` and
  ``env.unwrapped.instruction``. Pass ``language_in_obs=False`` to leave it out of the observation.

CLIPort's 6-channel input is ``geometry.heightmap_input(obs["color"], obs["height"])``.

Action: a dict ``{"pick": (7,), "place": (7,)}`` (xyz in metres + xyzw quaternion; only the yaw of the
quaternion is used) or a flat (14,) array ``[pick, place]`` — the layout of the store's ``/action/pick``
and ``/action/place``. Positions are clipped to the workspace.

Info: ``instruction`` (next goal), ``is_success`` (score at 1), ``score``, ``max_step_reward`` (what one correct
pick-place earns for the goal that was current, FIER's success test), ``achieved_instruction`` (what the
pick-place did fulfil, hindsight relabeling), ``picked`` (suction held something), ``timeout``, ``sim_steps``.

Interactive learning helpers on ``env.unwrapped``: ``get_state()`` / ``set_state(state)`` (snapshot and restore
of physics plus task bookkeeping), ``preview(action)`` (foresight: outcome of an action, state untouched),
``matches()`` and ``relabel(before, after)``, and ``oracle_action()`` (the privileged oracle's next move).
"""

from __future__ import annotations

import copy
import itertools
import string
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lit_imit.envs.ravens import cameras
from lit_imit.envs.ravens import geometry as geo
from lit_imit.envs.ravens.sim import Sim, pick_place
from lit_imit.envs.ravens.tasks import make_task

_EPISODE_IDS = itertools.count()
TEXT_CHARSET = string.ascii_letters + string.digits + " .,'-"


@dataclass
class EnvState:
    """A snapshot of a Ravens env (valid only within the episode it was taken in).

    Holds a pybullet in-memory state (freed when the snapshot is garbage collected) plus deep copies of
    the task bookkeeping and the gripper's drive/suction state, which pybullet's restoreState does not keep.
    """

    episode: int
    bullet_state: int
    task: Any
    gripper: dict
    steps: int
    rng_state: dict
    obs: dict
    _sim: Any = None

    def __deepcopy__(self, memo) -> "EnvState":
        """Snapshots are immutable handles: copying one returns the same handle."""
        return self

    def __reduce__(self):
        raise TypeError("an EnvState lives in the simulator's memory of one process; it cannot be pickled")

    def __del__(self) -> None:
        sim = self._sim
        if sim is not None and sim.bullet is not None and sim.episode == self.episode:
            try:
                sim.bullet.removeState(self.bullet_state)
            except Exception:  # the server may be gone at interpreter exit
                pass


class RavensEnv(gym.Env):
    """Language-conditioned tabletop pick-and-place with a suction tool (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(self, task: str = "put-block-in-bowl-seen-colors", split: str = "train",
                 render_mode: str | None = None, camera_scale: float = 1.0, max_steps: int | None = None,
                 language_in_obs: bool = True, raw_images: bool = False) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if not 0.1 <= camera_scale <= 2.0:
            raise ValueError(f"camera_scale must be in [0.1, 2], got {camera_scale}")
        self.task_name, self.split = task, split
        self.task = make_task(task, split)
        self.render_mode = render_mode
        self.max_steps_override = max_steps
        self.language_in_obs, self.raw_images = language_in_obs, raw_images
        self.cams = tuple(cam.scaled(camera_scale) for cam in cameras.REALSENSE_CAMERAS)
        h, w = geo.HEIGHTMAP_SHAPE
        obs_spaces: dict[str, spaces.Space] = {
            "color": spaces.Box(0, 255, (h, w, 3), np.uint8),
            "height": spaces.Box(0.0, float(geo.BOUNDS[2, 1] - geo.BOUNDS[2, 0]), (h, w), np.float32),
        }
        if language_in_obs:
            obs_spaces["instruction"] = spaces.Text(max_length=200, charset=TEXT_CHARSET)
        if raw_images:
            ch, cw = self.cams[0].image_size
            obs_spaces["camera_rgb"] = spaces.Box(0, 255, (len(self.cams), ch, cw, 3), np.uint8)
            obs_spaces["camera_depth"] = spaces.Box(0.0, np.inf, (len(self.cams), ch, cw), np.float32)
        self.observation_space = spaces.Dict(obs_spaces)
        low = np.concatenate([geo.BOUNDS[:, 0], -np.ones(4)]).astype(np.float32)
        high = np.concatenate([geo.BOUNDS[:, 1], np.ones(4)]).astype(np.float32)
        pose = spaces.Box(low, high, (7,), np.float32)  # xyz in the workspace + xyzw quaternion
        self.action_space = spaces.Dict({"pick": pose, "place": pose})
        self.sim = Sim()
        self.steps = 0
        self._last_obs: dict | None = None
        self._last_rgb: np.ndarray | None = None

    # ---- gym API -------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        for _ in range(5):  # a crowded draw can fail to fit; redraw from the same generator
            self.sim.reset_world()
            self.sim.episode = next(_EPISODE_IDS)
            try:
                self.task.build(self.sim, self.np_random)
                break
            except RuntimeError:
                continue
        else:
            raise RuntimeError(f"{self.task_name}: could not generate a scene in 5 attempts")
        if self.max_steps_override is not None:
            self.task.max_steps = int(self.max_steps_override)
        self.sim.settle(max_steps=480)
        self.task.evaluate(self.sim)
        self.steps = 0
        obs = self.render_observation()
        return obs, self._info(extra={})

    def step(self, action):
        if self._last_obs is None:
            raise RuntimeError("call reset() before step()")
        reward, terminated, truncated, info = self._execute(action)
        return self.render_observation(), reward, terminated, truncated, info

    def _execute(self, action) -> tuple[float, bool, bool, dict]:
        """Run one pick-place and score it (everything but rendering the next observation)."""
        pick, place = self._parse_action(action)
        before = self.task.matches(self.sim)
        max_step_reward = self.task.max_step_reward
        score_before = self.task.score
        result = pick_place(self.sim, pick, place)
        score = self.task.evaluate(self.sim)
        self.steps += 1
        after = self.task.matches(self.sim)
        terminated = self.task.done
        truncated = (not terminated) and self.steps >= self.task.max_steps
        info = self._info(extra={
            "max_step_reward": float(max_step_reward),
            "achieved_instruction": self.task.relabel(before, after),
            "picked": result.picked is not None,
            "timeout": bool(result.timeout),
            "sim_steps": int(result.sim_steps),
        })
        return float(score - score_before), bool(terminated), bool(truncated), info

    def render(self):
        """The front camera's RGB image of the last observation (rgb_array mode)."""
        if self.render_mode != "rgb_array":
            return None
        return None if self._last_rgb is None else self._last_rgb.copy()

    def close(self) -> None:
        if getattr(self, "sim", None) is not None:
            self.sim.close()

    # ---- properties ------------------------------------------------------------------------------------
    @property
    def instruction(self) -> str:
        return self.task.instruction

    @property
    def score(self) -> float:
        return float(self.task.score)

    # ---- interactive-learning helpers -------------------------------------------------------------------
    def matches(self) -> dict:
        """Which object fulfils which target now (object uid -> target key)."""
        return self.task.matches(self.sim)

    def relabel(self, before: dict, after: dict) -> str | None:
        """The instruction a pick-place fulfilled, from ``matches()`` before and after it (or None)."""
        return self.task.relabel(before, after)

    def oracle_action(self) -> dict[str, np.ndarray] | None:
        """The privileged oracle's next pick-place for the current state (None when nothing is left)."""
        return self.task.oracle_action(self.sim, self.np_random)

    def get_state(self) -> EnvState:
        """Snapshot physics, task bookkeeping, gripper, step count and RNG of the current episode."""
        if self._last_obs is None:
            raise RuntimeError("call reset() before get_state()")
        return EnvState(
            episode=self.sim.episode,
            bullet_state=self.sim.bullet.saveState(),
            task=copy.deepcopy(self.task),
            gripper=copy.deepcopy(self.sim.gripper.state()),
            steps=self.steps,
            rng_state=copy.deepcopy(self.np_random.bit_generator.state),
            obs=copy.deepcopy(self._last_obs),
            _sim=self.sim,
        )

    def set_state(self, state: EnvState) -> dict:
        """Restore a snapshot taken in this episode; returns the observation it was taken with."""
        if not isinstance(state, EnvState):
            raise TypeError(f"expected an EnvState from get_state(), got {type(state).__name__}")
        if state.episode != self.sim.episode or state._sim is not self.sim:
            raise ValueError("this snapshot belongs to another episode or env; states cannot cross a reset()")
        self.sim.bullet.restoreState(stateId=state.bullet_state)
        self.sim.gripper.restore(state.gripper)
        self.task = copy.deepcopy(state.task)
        self.steps = state.steps
        self.np_random.bit_generator.state = copy.deepcopy(state.rng_state)
        self._last_obs = copy.deepcopy(state.obs)
        return copy.deepcopy(state.obs)

    def preview(self, action) -> dict:
        """Foresight: execute ``action`` on a snapshot and report its outcome, then restore the state.

        Returns ``reward``, ``step_success`` (reward equals ``max_step_reward``, the ASkDAgger/FIER test),
        ``achieved_instruction``, ``score``, ``is_success`` and ``picked``.
        """
        snapshot = self.get_state()
        try:
            reward, _, _, info = self._execute(action)
        finally:
            self.set_state(snapshot)
        return {
            "reward": reward,
            "step_success": bool(info["max_step_reward"] > 0 and abs(reward - info["max_step_reward"]) < 0.01),
            "achieved_instruction": info["achieved_instruction"],
            "score": info["score"],
            "is_success": info["is_success"],
            "picked": info["picked"],
        }

    # ---- internals ----------------------------------------------------------------------------------------
    def _parse_action(self, action) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(action, dict):
            if "pick" not in action or "place" not in action:
                raise ValueError(f"action dict needs keys 'pick' and 'place', got {sorted(action)}")
            pick = np.asarray(action["pick"], dtype=np.float64).reshape(-1)
            place = np.asarray(action["place"], dtype=np.float64).reshape(-1)
        else:
            flat = np.asarray(action, dtype=np.float64).reshape(-1)
            if flat.shape != (14,):
                raise ValueError(f"flat action must have 14 values (pick 7 + place 7), got shape {np.shape(action)}")
            pick, place = flat[:7], flat[7:]
        for name, pose in (("pick", pick), ("place", place)):
            if pose.shape != (7,):
                raise ValueError(f"{name} pose must have 7 values (xyz + xyzw), got {pose.shape}")
            if not np.all(np.isfinite(pose)):
                raise ValueError(f"{name} pose has non-finite values: {pose}")
            if np.linalg.norm(pose[3:]) < 1e-6:
                raise ValueError(f"{name} quaternion is zero: {pose[3:]}")
            pose[:3] = np.clip(pose[:3], geo.BOUNDS[:, 0], geo.BOUNDS[:, 1])
            pose[3:] /= np.linalg.norm(pose[3:])
        return pick, place

    def render_observation(self) -> dict:
        """Render the three cameras and fuse them into the observation of the current state."""
        rgbs, depths = [], []
        for cam in self.cams:
            rgb, depth = cameras.render(self.sim.bullet, cam)
            rgbs.append(rgb)
            depths.append(depth)
        color, height = cameras.fused_heightmap(self.cams, rgbs, depths)
        obs: dict[str, Any] = {"color": color, "height": height}
        if self.language_in_obs:
            obs["instruction"] = self.task.instruction
        if self.raw_images:
            obs["camera_rgb"] = np.stack(rgbs)
            obs["camera_depth"] = np.stack(depths)
        self._last_obs = obs
        self._last_rgb = rgbs[0]
        return obs

    def _info(self, extra: dict) -> dict:
        info = {
            "instruction": self.task.instruction,
            "is_success": bool(self.task.score > 0.99),
            "score": float(self.task.score),
            "max_steps": int(self.task.max_steps),
        }
        info.update(extra)
        return info


class RavensOracle:
    """Scripted teacher: the task's privileged oracle (``make_teacher(task, env)``, then ``act(obs)``)."""

    def __init__(self, env: gym.Env) -> None:
        self.env = env

    def reset(self) -> None:
        """The oracle is state-feedback: nothing to clear."""

    def act(self, obs=None) -> dict[str, np.ndarray]:
        """Pick/place poses for the current state.

        When nothing is left to do (the episode is over, or no move is possible) the oracle suctions at an
        empty spot of the table and puts nothing down, which leaves the scene as it is.
        """
        env = self.env.unwrapped
        action = env.oracle_action()
        if action is None:
            xy = env.sim.sample_free_xy(env.np_random, 0.03, env.sim.footprints(), margin=0.02) or (0.5, 0.0)
            noop = np.array([xy[0], xy[1], 0.0, 0.0, 0.0, 0.0, 1.0], dtype=np.float32)
            return {"pick": noop, "place": noop.copy()}
        return action
