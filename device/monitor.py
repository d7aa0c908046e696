"""``python -m device.monitor PORT``: decode a device's stream live on the host.

Shows the latest label and score, a bar per class, latency against the period,
and counters for sequence gaps and damaged frames. Garbage on the line is
counted and skipped; a vanished port is reopened.
"""

from __future__ import annotations

import argparse
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
        self._next_seq: int | None = None

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
        if kind == "hello":
            self.period = float(m.get("period", 0) or 0)
        elif kind == "status":
            self.status = m
        elif kind == "skip":
            self._sequence(m["seq"])
            self.skips += 1
        elif kind == "prediction":
            latency = sum(float(v) for v in m.get("ms", {}).values())
            self._sequence(m["seq"])
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
               "restarts": self.restarts, "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 4),
                                                         "p99": round(float(np.percentile(lat, 99)), 4)}}
        if self.labelled:
            out["accuracy"] = round(self.correct / self.labelled, 6)
        if self.status:
            out["device"] = {k: self.status.get(k) for k in ("frames", "misses", "drops", "reconnects", "bad_frames")}
        return out

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


def watch(read, monitor: Monitor, stop: threading.Event, duration: float | None = None,
          max_predictions: int | None = None, draw=None, draw_every: float = 0.25) -> None:
    """Pump ``read()`` (bytes, may be empty) into the monitor until a limit or ``stop``."""
    end = time.monotonic() + duration if duration else None
    next_draw = 0.0
    while not stop.is_set():
        if end is not None and time.monotonic() >= end:
            break
        if max_predictions is not None and monitor.predictions + monitor.skips >= max_predictions:
            break
        data = read()
        if data:
            monitor.feed(data)
        if draw and time.monotonic() >= next_draw:
            draw(monitor)
            next_draw = time.monotonic() + draw_every


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device.monitor", description="Decode a tinysense device stream live.")
    p.add_argument("port", help="serial port or pyserial URL (/dev/ttyUSB0, a pty path, socket://host:port)")
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--labels", help="comma-separated class names, if the device's hello was missed")
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--max-messages", type=int, help="stop after N predictions and skips")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no live display, only the summary")
    return run_cli("monitor", p, monitor_port, argv)


def monitor_port(args) -> int:
    import serial

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    monitor = Monitor(args.format, args.labels.split(",") if args.labels else ())
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
    try:
        watch(read, monitor, stop, args.duration, args.max_messages, draw if live else None)
    finally:
        if state["port"] is not None:
            state["port"].close()
    print(json.dumps(monitor.summary()) if args.json else monitor.render())
    if monitor.hint():
        print(monitor.hint(), file=sys.stderr)
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
