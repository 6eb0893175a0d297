"""Simulated RGB-D cameras of the Ravens tabletop and their fusion into a top-down heightmap.

The three views copy the layout of Ravens' RealSense D415 configuration (480x640, fx = fy = 450,
principal point at the image centre): one in front of the table at (1.0, 0, 0.75) m and one to each side
at (0, +-0.5, 0.75) m, all tilted down towards the workspace. Images are rendered with pybullet's CPU
TinyRenderer (offscreen, deterministic) and back-projected with the pinhole model of ``geometry``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lit_imit.envs.ravens import geometry as geo


@dataclass(frozen=True)
class CameraConfig:
    """A pinhole camera: image size (H, W), intrinsics, pose of its optical frame in the world.

    The optical frame has x to the right of the image, y down the image and z along the viewing ray.
    """

    name: str
    image_size: tuple[int, int]
    focal: float
    position: tuple[float, float, float]
    rotation: tuple[float, float, float, float]  # xyzw, optical frame -> world
    znear: float = 0.01
    zfar: float = 10.0

    @property
    def intrinsics(self) -> np.ndarray:
        """3x3 pinhole matrix with the principal point at the image centre."""
        h, w = self.image_size
        return np.array([[self.focal, 0.0, w / 2.0], [0.0, self.focal, h / 2.0], [0.0, 0.0, 1.0]])

    def scaled(self, scale: float) -> "CameraConfig":
        """Same view at a different resolution (focal length scales with the image)."""
        h, w = self.image_size
        return CameraConfig(self.name, (int(round(h * scale)), int(round(w * scale))), self.focal * scale,
                            self.position, self.rotation, self.znear, self.zfar)


def _realsense(name: str, position, euler) -> CameraConfig:
    return CameraConfig(name, (480, 640), 450.0, tuple(position), tuple(geo.quat_from_euler(*euler)))


#: Ravens' RealSense layout: front, left, right.
REALSENSE_CAMERAS = (
    _realsense("front", (1.0, 0.0, 0.75), (np.pi / 4, np.pi, -np.pi / 2)),
    _realsense("left", (0.0, 0.5, 0.75), (np.pi / 4.5, np.pi, np.pi / 4)),
    _realsense("right", (0.0, -0.5, 0.75), (np.pi / 4.5, np.pi, 3 * np.pi / 4)),
)


def view_and_projection(cam: CameraConfig, bullet) -> tuple[list, list]:
    """OpenGL view/projection matrices that reproduce the pinhole camera in pybullet."""
    rot = geo.quat_to_matrix(cam.rotation)
    position = np.asarray(cam.position)
    forward = rot @ np.array([0.0, 0.0, 1.0])
    up = rot @ np.array([0.0, -1.0, 0.0])
    view = bullet.computeViewMatrix(position.tolist(), (position + forward).tolist(), up.tolist())
    h, w = cam.image_size
    fov_y = np.degrees(2.0 * np.arctan(h / 2.0 / cam.focal))
    projection = bullet.computeProjectionMatrixFOV(fov_y, w / h, cam.znear, cam.zfar)
    return view, projection


def render(bullet, cam: CameraConfig) -> tuple[np.ndarray, np.ndarray]:
    """Render one view: RGB uint8 (H, W, 3) and metric depth along the optical axis float32 (H, W)."""
    view, projection = view_and_projection(cam, bullet)
    h, w = cam.image_size
    _, _, rgba, zbuffer, _ = bullet.getCameraImage(
        width=w, height=h, viewMatrix=view, projectionMatrix=projection, shadow=0,
        flags=bullet.ER_NO_SEGMENTATION_MASK, renderer=bullet.ER_TINY_RENDERER,
    )
    rgb = np.asarray(rgba, dtype=np.uint8).reshape(h, w, 4)[..., :3]
    zbuffer = np.asarray(zbuffer, dtype=np.float64).reshape(h, w)
    depth = cam.zfar * cam.znear / (cam.zfar - (cam.zfar - cam.znear) * zbuffer)
    return rgb, depth.astype(np.float32)


@lru_cache(maxsize=16)
def _world_rays(cam: CameraConfig) -> np.ndarray:
    """Per-pixel world direction of the point at unit optical depth (cached: cameras never move)."""
    rays = geo.depth_to_camera_points(np.ones(cam.image_size, dtype=np.float32), cam.intrinsics)
    return (rays @ geo.quat_to_matrix(cam.rotation).T).astype(np.float32)


def world_points(cam: CameraConfig, depth: np.ndarray) -> np.ndarray:
    """(H, W, 3) world points seen by a camera, from its depth image (same as back-project + transform)."""
    return depth[..., None] * _world_rays(cam) + np.asarray(cam.position, dtype=np.float32)


def fused_heightmap(cams, rgbs, depths, bounds=geo.BOUNDS, pixel_size=geo.PIXEL_SIZE):
    """Top-down colour (H, W, 3) uint8 and height (H, W) float32 maps fused from several views."""
    heights, colors, valids = [], [], []
    for cam, rgb, depth in zip(cams, rgbs, depths):
        height, color, valid = geo.heightmap_from_points(world_points(cam, depth), rgb, bounds, pixel_size)
        heights.append(height)
        colors.append(color)
        valids.append(valid)
    return geo.fuse_heightmaps(heights, colors, valids)
