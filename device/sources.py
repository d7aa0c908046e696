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
import math
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from contract import specs
from contract.bundle import ModelSpec

from . import DeviceError
from .camera import FORMATS as CAMERA_FORMATS, Picamera2Source
from .frames import CaptureError, Frame
from .sinks import BACKOFF_S

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


MAX_REPLAY_BYTES = 2 << 30  # a replay file is read whole, up front: larger does not fit a Pi's memory


def _check_sizes(path: Path) -> None:
    """Each array's header (.npy, or every member of an .npz) against the bytes that hold it, before
    anything is allocated: a 200-byte file whose header claims terabytes is damaged, not loaded."""
    import zipfile

    def check(f, stored: int, name: str) -> None:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if need > stored or need > MAX_REPLAY_BYTES:
            raise DeviceError(f"replay file {path}: {name} claims {need:,} bytes of data in {stored:,}: it is "
                              f"damaged (or larger than the {MAX_REPLAY_BYTES >> 30} GiB a replay may be)")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as f:
                    check(f, info.file_size, info.filename)
    else:
        with open(path, "rb") as f:
            check(f, path.stat().st_size, "the array")


class ReplaySource:
    """Frames from a file or folder, in order; ``truth`` set when the file has labels."""

    def __init__(self, path: str, spec: ModelSpec, loop: bool = False):
        self.path = Path(path)
        self.loop = loop
        self.x, self.y, labels = self._load(self.path)
        if labels is not None and tuple(labels) != tuple(spec.labels):
            raise DeviceError(f"replay file {self.path} was recorded for the classes {', '.join(labels[:5])}"
                              f"{'...' if len(labels) > 5 else ''}, not this model's: replay its own testset.npz")
        want = spec.input.shape[1:]
        sample = self.x.shape[1:]
        if spec.kind == "sensor" and sample != want:
            raise DeviceError(f"replay file {self.path} holds samples of shape {sample}, the model takes {want}")
        if spec.kind == "image" and len(sample) not in (2, 3):
            raise DeviceError(f"replay file {self.path} holds samples of shape {sample}, not images")
        if len(self.x) == 0:
            raise DeviceError(f"replay file {self.path} holds no samples")
        n = len(spec.labels)
        if self.y is not None and (self.y.min() < 0 or self.y.max() >= n):
            raise DeviceError(f"replay file {self.path}: y holds class ids outside 0 to {n - 1} (this model's "
                              f"{n} classes): replay its own testset.npz")
        self._i = 0

    @staticmethod
    def _load(path: Path) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
        """Everything read up front, so a damaged file fails here with one line, never mid-run."""
        if path.is_dir():
            try:
                from PIL import Image, UnidentifiedImageError
            except ImportError:
                raise DeviceError("replay:FOLDER reads images with Pillow, which is not installed: "
                                  "pip install 'tinysense[images]'") from None
            files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DeviceError(f"replay folder {path} holds no images")
            try:
                images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
            except (UnidentifiedImageError, OSError) as e:
                raise DeviceError(f"cannot read an image in {path} ({e}): remove or replace it") from None
            if len({im.shape for im in images}) != 1:
                raise DeviceError(f"the images in {path} differ in size: give images of one size")
            return np.stack(images), None, None
        if not path.is_file():
            raise DeviceError(f"replay file {path} does not exist")
        import zipfile
        import zlib

        try:
            _check_sizes(path)
            data = np.load(path, allow_pickle=False)
            if isinstance(data, np.ndarray):
                return data, None, None
            with data:
                if "x" not in data:
                    raise DeviceError(f"replay file {path} has no array named x")
                x = np.asarray(data["x"])
                y = np.asarray(data["y"]) if "y" in data else None
                labels = [str(v) for v in data["labels"]] if "labels" in data else None
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
            raise DeviceError(f"cannot read replay file {path} ({type(e).__name__}: {str(e)[:80]}): it is damaged "
                              "or truncated; copy it again") from None
        if y is not None and (y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu"):
            raise DeviceError(f"replay file {path}: y must hold one class id per sample")
        return x, y, labels

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

    Each frame is the newest full window. Lines with the wrong number of fields,
    non-numbers or non-finite values (nan, inf, 1e999) are counted in ``bad_lines``
    and skipped. When the port vanishes (an unplugged sensor), frames fail as
    CaptureError while it is reopened with backoff; ``reconnects`` counts the returns.
    """

    READ_MAX = 65536  # bytes taken per read: a flood of lines cannot hold a frame back

    def __init__(self, port, spec: ModelSpec, max_wait: float = 2.0, opener: Callable | None = None):
        self.port = port  # an open pyserial object with a read timeout
        self.opener = opener  # reopens the port after it vanished; None: a vanished port is final
        self.steps, self.channels = spec.input.shape[1:]
        self.window: collections.deque = collections.deque(maxlen=self.steps)
        self.bad_lines = 0
        self.reconnects = 0
        self.max_wait = max_wait  # seconds without a new sample before a frame counts as failed
        self._fresh = 0
        self._buf = bytearray()
        self._attempt = 0
        self._retry_at = 0.0

    @classmethod
    def open(cls, url: str, spec: ModelSpec, baud: int = 115200) -> "SerialSensorSource":
        if spec.kind != "sensor" or len(spec.input.shape) != 3:
            raise DeviceError("serial-sensor needs a sensor model (input shaped batch, steps, channels)")
        import serial

        def opener():
            return serial.serial_for_url(url, baudrate=baud, timeout=0.05)
        try:
            port = opener()
        except (serial.SerialException, ValueError) as e:
            raise DeviceError(f"cannot open sensor port {url} ({e}): check the cable and the path") from None
        return cls(port, spec, opener=opener)

    def _reopen(self) -> None:
        """One reopen attempt when its backoff has passed; CaptureError while the port is away."""
        now = time.monotonic()
        if self.opener is None:
            raise CaptureError("sensor port is gone")
        if now >= self._retry_at:
            try:
                self.port = self.opener()
            except (OSError, ValueError):  # SerialException is an OSError
                self._attempt += 1
                self._retry_at = now + BACKOFF_S[min(self._attempt, len(BACKOFF_S) - 1)]
            else:
                self.reconnects += 1
                self._attempt = 0
                self.window.clear()  # samples from before the gap do not belong to the new window
                self._buf.clear()
                return
        raise CaptureError("sensor port is gone; reopening")

    def _lines(self) -> Iterator[bytes]:
        if self.port is None:
            self._reopen()
        try:
            chunk = self.port.read(min(max(self.port.in_waiting, 1), self.READ_MAX))
        except (OSError, ValueError, TypeError) as e:  # SerialException is an OSError; a closed fd: TypeError
            try:
                self.port.close()
            except (OSError, ValueError, TypeError):
                pass
            self.port = None
            self._retry_at = 0.0
            raise CaptureError(f"sensor port read failed ({e}); reopening") from None
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
        if len(values) != self.channels or not all(math.isfinite(v) for v in values):
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
            if len(self.window) == self.steps and self._fresh:
                self._fresh = 0
                return Frame(np.asarray(self.window, dtype=np.float32))
            if time.monotonic() > deadline:
                raise CaptureError(f"no new sensor sample for {self.max_wait:g} s")

    def counters(self) -> dict:
        return {"bad_lines": self.bad_lines, "source_reconnects": self.reconnects}

    def close(self) -> None:
        if self.port is not None:
            self.port.close()


def _camera(target: str, spec: ModelSpec, format: str = "XRGB8888") -> object:
    if spec.kind != "image":
        raise DeviceError("picamera2 needs an image model")
    _, h, w, c = spec.input.shape
    return Picamera2Source(w, h, fmt=format, gray=c == 1)


SCHEMES = {s.name: s for s in (
    specs.Scheme("replay", True, {"loop": specs.boolean}, "replay:PATH[?loop=1]"),
    specs.Scheme("serial-sensor", True, {"baud": specs.positive_int}, "serial-sensor:PORT[?baud=N]"),
    specs.Scheme("picamera2", False, {"format": specs.one_of(*CAMERA_FORMATS)},
                 "picamera2[:?format=F]"),
    specs.Scheme("synthetic", False, {"seed": specs.whole}, "synthetic[:?seed=N]"),
)}
OPENERS: dict[str, Callable[..., object]] = {
    "replay": lambda target, spec, loop=False: ReplaySource(target, spec, loop=loop),
    "serial-sensor": lambda target, spec, baud=115200: SerialSensorSource.open(target, spec, baud),
    "picamera2": _camera,
    "synthetic": lambda target, spec, seed=0: SyntheticSource(spec, seed),
}


def open_source(spec_text: str, spec: ModelSpec):
    """Open a source by its spec (see the module docstring); unknown options are refused."""
    s = specs.parse(spec_text, SCHEMES, "source")
    return OPENERS[s.scheme](s.target, spec, **s.options)
