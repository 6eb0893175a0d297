"""What can go wrong with a real robot, as exception types a caller can tell apart, and the controller's codes.

The types are shared by the adapter, the cameras and the control loop, so ``except RobotError`` covers every
failure of the arm or its cameras, while ``UnsafeActionError`` (a refused action, nothing sent) stays a
``ValueError``: it is the caller's mistake, not the robot's.
"""

from __future__ import annotations

__all__ = [
    "CameraError",
    "PolicyTimeoutError",
    "RobotCommunicationError",
    "RobotError",
    "UnsafeActionError",
    "describe_error_code",
]


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
