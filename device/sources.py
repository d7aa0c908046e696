"""Frame sources, opened by a URL-like spec in the spirit of pyserial's ``serial_for_url``.

- ``replay:PATH[?loop=1]``: a testset.npz (``x``, optional ``y``), an .npy/.npz array, or a
  folder of images, in file order; ``loop=1`` starts over at the end.
- ``serial-sensor:PORT[?baud=115200]``: one line of comma-separated readings per sample
  (the microcontroller "data forwarder" shape), assembled into the model's sliding window.
- ``picamera2[:?format=XRGB8888]``: the Raspberry Pi camera.
- ``synthetic[:?seed=0]``: random frames in the model's input range, for smoke tests.

Every source is an iterator of ``Frame`` with ``close()``; pacing is the app's job.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qs

import numpy as np

from . import DeviceError
from .bundle import ModelSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass
class Frame:
    data: np.ndarray
    truth: int | None = None  # the known class, when a replay file carries labels


class CaptureError(Exception):
    """One capture that failed (camera hiccup, quiet sensor); counted and skipped, never fatal."""


class ReplaySource:
    """Frames from a file or folder, in order; ``truth`` set when the file has labels."""

    def __init__(self, path: str, spec: ModelSpec, loop: bool = False):
        self.path = Path(path)
        self.loop = loop
        self.x, self.y = self._load(self.path)
        want = spec.input.shape[1:]
        sample = self.x.shape[1:]
        if spec.kind == "sensor" and sample != want:
            raise DeviceError(f"replay file {self.path} holds samples of shape {sample}, the model takes {want}")
        if spec.kind == "image" and len(sample) not in (2, 3):
            raise DeviceError(f"replay file {self.path} holds samples of shape {sample}, not images")
        if len(self.x) == 0:
            raise DeviceError(f"replay file {self.path} holds no samples")
        self._i = 0

    @staticmethod
    def _load(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        if path.is_dir():
            from PIL import Image

            files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DeviceError(f"replay folder {path} holds no images")
            return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]), None
        if not path.is_file():
            raise DeviceError(f"replay file {path} does not exist")
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DeviceError(f"cannot read replay file {path} ({e}): give an .npz or .npy") from None
        if isinstance(data, np.ndarray):
            return data, None
        if "x" not in data:
            raise DeviceError(f"replay file {path} has no array named x")
        return data["x"], (data["y"] if "y" in data else None)

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        if self._i >= len(self.x):
            if not self.loop:
                raise StopIteration
            self._i = 0
        i = self._i
        self._i += 1
        return Frame(self.x[i], int(self.y[i]) if self.y is not None else None)

    def close(self) -> None:
        pass


class SyntheticSource:
    """Random frames around the model's training statistics: exercises everything but a sensor."""

    def __init__(self, spec: ModelSpec, seed: int = 0):
        pre = spec.input.preprocess
        self.shape = spec.input.shape[1:]
        self.mean = np.asarray(pre.mean, np.float32)
        self.std = np.asarray(pre.std, np.float32)
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        return self

    def __next__(self) -> Frame:
        return Frame((self.mean + self.std * self.rng.standard_normal(self.shape)).astype(np.float32))

    def close(self) -> None:
        pass


class SerialSensorSource:
    """Comma-separated readings, one sample per line, kept as the model's sliding window.

    Each frame is the newest full window; lines with the wrong number of fields or
    non-numbers are counted in ``bad_lines`` and skipped.
    """

    def __init__(self, port, spec: ModelSpec, max_wait: float = 2.0):
        self.port = port  # an open pyserial object with a read timeout
        self.steps, self.channels = spec.input.shape[1:]
        self.window: collections.deque = collections.deque(maxlen=self.steps)
        self.bad_lines = 0
        self.max_wait = max_wait  # seconds without a new sample before a frame counts as failed
        self._fresh = 0
        self._buf = bytearray()

    @classmethod
    def open(cls, url: str, spec: ModelSpec, baud: int = 115200) -> "SerialSensorSource":
        if spec.kind != "sensor" or len(spec.input.shape) != 3:
            raise DeviceError("serial-sensor needs a sensor model (input shaped batch, steps, channels)")
        import serial

        try:
            port = serial.serial_for_url(url, baudrate=baud, timeout=0.05)
        except (serial.SerialException, ValueError) as e:
            raise DeviceError(f"cannot open sensor port {url} ({e}): check the cable and the path") from None
        return cls(port, spec)

    def _lines(self) -> Iterator[bytes]:
        try:
            chunk = self.port.read(max(self.port.in_waiting, 1))
        except (OSError, ValueError) as e:  # SerialException is an OSError
            raise CaptureError(f"sensor port read failed ({e})") from None
        self._buf += chunk
        *lines, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest[-4096:])
        yield from lines

    def add_line(self, line: bytes) -> None:
        fields = line.strip().split(b",")
        try:
            values = [float(f) for f in fields]
        except ValueError:
            values = []
        if len(values) != self.channels:
            self.bad_lines += 1
            return
        self.window.append(values)
        self._fresh += 1

    def __iter__(self):
        return self

    def __next__(self) -> Frame:
        deadline = time.monotonic() + self.max_wait
        while True:
            for line in self._lines():
                if line.strip():
                    self.add_line(line)
            if len(self.window) == self.steps and self._fresh and not self.port.in_waiting:
                self._fresh = 0
                return Frame(np.asarray(self.window, dtype=np.float32))
            if time.monotonic() > deadline:
                raise CaptureError(f"no new sensor sample for {self.max_wait:g} s")

    def close(self) -> None:
        self.port.close()


def _camera(rest: str, spec: ModelSpec, **q) -> object:
    from .camera import Picamera2Source

    if spec.kind != "image":
        raise DeviceError("picamera2 needs an image model")
    _, h, w, c = spec.input.shape
    return Picamera2Source(w, h, fmt=q.get("format", "XRGB8888"), gray=c == 1)


REGISTRY: dict[str, Callable[..., object]] = {
    "replay": lambda rest, spec, **q: ReplaySource(rest, spec, loop=q.get("loop", "0") in ("1", "true", "yes")),
    "serial-sensor": lambda rest, spec, **q: SerialSensorSource.open(rest, spec, int(q.get("baud", 115200))),
    "picamera2": _camera,
    "synthetic": lambda rest, spec, **q: SyntheticSource(spec, int(q.get("seed", 0))),
}


def open_source(spec_text: str, spec: ModelSpec):
    """Open a source by its spec (see the module docstring)."""
    scheme, _, rest = spec_text.partition(":")
    rest, _, query = rest.partition("?")
    if scheme not in REGISTRY:
        raise DeviceError(f"unknown source {spec_text!r}: use replay:PATH, serial-sensor:PORT, picamera2 or synthetic")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    if scheme in ("replay", "serial-sensor") and not rest:
        raise DeviceError(f"source {scheme} needs a path: {scheme}:PATH")
    return REGISTRY[scheme](rest, spec, **options)
