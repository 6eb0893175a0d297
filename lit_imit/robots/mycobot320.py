"""Real myCobot 320 behind the same observation/action layout as the simulated twin.

Units, on each side of the adapter:

=================  ======================================  ===========================================
quantity           policy side (obs / action)              wire side (pymycobot, firmware)
=================  ======================================  ===========================================
joints J1..J6      radians, float32                        degrees; on the wire int16 of deg*100
gripper            [0, 1], 1 = open, 0 = closed, float32   integer 0..100, 100 = open, 0 = closed
images             uint8 (H, W, 3) **RGB**                 OpenCV delivers BGR; converted here
=================  ======================================  ===========================================

``get_observation()`` -> ``{"qpos": float32 (7,), "images/<cam>": uint8 (H, W, 3)}``; ``qpos`` is the six
measured joint angles followed by the gripper. The 320's pymycobot class has no gripper read-back, so the
gripper entry is the last value *commanded* (tracked here), not a measurement.

``send_action(a)`` takes the same 7-vector and returns what was actually sent, in policy units, so that
recorded datasets hold executed actions. Before anything reaches the wire it

1. rejects non-finite values or a wrong shape (``UnsafeActionError``; nothing is sent);
2. clamps joints to the soft limits (default: the hardware table of ``pymycobot/robot_info.py``,
   J1 +-168, J2 +-135, J3 +-145, J4 +-145, J5 +-168, J6 +-180 deg) -- pymycobot *raises* on
   out-of-range angles instead of clamping;
3. clamps each joint's step to ``max_delta_deg`` around the *measured* position (LeRobot's
   ``max_relative_target`` semantics; the measurement from the last observation is reused when it is
   fresh, otherwise the joints are read again);
4. sends the gripper only when its integer command changes, and spaces consecutive frames on the bus by
   at least ``min_command_interval_s`` so the controller is not flooded.

Communication: every pymycobot call waits for the controller's reply and re-sends the command up to
three times when none comes (``MyCobot320._res``); a missing reply comes back as ``-1``. The adapter
counts invalid or missing replies in a row and raises ``RobotCommunicationError`` after
``max_consecutive_failures``; a broken link (cable pulled, port gone) raises it at once.

``run_loop`` drives a policy at a fixed rate, hands every executed step to a callback as soon as it
exists, and stops the arm (``stop()``; power stays on, no servo is released, so the arm holds its pose)
when the loop ends abnormally: Ctrl-C, a communication error, a policy that produces no action within
its timeout, or any other exception.

Tested without hardware against ``lit_imit.robots.emulator.MyCobot320Emulator`` (a firmware emulator on
a pseudo-terminal, so the real pymycobot code runs end to end).
"""

from __future__ import annotations

import logging
import math
import queue
import struct
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lit_imit.envs.mycobot_limits import MYCOBOT320_JOINT_LIMITS_DEG
from lit_imit.signals import stop_signals_as_interrupt, uninterrupted

try:  # termios.error is what tcflush raises on a vanished tty; not an OSError subclass
    import termios

    _TERMIOS_ERRORS: tuple[type[BaseException], ...] = (termios.error,)
except ImportError:  # Windows
    _TERMIOS_ERRORS = ()

log = logging.getLogger(__name__)

__all__ = [
    "CameraConfig",
    "CameraError",
    "HARDWARE_JOINT_LIMITS_DEG",
    "LoopStats",
    "LoopStep",
    "MyCobot320Robot",
    "OpenCVCamera",
    "PolicyTimeoutError",
    "RateLimiter",
    "RobotCommunicationError",
    "RobotError",
    "UnsafeActionError",
    "describe_error_code",
    "run_loop",
]

#: (min, max) per joint in degrees, from pymycobot/robot_info.py "MyCobot320" (the table the twin uses too).
HARDWARE_JOINT_LIMITS_DEG = MYCOBOT320_JOINT_LIMITS_DEG
GRIPPER_OPEN = 100
GRIPPER_CLOSED = 0
ACTION_NAMES = ("j1", "j2", "j3", "j4", "j5", "j6", "gripper")


# ---------------------------------------------------------------------------------------------- errors
class RobotError(RuntimeError):
    """The robot cannot do what was asked (not connected, did not reach home, reports an error)."""


class RobotCommunicationError(RobotError):
    """The controller stopped answering, answered nonsense too often, or the serial link broke."""


class UnsafeActionError(ValueError):
    """An action was refused before anything was sent (NaN/inf, wrong shape)."""


class PolicyTimeoutError(RobotError):
    """The policy produced no action within its timeout; the arm was stopped."""


class CameraError(RobotError):
    """A camera could not be opened, delivers the wrong resolution, or stopped delivering frames."""


_ERROR_CODES = {0: "no error", 32: "inverse kinematics has no solution"}
_ERROR_CODES.update({j: f"joint {j} exceeds its limit" for j in range(1, 7)})
_ERROR_CODES.update({c: "collision protection triggered" for c in range(16, 20)})
_ERROR_CODES.update({c: "linear motion has no adjacent solution" for c in (33, 34)})


def describe_error_code(code: int) -> str:
    """Human-readable meaning of ``get_error_information()`` (pymycobot generate.py docstring)."""
    return _ERROR_CODES.get(code, f"unknown error code {code}")


# ---------------------------------------------------------------------------------------------- cameras
# OpenCV property ids (stable enum values), so a capture factory without cv2 can be used in tests.
_CAP_PROP_FRAME_WIDTH, _CAP_PROP_FRAME_HEIGHT, _CAP_PROP_FPS, _CAP_PROP_BUFFERSIZE = 3, 4, 5, 38


@dataclass
class CameraConfig:
    """One OpenCV camera: ``device`` is an index (0 = /dev/video0) or a path / URL."""

    device: int | str
    width: int = 640
    height: int = 480
    fps: float | None = 30.0
    timeout_s: float = 1.0  # the newest frame may be at most this old; also the wait for the first one


def _opencv_capture(device: int | str):
    """Open ``device`` with OpenCV, imported lazily so the arm works without it."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError(
            "camera support needs OpenCV: pip install opencv-python-headless (or run without cameras)"
        ) from e
    return cv2.VideoCapture(device)


class OpenCVCamera:
    """A camera read in a background thread, so ``read()`` returns the newest frame.

    Why a thread: OpenCV queues frames inside the driver; reading one frame per control step at a lower
    rate than the camera's would hand out frames that are several periods old. The grabber keeps only
    the latest one.
    """

    def __init__(self, name: str, config: CameraConfig, capture_factory: Callable[[Any], Any] | None = None):
        self.name = name
        self.config = config
        self._factory = capture_factory or _opencv_capture
        self._cap = None
        self._frame: np.ndarray | None = None
        self._frame_time = 0.0
        self._error: str | None = None
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_connected(self) -> bool:
        return self._thread is not None

    def connect(self) -> None:
        """Open the device, ask for the configured mode, check the first frame's size, start grabbing."""
        c = self.config
        cap = self._factory(c.device)
        if cap is None or not cap.isOpened():
            raise CameraError(f"camera {self.name!r}: could not open device {c.device!r}")
        self._cap = cap
        cap.set(_CAP_PROP_FRAME_WIDTH, c.width)
        cap.set(_CAP_PROP_FRAME_HEIGHT, c.height)
        if c.fps:
            cap.set(_CAP_PROP_FPS, c.fps)
        cap.set(_CAP_PROP_BUFFERSIZE, 1)
        self._stop.clear()
        self._thread = threading.Thread(target=self._grab, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        try:
            frame = self.read()
        except CameraError:
            self.disconnect()
            raise
        if frame.shape != (c.height, c.width, 3):
            self.disconnect()
            raise CameraError(
                f"camera {self.name!r} ({c.device!r}) delivers frames of shape {frame.shape}, "
                f"configured for ({c.height}, {c.width}, 3); pick a mode the camera supports"
            )

    def _grab(self) -> None:
        failures = 0
        while not self._stop.is_set():
            ok, frame = self._cap.read()
            if not ok or frame is None or frame.ndim != 3 or frame.shape[2] != 3:
                failures += 1
                if failures >= 10:
                    with self._lock:
                        self._error = (f"camera {self.name!r} ({self.config.device!r}) "
                                       "failed to deliver 10 frames in a row")
                        self._new_frame.notify_all()
                    return
                time.sleep(0.005)
                continue
            failures = 0
            rgb = np.ascontiguousarray(frame[..., ::-1], dtype=np.uint8)  # BGR -> RGB
            with self._lock:
                self._frame, self._frame_time = rgb, time.monotonic()
                self._new_frame.notify_all()

    def read(self) -> np.ndarray:
        """Newest RGB frame, uint8 (H, W, 3). Raises ``CameraError`` if none is recent enough."""
        if self._thread is None:
            raise CameraError(f"camera {self.name!r} is not connected")
        timeout = self.config.timeout_s
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if self._error:
                    raise CameraError(self._error)
                now = time.monotonic()
                if self._frame is not None and now - self._frame_time <= timeout:
                    return self._frame
                if now >= deadline:
                    age = "no frame yet" if self._frame is None else f"newest frame {now - self._frame_time:.2f}s old"
                    raise CameraError(f"camera {self.name!r} ({self.config.device!r}): {age} after waiting {timeout}s")
                self._new_frame.wait(deadline - now)

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _make_camera(name: str, spec: Any) -> Any:
    """Turn a ``cameras`` entry into a camera object (anything with connect/read/disconnect passes as is)."""
    if not name or "/" in name:
        raise ValueError(f"camera name {name!r} must be non-empty and contain no '/' (it becomes images/<name>)")
    if all(hasattr(spec, m) for m in ("connect", "read", "disconnect")):
        return spec
    if isinstance(spec, CameraConfig):
        return OpenCVCamera(name, spec)
    if isinstance(spec, Mapping):
        return OpenCVCamera(name, CameraConfig(**spec))
    if isinstance(spec, (int, str)):
        return OpenCVCamera(name, CameraConfig(device=spec))
    raise TypeError(
        f"camera {name!r}: expected a CameraConfig, a dict, a device index/path or a camera object, got {spec!r}"
    )


# ---------------------------------------------------------------------------------------------- pymycobot
_INVALID = object()  # a reply pymycobot could not parse


def _pymycobot_client(port: str, baudrate: int, reply_timeout_s: float):
    """Open the port with pymycobot's ``MyCobot320`` and bound how long it waits for each reply.

    pymycobot waits 0.5 s per reply on Linux (0.15 s on Windows) and tries three times, so a silent
    controller stalls a call for 1.5 s; ``reply_timeout_s`` replaces that per-try wait. pymycobot also
    configures the *root* logger when it finds no handler there (level WARNING plus a stream handler);
    a temporary NullHandler keeps it from touching the application's logging.
    """
    from pymycobot import MyCobot320
    from pymycobot.common import read as pymycobot_read

    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        client = MyCobot320(port, baudrate, timeout=min(0.1, reply_timeout_s))
    finally:
        root.removeHandler(guard)

    def read_with_timeout(genre, *args, **kwargs):
        kwargs.setdefault("timeout", reply_timeout_s)
        return pymycobot_read(client, genre, *args, **kwargs)

    client._read = read_with_timeout
    return client


def _link_errors() -> tuple[type[BaseException], ...]:
    import serial

    return (serial.SerialException, OSError) + _TERMIOS_ERRORS


# ---------------------------------------------------------------------------------------------- robot
class MyCobot320Robot:
    """Elephant Robotics myCobot 320 over pymycobot, with the simulator's observation/action layout.

    Not thread-safe: use it from one thread (``run_loop`` does). Usable as a context manager, which
    connects on enter and stops / closes the port on exit.

    Args:
        port: serial device, e.g. ``/dev/ttyUSB0`` / ``/dev/ttyACM0`` (USB) or ``/dev/ttyAMA0`` (the Pi build).
        baudrate: 115200 for the 320 (pymycobot's ``PI_BAUD`` = 1000000 is the 280-Pi value; do not use it).
        fps: control rate of ``run_loop`` (Hz). ~20 Hz is realistic: each step costs one angle read, one
            arm command and sometimes a gripper command, each a full serial round-trip.
        max_delta_deg: largest change per step of each joint relative to the measured position (degrees;
            one number or six). ``None`` disables the cap (not recommended).
        cameras: ``{name: CameraConfig | dict | device index/path | camera object}``; frames appear as
            ``images/<name>``.
        soft_joint_limits_deg: six (min, max) pairs inside the hardware limits; defaults to the hardware table.
        arm_speed: pymycobot speed (1-100) for streamed ``send_angles``.
        gripper_speed: pymycobot speed (1-100) for the gripper.
        gripper_type: pymycobot gripper type (1 adaptive, 3 parallel, 4 flexible) or None for the default.
        gripper_deadband: smallest change of the integer gripper command (0-100) that is sent.
        home_deg: pose reached at ``connect()`` (degrees); None skips homing.
        home_gripper: gripper command at ``connect()`` (0-100, 100 = open); it starts the tracked value.
        home_speed / home_timeout_s / home_tolerance_deg: the slow move home and when it counts as reached.
        home_on_disconnect: also go home before closing the port (default: just stop).
        read_attempts: joint reads tried per observation before reusing the last good reading.
        max_consecutive_failures: invalid or missing replies in a row before ``RobotCommunicationError``.
        read_margin_deg: readings beyond the hardware limits by more than this are rejected as corrupt.
        reply_timeout_s: how long pymycobot waits for each reply (it tries 3 times); 0.5 is pymycobot's own.
        min_command_interval_s: minimum pause between two frames on the bus.
        measurement_max_age_s: the last observation's joints are reused for the ``max_delta_deg`` clamp
            when younger than this; otherwise ``send_action`` reads the joints first.
        client_factory: ``(port, baudrate, reply_timeout_s) -> client``; defaults to pymycobot's MyCobot320.
    """

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        fps: float = 20.0,
        max_delta_deg: float | Sequence[float] | None = 5.0,
        cameras: Mapping[str, Any] | None = None,
        *,
        soft_joint_limits_deg: Sequence[Sequence[float]] | None = None,
        arm_speed: int = 50,
        gripper_speed: int = 50,
        gripper_type: int | None = None,
        gripper_deadband: int = 1,
        home_deg: Sequence[float] | None = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        home_gripper: int = GRIPPER_OPEN,
        home_speed: int = 20,
        home_timeout_s: float = 20.0,
        home_tolerance_deg: float = 1.0,
        home_on_disconnect: bool = False,
        read_attempts: int = 3,
        max_consecutive_failures: int = 5,
        read_margin_deg: float = 5.0,
        reply_timeout_s: float = 0.5,
        min_command_interval_s: float = 0.01,
        measurement_max_age_s: float = 0.25,
        client_factory: Callable[[str, int, float], Any] | None = None,
    ) -> None:
        self.port = port
        self.baudrate = int(baudrate)
        self.fps = _positive("fps", fps)
        self.soft_limits_deg = _soft_limits(soft_joint_limits_deg)
        self.max_delta_deg = None if max_delta_deg is None else _per_joint("max_delta_deg", max_delta_deg)
        self.arm_speed = _speed("arm_speed", arm_speed)
        self.gripper_speed = _speed("gripper_speed", gripper_speed)
        self.home_speed = _speed("home_speed", home_speed)
        if gripper_type not in (None, 1, 3, 4):
            raise ValueError(
                f"gripper_type must be None, 1 (adaptive), 3 (parallel) or 4 (flexible), got {gripper_type!r}"
            )
        self.gripper_type = gripper_type
        self.gripper_deadband = max(1, int(gripper_deadband))
        self.home_deg = None if home_deg is None else self._checked_home(home_deg)
        if not GRIPPER_CLOSED <= int(home_gripper) <= GRIPPER_OPEN:
            raise ValueError(f"home_gripper must be in 0..100, got {home_gripper}")
        self.home_gripper = int(home_gripper)
        self.home_timeout_s = _positive("home_timeout_s", home_timeout_s)
        self.home_tolerance_deg = _positive("home_tolerance_deg", home_tolerance_deg)
        self.home_on_disconnect = home_on_disconnect
        self.read_attempts = max(1, int(read_attempts))
        self.max_consecutive_failures = max(1, int(max_consecutive_failures))
        self.read_margin_deg = float(read_margin_deg)
        self.reply_timeout_s = _positive("reply_timeout_s", reply_timeout_s)
        self.min_command_interval_s = max(0.0, float(min_command_interval_s))
        self.measurement_max_age_s = float(measurement_max_age_s)
        self._client_factory = client_factory or _pymycobot_client
        self.cameras = {name: _make_camera(name, spec) for name, spec in (cameras or {}).items()}

        self._client = None
        self._link_lost = False
        self._last_frame_end = 0.0
        self._consecutive_failures = 0
        self._last_failure = ""
        self._joints_deg: np.ndarray | None = None  # last valid reading
        self._joints_time = -math.inf
        self._gripper_cmd = self.home_gripper
        self.last_observation_stale = False
        self.last_action_sent: np.ndarray | None = None
        self.stats = dict.fromkeys(("reads", "invalid_reads", "stale_observations", "actions", "limit_clamped",
                                    "delta_clamped", "gripper_commands", "missing_acks"), 0)

    # ------------------------------------------------------------------ description
    @property
    def observation_features(self) -> dict[str, tuple]:
        """Observation keys -> shapes (known before connecting)."""
        feats: dict[str, tuple] = {"qpos": (7,)}
        for name, cam in self.cameras.items():
            cfg = getattr(cam, "config", None)
            feats[f"images/{name}"] = (cfg.height, cfg.width, 3) if cfg is not None else (None, None, 3)
        return feats

    @property
    def action_features(self) -> dict[str, tuple]:
        return {"action": (7,)}

    @property
    def is_connected(self) -> bool:
        return self._client is not None

    @property
    def gripper_command(self) -> int:
        """The tracked gripper command on the wire scale (0 closed .. 100 open)."""
        return self._gripper_cmd

    @property
    def measured_joints_deg(self) -> np.ndarray | None:
        """The last valid joint reading in degrees (None before the first)."""
        return None if self._joints_deg is None else self._joints_deg.copy()

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        """Open cameras and port, power on, fresh mode, check errors, take the initial reading, go home."""
        if self.is_connected:
            raise RobotError(f"myCobot 320 on {self.port} is already connected")
        try:
            for cam in self.cameras.values():  # cameras first: a missing camera should not move the arm
                cam.connect()
            self._open_client()
            self._power_on()
            self._require_ack("set_fresh_mode", self._call("set_fresh_mode", 1))
            self._check_controller_errors()
            self._read_joints_deg()
            self._command_gripper(self.home_gripper)
            if self.home_deg is not None:
                self._move_home()
        except BaseException:
            self._close(stop=True)  # the arm may already be on its way home
            raise
        log.info("myCobot 320 on %s connected, joints %s deg", self.port, np.round(self._joints_deg, 2).tolist())

    def disconnect(self) -> None:
        """Stop (or go home, if configured) and close the port and cameras. Never releases the servos."""
        if self.is_connected and not self._link_lost and self.home_on_disconnect and self.home_deg is not None:
            try:
                self._move_home()
            except RobotError as e:
                log.error("could not go home before disconnecting: %s", e)
        self._close(stop=True)

    def __enter__(self) -> "MyCobot320Robot":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()

    def _open_client(self) -> None:
        try:
            self._client = self._client_factory(self.port, self.baudrate, self.reply_timeout_s)
        except _link_errors() as e:
            raise RobotCommunicationError(
                f"could not open serial port {self.port!r} for the myCobot 320: {e} "
                "(check the device path, permissions -- e.g. the dialout group -- and that no other program holds it)"
            ) from e
        self._link_lost = False
        self._consecutive_failures = 0
        self._joints_deg, self._joints_time = None, -math.inf  # never reuse a reading from an earlier session
        self.last_observation_stale = False

    def _close(self, stop: bool) -> None:
        if self._client is not None:
            if stop:
                self.safe_stop()
            close = getattr(self._client, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as e:  # closing a dead port is allowed to fail
                    log.debug("closing %s: %s", self.port, e)
            self._client = None
        for cam in self.cameras.values():
            try:
                cam.disconnect()
            except Exception as e:
                log.warning("camera disconnect failed: %s", e)

    def _power_on(self) -> None:
        if self._call("power_on") in (-1, None, _INVALID):
            raise RobotCommunicationError(
                f"the controller on {self.port} did not answer power_on; check the port, the baud rate "
                f"({self.baudrate}; the 320 uses 115200) and that the robot is switched on"
            )
        if self._call("is_power_on") != 1:
            raise RobotError(f"the myCobot 320 on {self.port} did not report power on after power_on()")

    def _check_controller_errors(self) -> None:
        code = self._call("get_error_information")
        if code in (-1, None, _INVALID):
            self._note_failure("get_error_information: no valid reply")
            return
        if code == 0:
            return
        log.warning("controller reports error %s (%s); clearing it", code, describe_error_code(code))
        self._call("clear_error_information")
        code = self._call("get_error_information")
        if code not in (0, -1, None, _INVALID):
            raise RobotError(
                f"the myCobot 320 on {self.port} reports error {code} ({describe_error_code(code)}) "
                "that clear_error_information() did not clear; fix it (e.g. with the robot's own tools) first"
            )

    def _move_home(self) -> None:
        """Slow move to ``home_deg``; waits by polling the joints until within tolerance or timeout."""
        passed, wire = _quantise_deg(self.home_deg)
        self._require_ack("send_angles", self._call("send_angles", passed, self.home_speed))
        deadline = time.monotonic() + self.home_timeout_s
        while True:
            joints, stale = self._read_joints_deg()
            err = np.abs(joints - wire)
            if not stale and err.max() <= self.home_tolerance_deg:
                return
            if time.monotonic() > deadline:
                self.safe_stop()
                worst = int(err.argmax())
                raise RobotError(
                    f"the arm did not reach home within {self.home_timeout_s}s: joints "
                    f"{np.round(joints, 2).tolist()} deg, home {np.round(wire, 2).tolist()} deg (largest error "
                    f"{err[worst]:.2f} deg on J{worst + 1}); is something in the way, or is home_speed too low?"
                )
            time.sleep(0.05)

    def _checked_home(self, home_deg: Sequence[float]) -> np.ndarray:
        home = np.asarray(home_deg, dtype=np.float64)
        if home.shape != (6,) or not np.isfinite(home).all():
            raise ValueError(f"home_deg must be 6 finite angles in degrees, got {home_deg!r}")
        lo, hi = self.soft_limits_deg
        if (home < lo).any() or (home > hi).any():
            raise ValueError(f"home_deg {home.tolist()} is outside the soft joint limits")
        return home

    # ------------------------------------------------------------------ bus
    def _call(self, name: str, *args: Any) -> Any:
        """One pymycobot call: frame spacing, link errors -> RobotCommunicationError, parse errors -> _INVALID."""
        if self._client is None:
            raise RobotError(f"myCobot 320 on {self.port} is not connected; call connect() first")
        if self._link_lost:
            raise RobotCommunicationError(f"the serial link to {self.port} was lost earlier; reconnect first")
        wait = self._last_frame_end + self.min_command_interval_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            return getattr(self._client, name)(*args)
        except _link_errors() as e:
            self._link_lost = True
            raise RobotCommunicationError(
                f"serial link to the myCobot 320 on {self.port} failed during {name}(): {e}"
            ) from e
        except (struct.error, IndexError) as e:  # pymycobot choked on a malformed reply
            log.debug("%s(): unparsable reply: %s", name, e)
            return _INVALID
        finally:
            self._last_frame_end = time.monotonic()

    def _note_failure(self, reason: str) -> None:
        self._consecutive_failures += 1
        self._last_failure = reason
        if self._consecutive_failures >= self.max_consecutive_failures:
            raise RobotCommunicationError(
                f"the myCobot 320 on {self.port} gave {self._consecutive_failures} invalid or missing replies in a row "
                f"(last: {reason}); check the cable, the power and that no other program uses the port"
            )

    def _require_ack(self, name: str, result: Any) -> bool:
        """Count a missing acknowledgement (pymycobot returns -1 after three unanswered tries)."""
        if result in (-1, None) or result is _INVALID:
            self.stats["missing_acks"] += 1
            log.warning("%s(): no acknowledgement from the controller", name)
            self._note_failure(f"{name}: no acknowledgement")
            return False
        self._consecutive_failures = 0
        return True

    # ------------------------------------------------------------------ reading
    def _validate_angles(self, raw: Any) -> tuple[np.ndarray | None, str]:
        if raw is _INVALID:
            return None, "unparsable reply"
        if raw is None or raw == -1:
            return None, "no valid reply (-1)"
        if not isinstance(raw, (list, tuple)):
            return None, f"unexpected reply {raw!r}"
        if len(raw) != 6:
            return None, f"{len(raw)} values instead of 6 ({raw!r})"
        try:
            q = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            return None, f"non-numeric values {raw!r}"
        if not np.isfinite(q).all():
            return None, f"non-finite values {raw!r}"
        for i, (lo, hi) in enumerate(HARDWARE_JOINT_LIMITS_DEG):
            if not lo - self.read_margin_deg <= q[i] <= hi + self.read_margin_deg:
                return None, f"J{i + 1} = {q[i]} deg is outside its range [{lo}, {hi}]"
        return q, ""

    def _read_joints_deg(self) -> tuple[np.ndarray, bool]:
        """Valid joint angles in degrees and whether they are a stale reuse of an earlier reading.

        Tries ``read_attempts`` times; if all fail and an earlier reading exists, that one is reused
        (the failures keep counting, so a robot that stays silent still ends in a clear error).
        """
        for _ in range(self.read_attempts):
            self.stats["reads"] += 1
            joints, reason = self._validate_angles(self._call("get_angles"))
            if joints is not None:
                self._consecutive_failures = 0
                self._joints_deg, self._joints_time = joints, time.monotonic()
                return joints.copy(), False
            self.stats["invalid_reads"] += 1
            log.debug("get_angles rejected: %s", reason)
            self._note_failure(f"get_angles: {reason}")
        if self._joints_deg is None:
            raise RobotCommunicationError(
                f"could not read the joint angles of the myCobot 320 on {self.port} (last: {self._last_failure})"
            )
        self.stats["stale_observations"] += 1
        log.warning("joint read failed %d times (last: %s); reusing the reading from %.2fs ago",
                    self.read_attempts, self._last_failure, time.monotonic() - self._joints_time)
        return self._joints_deg.copy(), True

    def get_observation(self) -> dict[str, np.ndarray]:
        """``{"qpos": float32 (7,), "images/<cam>": uint8 (H, W, 3) RGB}``; see the module docstring."""
        joints, stale = self._read_joints_deg()
        self.last_observation_stale = stale
        qpos = np.empty(7, dtype=np.float32)
        qpos[:6] = np.deg2rad(joints)
        qpos[6] = self._gripper_cmd / GRIPPER_OPEN
        obs = {"qpos": qpos}
        for name, cam in self.cameras.items():
            obs[f"images/{name}"] = cam.read()
        return obs

    # ------------------------------------------------------------------ acting
    def send_action(self, action: Any) -> np.ndarray:
        """Clamp and send one 7-D action (radians + gripper in [0, 1]); return what was sent, same units."""
        if not self.is_connected:
            raise RobotError(f"myCobot 320 on {self.port} is not connected; call connect() first")
        a = _as_action(action)
        target = self._clamp_joints(np.rad2deg(a[:6]))
        passed, wire = _quantise_deg(target)
        self._require_ack("send_angles", self._call("send_angles", passed, self.arm_speed))
        gripper = int(round(float(np.clip(a[6], 0.0, 1.0)) * GRIPPER_OPEN))
        if abs(gripper - self._gripper_cmd) >= self.gripper_deadband:
            self._command_gripper(gripper)
        sent = np.empty(7, dtype=np.float32)
        sent[:6] = np.deg2rad(wire)
        sent[6] = self._gripper_cmd / GRIPPER_OPEN
        self.stats["actions"] += 1
        self.last_action_sent = sent
        return sent.copy()

    def _clamp_joints(self, target_deg: np.ndarray) -> np.ndarray:
        """Soft limits, then the per-step cap around the measured joints, then the hardware limits."""
        lo, hi = self.soft_limits_deg
        clamped = np.clip(target_deg, lo, hi)
        if (clamped != target_deg).any():
            self.stats["limit_clamped"] += 1
            log.debug("action clamped to soft limits: %s -> %s", target_deg, clamped)
        if self.max_delta_deg is not None:
            measured = self._measured_for_delta()
            capped = np.clip(clamped, measured - self.max_delta_deg, measured + self.max_delta_deg)
            if (capped != clamped).any():
                self.stats["delta_clamped"] += 1
                log.debug("step capped at %s deg around %s: %s -> %s", self.max_delta_deg, measured, clamped, capped)
            clamped = capped
        hw = np.asarray(HARDWARE_JOINT_LIMITS_DEG)
        return np.clip(clamped, hw[:, 0], hw[:, 1])

    def _measured_for_delta(self) -> np.ndarray:
        if self._joints_deg is not None and time.monotonic() - self._joints_time <= self.measurement_max_age_s:
            return self._joints_deg  # only valid readings set the time, so a stale reuse is never "fresh"
        joints, stale = self._read_joints_deg()
        if stale:  # no fresh measurement: do not move further from the last known pose than one step
            log.warning("no fresh joint reading for the step cap; capping around the last known pose")
        return joints

    def _command_gripper(self, value: int) -> None:
        args: tuple = (int(value), self.gripper_speed) + (() if self.gripper_type is None else (self.gripper_type,))
        if self._require_ack("set_gripper_value", self._call("set_gripper_value", *args)):
            self._gripper_cmd = int(value)
            self.stats["gripper_commands"] += 1

    def set_gripper(self, value: float) -> None:
        """Command only the gripper (0 closed .. 1 open), leaving the arm alone (hand-guided recording)."""
        value = float(value)
        if not np.isfinite(value):
            raise UnsafeActionError(f"gripper command must be finite, got {value}")
        self._command_gripper(int(round(float(np.clip(value, 0.0, 1.0)) * 100)))

    def release_servos(self) -> None:
        """Let the arm be moved by hand (``release_all_servos``). The arm sags under gravity: hold it first.

        Raises RobotError when the controller does not acknowledge, so a recording never starts on an arm
        that is still holding.
        """
        if not self._require_ack("release_all_servos", self._call("release_all_servos")):
            raise RobotError(f"the myCobot 320 on {self.port} did not acknowledge release_all_servos")

    def lock_servos(self) -> bool:
        """Hold the arm where it is again: ``focus_all_servos``, else ``power_on`` (which also re-enables all
        servos). Never raises (it runs on the way out of a failed recording); returns whether the controller
        acknowledged one of them. A stop signal while locking is ignored: a half-sent lock leaves the arm limp."""
        with uninterrupted(stopping=True):
            return self._lock()

    def _lock(self) -> bool:
        for name in ("focus_all_servos", "power_on"):
            try:
                if self._require_ack(name, self._call(name)):
                    return True
            except Exception as e:  # the link may be gone: report, try the next, never mask the original error
                log.error("%s failed on %s: %s", name, self.port, e)
        log.error("could not lock the servos of the myCobot 320 on %s: support the arm by hand", self.port)
        return False

    def safe_stop(self) -> bool:
        """Stop the arm where it is (power stays on, servos hold). Never raises; returns success.

        A second stop signal (Ctrl-C, SIGTERM) while stopping is ignored rather than cutting the stop short.
        """
        with uninterrupted(stopping=True):
            return self._stop()

    def _stop(self) -> bool:
        if self._client is None or self._link_lost:
            log.error("cannot stop the myCobot 320 on %s: the serial link is gone -- use the robot's emergency stop "
                      "if it is still moving", self.port)
            return False
        try:
            ok = self._call("stop") not in (-1, None, _INVALID)
        except RobotError as e:
            log.error("stop() failed on %s: %s -- use the robot's emergency stop if it is still moving", self.port, e)
            return False
        if not ok:
            log.error("stop() on %s was not acknowledged", self.port)
        return ok


# ---------------------------------------------------------------------------------------------- helpers
def _positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return value


def _speed(name: str, value: int) -> int:
    if int(value) != value or not 1 <= int(value) <= 100:
        raise ValueError(f"{name} must be an integer in 1..100 (pymycobot's speed scale), got {value}")
    return int(value)


def _per_joint(name: str, value: float | Sequence[float]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(6, float(arr))
    if arr.shape != (6,) or not np.isfinite(arr).all() or (arr <= 0).any():
        raise ValueError(f"{name} must be one positive number or six, got {value!r}")
    return arr


def _soft_limits(limits: Sequence[Sequence[float]] | None) -> tuple[np.ndarray, np.ndarray]:
    hw = np.asarray(HARDWARE_JOINT_LIMITS_DEG, dtype=np.float64)
    if limits is None:
        return hw[:, 0].copy(), hw[:, 1].copy()
    arr = np.asarray(limits, dtype=np.float64)
    if arr.shape != (6, 2) or not np.isfinite(arr).all() or (arr[:, 0] >= arr[:, 1]).any():
        raise ValueError(f"soft_joint_limits_deg must be six (min, max) pairs with min < max, got {limits!r}")
    if (arr[:, 0] < hw[:, 0]).any() or (arr[:, 1] > hw[:, 1]).any():
        raise ValueError(f"soft_joint_limits_deg {arr.tolist()} exceed the hardware limits {hw.tolist()}")
    return arr[:, 0].copy(), arr[:, 1].copy()


def _as_action(action: Any) -> np.ndarray:
    """A (7,) float64 array from a list / numpy / torch action; (1, 7) batches are accepted."""
    if hasattr(action, "detach"):  # torch tensor, possibly on an accelerator
        action = action.detach().cpu().numpy()
    try:
        a = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise UnsafeActionError(f"action is not numeric: {action!r}") from e
    if a.shape == (1, 7):
        a = a[0]
    if a.shape != (7,):
        raise UnsafeActionError(f"action must have shape (7,) = 6 joint angles [rad] + gripper [0..1], got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        names = [ACTION_NAMES[i] for i in np.flatnonzero(bad)]
        raise UnsafeActionError(f"action has non-finite values in {names}: {a.tolist()}; nothing was sent")
    return a


def _quantise_deg(deg: np.ndarray) -> tuple[list[float], np.ndarray]:
    """Floats to hand to pymycobot and the exact angles that will be on the wire.

    pymycobot encodes ``int(deg * 100)``, which truncates and so sends e.g. 0.29 as 0.28. Rounding to
    the 0.01 degree grid here and nudging the float half a step away from zero makes the wire value
    the rounded one, so the returned "sent" action is exactly what the controller received.
    """
    hw = np.asarray(HARDWARE_JOINT_LIMITS_DEG)
    wire = np.round(np.asarray(deg, dtype=np.float64) * 100.0)
    passed = (wire + 0.5 * np.sign(wire)) / 100.0
    passed = np.clip(passed, hw[:, 0], hw[:, 1])  # pymycobot raises on anything outside the limits
    wire_deg = np.array([int(p * 100) for p in passed], dtype=np.float64) / 100.0
    return [float(p) for p in passed], wire_deg


# ---------------------------------------------------------------------------------------------- control loop
class RateLimiter:
    """Fixed-period pacing. ``sleep()`` waits for the next tick; a step that took longer is an overrun.

    An overrun re-anchors the schedule at "now" instead of trying to catch up with a burst of short
    periods (which would make the arm jerk). Overruns are counted and logged at most once a second.
    """

    def __init__(self, fps: float, *, tolerance_s: float = 0.001, name: str = "control loop") -> None:
        self.period = 1.0 / _positive("fps", fps)
        self.tolerance_s = tolerance_s
        self.name = name
        self.overruns = 0
        self.ticks = 0
        self._next: float | None = None
        self._last_log = -math.inf

    def start(self) -> None:
        self._next = time.monotonic() + self.period

    def sleep(self) -> bool:
        """Wait until the next tick; return True if this step overran its period."""
        if self._next is None:
            self.start()
        now = time.monotonic()
        self.ticks += 1
        if now > self._next + self.tolerance_s:
            self.overruns += 1
            late = now - self._next
            if now - self._last_log >= 1.0:
                self._last_log = now
                log.warning("%s overran its %.1f ms period by %.1f ms (%d overruns so far)",
                            self.name, self.period * 1e3, late * 1e3, self.overruns)
            self._next = now + self.period
            return True
        _precise_sleep_until(self._next)
        self._next += self.period
        return False


def _precise_sleep_until(deadline: float) -> None:
    """Coarse sleep, then short sleeps for the last 2 ms (time.sleep alone overshoots by up to ~1 ms)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(left - 0.002 if left > 0.003 else min(left, 0.0002))


@dataclass
class LoopStep:
    """One executed control step, handed to ``on_step`` as soon as the action was sent."""

    index: int
    timestamp: float  # time.monotonic() when the observation was taken
    observation: dict[str, np.ndarray]
    action: np.ndarray  # what the policy asked for
    action_sent: np.ndarray  # what the robot was told to do (record this one)
    stale: bool  # the observation reused an earlier joint reading


@dataclass
class LoopStats:
    steps: int = 0
    overruns: int = 0
    stop_reason: str = "running"  # completed | interrupted | policy_timeout | communication_error | error
    period_s: float = 0.0
    step_times_s: list[float] = field(default_factory=list)  # work time per step, before the wait

    @property
    def max_step_s(self) -> float:
        return max(self.step_times_s, default=0.0)


class _PolicyWorker:
    """Runs the policy on a daemon thread so a stalled policy can be abandoned (and cannot block exit)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self._fn = fn
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="policy", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, obs = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(self._fn(obs))
                except BaseException as e:  # handed to the caller, KeyboardInterrupt included
                    fut.set_exception(e)

    def __call__(self, obs: Any, timeout: float) -> Any:
        fut: Future = Future()
        self._jobs.put((fut, obs))
        try:
            return fut.result(timeout=timeout)
        except FutureTimeoutError:
            fut.cancel()
            raise PolicyTimeoutError(f"the policy produced no action within {timeout}s; the arm was stopped") from None

    def close(self) -> None:
        self._jobs.put(None)


def run_loop(
    robot: MyCobot320Robot,
    policy_fn: Callable[[dict[str, np.ndarray]], Any],
    steps: int,
    on_step: Callable[[LoopStep], None] | None = None,
    *,
    fps: float | None = None,
    policy_timeout_s: float | None = 1.0,
) -> LoopStats:
    """Run ``policy_fn`` on ``robot`` for ``steps`` steps at ``fps`` (default ``robot.fps``).

    Each step: observe, ask the policy (at most ``policy_timeout_s``; None = wait forever, inline),
    send, hand the ``LoopStep`` to ``on_step``, wait for the next tick. ``on_step`` runs before anything
    else of the next step can fail, so a recorder sees every executed step even when the loop dies.

    Ending: after ``steps`` steps returns stats with ``stop_reason="completed"``; on Ctrl-C, SIGTERM or
    SIGHUP (see :mod:`lit_imit.signals`) stops the arm and returns with ``"interrupted"``; a signal that
    arrives while a command is being sent waits until ``on_step`` has logged it. Any failure
    (communication, policy timeout or error, unsafe action, ``on_step`` error) stops the arm and
    re-raises, with the stats attached as ``exc.loop_stats``::

        try:
            stats = run_loop(robot, policy, 400, on_step=recorder.add)
        finally:
            recorder.save()          # whatever was executed is kept
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    rate = RateLimiter(fps or robot.fps)
    stats = LoopStats(period_s=rate.period)
    worker = _PolicyWorker(policy_fn) if policy_timeout_s is not None else None
    with stop_signals_as_interrupt():  # SIGTERM / SIGHUP stop the arm like Ctrl-C
        try:
            rate.start()
            for index in range(steps):
                t0 = time.monotonic()
                obs = robot.get_observation()
                stale = robot.last_observation_stale
                action = worker(obs, policy_timeout_s) if worker is not None else policy_fn(obs)
                with uninterrupted():  # a command that went out is logged: a stop signal waits for on_step
                    sent = robot.send_action(action)
                    stats.steps += 1
                    stats.step_times_s.append(time.monotonic() - t0)
                    if on_step is not None:
                        asked = np.asarray(_as_action(action), dtype=np.float32)
                        on_step(LoopStep(index, t0, obs, asked, sent, stale))
                if index + 1 < steps:
                    rate.sleep()
            stats.stop_reason = "completed"
            return stats
        except KeyboardInterrupt as e:
            stats.stop_reason = "interrupted"
            log.warning("interrupted (%s) after %d steps; stopping the arm", e or "Ctrl-C", stats.steps)
            robot.safe_stop()
            return stats
        except BaseException as e:
            stats.stop_reason = (
                "policy_timeout" if isinstance(e, PolicyTimeoutError)
                else "communication_error" if isinstance(e, RobotCommunicationError)
                else "error"
            )
            log.error("control loop stopped after %d steps (%s: %s); stopping the arm", stats.steps,
                      type(e).__name__, e)
            robot.safe_stop()
            try:
                e.loop_stats = stats  # type: ignore[attr-defined]
            except AttributeError:
                pass
            raise
        finally:
            stats.overruns = rate.overruns
            if worker is not None:
                worker.close()
