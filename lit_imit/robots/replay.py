"""Replay a recorded myCobot 320 episode in the MuJoCo twin, to check a recording (or the twin) before use.

A recording made on the robot holds what the arm measured (``observations/qpos``) and what was sent
(``action``). Replaying the actions open loop in the twin, from the recording's first pose and at the twin's
control rate, and comparing the twin's joints with the measured ones step by step tells whether the two
agree: a large tracking error means the recording is off (a servo slipped, frames were dropped, the rate
differs) or the twin is (gains, limits), and a policy trained on one will not transfer to the other. The twin
applies the adapter's clamps, so steps the real adapter would have clamped are counted too.

For a twin recording the layout is known (its ``seed``) and the replay should reproduce its outcome; for a
robot recording the cube's place is not known, so success in the replay means nothing and is not reported.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lit_imit.data.episodes import EpisodeError, read_episode
from lit_imit.envs import make_env

log = logging.getLogger(__name__)

ARM_DOF = 6
TWIN_TASK = "mycobot_move_cube"


@dataclass
class ReplayReport:
    """How closely the twin followed a recording (joint errors in degrees, per step after the first)."""

    episode: str
    steps: int
    source: str
    layout_known: bool
    rms_error_deg: list[float]
    max_error_deg: float
    final_error_deg: float
    clamped_steps: int
    recorded_fps: float | None
    twin_fps: float
    success: bool | None = None
    max_reward: int | None = None
    frames: list[np.ndarray] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("frames")
        return out


def _recorded_arrays(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    episode = read_episode(path, keys=["qpos", "action"])
    qpos = np.asarray(episode.obs("qpos"), dtype=np.float64)
    actions = np.asarray(episode.arrays["action"], dtype=np.float64)
    if qpos.ndim != 2 or qpos.shape[1] != ARM_DOF + 1 or actions.shape != qpos.shape:
        raise EpisodeError(f"{path}: a myCobot episode has qpos and action of shape (T, {ARM_DOF + 1}); "
                           f"got qpos {qpos.shape} and action {actions.shape}")
    if len(qpos) < 2:
        raise EpisodeError(f"{path}: {len(qpos)} step(s): nothing to replay")
    if not (np.all(np.isfinite(qpos)) and np.all(np.isfinite(actions))):
        raise EpisodeError(f"{path}: qpos or action holds NaN/inf")
    return qpos, actions, episode.attrs


def replay_episode(path: str | Path, env: Any | None = None, *, seed: int | None = None,
                   record_frames: bool = False) -> ReplayReport:
    """Execute a recording's actions in the twin from its first pose; compare the joints step by step.

    Args:
        path: an episode file (recorded on the robot, in the twin, or by ``scripts/deploy.py``).
        env: a twin env (``lit_imit.envs.make_env("mycobot_move_cube", ...)``); one without cameras is
            built when None (with a ``top`` camera when ``record_frames``).
        seed: layout seed; default the recording's own ``seed`` attribute when it was made in the twin.
        record_frames: keep the twin's rendered frames (for a video).
    """

    qpos, actions, attrs = _recorded_arrays(path)
    in_twin = bool(attrs.get("sim")) and attrs.get("task") == TWIN_TASK
    layout_seed = seed if seed is not None else (int(attrs["seed"]) if in_twin and "seed" in attrs else 0)
    own_env = env is None
    if own_env:
        env = make_env(TWIN_TASK, cameras=["top"] if record_frames else [])
    twin = env.unwrapped
    recorded_fps = float(attrs["fps"]) if attrs.get("fps") else None
    if recorded_fps is not None and abs(recorded_fps - twin.control_hz) > 1e-6:
        log.warning("%s was recorded at %.1f Hz but the twin steps at %.1f Hz: expect timing errors",
                    path, recorded_fps, twin.control_hz)
    try:
        obs, info = env.reset(seed=layout_seed, options={"arm_qpos": qpos[0, :ARM_DOF], "gripper": qpos[0, ARM_DOF]})
        errors, clamped, frames = [], 0, []
        for t in range(len(actions) - 1):
            obs, _, _, _, info = env.step(actions[t].astype(np.float32))
            sent = info.get("action_sent", twin.last_action_sent)
            clamped += int(not np.allclose(sent[:ARM_DOF], actions[t, :ARM_DOF], atol=1e-6))
            errors.append(np.rad2deg(np.asarray(obs["qpos"][:ARM_DOF], np.float64) - qpos[t + 1, :ARM_DOF]))
            if record_frames:
                frames.append(np.asarray(obs["images/top"]))
    finally:
        if own_env:
            env.close()
    errors_deg = np.abs(np.stack(errors))
    return ReplayReport(
        episode=str(path), steps=len(actions), source=str(attrs.get("source", "unknown")), layout_known=in_twin,
        rms_error_deg=np.sqrt((errors_deg ** 2).mean(axis=0)).round(4).tolist(),
        max_error_deg=float(errors_deg.max()), final_error_deg=float(errors_deg[-1].max()),
        clamped_steps=clamped, recorded_fps=recorded_fps, twin_fps=float(twin.control_hz),
        success=bool(info.get("is_success")) if in_twin else None,
        max_reward=int(info["max_reward"]) if in_twin else None, frames=frames,
    )


__all__ = ["ReplayReport", "replay_episode"]
