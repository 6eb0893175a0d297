"""Real robots behind the simulator's observation/action layout.

``MyCobot320Robot`` drives an Elephant Robotics myCobot 320 through pymycobot; ``run_loop`` runs a policy
on it at a fixed rate with safe stops; ``lit_imit.robots.emulator.MyCobot320Emulator`` emulates the
controller's firmware on a pseudo-terminal so all of it can be tried without hardware.

One module per job: ``errors`` (exception types, controller codes), ``cameras`` (OpenCV frames in a
thread), ``mycobot320`` (the pymycobot adapter), ``loop`` (the fixed-rate control loop and its safe stop),
``recording`` (demonstrations on the arm), ``policy`` and ``deploy`` (a checkpoint's policy on the arm or
its twin), ``replay`` (a recording replayed in the twin), ``emulator`` (the firmware on a pseudo-terminal).
"""

from lit_imit.robots.cameras import CameraConfig, OpenCVCamera
from lit_imit.robots.errors import (
    CameraError,
    PolicyTimeoutError,
    RobotCommunicationError,
    RobotError,
    UnsafeActionError,
    describe_error_code,
)
from lit_imit.robots.loop import LoopStats, LoopStep, RateLimiter, run_loop
from lit_imit.robots.mycobot320 import HARDWARE_JOINT_LIMITS_DEG, MyCobot320Robot

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
