"""Affine (scale, zero point) quantization shared by every part of tinysense."""

from __future__ import annotations

import numpy as np


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype, out: np.ndarray | None = None) -> np.ndarray:
    """Map floats to integers as TFLite does: round, shift, then clip to the dtype.

    Clipping before the cast is the point: 1.2 with scale 1/255 and zero point
    -128 is 178 before clipping, and a bare ``astype(np.int8)`` would wrap it to -78.

    With ``out`` (an integer array of x's size) the work happens in place: ``x`` must
    then be a float32 array the caller owns, and it is overwritten. The device's
    per-frame path uses this to allocate nothing; the arithmetic is the same.
    """
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype)
    if out is None:
        q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
        return np.clip(q, info.min, info.max).astype(dtype)
    np.divide(x, np.float32(scale), out=x)
    np.rint(x, out=x)
    np.add(x, zero_point, out=x)
    np.clip(x, info.min, info.max, out=x)
    np.copyto(out, x.reshape(out.shape), casting="unsafe")
    return out


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integers back to float32: ``(q - zero_point) * scale``."""
    return (np.asarray(q, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)
