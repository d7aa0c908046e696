"""``python -m device.monitor PORT``: decode a device's stream live on the host.

Shows the latest label and score, a bar per class, latency against the period,
and counters for sequence gaps and damaged frames. Garbage on the line is
counted and skipped; a vanished port is reopened.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import threading
import time

import numpy as np

from . import DeviceError
from .protocol import FORMATS, Decoder
from .runner import run_cli

BAR = 30
RECENT = 24  # predictions kept for the dashboard's strip
STAGE_WINDOW = 2000  # per-stage latencies kept for p50/p99
SEEN = 4096  # recent seqs remembered, so a QoS 1 duplicate is not taken for a restart


class Monitor:
    """State built from decoded messages; feed it bytes in any chunking."""

    def __init__(self, fmt: str, labels=()):
        self.decoder = Decoder(fmt, labels)
        self.last: dict | None = None
        self.status: dict | None = None
        self.period = 0.0
        self.predictions = 0
        self.skips = 0
        self.gaps = 0  # messages lost on the way: holes in seq
        self.restarts = 0  # seq went backwards: the device restarted
        self.labelled = 0
        self.correct = 0
        self.counts: dict[str, int] = {}
        self.latency: list[float] = []
        self.stage_ms: dict[str, collections.deque] = {}
        self.recent: collections.deque = collections.deque(maxlen=RECENT)
        self.duplicates = 0  # a message delivered twice (QoS 1 after a reconnect)
        self.hello: dict | None = None
        self.online: bool | None = None  # from an MQTT status topic
        self.last_seen: float | None = None
        self._next_seq: int | None = None
        self._seen: collections.deque = collections.deque(maxlen=SEEN)
        self._seen_t: dict[int, object] = {}  # seq -> its t: a resend carries the same t, a restart a later one

    @property
    def errors(self) -> int:
        return self.decoder.errors

    def feed(self, data: bytes) -> list[dict]:
        msgs = self.decoder.feed(data)
        kept = []
        for m in msgs:
            try:
                self._take(m)
                kept.append(m)
            except (TypeError, ValueError, KeyError, AttributeError):  # a well-framed message with odd values
                self.decoder.errors += 1
        return kept

    def _take(self, m: dict) -> None:
        """One checked message into the state; odd values raise before anything changes."""
        kind = m["type"]
        self.last_seen = time.time()
        if kind == "hello":
            self.period = float(m.get("period", 0) or 0)
            self.hello = m
        elif kind == "status":
            if "state" in m:
                self.online = m["state"] == "online"
            if "frames" in m:
                self.status = m
        elif kind == "skip":
            if self._duplicate(m["seq"], m.get("t")):
                return
            self._sequence(m["seq"])
            self.skips += 1
        elif kind == "prediction":
            stages = {str(k): float(v) for k, v in m.get("ms", {}).items()}
            latency = sum(stages.values())
            if self._duplicate(m["seq"], m.get("t")):
                return
            self._sequence(m["seq"])
            for stage, v in stages.items():
                self.stage_ms.setdefault(stage, collections.deque(maxlen=STAGE_WINDOW)).append(v)
            self.recent.append({"seq": m["seq"], "label": m["label"], "score": m["score"]})
            self.last = m
            self.predictions += 1
            self.counts[m["label"]] = self.counts.get(m["label"], 0) + 1
            if len(self.latency) < 100_000:
                self.latency.append(latency)
            if "truth" in m:
                self.labelled += 1
                labels = self.decoder.labels
                truth = labels[m["truth"]] if 0 <= m["truth"] < len(labels) else str(m["truth"])
                self.correct += int(m["label"] == truth)  # an "unknown" counts as wrong, as on the device

    def _duplicate(self, seq: int, t) -> bool:
        """The same message again (a QoS 1 resend: same seq, same t): counted, and not taken twice."""
        if seq in self._seen_t and self._seen_t[seq] == t:
            self.duplicates += 1
            return True
        if len(self._seen) == self._seen.maxlen:
            self._seen_t.pop(self._seen[0], None)
        self._seen.append(seq)
        self._seen_t[seq] = t
        return False

    def _sequence(self, seq: int) -> None:
        if self._next_seq is not None:
            if seq > self._next_seq:
                self.gaps += seq - self._next_seq
            elif seq < self._next_seq:
                self.restarts += 1
        self._next_seq = seq + 1

    def hint(self) -> str | None:
        """One line when nothing decoded and the bytes look like the other --format."""
        if self.predictions == 0 and self.decoder.other_format:
            other = "binary" if self.decoder.format == "jsonl" else "jsonl"
            return (f"monitor: {self.errors} decode errors and no predictions: the stream looks like "
                    f"--format {other}")
        return None

    def summary(self) -> dict:
        lat = np.asarray(self.latency) if self.latency else np.zeros(1)
        out = {"predictions": self.predictions, "skips": self.skips, "gaps": self.gaps, "errors": self.errors,
               "restarts": self.restarts, "duplicates": self.duplicates,
               "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 4),
                              "p99": round(float(np.percentile(lat, 99)), 4)}}
        if self.labelled:
            out["accuracy"] = round(self.correct / self.labelled, 6)
        if self.status:
            out["device"] = {k: self.status.get(k) for k in ("frames", "misses", "drops", "reconnects", "bad_frames")}
        if self.online is not None:
            out["online"] = self.online
        return out

    def state(self) -> dict:
        """Everything the dashboard shows for this device, JSON-ready."""
        stages = {k: {"p50": round(float(np.percentile(v, 50)), 4), "p99": round(float(np.percentile(v, 99)), 4)}
                  for k, v in self.stage_ms.items() if v}
        last = self.last or {}
        return {**self.summary(), "label": last.get("label"), "score": last.get("score"), "seq": last.get("seq"),
                "topk": last.get("topk", []), "labels": self.decoder.labels, "recent": list(self.recent),
                "stages_ms": stages, "period": self.period, "labelled": self.labelled,
                "last_seen": self.last_seen, "model_sha256": (self.hello or {}).get("model_sha256")}

    def render(self) -> str:
        """A screenful: latest label, a bar per class, latency against the period, counters."""
        lines = []
        if self.last:
            lines.append(f"seq {self.last['seq']}  label {self.last['label']}  score {self.last['score']:.3f}")
            scores = {name: s for name, s in self.last.get("topk", [])}
            for name in self.decoder.labels or scores:
                s = float(scores.get(name, 0.0))
                lines.append(f"  {name[:14]:14s} {'#' * int(round(s * BAR)):{BAR}s} {s:5.2f}  n={self.counts.get(name, 0)}")
        else:
            lines.append("waiting for predictions...")
        s = self.summary()
        budget = f" / period {self.period * 1e3:.0f} ms" if self.period else ""
        lines.append(f"latency p50 {s['latency_ms']['p50']:.3f} ms  p99 {s['latency_ms']['p99']:.3f} ms{budget}")
        dev = s.get("device") or {}
        lines.append(f"predictions {self.predictions}  gaps {self.gaps}  decode errors {self.errors}  "
                     f"skips {self.skips}  misses {dev.get('misses', '-')}  drops {dev.get('drops', '-')}  "
                     f"reconnects {dev.get('reconnects', '-')}")
        if "accuracy" in s:
            lines.append(f"accuracy {s['accuracy'] * 100:.2f}% over {self.labelled} labelled frames")
        return "\n".join(lines)


class Fleet:
    """One Monitor per device, fed from any thread; the dashboard reads snapshots under the same lock."""

    def __init__(self, fmt: str = "jsonl", labels=()):
        self.fmt, self.labels = fmt, list(labels)
        self.devices: dict[str, Monitor] = {}
        self.foreign = 0  # messages on our topics that are not ours (another kind, another program)
        self.thumbnails: dict[str, bytes] = {}  # device -> its latest frame as a JPEG
        self.thumbnail_count: dict[str, int] = {}
        self.lock = threading.RLock()

    def monitor(self, device: str) -> Monitor:
        with self.lock:
            if device not in self.devices:
                self.devices[device] = Monitor(self.fmt, self.labels)
            return self.devices[device]

    def feed(self, device: str, data: bytes) -> None:
        with self.lock:
            self.monitor(device).feed(data)

    def thumbnail(self, device: str, jpeg: bytes) -> None:
        """The device's latest frame as a JPEG; anything that is not one is not ours."""
        from .thumbnail import looks_like_jpeg

        with self.lock:
            if not looks_like_jpeg(jpeg):
                self.foreign += 1
                return
            self.monitor(device)
            self.thumbnails[device] = jpeg
            self.thumbnail_count[device] = self.thumbnail_count.get(device, 0) + 1

    def message(self, device: str, kind: str, payload: bytes) -> None:
        """One MQTT message: a JSON record on PREFIX/DEVICE/KIND, or a JPEG on PREFIX/DEVICE/thumbnail."""
        if kind == "thumbnail":
            self.thumbnail(device, payload)
            return
        with self.lock:
            if kind not in ("hello", "prediction", "status") or b"\n" in payload.rstrip(b"\n"):
                self.foreign += 1
                return
            m = self.monitor(device)
            before = m.errors
            kept = m.feed(payload + b"\n")
            if m.errors > before or any(msg["type"] not in (kind, "skip") for msg in kept):
                self.foreign += 1

    def count(self) -> int:
        with self.lock:
            return sum(m.predictions + m.skips for m in self.devices.values())

    def snapshot(self) -> dict:
        with self.lock:
            return {"t": time.time(), "foreign": self.foreign,
                    "devices": {name: {**m.state(), "thumbnail": self.thumbnail_count.get(name, 0)}
                                for name, m in sorted(self.devices.items())}}

    def summary(self) -> dict:
        with self.lock:
            return {"devices": {name: m.summary() for name, m in sorted(self.devices.items())}, "foreign": self.foreign}

    def render(self) -> str:
        with self.lock:
            if not self.devices:
                return "waiting for devices..."
            blocks = []
            for name, m in sorted(self.devices.items()):
                state = "" if m.online is None else (" online" if m.online else " OFFLINE")
                blocks.append(f"== {name}{state}\n{m.render()}")
            if self.foreign:
                blocks.append(f"messages that are not ours: {self.foreign}")
            return "\n".join(blocks)


def watch(read, monitor, stop: threading.Event, duration: float | None = None,
          max_predictions: int | None = None, draw=None, draw_every: float = 0.25, lock=None) -> None:
    """Pump ``read()`` (bytes, may be empty) into the monitor until a limit or ``stop``."""
    end = time.monotonic() + duration if duration else None
    next_draw = 0.0
    lock = lock or threading.Lock()
    while not stop.is_set():
        if end is not None and time.monotonic() >= end:
            break
        if max_predictions is not None and monitor.predictions + monitor.skips >= max_predictions:
            break
        data = read()
        if data:
            with lock:
                monitor.feed(data)
        if draw and time.monotonic() >= next_draw:
            draw(monitor)
            next_draw = time.monotonic() + draw_every


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device.monitor", description="Decode a tinysense device stream live.")
    p.add_argument("port", help="serial port or pyserial URL (/dev/ttyUSB0, a pty path, socket://host:port), "
                                "or a broker: mqtt://HOST[:PORT]/PREFIX/+ (every device) or .../PREFIX/ID")
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--labels", help="comma-separated class names, if the device's hello was missed")
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--max-messages", type=int, help="stop after N predictions and skips")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no live display, only the summary")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="serve a live dashboard (and /state as JSON) on this address, e.g. 127.0.0.1:8080")
    p.add_argument("--session", help="MQTT: a durable subscription of this name (the broker keeps messages for "
                                     "it while the monitor is away)")
    return run_cli("monitor", p, monitor_any, argv)


def monitor_any(args) -> int:
    if args.port.startswith(("mqtt:", "mqtts:")):
        return monitor_mqtt(args)
    if args.session:
        raise DeviceError("--session is for an MQTT source")
    return monitor_port(args)


def _dashboard(args, fleet: Fleet):
    if not args.http:
        return None
    from .dashboard import Dashboard

    board = Dashboard(fleet, args.http)
    print(f"monitor: dashboard on http://{board.address}/", file=sys.stderr, flush=True)
    return board


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def monitor_mqtt(args) -> int:
    """Every device under a topic filter: one summary each, and the dashboard when asked."""
    from .mqtt import Subscriber

    if args.format != "jsonl":
        raise DeviceError("MQTT messages are JSON: leave --format at jsonl")
    stop = _stop_on_signals()
    fleet = Fleet("jsonl", args.labels.split(",") if args.labels else ())
    board = _dashboard(args, fleet)
    sub = None
    try:
        sub = Subscriber(args.port, fleet.message, session=args.session,
                         log=lambda text: print(text, file=sys.stderr, flush=True))
        live = sys.stdout.isatty() and not args.quiet
        end = time.monotonic() + args.duration if args.duration else None
        said_subscribed = False
        while not stop.is_set():
            sub.check()
            if not said_subscribed and sub.wait_subscribed(0):
                said_subscribed = True  # from here on the broker delivers this filter's live messages
                print(f"monitor: subscribed to {sub.filter}/+ on {sub.broker.where}", file=sys.stderr, flush=True)
            if end is not None and time.monotonic() >= end:
                break
            if args.max_messages is not None and fleet.count() >= args.max_messages:
                break
            if live:
                sys.stdout.write("\x1b[H\x1b[2J" + fleet.render() + "\n")
                sys.stdout.flush()
            stop.wait(0.25)
        sub.check()
    finally:
        if sub is not None:
            sub.close()
        if board is not None:
            board.close()
    print(json.dumps(fleet.summary()) if args.json else fleet.render())
    return 0


def monitor_port(args) -> int:
    import serial

    stop = _stop_on_signals()
    fleet = Fleet(args.format, args.labels.split(",") if args.labels else ())
    monitor = fleet.monitor(args.port.rstrip("/").rsplit("/", 1)[-1] or args.port)
    state = {"port": None}

    def read() -> bytes:
        try:
            if state["port"] is None:
                state["port"] = serial.serial_for_url(args.port, baudrate=args.baud, timeout=0.1)
            return state["port"].read(max(state["port"].in_waiting, 1))
        except (serial.SerialException, OSError):
            if state["port"] is not None:
                state["port"].close()
            state["port"] = None
            stop.wait(0.2)  # the device side vanished: try again shortly
            return b""

    live = sys.stdout.isatty() and not args.quiet

    def draw(m: Monitor) -> None:
        sys.stdout.write("\x1b[H\x1b[2J" + m.render() + "\n")
        sys.stdout.flush()

    try:
        state["port"] = serial.serial_for_url(args.port, baudrate=args.baud, timeout=0.1)
    except (serial.SerialException, ValueError) as e:
        raise DeviceError(f"cannot open {args.port} ({e}): check the path") from None
    board = _dashboard(args, fleet)
    try:
        watch(read, monitor, stop, args.duration, args.max_messages, draw if live else None, lock=fleet.lock)
    finally:
        if state["port"] is not None:
            state["port"].close()
        if board is not None:
            board.close()
    print(json.dumps(monitor.summary()) if args.json else monitor.render())
    if monitor.hint():
        print(monitor.hint(), file=sys.stderr)
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
