"""``python -m device record``: samples from a sensor or a camera into a dataset build_model reads.

    python -m device record --source serial-sensor:/dev/ttyACM0 --label wave --out data/gestures \\
        --window 50 --count 20
    python -m device record --source picamera2 --size 96x96 --label cat --out data/pets --count 30 --every 0.5
    python -m device record --source serial-sensor:/dev/ttyACM0 --out data/gestures --window 50 \\
        --dashboard 0.0.0.0:8080 --dashboard-token token.txt

Sensors: one recording (``--window`` consecutive samples) per row of ``OUT/recordings.csv``
(``label,split,values...``, time-major), which ``--dataset csv:OUT/recordings.csv --channels C``
reads; every fifth recording of a label goes to the test split unless ``--split`` says. The line
format is detected from the first lines, as Edge Impulse's data forwarder does (separator, number
of axes, rate), printed, and checked against ``--channels`` and ``--rate`` when given; a recording
whose rate drifts from it by more than ``--rate-tolerance`` is refused and counted. Pictures
(picamera2, or a replay of images): ``OUT/<label>/<time>-<n>.png``, for ``--dataset images:OUT``.

With ``--dashboard HOST:PORT`` the same recorder is driven from a page (the record view): type or
choose a label, start and stop (with an optional count), watch the live signal (each sensor axis
as a line, or the camera's latest frame) and the count per label. The port or camera stays open
between recordings; the page is behind the dashboard's token gate (any address but loopback needs
``--dashboard-token``), and a start or stop is a POST with a JSON body, which another site's page
cannot send.

``OUT/manifest.json`` keeps every session (source, device, time, rate, count per label). Nothing
is half written: a session's samples go in at its end, in one rename per file; an error (an
unplugged port, a full disk, a bad flag) leaves the dataset as it was, and Ctrl-C keeps the whole
recordings taken so far. The last line printed is the ``--dataset`` spec that trains on it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import importlib.util
import json
import math
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from contract import atomic, specs
from contract.cli import run_cli
from contract.errors import UsageError
from dashboard.server import Dashboard, check_access

from . import DeviceError

MANIFEST_FORMAT = "tinysense-recordings/1"
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")  # a csv field, a folder name, a label on the wire
SEPARATORS = (b",", b"\t", b";", b" ")
DETECT_LINES = 20  # good lines read to detect the format and the rate
DETECT_BAD = 200  # lines that are not numbers before those: the wrong baud rate, or not a sensor
QUIET_S = 5.0  # no line for this long: the sensor is not sending
TEST_EVERY = 5  # with --split auto, every fifth recording of a label is a test recording
LIVE_SAMPLES = 250  # sensor samples the page shows
MAX_PAGE_COUNT = 100_000  # recordings one start on the page may ask for
SCHEMES = {s.name: s for s in (
    specs.Scheme("serial-sensor", True, {"baud": specs.positive_int}, "serial-sensor:PORT[?baud=N]"),
    specs.Scheme("picamera2", False, {}, "picamera2"),
    specs.Scheme("replay", True, {}, "replay:PATH (images: a folder, .npy or .npz)"),
)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m device record",
                                description="Record labelled samples into a dataset that build_model reads.")
    p.add_argument("--source", required=True, help="serial-sensor:PORT[?baud=N], picamera2, or replay:PATH (images)")
    p.add_argument("--label", help="the class of what is recorded now (letters, digits, ' ._-'); with --dashboard, "
                                   "the label the page starts with")
    p.add_argument("--out", required=True, type=Path, help="the dataset folder (made, or appended to)")
    n = p.add_mutually_exclusive_group()
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
    p.add_argument("--dashboard", metavar="HOST:PORT",
                   help="label and record from a page served here instead (--label, --count and --duration are "
                        "then chosen on the page); any address but loopback needs --dashboard-token")
    p.add_argument("--dashboard-token", type=Path, metavar="FILE",
                   help="a file (mode 600) whose first line is the token the page's requests must carry")
    p.add_argument("--dashboard-cert", type=Path, metavar="FILE", help="serve the page over HTTPS: the certificate")
    p.add_argument("--dashboard-key", type=Path, metavar="FILE", help="... and its private key")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli("record", parser(), record, argv)


def check_label(label: str, flag: str = "--label ") -> str:
    if not isinstance(label, str) or not LABEL.fullmatch(label):
        raise UsageError(f"{flag}{label!r}: use 1 to 64 letters, digits, spaces, '.', '_' or '-', starting "
                         "with a letter or digit (it is a csv field and a folder name)")
    return label


def _check_args(args) -> None:
    if args.dashboard is None:
        if args.dashboard_token or args.dashboard_cert or args.dashboard_key:
            raise UsageError("--dashboard-token, --dashboard-cert and --dashboard-key are for --dashboard HOST:PORT")
        if args.label is None:
            raise UsageError("give --label NAME (or --dashboard HOST:PORT to label on a page)")
        if args.count is None and args.duration is None:
            raise UsageError("give --count N or --duration S (or --dashboard HOST:PORT to start and stop on a page)")
    elif args.count is not None or args.duration is not None:
        raise UsageError("with --dashboard each recording is started and stopped on the page (a count there is "
                         "optional): leave out --count and --duration")
    if args.label is not None:
        check_label(args.label)
    for name, value, low in (("count", args.count, 1), ("window", args.window, 2)):
        if value is not None and value < low:
            raise UsageError(f"--{name} must be at least {low}")
    for name, value in (("duration", args.duration), ("rate", args.rate), ("every", args.every)):
        if value is not None and not (math.isfinite(value) and 0 < value <= 86400):
            raise UsageError(f"--{name} must be a number above 0 and at most 86400")
    if not (math.isfinite(args.rate_tolerance) and 0 < args.rate_tolerance < 1):
        raise UsageError("--rate-tolerance must be a fraction between 0 and 1, e.g. 0.1")
    if args.dashboard is not None:
        check_access(args.dashboard, args.dashboard_token, args.dashboard_cert, args.dashboard_key, "--dashboard")


def record(args) -> int:
    _check_args(args)
    source = specs.parse(args.source, SCHEMES, "source")
    stop = threading.Event()
    interrupted = []

    def on_signal(sig, _frame):
        interrupted.append(sig)
        stop.set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    if source.scheme == "serial-sensor":
        recorder = SensorRecorder(args, source.target, source.options.get("baud", 115200))
    else:
        recorder = PictureRecorder(args, source)
    try:
        recorder.open(stop)
        if args.dashboard is None:
            recorder.start(args.label, args.count, args.duration)
            recorder.pump(stop, until_done=True)
            recorder.stop()  # a session Ctrl-C cut short keeps its whole recordings
        else:
            _serve(recorder, args, stop)
    finally:
        recorder.close()
    print(recorder.spec())
    return 130 if interrupted else 0


def _serve(recorder: "_Recorder", args, stop: threading.Event) -> None:
    board = Dashboard(None, args.dashboard, token_file=args.dashboard_token, cert=args.dashboard_cert,
                      key=args.dashboard_key, flag="--dashboard", recorder=recorder)
    print(f"record: the record view is at http{'s' if board.tls else ''}://{board.address}/ (Ctrl-C to end)",
          flush=True)
    try:
        recorder.pump(stop, until_done=False)
    finally:
        board.close()
        recorder.stop()


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


@dataclass
class Session:
    """One label's recording, from a start to its count, its duration, a stop or Ctrl-C."""

    label: str
    split: str
    count: int | None
    end: float | None  # time.monotonic() it ends at
    done: int = 0  # recordings of this label in the dataset before it (for the auto split)
    began: float = field(default_factory=time.monotonic)
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    taken: list = field(default_factory=list)  # csv rows, or staged picture files
    window: list = field(default_factory=list)  # samples of the recording being taken, with their times
    times: list = field(default_factory=list)
    refused: int = 0  # recordings off the rate
    bad_lines: int = 0
    stage: Path | None = None

    def full(self) -> bool:
        return (self.count is not None and len(self.taken) >= self.count) or \
            (self.end is not None and time.monotonic() >= self.end)


class _Recorder:
    """What the command line and the page share: one session at a time on an open source, each
    written whole at its end (``stop``, a count, a duration) under one lock for the dataset."""

    kind = ""

    def __init__(self, args):
        self.args = args
        self.page = args.dashboard is not None
        self.manifest = _prepare_out(args.out, self.kind)
        self.lock = threading.Lock()  # the session and the live view, between the page and the source
        self.writing = threading.Lock()  # the dataset on disk
        self.session: Session | None = None
        self.last = ""  # what the last session came to, for the page
        self.failed = 0  # sessions the page started that could not be written

    def start(self, label: str, count: int | None = None, duration: float | None = None) -> None:
        label = check_label(label, "label ")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or not 1 <= count <= MAX_PAGE_COUNT):
            raise UsageError(f"count {count!r}: give a whole number from 1 to {MAX_PAGE_COUNT}, or none")
        with self.lock:
            if self.session is not None:
                raise UsageError(f"a recording of {self.session.label!r} is running: stop it first")
            end = time.monotonic() + duration if duration else None
            self.session = Session(label, self.args.split, count, end, done=self._done(label))
            self._began(self.session)

    def stop(self) -> None:
        """End the running session (if any) and write its whole recordings."""
        with self.lock:
            s, self.session = self.session, None
        if s is not None:
            self._finish(s)

    def _offer(self, item) -> None:
        """What arrived from the source (a sample, a picture), to the page's view (``_show``) and the
        running session (``_take``), both under the lock; a session it fills is written here."""
        with self.lock:
            self._show(item)
            s = self.session
            if s is None:
                return
            self._take(s, item)
            if not s.full():
                return
            self.session = None
        self._finish(s)

    def _finish(self, s: Session) -> None:
        try:
            with self.writing:
                line = self._commit(s)
        except DeviceError as e:
            if not self.page:
                raise
            self.failed += 1
            self.last = str(e)
            print(f"record: error: {e}", file=sys.stderr, flush=True)
            return
        self.last = line
        print(f"record: {line}", flush=True)

    def _save_manifest(self, session: Session, **facts) -> str:
        """Add the session to the manifest on disk; the count per label after it, as a phrase."""
        manifest = copy.deepcopy(self.manifest)
        manifest["sessions"].append({"source": self.args.source, "device": socket.gethostname(),
                                     "label": session.label, "kind": self.kind, "started": session.started,
                                     "count": len(session.taken), **facts})
        counts = manifest.setdefault("counts", {})
        counts[session.label] = counts.get(session.label, 0) + len(session.taken)
        atomic.write_bytes(self.args.out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode(),
                           mode=0o644)
        self.manifest = manifest
        return ", ".join(f"{k} {v}" for k, v in counts.items())

    def state(self) -> dict:
        """The record view's JSON: what is recording, the counts, what the last session came to."""
        with self.lock:
            s = self.session
            recording = None if s is None else {
                "label": s.label, "taken": len(s.taken), "count": s.count, "refused": s.refused,
                "bad_lines": s.bad_lines, "seconds": round(time.monotonic() - s.began, 1)}
            return {"kind": self.kind, "source": self.args.source, "label": self.args.label,
                    "counts": dict(self.manifest.get("counts", {})), "recording": recording, "last": self.last,
                    "failed": self.failed, **self._live()}

    def frame(self) -> bytes | None:
        """The latest camera frame as a JPEG, for the page (None for a sensor)."""
        return None

    def _done(self, label: str) -> int:
        return 0

    def _began(self, s: Session) -> None:
        pass

    def _live(self) -> dict:
        return {}


# --- sensors -------------------------------------------------------------------------------------

class SensorRecorder(_Recorder):
    """Lines from a serial port, detected, cut into recordings of ``--window`` samples."""

    kind = "sensor"

    def __init__(self, args, port: str, baud: int):
        super().__init__(args)
        self.url, self.baud = port, baud
        self.csv = args.out / "recordings.csv"
        self.existing = self._existing()
        self.bad_lines = 0
        self.live: collections.deque = collections.deque(maxlen=LIVE_SAMPLES)
        self._buf = bytearray()
        self.port = self.lines = None
        self.sep, self.axes, self.rate = b",", 0, 0.0

    def _existing(self) -> list[bytes]:
        if not self.csv.exists():
            return []
        lines = self.csv.read_bytes().splitlines(keepends=True)
        return lines[1:] if lines and lines[0].startswith(b"label,split") else lines

    def _lines(self, stop: threading.Event):
        """(arrival time, line) as they come, until ``stop``; DeviceError when the port goes away or
        sends nothing for QUIET_S."""
        heard = time.monotonic()
        while not stop.is_set():
            if time.monotonic() - heard > QUIET_S:
                raise DeviceError(f"no line from {self.url} for {QUIET_S:g} s: check the sensor, the cable and "
                                  "?baud=; nothing of this session was kept")
            try:
                chunk = self.port.read(max(self.port.in_waiting, 1))
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

    def _detect(self, stop: threading.Event) -> tuple[bytes, int, float]:
        """Separator, axes and rate (Hz) from the first DETECT_LINES lines that are numbers."""
        seen = []
        for t, line in self.lines:
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

    def open(self, stop: threading.Event) -> None:
        import serial

        args = self.args
        try:
            self.port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0.05)
        except (serial.SerialException, ValueError) as e:
            raise DeviceError(f"cannot open the sensor port {self.url} ({e}): check the cable and the path") from None
        self.port.reset_input_buffer()  # lines queued before we opened it would fake the rate
        self.lines = self._lines(stop)
        self.sep, self.axes, detected = self._detect(stop)
        shown = {b",": "','", b"\t": "tab", b";": "';'", b" ": "space"}[self.sep]
        print(f"record: {self.url}: {self.axes} axes separated by {shown} at {detected:.1f} Hz", flush=True)
        if args.channels is not None and args.channels != self.axes:
            raise DeviceError(f"--channels {args.channels} but the sensor sends {self.axes} values a line")
        self.rate = args.rate or detected
        if args.rate and abs(detected - self.rate) > args.rate_tolerance * self.rate:
            print(f"record: the sensor's rate ({detected:.1f} Hz) is not --rate {self.rate:g}: recordings off by "
                  f"more than {args.rate_tolerance:.0%} are refused", flush=True)
        width = args.window * self.axes
        if self.existing and len(self.existing[0].split(b",")) - 2 != width:
            raise DeviceError(f"{self.csv} holds recordings of {len(self.existing[0].split(b',')) - 2} values, "
                              f"this one has {args.window} x {self.axes} = {width}: give another --out")

    def close(self) -> None:
        if self.port is not None:
            self.port.close()

    def pump(self, stop: threading.Event, until_done: bool) -> None:
        """Read the sensor until ``stop`` (or, with ``until_done``, until the session has ended), into
        the live view and the running session."""
        for t, line in self.lines:
            values = _numbers(line, self.sep)
            ok = values is not None and len(values) == self.axes
            self._offer((t, values if ok else None))
            if until_done and self.session is None:
                return

    def _show(self, sample) -> None:
        if sample[1] is not None:
            self.live.append(sample[1])

    def _take(self, s: Session, sample) -> None:
        t, values = sample
        if values is None:
            s.bad_lines += 1
            s.window, s.times = [], []  # a recording is consecutive samples, or nothing
            return
        s.window.append(values)
        s.times.append(t)
        if len(s.window) < self.args.window:
            return
        got = (len(s.times) - 1) / max(s.times[-1] - s.times[0], 1e-9)
        if abs(got - self.rate) > self.args.rate_tolerance * self.rate:
            s.refused += 1
        else:
            n = s.done + len(s.taken) + 1
            split = s.split if s.split != "auto" else ("test" if n % TEST_EVERY == 0 else "train")
            flat = (f"{v:.6g}" for sample in s.window for v in sample)
            s.taken.append(",".join([s.label, split, *flat]).encode() + b"\n")
        s.window, s.times = [], []

    def _done(self, label: str) -> int:
        return sum(1 for ln in self.existing if ln.split(b",", 1)[0].decode() == label)

    def _commit(self, s: Session) -> str:
        if not s.taken:
            why = f", {s.refused} refused for their rate (check --rate)" if s.refused else ""
            raise DeviceError(f"no recording of {s.label!r} was complete{why}; the dataset is as it was")
        header = "label,split," + ",".join(f"t{t}_c{c}" for t in range(self.args.window) for c in range(self.axes))
        atomic.write_bytes(self.csv, header.encode() + b"\n" + b"".join(self.existing + s.taken), mode=0o644)
        self.existing += s.taken
        counts = self._save_manifest(s, channels=self.axes, window=self.args.window, rate_hz=round(self.rate, 3),
                                     refused_for_rate=s.refused, bad_lines=s.bad_lines)
        return (f"{len(s.taken)} recordings of {s.label!r} ({s.refused} refused for their rate, {s.bad_lines} bad "
                f"lines); the dataset holds {counts}")

    def spec(self) -> str:
        return f"--dataset csv:{self.csv} --channels {self.axes}"

    def _live(self) -> dict:
        signal_ = [[round(v, 4) for v in axis] for axis in zip(*self.live)]
        return {"format": {"axes": self.axes, "rate_hz": round(self.rate, 2), "window": self.args.window},
                "signal": signal_}


def _numbers(line: bytes, sep: bytes) -> list[float] | None:
    try:
        values = [float(v) for v in line.split(sep) if v.strip()]
    except ValueError:
        return None
    return values if values and all(math.isfinite(v) for v in values) else None


# --- pictures ------------------------------------------------------------------------------------

class PictureRecorder(_Recorder):
    """Pictures from picamera2 (or a replay of images) every ``--every`` seconds into ``OUT/<label>/``."""

    kind = "image"

    def __init__(self, args, source):
        super().__init__(args)
        self.source = source
        self.frames = None
        self.jpeg: bytes | None = None
        self.shown = 0  # frames the page could show

    def _frames(self):
        if self.source.scheme == "picamera2":
            from .camera import Picamera2Source

            w, _, h = self.args.size.partition("x")
            if not (w.isdigit() and h.isdigit() and 0 < int(w) <= 4096 and 0 < int(h) <= 4096):
                raise UsageError(f"--size {self.args.size!r}: give WIDTHxHEIGHT, e.g. 96x96")
            return Picamera2Source(int(w), int(h))
        from .sources import ReplaySource

        x, _, _ = ReplaySource._load(Path(self.source.target))
        if not len(x):
            raise DeviceError(f"{self.source.target} holds no pictures: give a replay with some")
        return (np.asarray(v) for v in x)

    def open(self, stop: threading.Event) -> None:
        if importlib.util.find_spec("PIL") is None:  # refused here, before the page or the camera starts
            raise DeviceError("pictures are written with Pillow: pip install 'tinysense[images]' "
                              "(or sudo apt install python3-pil)")
        self.frames = iter(self._frames())

    def close(self) -> None:
        with self.lock:
            s, self.session = self.session, None
        if s is not None and s.stage is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(s.stage)

    def _began(self, s: Session) -> None:
        s.stage = Path(tempfile.mkdtemp(prefix=".record-", dir=self.args.out))

    def pump(self, stop: threading.Event, until_done: bool) -> None:
        from .thumbnail import jpeg

        while not stop.is_set():
            try:
                frame = next(self.frames)
            except StopIteration:
                if not self.page:
                    return
                self.frames = iter(self._frames())  # under the page, a replay starts over
                continue
            frame = getattr(frame, "data", frame)
            a = np.clip(np.asarray(frame), 0, 255).astype(np.uint8)
            self._offer((a, jpeg(a, max_side=320) if self.page else None))
            if until_done and self.session is None:
                return
            stop.wait(self.args.every)

    def _show(self, picture) -> None:
        if picture[1] is not None:
            self.jpeg, self.shown = picture[1], self.shown + 1

    def _take(self, s: Session, picture) -> None:
        from PIL import Image

        a = picture[0]
        name = f"{time.time():.3f}-{len(s.taken):06d}.png"
        Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a).save(s.stage / name)
        s.taken.append(name)

    def _commit(self, s: Session) -> str:
        try:
            if not s.taken:
                raise DeviceError(f"no picture of {s.label!r} was taken; the dataset is as it was")
            folder = self.args.out / s.label
            folder.mkdir(exist_ok=True)
            for name in s.taken:
                (s.stage / name).replace(folder / name)  # one rename each: a picture is there whole, or not at all
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(s.stage)
        counts = self._save_manifest(s)
        return f"{len(s.taken)} pictures of {s.label!r}; the dataset holds {counts}"

    def spec(self) -> str:
        return f"--dataset images:{self.args.out}"

    def frame(self) -> bytes | None:
        with self.lock:
            return self.jpeg

    def _live(self) -> dict:
        return {"frame": self.shown}
