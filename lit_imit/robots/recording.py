"""Recording demonstrations on the real myCobot 320: scripted waypoints or hand-guiding.

Both modes write the episode layout of :mod:`lit_imit.data.episodes` (``observations/qpos`` (T, 7),
``observations/images/<cam>``, ``action`` (T, 7), policy units: radians and gripper in [0, 1] with
1 = open) with ``source="robot"``, so robot demos train exactly like simulated ones.

* **Waypoints**: a YAML or JSON file of taught joint poses and gripper values (see :func:`load_waypoints`)
  is interpolated linearly in joint space at the control rate, starting from the measured pose, and sent
  through :meth:`MyCobot320Robot.send_action` by :func:`run_loop`. Each recorded step is the observation
  and the action *actually sent* (after the adapter's clamps). A plan that would need bigger steps than
  the adapter's ``max_delta_deg`` is refused before anything moves.
* **Hand-guiding**: the servos are released (``release_all_servos``) so a person can move the arm, the
  joints are sampled at the control rate, and the action at step t is the measured pose at t+1 (with the
  gripper command in force then). The servos are locked again (``focus_all_servos``, or ``power_on``
  when the controller does not acknowledge that) however the session ends.

Nothing recorded is lost: whatever ends a run -- a serial error, a controller that stops answering,
Ctrl-C, ``kill`` (SIGTERM), a closed terminal (SIGHUP), a bug in a callback -- the steps recorded so far
are written (``success=False`` and an ``aborted`` attribute with the reason) before the error is
reported. An episode is written atomically by the :class:`~lit_imit.data.episodes.EpisodeStore`, so a
crash during the write leaves no half file.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lit_imit.data.episodes import EpisodeStore
from lit_imit.data.recording import EpisodeBuffer
from lit_imit.envs.mycobot import HOME_DEG
from lit_imit.robots.cameras import CameraConfig
from lit_imit.robots.errors import RobotError
from lit_imit.robots.loop import LoopStep, RateLimiter, run_loop
from lit_imit.robots.mycobot320 import HARDWARE_JOINT_LIMITS_DEG, MyCobot320Robot
from lit_imit.signals import stop_signals_as_interrupt, uninterrupted

log = logging.getLogger(__name__)

__all__ = [
    "RecordingResult",
    "RobotEpisodeRecorder",
    "Waypoint",
    "WaypointError",
    "load_waypoints",
    "parse_waypoints",
    "lock_servos",
    "move_to",
    "plan_waypoints",
    "record_handguided",
    "record_waypoints",
    "release_servos",
    "resize_image",
    "send_gripper",
]

ROBOT_NAME = "mycobot320"


class WaypointError(ValueError):
    """A waypoint file is malformed, out of the joint limits, or asks for moves faster than allowed."""


# ---------------------------------------------------------------------------------------------- waypoints
@dataclass(frozen=True)
class Waypoint:
    """A taught pose: six joint angles (degrees), the gripper (0 closed .. 1 open), the time to get
    there from the previous pose and how long to stay."""

    joints_deg: tuple[float, ...]
    gripper: float
    duration_s: float
    hold_s: float = 0.0


_GRIPPER_WORDS = {"open": 1.0, "closed": 0.0, "close": 0.0}


def load_waypoints(path: str | Path) -> list[Waypoint]:
    """Read a waypoint file (``.yaml``/``.yml`` or ``.json``)::

        units: deg            # or rad (joints); default deg
        waypoints:
          - {joints: [22, 4, -98, 4, 90, 22], gripper: open, duration: 2.0}
          - {joints: [...], gripper: 1.0, duration: 1.5, hold: 0.5}
          - {joints: [...], gripper: closed, duration: 0.8}

    ``gripper`` is a number in [0, 1] (1 = open) or ``open``/``closed``; ``duration`` (s, > 0) is the
    time to move there from the previous pose (from the measured pose for the first one); ``hold`` (s)
    the time to stay. Errors name the file and the waypoint.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise WaypointError(f"cannot read waypoint file {path}: {e}") from e
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except Exception as e:  # yaml and json raise different types
        raise WaypointError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {e}") from e
    return parse_waypoints(doc, where=str(path))


def parse_waypoints(doc: Any, where: str = "<waypoints>") -> list[Waypoint]:
    """Waypoints from an already parsed document (see :func:`load_waypoints` for the schema)."""
    if isinstance(doc, list):
        doc = {"waypoints": doc}
    if not isinstance(doc, Mapping) or not isinstance(doc.get("waypoints"), list) or not doc["waypoints"]:
        raise WaypointError(f"{where}: expected a mapping with a non-empty 'waypoints' list")
    units = str(doc.get("units", "deg")).lower()
    if units not in ("deg", "rad"):
        raise WaypointError(f"{where}: units must be 'deg' or 'rad', got {units!r}")
    limits = np.asarray(HARDWARE_JOINT_LIMITS_DEG)
    out = []
    for i, item in enumerate(doc["waypoints"]):
        name = f"{where}: waypoint {i}"
        if not isinstance(item, Mapping):
            raise WaypointError(f"{name}: expected a mapping, got {item!r}")
        unknown = set(item) - {"joints", "gripper", "duration", "hold", "name"}
        if unknown:
            raise WaypointError(f"{name}: unknown keys {sorted(unknown)}")
        try:
            joints = np.asarray(item["joints"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise WaypointError(f"{name}: 'joints' must be six numbers") from e
        if joints.shape != (6,) or not np.isfinite(joints).all():
            raise WaypointError(f"{name}: 'joints' must be six finite numbers, got {item.get('joints')!r}")
        if units == "rad":
            joints = np.rad2deg(joints)
        outside = (joints < limits[:, 0]) | (joints > limits[:, 1])
        if outside.any():
            j = int(np.flatnonzero(outside)[0])
            raise WaypointError(f"{name}: J{j + 1} = {joints[j]:.2f} deg is outside its limits {limits[j].tolist()}")
        gripper = item.get("gripper", 1.0)
        gripper = _GRIPPER_WORDS.get(gripper, gripper) if isinstance(gripper, str) else gripper
        try:
            gripper = float(gripper)
        except (TypeError, ValueError) as e:
            raise WaypointError(f"{name}: 'gripper' must be a number in [0, 1] or open/closed, got {gripper!r}") from e
        if not 0.0 <= gripper <= 1.0:
            raise WaypointError(f"{name}: 'gripper' must be in [0, 1] (1 = open), got {gripper}")
        duration = _seconds(item.get("duration"), f"{name}: 'duration'", positive=True)
        hold = _seconds(item.get("hold", 0.0), f"{name}: 'hold'", positive=False)
        out.append(Waypoint(tuple(float(j) for j in joints), gripper, duration, hold))
    return out


def _seconds(value: Any, what: str, positive: bool) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError) as e:
        raise WaypointError(f"{what} must be a number of seconds, got {value!r}") from e
    if not np.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        raise WaypointError(f"{what} must be {'> 0' if positive else '>= 0'} seconds, got {value!r}")
    return seconds


def plan_waypoints(waypoints: Sequence[Waypoint], start: np.ndarray, fps: float,
                   max_delta_deg: float | Sequence[float] | None = None) -> np.ndarray:
    """Actions (T, 7) in policy units: linear joint-space (and gripper) interpolation at ``fps``.

    ``start`` is the current pose in policy units (7,) (the measured ``qpos``). Segment k takes
    ``round(duration * fps)`` steps (at least one) and then repeats its waypoint ``round(hold * fps)``
    times. With ``max_delta_deg`` a segment that needs larger steps than that is an error (the adapter
    would clamp it and the robot would lag behind the plan), naming the segment and the joint.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    start = np.asarray(start, dtype=np.float64)
    if start.shape != (7,):
        raise ValueError(f"start must be the (7,) pose in policy units, got shape {start.shape}")
    cap = None if max_delta_deg is None else np.broadcast_to(np.asarray(max_delta_deg, dtype=np.float64), (6,))
    steps = []
    previous = start
    for k, wp in enumerate(waypoints):
        goal = np.append(np.deg2rad(wp.joints_deg), wp.gripper)
        n = max(1, int(round(wp.duration_s * fps)))
        per_step = np.rad2deg(np.abs(goal[:6] - previous[:6])) / n
        if cap is not None and (per_step > cap + 1e-9).any():
            j = int(np.argmax(per_step / cap))
            needed = np.rad2deg(abs(goal[j] - previous[j])) / cap[j] / fps
            raise WaypointError(
                f"waypoint {k}: J{j + 1} would move {per_step[j]:.2f} deg per step at {fps:g} Hz, more than the "
                f"robot's max_delta_deg of {cap[j]:.2f}; give it a duration of at least {needed:.2f} s"
            )
        for i in range(1, n + 1):
            steps.append(previous + (goal - previous) * (i / n))
        steps.extend([goal] * int(round(wp.hold_s * fps)))
        previous = goal
    return np.asarray(steps, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- recorder
def resize_image(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 (H, W, 3) resized to ``size`` = (height, width) with antialiased bilinear filtering
    (torch, so no OpenCV is needed); returned unchanged when it already has that size."""
    if size is None or tuple(image.shape[:2]) == tuple(size):
        return image
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


class RobotEpisodeRecorder:
    """Collects executed steps and writes them as one episode -- also when the run that produced them died.

    ``add`` keeps copies (cameras may reuse their buffers). ``save`` writes once; later calls return the
    same id. Besides ``qpos`` and the images, every step stores ``observations/timestamp`` (seconds since
    the first step) and ``observations/stale`` (the joints were a reused earlier reading).
    """

    def __init__(self, store: EpisodeStore, attrs: Mapping[str, Any], image_size: tuple[int, int] | None = None):
        self.store = store
        self.attrs = dict(attrs)
        self.image_size = image_size
        self.buffer = EpisodeBuffer()
        self._t0: float | None = None
        self.episode_id: int | None = None
        self._saved = False

    def __len__(self) -> int:
        return len(self.buffer)

    def add(self, observation: Mapping[str, Any], action: Any, *, stale: bool = False,
            timestamp: float | None = None) -> None:
        now = time.monotonic() if timestamp is None else timestamp
        if self._t0 is None:
            self._t0 = now
        obs = {}
        for key, value in observation.items():
            value = np.array(value, copy=True)
            if key.startswith("images/"):
                value = resize_image(value, self.image_size)
            obs[key] = value
        obs["timestamp"] = np.float32(now - self._t0)
        obs["stale"] = np.bool_(stale)
        self.buffer.add(obs, np.asarray(action, dtype=np.float32))

    def on_step(self, step: LoopStep) -> None:
        """``run_loop``'s callback: the observation and the action that was actually sent."""
        self.add(step.observation, step.action_sent, stale=step.stale, timestamp=step.timestamp)

    def save(self, success: bool, aborted: str | None = None, **attrs: Any) -> int | None:
        """Write the episode (None when no step was recorded: there is nothing to write)."""
        if self._saved:
            return self.episode_id
        self._saved = True
        if len(self.buffer) == 0:
            log.warning("no step was recorded; no episode written%s", f" (aborted: {aborted})" if aborted else "")
            return None
        meta = {**self.attrs, **attrs, "success": bool(success), "steps": len(self.buffer)}
        if aborted is not None:
            meta["aborted"] = aborted
        with uninterrupted():  # a stop signal now waits until the episode is on disk
            self.episode_id = self.store.add(self.buffer.arrays(), meta)
        log.info("wrote episode %d (%d steps%s) to %s", self.episode_id, len(self.buffer),
                 f", aborted: {aborted}" if aborted else "", self.store.root)
        return self.episode_id


@dataclass
class RecordingResult:
    """What one robot recording produced."""

    episode_id: int | None
    steps: int
    success: bool
    aborted: str | None = None  # the reason the run stopped early, None when it completed
    error: BaseException | None = field(default=None, repr=False)


def _base_attrs(robot: MyCobot320Robot, task: str, mode: str, fps: float, extra: Mapping[str, Any] | None) -> dict:
    return {"sim": False, "robot": ROBOT_NAME, "port": robot.port, "task": task, "source": "robot", "round": 0,
            "mode": mode, "fps": float(fps), **(extra or {})}


def _finish(recorder: RobotEpisodeRecorder, aborted: str | None, error: BaseException | None,
            judge: Callable[[], bool] | None) -> RecordingResult:
    """Ask ``judge`` (after a complete run only) and write the episode; a failing judge counts as failure."""
    success = aborted is None
    if success and judge is not None and len(recorder):
        try:
            success = bool(judge())
        except BaseException as e:  # Ctrl-C at the prompt: keep the data, call it unjudged
            recorder.save(False, aborted=f"not judged: {type(e).__name__}")
            raise
    episode_id = recorder.save(success, aborted=aborted)
    return RecordingResult(episode_id, len(recorder), success, aborted, error)


def record_waypoints(robot: MyCobot320Robot, waypoints: Sequence[Waypoint], store: EpisodeStore, *,
                     fps: float | None = None, task: str = "mycobot_move_cube",
                     judge: Callable[[], bool] | None = None, image_size: tuple[int, int] | None = None,
                     attrs: Mapping[str, Any] | None = None) -> RecordingResult:
    """Play ``waypoints`` on a connected robot and record every executed step into ``store``.

    The plan starts from the measured pose. A run that completes is written with ``success=True``
    (or ``judge()``'s verdict); a run stopped by Ctrl-C or by any error is written with
    ``success=False`` and ``aborted`` = the reason, after :func:`run_loop` stopped the arm. Errors are
    not raised: the result carries them (``result.error``), so a caller can decide to go on or stop.
    """
    fps = float(fps or robot.fps)
    start = robot.get_observation()["qpos"]
    plan = plan_waypoints(waypoints, start, fps, robot.max_delta_deg)
    recorder = RobotEpisodeRecorder(store, _base_attrs(robot, task, "waypoints", fps, attrs), image_size)
    actions = iter(plan)
    aborted, error = None, None
    try:
        stats = run_loop(robot, lambda obs: next(actions), len(plan), on_step=recorder.on_step, fps=fps)
        if stats.stop_reason != "completed":
            aborted = f"{stats.stop_reason} after {stats.steps} of {len(plan)} steps"
    except Exception as e:  # run_loop already stopped the arm
        error = e
        reason = getattr(getattr(e, "loop_stats", None), "stop_reason", "error")
        aborted = f"{reason}: {type(e).__name__}: {e}"
        log.error("waypoint recording aborted after %d steps: %s", len(recorder), aborted)
    return _finish(recorder, aborted, error, judge)


def move_to(robot: MyCobot320Robot, joints_deg: Sequence[float], gripper: float = 1.0, duration_s: float = 3.0,
            fps: float | None = None) -> None:
    """Move to a pose along a joint-space line (not recorded); slow enough for the step cap, or longer."""
    fps = float(fps or robot.fps)
    start = robot.get_observation()["qpos"]
    waypoint = Waypoint(tuple(float(j) for j in joints_deg), float(gripper), float(duration_s))
    cap = robot.max_delta_deg
    if cap is not None:  # stretch the move rather than refuse it
        need = np.abs(np.asarray(joints_deg) - np.rad2deg(start[:6])) / np.asarray(cap) / fps
        waypoint = Waypoint(waypoint.joints_deg, waypoint.gripper, max(duration_s, float(need.max()) * 1.1 + 1 / fps))
    plan = plan_waypoints([waypoint], start, fps, cap)
    actions = iter(plan)
    stats = run_loop(robot, lambda obs: next(actions), len(plan), fps=fps)
    if stats.stop_reason != "completed":
        raise RobotError(f"move interrupted ({stats.stop_reason})")


# ---------------------------------------------------------------------------------------------- hand-guiding
def release_servos(robot: MyCobot320Robot) -> None:
    """Let the arm be moved by hand (see :meth:`MyCobot320Robot.release_servos`)."""
    robot.release_servos()


def lock_servos(robot: MyCobot320Robot) -> bool:
    """Hold the arm again (see :meth:`MyCobot320Robot.lock_servos`); never raises."""
    return robot.lock_servos()


def send_gripper(robot: MyCobot320Robot, value: float) -> None:
    """Command only the gripper (0 closed .. 1 open); the arm joints are left alone."""
    robot.set_gripper(value)


def record_handguided(robot: MyCobot320Robot, store: EpisodeStore, *, fps: float | None = None,
                      max_steps: int = 6000, stop: threading.Event | None = None,
                      gripper_fn: Callable[[], float | None] | None = None,
                      ready: Callable[[], None] | None = None, task: str = "mycobot_move_cube",
                      judge: Callable[[], bool] | None = None, image_size: tuple[int, int] | None = None,
                      attrs: Mapping[str, Any] | None = None) -> RecordingResult:
    """Record a hand-guided demonstration on a connected robot.

    ``ready()`` is called before the servos are released (a prompt: "hold the arm, press Enter").
    Then the joints are sampled at ``fps`` until ``stop`` is set, Ctrl-C, or ``max_steps`` samples
    (SIGTERM / SIGHUP also end it, as an aborted recording: the process is being stopped);
    ``gripper_fn()`` is polled every step for a gripper command in [0, 1] (None = unchanged). The servos
    are locked again however the loop ends. Sample t+1's joints (and gripper command) are the action of
    step t, so N samples give N-1 steps. A communication failure ends the recording with ``aborted``.
    """
    fps = float(fps or robot.fps)
    recorder = RobotEpisodeRecorder(store, _base_attrs(robot, task, "handguide", fps, attrs), image_size)
    samples: list[tuple[dict[str, np.ndarray], bool, float]] = []
    aborted, error = None, None
    if ready is not None:
        ready()
    released = False
    with stop_signals_as_interrupt():
        try:
            release_servos(robot)
            released = True
            rate = RateLimiter(fps, name="hand-guiding")
            rate.start()
            while len(samples) < max_steps and not (stop is not None and stop.is_set()):
                command = gripper_fn() if gripper_fn is not None else None
                if command is not None and abs(float(command) - robot.gripper_command / 100.0) >= 0.01:
                    send_gripper(robot, command)
                t = time.monotonic()
                obs = robot.get_observation()
                samples.append((obs, robot.last_observation_stale, t))
                rate.sleep()
        except KeyboardInterrupt as e:
            if getattr(e, "signum", signal.SIGINT) != signal.SIGINT:  # kill / hang-up: not a demo's normal end
                aborted = str(e)
            log.info("hand-guiding ended by %s after %d samples", e or "Ctrl-C", len(samples))
        except Exception as e:
            error = e
            aborted = f"{type(e).__name__}: {e}"
            log.error("hand-guided recording aborted after %d samples: %s", len(samples), aborted)
        finally:
            _lock_and_keep(robot, released, samples, recorder)
    return _finish(recorder, aborted, error, judge)


def _lock_and_keep(robot: MyCobot320Robot, released: bool, samples: list, recorder: RobotEpisodeRecorder) -> None:
    """Lock the servos and turn the samples into steps; a stop signal meanwhile still gets the episode written."""
    try:
        with uninterrupted(stopping=True):
            if released:
                lock_servos(robot)
            for (obs, stale, t), (nxt, _, _) in zip(samples, samples[1:]):
                recorder.add(obs, nxt["qpos"], stale=stale, timestamp=t)
    except KeyboardInterrupt as e:  # held back while locking: write what was recorded, then stop
        recorder.save(False, aborted=str(e) or "interrupted")
        raise


# ---------------------------------------------------------------------------------------------- command lines
def add_robot_arguments(parser: Any) -> None:
    """The real-robot flags shared by ``scripts/record_demos.py`` and ``scripts/deploy.py``."""
    group = parser.add_argument_group("real myCobot 320")
    group.add_argument("--port", default="/dev/ttyUSB0",
                       help="serial port (/dev/ttyUSB0, /dev/ttyACM0, /dev/ttyAMA0 on the Pi)")
    group.add_argument("--baudrate", type=int, default=115200, help="115200 for the 320")
    group.add_argument("--fps", type=float, default=20.0, help="control / sampling rate in Hz")
    group.add_argument("--max-delta-deg", type=float, default=5.0,
                       help="largest joint change per step around the measured pose (deg)")
    group.add_argument("--arm-speed", type=int, default=50, help="pymycobot speed 1-100 for streamed moves")
    group.add_argument("--home", default="twin",
                       help='pose reached at connect: "twin" (the digital twin\'s start pose), "none", or six '
                            'comma-separated degrees')
    group.add_argument("--camera", action="append", default=[], metavar="NAME=DEVICE",
                       help="an OpenCV camera, e.g. top=0 or top=/dev/video2 (repeatable; needs opencv)")
    group.add_argument("--camera-size", default="640x480", help="capture size WxH of the cameras")


def parse_home(text: str) -> tuple[float, ...] | None:
    """``--home``: "twin" -> the twin's start pose, "none" -> no homing, else six degrees."""
    if text.lower() == "none":
        return None
    if text.lower() == "twin":
        return tuple(float(v) for v in HOME_DEG)
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as e:
        raise ValueError(f"--home must be 'twin', 'none' or six comma-separated degrees, got {text!r}") from e
    if len(values) != 6:
        raise ValueError(f"--home needs six angles, got {len(values)}")
    return values


def robot_from_args(args: Any, **overrides: Any) -> MyCobot320Robot:
    """A (not yet connected) :class:`MyCobot320Robot` configured from :func:`add_robot_arguments`' flags."""

    try:
        width, height = (int(v) for v in str(args.camera_size).lower().split("x"))
    except ValueError as e:
        raise ValueError(f"--camera-size must look like 640x480 (WxH), got {args.camera_size!r}") from e
    cameras = {}
    for spec in args.camera:
        name, sep, device = spec.partition("=")
        if not sep or not name or not device:
            raise ValueError(f"--camera must look like NAME=DEVICE (e.g. top=0), got {spec!r}")
        cameras[name] = CameraConfig(device=int(device) if device.isdigit() else device, width=width, height=height)
    kwargs = dict(baudrate=args.baudrate, fps=args.fps, max_delta_deg=args.max_delta_deg, cameras=cameras,
                  arm_speed=args.arm_speed, home_deg=parse_home(args.home))
    kwargs.update(overrides)
    return MyCobot320Robot(args.port, **kwargs)
