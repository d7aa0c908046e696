"""The Raspberry Pi camera through picamera2, and the colour conversions its formats need.

The conversions are pure functions so they are tested on recorded arrays; the
camera itself is only opened on a Pi (picamera2 is imported when the source opens).
picamera2 names formats after libcamera's little-endian words, so the bytes in
memory run the other way round: XRGB8888 arrives as B, G, R, X and RGB888 as B, G, R.
"""

from __future__ import annotations

import numpy as np

from . import DeviceError
from .frames import Frame

FORMATS = ("XRGB8888", "XBGR8888", "RGB888", "BGR888", "YUV420")


def to_rgb(frame: np.ndarray, fmt: str) -> np.ndarray:
    """A picamera2 array in ``fmt`` -> (H, W, 3) uint8 RGB."""
    if fmt == "XRGB8888":
        return frame[..., 2::-1]  # B, G, R, X -> R, G, B
    if fmt == "XBGR8888":
        return frame[..., :3]  # R, G, B, X
    if fmt == "RGB888":
        return frame[..., ::-1]  # B, G, R
    if fmt == "BGR888":
        return frame
    if fmt == "YUV420":
        return yuv420_to_rgb(frame)
    raise DeviceError(f"camera format {fmt!r} is not one of {', '.join(FORMATS)}")


def yuv420_to_rgb(frame: np.ndarray) -> np.ndarray:
    """Planar I420, shape (H * 3 / 2, W): full-range BT.601 (the JPEG equations)."""
    h = frame.shape[0] * 2 // 3
    w = frame.shape[1]
    y = frame[:h].astype(np.float32)
    chroma = frame[h:].reshape(-1)
    quarter = (h // 2) * (w // 2)
    u = chroma[:quarter].reshape(h // 2, w // 2).astype(np.float32) - 128
    v = chroma[quarter:2 * quarter].reshape(h // 2, w // 2).astype(np.float32) - 128
    u = u.repeat(2, axis=0).repeat(2, axis=1)
    v = v.repeat(2, axis=0).repeat(2, axis=1)
    rgb = np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def luma(frame: np.ndarray, fmt: str) -> np.ndarray:
    """The Y plane of a YUV420 frame, (H, W, 1): free grayscale for gray models."""
    h = frame.shape[0] * 2 // 3
    return frame[:h, :, None]


class Picamera2Source:
    """Frames from the Pi camera: a preview-configured stream sized near the model's input.

    ``camera`` may be passed in (a Picamera2 object already set up); otherwise one is
    created and configured here when the source opens, never at import.
    """

    def __init__(self, width: int, height: int, fmt: str = "XRGB8888", gray: bool = False, camera=None):
        if fmt not in FORMATS:
            raise DeviceError(f"camera format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.gray = gray
        self._own = camera is None
        if camera is None:
            try:
                from picamera2 import Picamera2
            except ImportError:
                raise DeviceError("picamera2 is not installed: sudo apt install python3-picamera2, and make the venv "
                                  "with --system-site-packages (deploy.sh does)") from None
            try:
                camera = Picamera2()
                # even sizes near the model's input: the preprocessor resizes the rest of the way
                size = (max(width, 64) + 1) // 2 * 2, (max(height, 64) + 1) // 2 * 2
                camera.configure(camera.create_preview_configuration(main={"size": size, "format": fmt}))
                camera.start()
            except Exception as e:  # noqa: BLE001 - libcamera: RuntimeError or IndexError with no camera
                raise DeviceError(f"cannot start the camera ({e}): check the ribbon cable and 'rpicam-hello'") from None
        self.camera = camera

    def __iter__(self):
        return self

    def __next__(self):
        arr = self.camera.capture_array("main")
        if self.fmt == "YUV420" and self.gray:
            return Frame(luma(arr, self.fmt))
        return Frame(to_rgb(arr, self.fmt))

    def close(self) -> None:
        if self._own and self.camera is not None:
            self.camera.stop()
            self.camera.close()
        self.camera = None
