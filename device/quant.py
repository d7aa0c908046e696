"""Affine (scale, zero point) quantization shared by every part of tinysense."""

from __future__ import annotations

import numpy as np


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Map floats to integers as TFLite does: round, shift, then clip to the dtype.

    Clipping before the cast is the point: 1.2 with scale 1/255 and zero point
    -128 is 178 before clipping, and a bare ``astype(np.int8)`` would wrap it to -78.
    """
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype)
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integers back to float32: ``(q - zero_point) * scale``."""
    return (np.asarray(q, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)
