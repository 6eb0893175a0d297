"""Pure-numpy geometry for the Ravens tabletop: poses, pixel <-> world maps, fused heightmaps.

Nothing here imports pybullet, so the CLIPort model, datasets and tests can use the same conventions
without a simulator.

Conventions (shared by the env, its oracle and any policy):

* quaternions are ``(x, y, z, w)`` as pybullet writes them; a pose is ``(position (3,), quaternion (4,))``;
* the workspace is ``BOUNDS`` = x in [0.25, 0.75], y in [-0.5, 0.5], z in [0, 0.3] m, sampled at
  ``PIXEL_SIZE`` = 3.125 mm, which gives heightmaps of ``HEIGHTMAP_SHAPE`` = (320, 160);
* heightmap row ``u`` indexes **y** and column ``v`` indexes **x** (as Ravens/CLIPort): pixel (u, v) covers
  ``y in [y0 + u*s, y0 + (u+1)*s)`` and ``x in [x0 + v*s, x0 + (v+1)*s)``; ``pix_to_xyz`` returns the pixel
  centre and ``xyz_to_pix`` the pixel that contains a point, so the round trip is exact to half a pixel;
* heights are metres above the table (z minus the lower z bound), 0 where no camera saw anything.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

BOUNDS = np.array([[0.25, 0.75], [-0.5, 0.5], [0.0, 0.3]], dtype=np.float64)
PIXEL_SIZE = 0.003125
HEIGHTMAP_SHAPE = (
    int(round((BOUNDS[1, 1] - BOUNDS[1, 0]) / PIXEL_SIZE)),  # rows: y
    int(round((BOUNDS[0, 1] - BOUNDS[0, 0]) / PIXEL_SIZE)),  # cols: x
)
IDENTITY_QUAT = np.array([0.0, 0.0, 0.0, 1.0])


# ---- quaternions and poses ---------------------------------------------------------------------------
def quat_multiply(q1: Sequence[float], q2: Sequence[float]) -> np.ndarray:
    """Hamilton product q1*q2 of xyzw quaternions (rotation q2 first, then q1)."""
    x1, y1, z1, w1 = q1
    x2, y2, z2, w2 = q2
    return np.array([
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
    ])


def quat_conjugate(q: Sequence[float]) -> np.ndarray:
    """Inverse of a unit quaternion."""
    return np.array([-q[0], -q[1], -q[2], q[3]], dtype=np.float64)


def quat_to_matrix(q: Sequence[float]) -> np.ndarray:
    """3x3 rotation matrix of a (normalised on the fly) xyzw quaternion."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def quat_from_euler(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """xyzw quaternion of extrinsic x-y-z Euler angles (pybullet's getQuaternionFromEuler convention)."""
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    return np.array([
        sr * cp * cy - cr * sp * sy,
        cr * sp * cy + sr * cp * sy,
        cr * cp * sy - sr * sp * cy,
        cr * cp * cy + sr * sp * sy,
    ])


def yaw_to_quat(yaw: float) -> np.ndarray:
    """Rotation about the world z axis (the only rotation a top-down pick-place uses)."""
    return np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])


def quat_to_yaw(q: Sequence[float]) -> float:
    """Heading of the rotated x axis projected on the table; robust for tilted objects too."""
    rot = quat_to_matrix(q)
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


def wrap_angle(angle: float | np.ndarray) -> float | np.ndarray:
    """Map an angle to [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def symmetric_yaw_error(yaw: float, target: float, symmetry: float | None) -> float:
    """Smallest |yaw - target| modulo the object's rotational symmetry (None: rotation irrelevant)."""
    if symmetry is None or symmetry <= 0:
        return 0.0
    diff = float(np.abs(yaw - target) % symmetry)
    return min(diff, symmetry - diff)


def smallest_rotation_to(yaw: float, target: float, symmetry: float | None) -> float:
    """Signed rotation (rad) that brings ``yaw`` onto ``target`` modulo ``symmetry`` (0 if irrelevant)."""
    if symmetry is None or symmetry <= 0:
        return 0.0
    delta = (target - yaw) % symmetry
    return float(delta - symmetry if delta > symmetry / 2 else delta)


def pose_multiply(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Compose poses: the pose of frame b (given in frame a) in the frame a is given in."""
    pos = np.asarray(a[0], dtype=np.float64) + quat_to_matrix(a[1]) @ np.asarray(b[0], dtype=np.float64)
    return pos, quat_multiply(a[1], b[1])


def pose_invert(a: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Inverse rigid transform."""
    q_inv = quat_conjugate(a[1])
    return -(quat_to_matrix(q_inv) @ np.asarray(a[0], dtype=np.float64)), q_inv


def transform_points(points: np.ndarray, position: Sequence[float], rotation: np.ndarray) -> np.ndarray:
    """Apply ``x -> R x + t`` to an (..., 3) array of points."""
    return points @ np.asarray(rotation).T + np.asarray(position)


# ---- pixels <-> world ----------------------------------------------------------------------------------
def pix_to_xyz(pixel: Sequence[int], height: np.ndarray | None = None, bounds: np.ndarray = BOUNDS,
               pixel_size: float = PIXEL_SIZE) -> np.ndarray:
    """World point at the centre of heightmap pixel (u, v); z from ``height`` (table level if None)."""
    u, v = int(pixel[0]), int(pixel[1])
    x = bounds[0, 0] + (v + 0.5) * pixel_size
    y = bounds[1, 0] + (u + 0.5) * pixel_size
    z = bounds[2, 0] + (float(height[u, v]) if height is not None else 0.0)
    return np.array([x, y, z])


def xyz_to_pix(position: Sequence[float], bounds: np.ndarray = BOUNDS,
               pixel_size: float = PIXEL_SIZE) -> tuple[int, int]:
    """Heightmap pixel (u, v) that contains a world point (not clipped: may fall outside the map)."""
    u = int(np.floor((position[1] - bounds[1, 0]) / pixel_size))
    v = int(np.floor((position[0] - bounds[0, 0]) / pixel_size))
    return u, v


def in_heightmap(pixel: Sequence[int], shape: tuple[int, int] = HEIGHTMAP_SHAPE) -> bool:
    """Whether a pixel lies inside a heightmap of the given shape."""
    return 0 <= pixel[0] < shape[0] and 0 <= pixel[1] < shape[1]


def action_from_pixels(pick_pixel: Sequence[int], place_pixel: Sequence[int], place_yaw: float,
                       height: np.ndarray, pick_yaw: float = 0.0) -> dict[str, np.ndarray]:
    """Env action from CLIPort's output: two heightmap pixels plus the place rotation (radians).

    The z of each pose is the height under the pixel, as CLIPort/Ravens do; the rotation is a yaw of the
    suction tool (the held object turns with it).
    """
    pick = np.concatenate([pix_to_xyz(pick_pixel, height), yaw_to_quat(pick_yaw)])
    place = np.concatenate([pix_to_xyz(place_pixel, height), yaw_to_quat(place_yaw)])
    return {"pick": pick.astype(np.float32), "place": place.astype(np.float32)}


def pixels_from_action(action: dict) -> tuple[tuple[int, int], tuple[int, int], float]:
    """Labels for CLIPort from an env action: pick pixel, place pixel, place yaw relative to the pick yaw."""
    pick, place = np.asarray(action["pick"]), np.asarray(action["place"])
    theta = float(wrap_angle(quat_to_yaw(place[3:]) - quat_to_yaw(pick[3:])))
    return xyz_to_pix(pick[:3]), xyz_to_pix(place[:3]), theta


def heightmap_input(color: np.ndarray, height: np.ndarray) -> np.ndarray:
    """CLIPort's 6-channel input: RGB (0..255 as float) then the height repeated three times."""
    if color.shape[:2] != height.shape:
        raise ValueError(f"color {color.shape} and height {height.shape} disagree")
    h = height.astype(np.float32)[..., None]
    return np.concatenate([color.astype(np.float32), h, h, h], axis=-1)


# ---- point clouds and heightmaps -----------------------------------------------------------------------
def depth_to_camera_points(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Back-project a metric depth image to (H, W, 3) points in the camera frame (x right, y down, z ahead)."""
    height, width = depth.shape
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    x = (u - cx) * depth / fx
    y = (v - cy) * depth / fy
    return np.stack([x, y, depth], axis=-1).astype(np.float32)


def heightmap_from_points(points: np.ndarray, colors: np.ndarray, bounds: np.ndarray = BOUNDS,
                          pixel_size: float = PIXEL_SIZE, z_tolerance: float = 0.005):
    """Orthographic top-down projection of one coloured point cloud.

    Each pixel keeps its highest point (a z-buffer seen from above) and that point's colour. Points a
    hair below the table (depth round-off) are kept and clipped to height 0 so that the table is seen.

    Returns ``(height (H, W) float32, color (H, W, 3) uint8, valid (H, W) bool)``.
    """
    rows, cols = (int(round((bounds[1, 1] - bounds[1, 0]) / pixel_size)),
                  int(round((bounds[0, 1] - bounds[0, 0]) / pixel_size)))
    pts = points.reshape(-1, 3)
    cols_rgb = colors.reshape(-1, colors.shape[-1])
    keep = ((pts[:, 0] >= bounds[0, 0]) & (pts[:, 0] < bounds[0, 1])
            & (pts[:, 1] >= bounds[1, 0]) & (pts[:, 1] < bounds[1, 1])
            & (pts[:, 2] >= bounds[2, 0] - z_tolerance) & (pts[:, 2] < bounds[2, 1]))
    pts, cols_rgb = pts[keep], cols_rgb[keep]
    u = np.clip(np.floor((pts[:, 1] - bounds[1, 0]) / pixel_size).astype(np.int64), 0, rows - 1)
    v = np.clip(np.floor((pts[:, 0] - bounds[0, 0]) / pixel_size).astype(np.int64), 0, cols - 1)
    flat = u * cols + v
    z = np.maximum(pts[:, 2] - bounds[2, 0], 0.0).astype(np.float32)
    height = np.full(rows * cols, -1.0, dtype=np.float32)
    np.maximum.at(height, flat, z)  # z-buffer seen from above: the highest point of each pixel
    top = z >= height[flat]  # the points that are the top of their pixel; they give its colour
    color = np.zeros((rows * cols, cols_rgb.shape[-1]), dtype=np.uint8)
    color[flat[top]] = cols_rgb[top]
    valid = height >= 0.0
    height = np.maximum(height, 0.0)
    return height.reshape(rows, cols), color.reshape(rows, cols, -1), valid.reshape(rows, cols)


def fuse_heightmaps(heights: Sequence[np.ndarray], colors: Sequence[np.ndarray],
                    valids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Fuse several views as Ravens does: mean colour over the views that saw a pixel, max height.

    The max handles occlusion (a view that sees only the table next to a tall object must not lower it).
    """
    valid = np.stack(valids).astype(np.float32)[..., None]
    count = np.maximum(valid.sum(axis=0), 1.0)
    color = (np.stack(colors).astype(np.float32) * valid).sum(axis=0) / count
    height = np.max(np.stack(heights), axis=0)
    return np.round(color).astype(np.uint8), height.astype(np.float32)
