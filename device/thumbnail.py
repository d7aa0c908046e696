"""A small JPEG of the latest camera or image frame, for the dashboard (``--thumbnail-every S``).

Made with Pillow (the ``images`` extra) at most every S seconds, never per frame. A frame that
is not an image (a sensor window) has no thumbnail.
"""

from __future__ import annotations

import importlib.util
import io

import numpy as np

from . import DeviceError

MAX_SIDE = 160
QUALITY = 70


def check_available() -> None:
    if importlib.util.find_spec("PIL") is None:
        raise DeviceError("--thumbnail-every needs Pillow: pip install 'tinysense[images]' "
                          "(or sudo apt install python3-pil)")


def is_image(frame: np.ndarray) -> bool:
    return frame.ndim == 2 or (frame.ndim == 3 and frame.shape[-1] in (1, 3, 4))


def jpeg(frame: np.ndarray, max_side: int = MAX_SIDE) -> bytes:
    """The frame as a JPEG no larger than max_side on its longer side (small images are enlarged
    with nearest-neighbour, so an 8x8 digit stays readable)."""
    from PIL import Image

    a = np.asarray(frame)
    if not is_image(a):
        raise ValueError(f"a frame of shape {a.shape} is not an image")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        low, high = float(np.nanmin(a)), float(np.nanmax(a))
        a = np.nan_to_num((a - low) / (high - low or 1.0) * 255.0).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(a)
    scale = max_side / max(img.size)
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    img = img.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=QUALITY)
    return out.getvalue()
