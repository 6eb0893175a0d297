"""A myCobot 320 firmware emulator on a pseudo-terminal, to run the real-robot adapter without hardware.

pymycobot talks to the 320's controller over a serial port. The emulator opens a pseudo-terminal pair,
hands out the slave side's path as the "serial port" (pymycobot opens it with pyserial exactly as it
would open ``/dev/ttyUSB0``), and answers on the master side like the firmware does, so the whole stack
above the wire -- pymycobot's framing, retries and parsing, and our adapter -- runs unchanged.

Wire format (checked against pymycobot 4.0.7, ``common.py::DataProcessor._mesg`` / ``read``)::

    0xFE 0xFE LEN CMD DATA... 0xFA        LEN = len(DATA) + 2 (it counts CMD, DATA and the footer)

Multi-byte values are big-endian int16; joint angles travel as ``int(deg * 100)`` (0.01 degree steps).
pymycobot's ``MyCobot320._res`` waits for a reply to *every* command, set commands included, and
re-sends the command up to three times when none comes (or when its CMD differs), so the firmware
answers each one; set commands are acknowledged here with one status byte, ``1`` (the documented
"1: completed" return of power_on, stop, ...).

Joints move toward their targets at ``max_joint_speed_deg_s * speed / 100``; the gripper likewise at
``max_gripper_speed * speed / 100`` units/s. State is advanced lazily from the clock at every command,
so a test can also read it directly (``emu.joints_deg``) without racing the serving thread.

Faults can be injected per command (``inject``) to test the adapter's error handling:

``silent``        no answer at all (pymycobot times out, retries, returns -1)
``garbage``       bytes with no valid frame in them (same outcome as silent, but exercises the parser)
``wrong_id``      a well-formed frame for another command id (pymycobot retries, returns -1)
``empty``         a frame with the right id but no data (pymycobot's parser gives up: -1)
``short``         ``get_angles`` answered with 3 values instead of 6
``out_of_range``  ``get_angles`` answered with impossible angles (e.g. 300 degrees)

and ``disconnect()`` closes the master side, which is what pulling the USB cable looks like to pyserial.

This module is deliberately dependency-free (stdlib only) so it can ship in the package.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field

from lit_imit.envs.mycobot_limits import MYCOBOT320_JOINT_LIMITS_DEG

__all__ = ["COMMANDS", "FAULTS", "MyCobot320Emulator", "ReceivedFrame", "encode_frame"]

HEADER = 0xFE
FOOTER = 0xFA

# Command ids used by the adapter (values from pymycobot.common.ProtocolCode).
COMMANDS = {
    "get_error_information": 0x07,
    "clear_error_information": 0x08,
    "power_on": 0x10,
    "power_off": 0x11,
    "is_power_on": 0x12,
    "release_all_servos": 0x13,
    "focus_all_servos_legacy": 0x18,
    "is_controller_connected": 0x14,
    "set_fresh_mode": 0x16,
    "get_fresh_mode": 0x17,
    "get_angles": 0x20,
    "send_angle": 0x21,
    "send_angles": 0x22,
    "pause": 0x26,
    "resume": 0x28,
    "stop": 0x29,
    "is_in_position": 0x2A,
    "is_moving": 0x2B,
    "focus_servo": 0x57,  # pymycobot's focus_all_servos() sends this with servo id 0
    "get_gripper_value": 0x65,
    "set_gripper_state": 0x66,
    "set_gripper_value": 0x67,
}
_NAMES = {v: k for k, v in COMMANDS.items()}
FAULTS = ("silent", "garbage", "wrong_id", "empty", "short", "out_of_range")

# Hardware joint limits of the 320 in degrees: the shared table (pymycobot/robot_info.py, "MyCobot320").
JOINT_MIN_DEG = tuple(lo for lo, _ in MYCOBOT320_JOINT_LIMITS_DEG)
JOINT_MAX_DEG = tuple(hi for _, hi in MYCOBOT320_JOINT_LIMITS_DEG)

_GARBAGE = bytes([0x00, 0x13, 0x37, 0xAA, 0x55, 0xFA, 0x01, 0xFE, 0x20, 0x7F, 0x80, 0xFA, 0x42, 0x00])


def encode_frame(cmd: int, data: bytes = b"") -> bytes:
    """One frame as the firmware sends it: header, length, command id, data, footer."""
    return bytes([HEADER, HEADER, len(data) + 2, cmd]) + bytes(data) + bytes([FOOTER])


def _int16s(values) -> bytes:
    return b"".join(struct.pack(">h", int(v)) for v in values)


def _angles_to_wire(deg) -> bytes:
    """Degrees -> the firmware's int16 hundredths of a degree, saturated to the int16 range."""
    return _int16s(max(-32768, min(32767, round(d * 100))) for d in deg)


def _wire_to_angles(data: bytes) -> list[float]:
    return [struct.unpack(">h", data[i : i + 2])[0] / 100.0 for i in range(0, 12, 2)]


@dataclass
class ReceivedFrame:
    """A command as the emulator received it (for assertions in tests)."""

    time: float  # time.monotonic() at reception
    cmd: int
    name: str
    data: bytes


@dataclass
class _Fault:
    kind: str
    cmd: int | None  # None = any command
    remaining: int  # < 0 = forever


@dataclass
class _State:
    joints: list[float]
    targets: list[float]
    queue: deque = field(default_factory=deque)
    speed: int = 0
    gripper: float = 100.0
    gripper_target: float = 100.0
    gripper_speed: int = 0
    powered: bool = False
    servos_released: bool = False
    paused: bool = False
    fresh_mode: int = 0
    error_code: int = 0


class MyCobot320Emulator:
    """Serves the myCobot 320 serial protocol on a pseudo-terminal; use ``.port`` as the serial port.

    Use as a context manager (or ``start()`` / ``close()``). Thread-safe: the serving thread and the
    test share the state under one lock.
    """

    def __init__(
        self,
        joints_deg=(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        *,
        powered: bool = False,
        gripper_value: float = 100.0,
        max_joint_speed_deg_s: float = 200.0,
        max_gripper_speed: float = 200.0,
        reply_delay_s: float = 0.0,
        error_code: int = 0,
        sticky_error: bool = False,
    ) -> None:
        if len(joints_deg) != 6:
            raise ValueError(f"joints_deg must have 6 values, got {len(joints_deg)}")
        self._state = _State(
            joints=[float(j) for j in joints_deg],
            targets=[float(j) for j in joints_deg],
            gripper=float(gripper_value),
            gripper_target=float(gripper_value),
            powered=powered,
            error_code=error_code,
        )
        self.max_joint_speed_deg_s = float(max_joint_speed_deg_s)
        self.max_gripper_speed = float(max_gripper_speed)
        self.reply_delay_s = float(reply_delay_s)
        self.sticky_error = sticky_error
        self.received: list[ReceivedFrame] = []
        self.unknown: list[ReceivedFrame] = []
        self.limit_violations: list[tuple[str, list[float]]] = []
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._last_advance = time.monotonic()
        self._master: int | None = None
        self._slave: int | None = None
        self._port: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._disconnect_requested = threading.Event()
        self._disconnected = threading.Event()
        self._connected = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "MyCobot320Emulator":
        """Open the pseudo-terminal pair and start answering on it."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline: bytes pass through unchanged
        self._master, self._slave = master, slave
        self._port = os.ttyname(slave)
        self._connected = True
        self._thread = threading.Thread(target=self._serve, name="mycobot320-emulator", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release both ends of the pseudo-terminal."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._close_master()
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None

    def disconnect(self) -> None:
        """Simulate a pulled cable: close the master side; the client's next read or write fails.

        The serving thread closes the descriptor itself (so it never selects on a closed, possibly
        reused fd number); this call returns once it is closed.
        """
        if self._thread is None or not self._thread.is_alive():
            self._close_master()
            return
        self._disconnect_requested.set()
        if not self._disconnected.wait(timeout=2.0):
            raise RuntimeError("emulator thread did not close the port")

    def __enter__(self) -> "MyCobot320Emulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def port(self) -> str:
        """Path of the serial device to hand to pymycobot / the adapter."""
        if self._port is None:
            raise RuntimeError("emulator not started")
        return self._port

    @property
    def connected(self) -> bool:
        return self._connected

    # ------------------------------------------------------------------ state seen by tests
    @property
    def joints_deg(self) -> list[float]:
        with self._lock:
            self._advance()
            return list(self._state.joints)

    @property
    def targets_deg(self) -> list[float]:
        with self._lock:
            return list(self._state.targets)

    @property
    def gripper_value(self) -> float:
        with self._lock:
            self._advance()
            return self._state.gripper

    @property
    def gripper_target(self) -> float:
        with self._lock:
            return self._state.gripper_target

    @property
    def powered(self) -> bool:
        with self._lock:
            return self._state.powered

    @property
    def servos_released(self) -> bool:
        with self._lock:
            return self._state.servos_released

    @property
    def fresh_mode(self) -> int:
        with self._lock:
            return self._state.fresh_mode

    @property
    def error_code(self) -> int:
        with self._lock:
            return self._state.error_code

    def set_joints(self, joints_deg) -> None:
        """Teleport the arm (e.g. someone moved it by hand while it was released)."""
        with self._lock:
            self._advance()
            self._state.joints = [float(j) for j in joints_deg]
            self._state.targets = list(self._state.joints)
            self._state.queue.clear()

    def set_error(self, code: int) -> None:
        with self._lock:
            self._state.error_code = int(code)

    def commands(self, name: str) -> list[ReceivedFrame]:
        """Frames received for one command name, in order."""
        cmd = COMMANDS[name]
        with self._lock:
            return [f for f in self.received if f.cmd == cmd]

    def sent_angles(self) -> list[list[float]]:
        """Every ``send_angles`` target received, in degrees as decoded from the wire."""
        return [_wire_to_angles(f.data[:12]) for f in self.commands("send_angles")]

    # ------------------------------------------------------------------ faults
    def inject(self, kind: str, command: str | None = None, count: int = 1) -> None:
        """Answer the next ``count`` matching commands (all commands if ``command`` is None) with a fault.

        ``count < 0`` keeps the fault forever (until ``clear_faults``).
        """
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; choose from {FAULTS}")
        cmd = None if command is None else COMMANDS[command]
        with self._lock:
            self._faults.append(_Fault(kind, cmd, count))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, cmd: int) -> str | None:
        for fault in self._faults:
            if fault.cmd is None or fault.cmd == cmd:
                if fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                return fault.kind
        return None

    # ------------------------------------------------------------------ serving thread
    def _close_master(self) -> None:
        self._connected = False
        if self._master is not None:
            os.close(self._master)
            self._master = None
        self._disconnected.set()

    def _serve(self) -> None:
        """Read bytes from the master side, cut them into frames, answer each one."""
        buf = bytearray()
        while not self._stop.is_set():
            if self._disconnect_requested.is_set() and self._master is not None:
                self._close_master()
            master = self._master
            if master is None:
                time.sleep(0.01)
                continue
            try:
                ready, _, _ = select.select([master], [], [], 0.02)
                if not ready:
                    continue
                chunk = os.read(master, 4096)
            except OSError as e:  # EIO: no client has the slave open at the moment
                if e.errno != errno.EIO:
                    raise
                time.sleep(0.01)
                continue
            buf.extend(chunk)
            for cmd, data in self._split_frames(buf):
                reply = self._handle(cmd, data)
                if reply:
                    self._write(reply)

    @staticmethod
    def _split_frames(buf: bytearray):
        """Yield complete (cmd, data) frames from ``buf``, consuming them; resync on malformed bytes."""
        while True:
            start = buf.find(bytes([HEADER, HEADER]))
            if start < 0:
                del buf[: max(0, len(buf) - 1)]
                return
            del buf[:start]
            if len(buf) < 4:
                return
            length = buf[2]
            total = length + 3
            if length < 2:
                del buf[:1]
                continue
            if len(buf) < total:
                return
            if buf[total - 1] != FOOTER:
                del buf[:1]
                continue
            cmd, data = buf[3], bytes(buf[4 : total - 1])
            del buf[:total]
            yield cmd, data

    def _write(self, payload: bytes) -> None:
        if self.reply_delay_s:
            time.sleep(self.reply_delay_s)
        master = self._master
        if master is None:
            return
        try:
            os.write(master, payload)
        except OSError:
            pass

    # ------------------------------------------------------------------ the firmware
    def _handle(self, cmd: int, data: bytes) -> bytes | None:
        with self._lock:
            frame = ReceivedFrame(time.monotonic(), cmd, _NAMES.get(cmd, f"0x{cmd:02X}"), data)
            self.received.append(frame)
            self._advance()
            fault = self._take_fault(cmd)
            if fault is not None:
                return self._faulty_reply(fault, cmd)
            handler = self._HANDLERS.get(cmd)
            if handler is None:
                self.unknown.append(frame)
                return None  # the firmware ignores what it does not know
            return encode_frame(cmd, handler(self, data))

    def _faulty_reply(self, kind: str, cmd: int) -> bytes | None:
        if kind == "silent":
            return None
        if kind == "garbage":
            return _GARBAGE
        if kind == "wrong_id":
            return encode_frame((cmd + 1) & 0xFF, b"\x01")
        if kind == "empty":
            return encode_frame(cmd)
        if kind == "short":
            return encode_frame(cmd, _angles_to_wire(self._state.joints[:2]))
        if kind == "out_of_range":
            return encode_frame(cmd, _angles_to_wire([300.0] * 6))
        raise AssertionError(kind)

    def _advance(self) -> None:
        """Move joints and gripper toward their targets for the time elapsed since the last call."""
        now = time.monotonic()
        dt, self._last_advance = now - self._last_advance, now
        s = self._state
        if not s.powered or s.servos_released or s.paused:
            return
        budget = self.max_joint_speed_deg_s * s.speed / 100.0 * dt
        while budget > 0:
            remaining = max(abs(t - j) for t, j in zip(s.targets, s.joints))
            if remaining <= budget:
                s.joints = list(s.targets)
                budget -= remaining
                if not s.queue:
                    break
                s.targets, s.speed = s.queue.popleft()
            else:
                s.joints = [j + max(-budget, min(budget, t - j)) for t, j in zip(s.targets, s.joints)]
                break
        g_step = self.max_gripper_speed * s.gripper_speed / 100.0 * dt
        s.gripper += max(-g_step, min(g_step, s.gripper_target - s.gripper))

    def _moving(self) -> bool:
        s = self._state
        return bool(s.queue) or any(abs(t - j) > 1e-6 for t, j in zip(s.targets, s.joints))

    def _set_target(self, target: list[float], speed: int) -> bytes:
        s = self._state
        bad = [i for i, a in enumerate(target) if not JOINT_MIN_DEG[i] <= a <= JOINT_MAX_DEG[i]]
        if bad:
            # The firmware refuses the move and raises "joint exceeds limit" (codes 1..6).
            self.limit_violations.append(("send_angles", list(target)))
            s.error_code = bad[0] + 1
            return b"\x00"
        if not s.powered:
            return b"\x00"
        speed = max(1, min(100, speed))
        if s.fresh_mode == 1 or not self._moving():
            s.queue.clear()
            s.targets, s.speed = list(target), speed
        else:  # queue mode: executed after the current move
            s.queue.append((list(target), speed))
        return b"\x01"

    # handlers: bytes in -> reply data bytes out (the frame wrapper adds header, id and footer)
    def _h_get_error_information(self, data: bytes) -> bytes:
        return bytes([0, self._state.error_code & 0xFF])

    def _h_clear_error_information(self, data: bytes) -> bytes:
        if not self.sticky_error:
            self._state.error_code = 0
        return b"\x01"

    def _h_power_on(self, data: bytes) -> bytes:
        self._state.powered = True
        self._state.servos_released = False
        return b"\x01"

    def _h_power_off(self, data: bytes) -> bytes:
        self._state.powered = False
        self._state.targets = list(self._state.joints)
        self._state.queue.clear()
        return b"\x01"

    def _h_is_power_on(self, data: bytes) -> bytes:
        return b"\x01" if self._state.powered else b"\x00"

    def _h_release_all_servos(self, data: bytes) -> bytes:
        self._state.servos_released = True
        self._state.targets = list(self._state.joints)
        self._state.queue.clear()
        return b"\x01"

    def _h_focus_servo(self, data: bytes) -> bytes:
        """Servo id 0 (or the legacy FOCUS_ALL_SERVOS frame) locks all joints where they are; 1-6 one joint
        (the emulator tracks release for the whole arm only, so any focus ends hand-guiding)."""
        if data[:1] and data[0] > 6:
            return b"\x00"
        self._state.servos_released = False
        self._state.targets = list(self._state.joints)
        return b"\x01"

    def _h_is_controller_connected(self, data: bytes) -> bytes:
        return b"\x01"

    def _h_set_fresh_mode(self, data: bytes) -> bytes:
        self._state.fresh_mode = 1 if data[:1] == b"\x01" else 0
        return b"\x01"

    def _h_get_fresh_mode(self, data: bytes) -> bytes:
        return bytes([self._state.fresh_mode])

    def _h_get_angles(self, data: bytes) -> bytes:
        return _angles_to_wire(self._state.joints)

    def _h_send_angles(self, data: bytes) -> bytes:
        if len(data) < 13:
            return b"\x00"
        return self._set_target(_wire_to_angles(data[:12]), data[12])

    def _h_send_angle(self, data: bytes) -> bytes:
        if len(data) < 4 or not 1 <= data[0] <= 6:
            return b"\x00"
        target = list(self._state.targets)
        target[data[0] - 1] = struct.unpack(">h", data[1:3])[0] / 100.0
        return self._set_target(target, data[3])

    def _h_pause(self, data: bytes) -> bytes:
        self._state.paused = True
        return b"\x01"

    def _h_resume(self, data: bytes) -> bytes:
        self._state.paused = False
        return b"\x01"

    def _h_stop(self, data: bytes) -> bytes:
        s = self._state
        s.targets = list(s.joints)
        s.queue.clear()
        s.gripper_target = s.gripper
        s.paused = False
        return b"\x01"

    def _h_is_in_position(self, data: bytes) -> bytes:
        if len(data) < 13 or data[12] != 0:
            return b"\x00"  # only joint-space checks are emulated
        wanted = _wire_to_angles(data[:12])
        return b"\x01" if all(abs(w - j) < 0.5 for w, j in zip(wanted, self._state.joints)) else b"\x00"

    def _h_is_moving(self, data: bytes) -> bytes:
        return b"\x01" if self._moving() else b"\x00"

    def _h_get_gripper_value(self, data: bytes) -> bytes:
        return bytes([int(round(self._state.gripper))])

    def _h_set_gripper_value(self, data: bytes) -> bytes:
        if len(data) < 2 or data[0] > 100:
            return b"\x00"
        self._state.gripper_target = float(data[0])
        self._state.gripper_speed = max(1, min(100, data[1]))
        return b"\x01"

    def _h_set_gripper_state(self, data: bytes) -> bytes:
        if len(data) < 2:
            return b"\x00"
        flag = data[0]
        if flag in (0, 1):  # 0 open, 1 close
            self._state.gripper_target = 100.0 if flag == 0 else 0.0
            self._state.gripper_speed = max(1, min(100, data[1]))
        return b"\x01"

    _HANDLERS = {
        COMMANDS["get_error_information"]: _h_get_error_information,
        COMMANDS["clear_error_information"]: _h_clear_error_information,
        COMMANDS["power_on"]: _h_power_on,
        COMMANDS["power_off"]: _h_power_off,
        COMMANDS["is_power_on"]: _h_is_power_on,
        COMMANDS["release_all_servos"]: _h_release_all_servos,
        COMMANDS["focus_all_servos_legacy"]: _h_focus_servo,
        COMMANDS["focus_servo"]: _h_focus_servo,
        COMMANDS["is_controller_connected"]: _h_is_controller_connected,
        COMMANDS["set_fresh_mode"]: _h_set_fresh_mode,
        COMMANDS["get_fresh_mode"]: _h_get_fresh_mode,
        COMMANDS["get_angles"]: _h_get_angles,
        COMMANDS["send_angles"]: _h_send_angles,
        COMMANDS["send_angle"]: _h_send_angle,
        COMMANDS["pause"]: _h_pause,
        COMMANDS["resume"]: _h_resume,
        COMMANDS["stop"]: _h_stop,
        COMMANDS["is_in_position"]: _h_is_in_position,
        COMMANDS["is_moving"]: _h_is_moving,
        COMMANDS["get_gripper_value"]: _h_get_gripper_value,
        COMMANDS["set_gripper_value"]: _h_set_gripper_value,
        COMMANDS["set_gripper_state"]: _h_set_gripper_state,
    }
