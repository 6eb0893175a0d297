"""The shared rotation helpers: ``rotation_error``'s value and argument order (target first)."""

from __future__ import annotations

import numpy as np
import pytest

from lit_imit.envs.kinematics import rotate, rotation_error


def rot(axis: str, angle: float) -> np.ndarray:
    """Rotation matrix of ``angle`` radians about the world axis ``x``, ``y`` or ``z``."""
    rotvec = np.zeros(3)
    rotvec["xyz".index(axis)] = angle
    return rotate(rotvec, np.eye(3))


def test_identical_rotations_have_no_error():
    some = rot("x", 0.3) @ rot("z", -1.1)
    np.testing.assert_allclose(rotation_error(some, some), 0.0, atol=1e-12)


def test_a_quarter_turn_is_pi_over_2_about_its_axis():
    np.testing.assert_allclose(rot("z", np.pi / 2), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(rotation_error(rot("z", np.pi / 2), np.eye(3)), [0, 0, np.pi / 2], atol=1e-12)


def test_target_comes_first():
    """Swapping the arguments reverses the rotation; applying the error to ``current`` gives ``target``."""
    current, target = rot("y", 0.4), rot("y", 0.4) @ rot("x", 0.7)
    error = rotation_error(target, current)
    np.testing.assert_allclose(rotation_error(current, target), -error, atol=1e-12)
    np.testing.assert_allclose(rotate(error, current), target, atol=1e-12)


@pytest.mark.parametrize("angle", [2.5, -2.9, 3.1])
def test_large_angles_take_the_short_way(angle):
    """Beyond 120 degrees ``mju_mat2Quat`` may return a negative scalar part; the error stays the short
    rotation, with its norm in [0, pi]."""
    np.testing.assert_allclose(rotation_error(rot("x", angle), np.eye(3)), [angle, 0, 0], atol=1e-9)
