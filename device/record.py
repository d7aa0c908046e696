"""``python -m device record``: samples from a sensor or a camera into a dataset build_model reads.

    python -m device record --source serial-sensor:/dev/ttyACM0 --label wave --out data/gestures \\
        --window 50 --count 20
    python -m device record --source picamera2 --size 96x96 --label cat --out data/pets --count 30 --every 0.5

Sensors: one recording (``--window`` consecutive samples) per row of ``OUT/recordings.csv``
(``label,split,values...``, time-major), which ``--dataset csv:OUT/recordings.csv --channels C``
reads; every fifth recording of a label goes to the test split unless ``--split`` says. The line
format is detected from the first lines, as Edge Impulse's data forwarder does (separator, number
of axes, rate), printed, and checked against ``--channels`` and ``--rate`` when given; a recording
whose rate drifts from it by more than ``--rate-tolerance`` is refused and counted. Pictures
(picamera2, or a replay of images): ``OUT/<label>/<time>-<n>.png``, for ``--dataset images:OUT``.

``OUT/manifest.json`` keeps every session (source, device, time, rate, count per label). Nothing
is half written: a session's samples go in at its end, in one rename per file; an error (an
unplugged port, a full disk, a bad flag) leaves the dataset as it was, and Ctrl-C keeps the whole
recordings taken so far. The last line printed is the ``--dataset`` spec that trains on it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from contract import atomic, specs
from contract.cli import run_cli
from contract.errors import UsageError

from . import DeviceError

MANIFEST_FORMAT = "tinysense-recordings/1"
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")  # a csv field, a folder name, a label on the wire
SEPARATORS = (b",", b"\t", b";", b" ")
DETECT_LINES = 20  # good lines read to detect the format and the rate
DETECT_BAD = 200  # lines that are not numbers before those: the wrong baud rate, or not a sensor
QUIET_S = 5.0  # no line for this long: the sensor is not sending
TEST_EVERY = 5  # with --split auto, every fifth recording of a label is a test recording
SCHEMES = {s.name: s for s in (
    specs.Scheme("serial-sensor", True, {"baud": specs.positive_int}, "serial-sensor:PORT[?baud=N]"),
    specs.Scheme("picamera2", False, {}, "picamera2"),
    specs.Scheme("replay", True, {}, "replay:PATH (images: a folder, .npy or .npz)"),
)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m device record",
                                description="Record labelled samples into a dataset that build_model reads.")
    p.add_argument("--source", required=True, help="serial-sensor:PORT[?baud=N], picamera2, or replay:PATH (images)")
    p.add_argument("--label", required=True, help="the class of what is recorded now (letters, digits, ' ._-')")
    p.add_argument("--out", required=True, type=Path, help="the dataset folder (made, or appended to)")
    n = p.add_mutually_exclusive_group(required=True)
    n.add_argument("--count", type=int, help="stop after N recordings (sensor windows or pictures)")
    n.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--window", type=int, default=50, help="sensor: samples per recording (default 50)")
    p.add_argument("--channels", type=int, help="sensor: axes per line; detected when not given")
    p.add_argument("--rate", type=float, help="sensor: samples per second (Hz); detected when not given")
    p.add_argument("--rate-tolerance", type=float, default=0.1,
                   help="sensor: a recording whose rate is off by more than this fraction is refused (default 0.1)")
    p.add_argument("--split", choices=("auto", "train", "test"), default="auto",
                   help="sensor: the split of these recordings (auto: every fifth of a label is test)")
    p.add_argument("--size", default="96x96", help="picamera2: WIDTHxHEIGHT (default 96x96)")
    p.add_argument("--every", type=float, default=0.5, help="pictures: seconds between two (default 0.5)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli("record", parser(), record, argv)


def record(args) -> int:
    if not LABEL.fullmatch(args.label):
        raise UsageError(f"--label {args.label!r}: use 1 to 64 letters, digits, spaces, '.', '_' or '-', starting "
                         "with a letter or digit (it is a csv field and a folder name)")
    for name, value, low in (("count", args.count, 1), ("window", args.window, 2)):
        if value is not None and value < low:
            raise UsageError(f"--{name} must be at least {low}")
    for name, value in (("duration", args.duration), ("rate", args.rate), ("every", args.every)):
        if value is not None and not (math.isfinite(value) and 0 < value <= 86400):
            raise UsageError(f"--{name} must be a number above 0 and at most 86400")
    if not (math.isfinite(args.rate_tolerance) and 0 < args.rate_tolerance < 1):
        raise UsageError("--rate-tolerance must be a fraction between 0 and 1, e.g. 0.1")
    source = specs.parse(args.source, SCHEMES, "source")
    stop = threading.Event()
    interrupted = []

    def on_signal(sig, _frame):
        interrupted.append(sig)
        stop.set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    end = time.monotonic() + args.duration if args.duration else None
    if source.scheme == "serial-sensor":
        spec = SensorRecorder(args, source.target, source.options.get("baud", 115200)).run(stop, end)
    else:
        spec = PictureRecorder(args, source).run(stop, end)
    print(spec)
    return 130 if interrupted else 0


# --- the dataset on disk ---------------------------------------------------------------------

def _manifest(out: Path) -> dict:
    path = out / "manifest.json"
    if not path.exists():
        return {"format": MANIFEST_FORMAT, "sessions": [], "counts": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DeviceError(f"{path} is not a recordings manifest ({e}): give another --out") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise DeviceError(f"{path} is not a {MANIFEST_FORMAT} manifest: give another --out")
    return data


def _session(args, kind: str, count: int, **facts) -> dict:
    return {"source": args.source, "device": socket.gethostname(), "label": args.label, "kind": kind,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "count": count, **facts}


def _save_manifest(out: Path, manifest: dict, session: dict) -> None:
    manifest["sessions"].append(session)
    counts = manifest.setdefault("counts", {})
    counts[session["label"]] = counts.get(session["label"], 0) + session["count"]
    atomic.write_bytes(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode(), mode=0o644)


def _prepare_out(out: Path, kind: str) -> dict:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DeviceError(f"cannot make --out {out} ({e.strerror}): give a folder you can write") from None
    manifest = _manifest(out)
    kinds = {s.get("kind") for s in manifest["sessions"]}
    if kinds and kinds != {kind}:
        raise DeviceError(f"{out} holds {', '.join(sorted(kinds))} recordings, not {kind}: give another --out")
    return manifest


# --- sensors -------------------------------------------------------------------------------------

class SensorRecorder:
    """Lines from a serial port, detected, cut into recordings of ``--window`` samples."""

    def __init__(self, args, port: str, baud: int):
        self.args, self.url, self.baud = args, port, baud
        self.manifest = _prepare_out(args.out, "sensor")
        self.csv = args.out / "recordings.csv"
        self.existing = self._existing()
        self.bad_lines = self.refused = 0
        self._buf = bytearray()

    def _existing(self) -> list[bytes]:
        if not self.csv.exists():
            return []
        lines = self.csv.read_bytes().splitlines(keepends=True)
        return lines[1:] if lines and lines[0].startswith(b"label,split") else lines

    def _lines(self, port, stop: threading.Event, end: float | None):
        """(arrival time, line) as they come, until ``stop`` or ``end``; DeviceError when the port goes away
        or sends nothing for QUIET_S."""
        heard = time.monotonic()
        while not stop.is_set() and not (end is not None and time.monotonic() >= end):
            if time.monotonic() - heard > QUIET_S:
                raise DeviceError(f"no line from {self.url} for {QUIET_S:g} s: check the sensor, the cable and "
                                  "?baud=; nothing of this session was kept")
            try:
                chunk = port.read(max(port.in_waiting, 1))
            except (OSError, ValueError, TypeError) as e:  # SerialException is an OSError
                raise DeviceError(f"the sensor port {self.url} went away ({e}); nothing of this session was kept: "
                                  "plug it in and record again") from None
            now = time.monotonic()
            self._buf += chunk
            *lines, rest = self._buf.split(b"\n")
            self._buf = bytearray(rest[-4096:])
            for line in lines:
                if line.strip():
                    heard = now
                    yield now, line.strip()

    def _detect(self, lines, stop: threading.Event) -> tuple[bytes, int, float]:
        """Separator, axes and rate (Hz) from the first DETECT_LINES lines that are numbers."""
        seen = []
        for t, line in lines:
            sep = next((s for s in SEPARATORS if s in line), b",")
            values = _numbers(line, sep)
            if values is None:
                self.bad_lines += 1
                if self.bad_lines > DETECT_BAD:
                    raise DeviceError(f"{self.bad_lines} lines from {self.url} that are not numbers: check ?baud= "
                                      "and that the sensor sends one sample of numbers per line")
                continue
            seen.append((t, sep, len(values)))
            if len(seen) >= DETECT_LINES:
                break
        if len(seen) < DETECT_LINES and stop.is_set():
            raise KeyboardInterrupt  # Ctrl-C before anything was recorded: 130, nothing written
        if len(seen) < DETECT_LINES:
            raise DeviceError(f"fewer than {DETECT_LINES} lines of numbers from {self.url}: is the sensor sending?")
        seps, axes = {s for _, s, _ in seen}, {n for _, _, n in seen}
        if len(seps) > 1 or len(axes) > 1:
            raise DeviceError(f"the lines from {self.url} change their format ({len(axes)} axis counts): one sample "
                              "per line, the same number of values each time")
        times = np.array([t for t, _, _ in seen])
        rate = (len(times) - 1) / max(times[-1] - times[0], 1e-9)
        return seps.pop(), axes.pop(), float(rate)

    def run(self, stop: threading.Event, end: float | None) -> str:
        import serial

        args = self.args
        try:
            port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0.05)
        except (serial.SerialException, ValueError) as e:
            raise DeviceError(f"cannot open the sensor port {self.url} ({e}): check the cable and the path") from None
        try:
            port.reset_input_buffer()  # lines queued before we opened it would fake the rate
            lines = self._lines(port, stop, end)
            sep, axes, detected = self._detect(lines, stop)
            shown = {b",": "','", b"\t": "tab", b";": "';'", b" ": "space"}[sep]
            print(f"record: {self.url}: {axes} axes separated by {shown} at {detected:.1f} Hz", flush=True)
            if args.channels is not None and args.channels != axes:
                raise DeviceError(f"--channels {args.channels} but the sensor sends {axes} values a line")
            rate = args.rate or detected
            if args.rate and abs(detected - rate) > args.rate_tolerance * rate:
                print(f"record: the sensor's rate ({detected:.1f} Hz) is not --rate {rate:g}: recordings off by "
                      f"more than {args.rate_tolerance:.0%} are refused", flush=True)
            width = args.window * axes
            if self.existing and len(self.existing[0].split(b",")) - 2 != width:
                raise DeviceError(f"{self.csv} holds recordings of {len(self.existing[0].split(b',')) - 2} values, "
                                  f"this one has {args.window} x {axes} = {width}: give another --out")
            rows = self._record(lines, sep, axes, rate, stop, end)
        finally:
            port.close()
        if not rows:
            why = f", {self.refused} refused for their rate (check --rate)" if self.refused else ""
            raise DeviceError(f"no recording was complete{why}; the dataset is as it was")
        header = "label,split," + ",".join(f"t{t}_c{c}" for t in range(args.window) for c in range(axes))
        atomic.write_bytes(self.csv, header.encode() + b"\n" + b"".join(self.existing + rows), mode=0o644)
        _save_manifest(args.out, self.manifest, _session(args, "sensor", len(rows), channels=axes, window=args.window,
                                                         rate_hz=round(rate, 3), refused_for_rate=self.refused,
                                                         bad_lines=self.bad_lines))
        counts = self.manifest["counts"]
        print(f"record: {len(rows)} recordings of {args.label!r} ({self.refused} refused for their rate, "
              f"{self.bad_lines} bad lines); the dataset holds " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return f"--dataset csv:{self.csv} --channels {axes}"

    def _record(self, lines, sep: bytes, axes: int, rate: float, stop, end) -> list[bytes]:
        args = self.args
        rows: list[bytes] = []
        done = sum(1 for ln in self.existing if ln.split(b",", 1)[0].decode() == args.label)
        window, times = [], []
        for t, line in lines:
            if (end is not None and time.monotonic() >= end) or (args.count and len(rows) >= args.count):
                break
            values = _numbers(line, sep)
            if values is None or len(values) != axes:
                self.bad_lines += 1
                window, times = [], []  # a recording is consecutive samples, or nothing
                continue
            window.append(values)
            times.append(t)
            if len(window) < args.window:
                continue
            got = (len(times) - 1) / max(times[-1] - times[0], 1e-9)
            if abs(got - rate) > args.rate_tolerance * rate:
                self.refused += 1
            else:
                split = args.split if args.split != "auto" else ("test" if (done + 1) % TEST_EVERY == 0 else "train")
                done += 1
                flat = (f"{v:.6g}" for sample in window for v in sample)
                rows.append(",".join([args.label, split, *flat]).encode() + b"\n")
            window, times = [], []
        return rows


def _numbers(line: bytes, sep: bytes) -> list[float] | None:
    try:
        values = [float(v) for v in line.split(sep) if v.strip()]
    except ValueError:
        return None
    return values if values and all(math.isfinite(v) for v in values) else None


# --- pictures ------------------------------------------------------------------------------------

class PictureRecorder:
    """Pictures from picamera2 (or a replay of images) every ``--every`` seconds into ``OUT/<label>/``."""

    def __init__(self, args, source):
        self.args, self.source = args, source
        self.manifest = _prepare_out(args.out, "image")

    def _frames(self):
        if self.source.scheme == "picamera2":
            from .camera import Picamera2Source

            w, _, h = self.args.size.partition("x")
            if not (w.isdigit() and h.isdigit() and 0 < int(w) <= 4096 and 0 < int(h) <= 4096):
                raise UsageError(f"--size {self.args.size!r}: give WIDTHxHEIGHT, e.g. 96x96")
            return Picamera2Source(int(w), int(h))
        from .sources import ReplaySource

        x, _, _ = ReplaySource._load(Path(self.source.target))
        return (np.asarray(v) for v in x)

    def run(self, stop: threading.Event, end: float | None) -> str:
        from PIL import Image

        args = self.args
        stage = Path(tempfile.mkdtemp(prefix=".record-", dir=args.out))
        taken = 0
        try:
            frames = iter(self._frames())
            while not stop.is_set() and not (args.count and taken >= args.count) and \
                    not (end is not None and time.monotonic() >= end):
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                frame = getattr(frame, "data", frame)
                a = np.clip(np.asarray(frame), 0, 255).astype(np.uint8)
                Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a).save(
                    stage / f"{time.time():.3f}-{taken:06d}.png")
                taken += 1
                if not stop.is_set() and not (args.count and taken >= args.count):
                    stop.wait(args.every)
            if not taken:
                raise DeviceError("no picture was taken; the dataset is as it was")
            folder = args.out / args.label
            folder.mkdir(exist_ok=True)
            for f in sorted(stage.iterdir()):
                f.replace(folder / f.name)  # one rename each: a picture is there whole, or not at all
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(stage)
        _save_manifest(args.out, self.manifest, _session(args, "image", taken))
        counts = self.manifest["counts"]
        print(f"record: {taken} pictures of {args.label!r}; the dataset holds "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return f"--dataset images:{args.out}"
