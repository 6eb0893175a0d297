"""Rollout frames people can watch: scaled up to a readable size whatever the policy's input resolution, with
the step, the reward and the success so far written on each frame."""

from __future__ import annotations

import cv2
import numpy as np

#: frames smaller than this (height, pixels) are scaled up by an integer factor before the caption is drawn
MIN_VIDEO_HEIGHT = 240


def watchable(frame: np.ndarray, min_height: int = MIN_VIDEO_HEIGHT) -> np.ndarray:
    """``frame`` (H x W x 3) as uint8, scaled up by the smallest integer factor that reaches ``min_height``
    (nearest neighbour: a 96x128 policy camera stays crisp at 288x384, and no detail is invented)."""
    image = np.asarray(frame)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    factor = -(-min_height // image.shape[0])
    if factor > 1:
        image = cv2.resize(image, (image.shape[1] * factor, image.shape[0] * factor),
                           interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(image)


def caption(step: int, reward: float | None, episode_return: float, success: bool) -> str:
    """The line written on a frame: where in the episode it is and how it is going."""
    last = "-" if reward is None else f"{reward:g}"
    return f"step {step}  reward {last}  return {episode_return:g}  {'SUCCESS' if success else ''}".rstrip()


def captioned(frame: np.ndarray, text: str, min_height: int = MIN_VIDEO_HEIGHT) -> np.ndarray:
    """A watchable copy of ``frame`` with ``text`` on a dark band along its top edge."""
    image = watchable(frame, min_height).copy()
    scale = max(0.4, image.shape[0] / 600)
    thickness = max(1, int(round(scale * 1.5)))
    (_, text_height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    band = text_height + baseline + 8
    image[:band] = (image[:band] * 0.35).astype(np.uint8)
    cv2.putText(image, text, (6, band - baseline - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                thickness, cv2.LINE_AA)
    return image
