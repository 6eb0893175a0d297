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

The exception types live in :mod:`lit_imit.robots.errors`, the cameras in :mod:`lit_imit.robots.cameras`
and the fixed-rate loop that runs a policy on this adapter in :mod:`lit_imit.robots.loop`.

Tested without hardware against ``lit_imit.robots.emulator.MyCobot320Emulator`` (a firmware emulator on
a pseudo-terminal, so the real pymycobot code runs end to end).
"""

from __future__ import annotations

import logging
import math
import struct
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lit_imit.envs.mycobot_limits import MYCOBOT320_JOINT_LIMITS_DEG
from lit_imit.robots.cameras import make_camera
from lit_imit.robots.errors import RobotCommunicationError, RobotError, UnsafeActionError, describe_error_code
from lit_imit.signals import uninterrupted

try:  # termios.error is what tcflush raises on a vanished tty; not an OSError subclass
    import termios

    _TERMIOS_ERRORS: tuple[type[BaseException], ...] = (termios.error,)
except ImportError:  # Windows
    _TERMIOS_ERRORS = ()

log = logging.getLogger(__name__)

__all__ = ["GRIPPER_CLOSED", "GRIPPER_OPEN", "HARDWARE_JOINT_LIMITS_DEG", "MyCobot320Robot"]

#: (min, max) per joint in degrees, from pymycobot/robot_info.py "MyCobot320" (the table the twin uses too).
HARDWARE_JOINT_LIMITS_DEG = MYCOBOT320_JOINT_LIMITS_DEG
GRIPPER_OPEN = 100
GRIPPER_CLOSED = 0
ACTION_NAMES = ("j1", "j2", "j3", "j4", "j5", "j6", "gripper")


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
        self.cameras = {name: make_camera(name, spec) for name, spec in (cameras or {}).items()}

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
