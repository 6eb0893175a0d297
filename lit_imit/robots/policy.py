"""What a deployed policy sees and does: its checkpoint loaded, camera images cut to its training view, and
one observation in, one action out.

The robot and the twin deliver observations in the same layout (``qpos`` + ``images/<cam>`` frames at the
camera's size); the policy was trained on images that may have been masked, cropped and resized, so
:class:`ImagePreprocess` repeats exactly that in raw frame coordinates, and :class:`PolicyRunner` hands the
result to ``select_action``. Loading goes through the registry in :mod:`lit_imit.policies`; its errors come
out here as :class:`DeployError`, the one error type of a deployment set-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lit_imit.policies import PolicyLoadError, load_policy as _load_policy, policy_cameras
from lit_imit.robots.recording import resize_image

__all__ = ["DeployError", "ImagePreprocess", "PolicyRunner", "load_mask", "load_policy", "logged_obs",
           "parse_crop", "parse_size", "policy_cameras"]


class DeployError(RuntimeError):
    """The checkpoint, the preprocessing options or the robot set-up cannot work together."""


def load_policy(path: str | Path, device: str = "cpu", policy_class: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> Any:
    """:func:`lit_imit.policies.load_policy`, with its errors as :class:`DeployError` (same message)."""
    try:
        return _load_policy(path, device, policy_class, overrides)
    except PolicyLoadError as e:
        raise DeployError(str(e)) from e


# ---------------------------------------------------------------------------------------------- images
def parse_crop(text: str | None) -> tuple[int, int, int, int] | None:
    if not text:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise DeployError(f"--crop must be four integers y0,x0,h,w, got {text!r}") from e
    if len(values) != 4 or values[0] < 0 or values[1] < 0 or values[2] <= 0 or values[3] <= 0:
        raise DeployError(f"--crop must be y0,x0,h,w with y0, x0 >= 0 and h, w > 0, got {text!r}")
    return values  # type: ignore[return-value]


def parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise DeployError(f"--image-size must look like 240x320 (HxW), got {text!r}") from e
    if height <= 0 or width <= 0:
        raise DeployError(f"--image-size must be positive, got {text!r}")
    return height, width


def load_mask(path: str | None) -> np.ndarray | None:
    """A boolean (H, W) keep-mask from a .npy array or an image (non-zero / bright = keep)."""
    if not path:
        return None
    try:
        if str(path).endswith(".npy"):
            mask = np.load(path)
        else:
            import imageio.v2 as imageio

            mask = imageio.imread(path)
    except (OSError, ValueError) as e:
        raise DeployError(f"cannot read mask {path}: {e}") from e
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., :3].mean(axis=-1)
    if mask.ndim != 2:
        raise DeployError(f"mask {path} must be a (H, W) array or image, got shape {mask.shape}")
    threshold = 0.5 if mask.dtype == bool or mask.max() <= 1 else 127
    return mask > threshold


class ImagePreprocess:
    """Mask, crop and resize camera images exactly as the policy must see them (raw frame coordinates).

    Order: the mask (same size as the frame) blacks out pixels, then the crop window is cut, then the
    result is resized to ``size`` -- by default back to the frame size when cropping, i.e. the size the
    policy was trained at.
    """

    def __init__(self, crop: tuple[int, int, int, int] | None = None, mask: np.ndarray | None = None,
                 size: tuple[int, int] | None = None):
        self.crop, self.mask, self.size = crop, mask, size

    @property
    def active(self) -> bool:
        return self.crop is not None or self.mask is not None or self.size is not None

    def image(self, frame: np.ndarray, name: str = "image") -> np.ndarray:
        frame = np.asarray(frame)
        height, width = frame.shape[:2]
        if self.mask is not None:
            if self.mask.shape != (height, width):
                raise DeployError(f"mask of shape {self.mask.shape} does not fit {name} frames of {(height, width)}")
            frame = frame * self.mask[..., None].astype(frame.dtype)
        target = self.size
        if self.crop is not None:
            y0, x0, h, w = self.crop
            if y0 + h > height or x0 + w > width:
                raise DeployError(f"crop {self.crop} (y0,x0,h,w) leaves the {height}x{width} {name} frame")
            frame = frame[y0:y0 + h, x0:x0 + w]
            target = target or (height, width)
        return resize_image(np.ascontiguousarray(frame), target)

    def __call__(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.image(v, k) if k.startswith("images/") else v for k, v in obs.items()}

    def attrs(self) -> dict[str, Any]:
        return {"crop": list(self.crop) if self.crop else None,
                "policy_image_size": list(self.size) if self.size else None, "masked": self.mask is not None}


class PolicyRunner:
    """One observation (numpy, unbatched) in, one action (7,) float32 out, through ``select_action``."""

    def __init__(self, module: Any, preprocess: ImagePreprocess, keys: list[str]):
        self.module, self.preprocess, self.keys = module, preprocess, keys
        self.last_input: dict[str, Any] | None = None

    def reset(self) -> None:
        self.module.reset()

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        import torch

        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise DeployError(f"the policy needs {missing} but the observation has {sorted(obs)}")
        seen = self.preprocess({k: obs[k] for k in self.keys})
        self.last_input = seen
        batch = {k: np.asarray(v)[None] for k, v in seen.items()}
        with torch.inference_mode():
            action = self.module.select_action(batch)
        return action[0].detach().float().cpu().numpy()


def logged_obs(obs: Mapping[str, Any], runner: PolicyRunner, images: str) -> dict[str, Any]:
    """What goes into the episode: the observation, with the images the policy saw (``images="policy"``)."""
    if images == "raw" or runner.last_input is None:
        return dict(obs)
    return {**obs, **{k: v for k, v in runner.last_input.items() if k.startswith("images/")}}
