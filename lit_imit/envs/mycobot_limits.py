"""The myCobot 320's joint limits: one table for the MuJoCo twin, the real-robot adapter and its emulator.

The values are the controller's own range per joint, as pymycobot lists it (``pymycobot/robot_info.py``,
"MyCobot320": ``angles_min`` / ``angles_max``): the firmware refuses a move outside it and pymycobot raises
on one, so the twin must not allow more than the arm and the adapter must never send more. The table lives
with the envs because ``lit_imit.robots`` imports ``lit_imit.envs`` and never the reverse; it imports
nothing, so the adapter reads it without loading the simulator.
"""

from __future__ import annotations

#: (min, max) per joint J1..J6 in degrees. Symmetric: the twin uses +-max.
MYCOBOT320_JOINT_LIMITS_DEG: tuple[tuple[float, float], ...] = (
    (-168.0, 168.0), (-135.0, 135.0), (-145.0, 145.0), (-145.0, 145.0), (-168.0, 168.0), (-180.0, 180.0),
)

__all__ = ["MYCOBOT320_JOINT_LIMITS_DEG"]
