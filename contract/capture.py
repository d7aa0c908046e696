"""Capture what native libraries (TensorFlow, TFLM) write straight to file descriptors 1 and 2."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator


@contextlib.contextmanager
def captured(fds: tuple[int, ...] = (2,)) -> Iterator[list[str]]:
    """Point ``fds`` at one temporary file; yield a list that gets the text once the block ends."""
    out: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = [os.dup(fd) for fd in fds]
        for fd in fds:
            os.dup2(tmp.fileno(), fd)
        try:
            yield out
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, keep in zip(fds, saved):
                os.dup2(keep, fd)
                os.close(keep)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))
