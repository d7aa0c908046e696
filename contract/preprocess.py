"""From a raw frame to the model's input tensor, as model.json says: colour, size, normalise, quantize.

Everything is vectorised numpy; index maps for resizing are computed once per frame shape.
"""

from __future__ import annotations

import numpy as np

from .errors import ContractError
from .bundle import ModelSpec
from .quant import quantize

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class FrameError(ValueError):
    """One frame that cannot be used (wrong shape); counted and skipped, never fatal."""


def fit_length(window: np.ndarray, steps: int, mode: str) -> np.ndarray:
    """A (steps_i, channels) recording -> (steps, channels): linear ``resample``, or ``pad`` with the last sample.

    The build side uses this very function for variable-length data sets, so both sides agree.
    """
    n = window.shape[0]
    if n == steps:
        return window
    if n == 0:
        raise FrameError("an empty sensor recording")
    if mode == "resample":
        src = np.linspace(0.0, n - 1, steps)
        return np.stack([np.interp(src, np.arange(n), window[:, c]) for c in range(window.shape[1])],
                        axis=1).astype(np.float32)
    if n > steps:
        return window[:steps]
    return np.concatenate([window, np.repeat(window[-1:], steps - n, axis=0)])


def nearest_maps(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices for a nearest-neighbour resize, sampled at pixel centres.

    The device resizes camera frames with these, and the build side resizes a data set
    to a user model's input size with the same ones, so both see the same pixels.
    """
    (h, w), (oh, ow) = src_hw, dst_hw
    rows = ((np.arange(oh) + 0.5) * h / oh).astype(np.intp)
    cols = ((np.arange(ow) + 0.5) * w / ow).astype(np.intp)
    return rows[:, None], cols[None, :]


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W, 1) luminance (ITU-R BT.601 weights)."""
    return (rgb[..., :3].astype(np.float32) @ _LUMA)[..., None]


class Preprocessor:
    """Callable: raw frame -> (1, ...) tensor in the model's dtype, ready for set_tensor.

    The returned array is reused by the next call (set_tensor copies it); copy it to keep it.
    """

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        pre = spec.input.preprocess
        self.kind = spec.kind
        self.shape = spec.input.shape
        self.dtype = np.dtype(spec.input.dtype)
        self.mean = np.asarray(pre.mean, dtype=np.float32)
        self.std = np.asarray(pre.std, dtype=np.float32)
        self.scale, self.zero_point = spec.input.scale, spec.input.zero_point
        if self.kind == "image":
            if len(self.shape) != 4:
                raise ContractError(f"model.json says image but the input shape is {list(self.shape)}, not NHWC")
            self.height, self.width, self.channels = self.shape[1:]
            self.bgr = pre.color == "bgr"
        self.length = pre.length
        self._maps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        # reused every frame: no allocation on the hot path once the first frame is through
        self._buf = np.empty(self.shape[1:], np.float32)
        self._out = np.empty(self.shape, self.dtype)

    def _resize(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        if (h, w) == (self.height, self.width):
            return img
        maps = self._maps.get((h, w))
        if maps is None:
            maps = self._maps[(h, w)] = nearest_maps((h, w), (self.height, self.width))
        return img[maps[0], maps[1]]

    def _image(self, frame: np.ndarray) -> np.ndarray:
        if frame.ndim == 2:
            frame = frame[..., None]
        if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
            raise FrameError(f"image frame of shape {frame.shape}; expected (H, W), (H, W, 1) or (H, W, 3)")
        frame = self._resize(frame)
        channels = frame.shape[2]
        if self.channels == 1 and channels >= 3:
            frame = to_gray(frame)
        elif self.channels == 3 and channels == 1:
            frame = np.repeat(frame, 3, axis=2)
        elif self.channels == 3 and channels == 4:
            frame = frame[..., :3]
        elif channels != self.channels:
            raise FrameError(f"frame has {channels} channels, the model takes {self.channels}")
        if self.bgr:
            frame = frame[..., ::-1]
        return frame

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if self.kind == "image":
            frame = self._image(frame)
        elif frame.shape != self.shape[1:]:
            if self.length and frame.ndim == 2 and frame.shape[1] == self.shape[2]:
                frame = fit_length(frame.astype(np.float32), self.shape[1], self.length)
            else:
                raise FrameError(f"sensor window of shape {frame.shape}; the model takes {self.shape[1:]}")
        buf = self._buf
        np.copyto(buf, frame, casting="unsafe")  # to float32 first, as the build side does
        if frame.dtype.kind == "f" and not np.isfinite(buf).all():  # NaN would quantize to a real-looking input
            raise FrameError("a frame with NaN or infinite values")
        np.subtract(buf, self.mean, out=buf)
        np.divide(buf, self.std, out=buf)
        return quantize(buf, self.scale, self.zero_point, self.dtype, out=self._out)
