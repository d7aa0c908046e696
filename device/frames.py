"""What every frame source yields, and the one failure a source may report per frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Frame:
    data: np.ndarray
    truth: int | None = None  # the known class, when a replay file carries labels


class CaptureError(Exception):
    """One capture that failed (camera hiccup, quiet sensor); counted and skipped, never fatal."""
