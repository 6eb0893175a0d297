"""Real robots behind the simulator's observation/action layout.

``MyCobot320Robot`` drives an Elephant Robotics myCobot 320 through pymycobot; ``run_loop`` runs a policy
on it at a fixed rate with safe stops; ``lit_imit.robots.emulator.MyCobot320Emulator`` emulates the
controller's firmware on a pseudo-terminal so all of it can be tried without hardware.
"""

from lit_imit.robots.mycobot320 import (
    HARDWARE_JOINT_LIMITS_DEG,
    CameraConfig,
    CameraError,
    LoopStats,
    LoopStep,
    MyCobot320Robot,
    OpenCVCamera,
    PolicyTimeoutError,
    RateLimiter,
    RobotCommunicationError,
    RobotError,
    UnsafeActionError,
    describe_error_code,
    run_loop,
)

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
