"""Cameras for a real robot: OpenCV devices read in a background thread, so each step gets the newest frame.

Frames come out as uint8 (H, W, 3) **RGB** (OpenCV delivers BGR; converted here), the layout of the
simulator's ``images/<cam>`` observations. Anything with ``connect()`` / ``read()`` / ``disconnect()`` can
stand in for a camera (tests pass fakes); ``make_camera`` turns a configuration entry into one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from lit_imit.robots.errors import CameraError

__all__ = ["CameraConfig", "OpenCVCamera", "make_camera"]

# OpenCV property ids (stable enum values), so a capture factory without cv2 can be used in tests.
_CAP_PROP_FRAME_WIDTH, _CAP_PROP_FRAME_HEIGHT, _CAP_PROP_FPS, _CAP_PROP_BUFFERSIZE = 3, 4, 5, 38


@dataclass
class CameraConfig:
    """One OpenCV camera: ``device`` is an index (0 = /dev/video0) or a path / URL."""

    device: int | str
    width: int = 640
    height: int = 480
    fps: float | None = 30.0
    timeout_s: float = 1.0  # the newest frame may be at most this old; also the wait for the first one


def _opencv_capture(device: int | str):
    """Open ``device`` with OpenCV, imported lazily so the arm works without it."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError(
            "camera support needs OpenCV: pip install opencv-python-headless (or run without cameras)"
        ) from e
    return cv2.VideoCapture(device)


class OpenCVCamera:
    """A camera read in a background thread, so ``read()`` returns the newest frame.

    Why a thread: OpenCV queues frames inside the driver; reading one frame per control step at a lower
    rate than the camera's would hand out frames that are several periods old. The grabber keeps only
    the latest one.
    """

    def __init__(self, name: str, config: CameraConfig, capture_factory: Callable[[Any], Any] | None = None):
        self.name = name
        self.config = config
        self._factory = capture_factory or _opencv_capture
        self._cap = None
        self._frame: np.ndarray | None = None
        self._frame_time = 0.0
        self._error: str | None = None
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_connected(self) -> bool:
        return self._thread is not None

    def connect(self) -> None:
        """Open the device, ask for the configured mode, check the first frame's size, start grabbing."""
        c = self.config
        cap = self._factory(c.device)
        if cap is None or not cap.isOpened():
            raise CameraError(f"camera {self.name!r}: could not open device {c.device!r}")
        self._cap = cap
        cap.set(_CAP_PROP_FRAME_WIDTH, c.width)
        cap.set(_CAP_PROP_FRAME_HEIGHT, c.height)
        if c.fps:
            cap.set(_CAP_PROP_FPS, c.fps)
        cap.set(_CAP_PROP_BUFFERSIZE, 1)
        self._stop.clear()
        self._thread = threading.Thread(target=self._grab, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        try:
            frame = self.read()
        except CameraError:
            self.disconnect()
            raise
        if frame.shape != (c.height, c.width, 3):
            self.disconnect()
            raise CameraError(
                f"camera {self.name!r} ({c.device!r}) delivers frames of shape {frame.shape}, "
                f"configured for ({c.height}, {c.width}, 3); pick a mode the camera supports"
            )

    def _grab(self) -> None:
        failures = 0
        while not self._stop.is_set():
            ok, frame = self._cap.read()
            if not ok or frame is None or frame.ndim != 3 or frame.shape[2] != 3:
                failures += 1
                if failures >= 10:
                    with self._lock:
                        self._error = (f"camera {self.name!r} ({self.config.device!r}) "
                                       "failed to deliver 10 frames in a row")
                        self._new_frame.notify_all()
                    return
                time.sleep(0.005)
                continue
            failures = 0
            rgb = np.ascontiguousarray(frame[..., ::-1], dtype=np.uint8)  # BGR -> RGB
            with self._lock:
                self._frame, self._frame_time = rgb, time.monotonic()
                self._new_frame.notify_all()

    def read(self) -> np.ndarray:
        """Newest RGB frame, uint8 (H, W, 3). Raises ``CameraError`` if none is recent enough."""
        if self._thread is None:
            raise CameraError(f"camera {self.name!r} is not connected")
        timeout = self.config.timeout_s
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if self._error:
                    raise CameraError(self._error)
                now = time.monotonic()
                if self._frame is not None and now - self._frame_time <= timeout:
                    return self._frame
                if now >= deadline:
                    age = "no frame yet" if self._frame is None else f"newest frame {now - self._frame_time:.2f}s old"
                    raise CameraError(f"camera {self.name!r} ({self.config.device!r}): {age} after waiting {timeout}s")
                self._new_frame.wait(deadline - now)

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def make_camera(name: str, spec: Any) -> Any:
    """Turn a ``cameras`` entry into a camera object (anything with connect/read/disconnect passes as is)."""
    if not name or "/" in name:
        raise ValueError(f"camera name {name!r} must be non-empty and contain no '/' (it becomes images/<name>)")
    if all(hasattr(spec, m) for m in ("connect", "read", "disconnect")):
        return spec
    if isinstance(spec, CameraConfig):
        return OpenCVCamera(name, spec)
    if isinstance(spec, Mapping):
        return OpenCVCamera(name, CameraConfig(**spec))
    if isinstance(spec, (int, str)):
        return OpenCVCamera(name, CameraConfig(device=spec))
    raise TypeError(
        f"camera {name!r}: expected a CameraConfig, a dict, a device index/path or a camera object, got {spec!r}"
    )
