"""``python -m device``: classify frames with a bundle's int8 model and stream the results over serial."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path

from contract.cli import run_cli
from contract.preprocess import Preprocessor
from contract.protocol import FORMATS, MAX_PERIOD_S, MAX_SCORE, Encoder, Hello
from contract.runtime import open_bundle

from . import DeviceError, app, thumbnail
from .capture import Capture
from .notify import Notifier
from .sinks import open_sinks
from .sources import open_source


def parser(cls=argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = cls(prog="python -m device",
                                description="Run a bundle's int8 model on frames from a camera, a sensor or a "
                                            "replay, and stream predictions over serial.")
    p.add_argument("--model", required=True, help="bundle folder (model.tflite + model.json)")
    p.add_argument("--source", required=True,
                   help="replay:PATH[?loop=1], serial-sensor:PORT[?baud=N], picamera2[:?format=F], synthetic")
    p.add_argument("--port", required=True, action="append",
                   help="serial port: /dev/serial0, /dev/ttyUSB0, a pty path, loop://, socket://HOST:PORT, null, or an "
                        "MQTT broker: mqtt://HOST[:PORT]/PREFIX?device=ID (mqtts:// with ca=FILE; credentials=FILE); "
                        "repeat it to send the same stream to several outputs")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument("--period", type=float, default=1.0,
                   help="seconds between frames (default 1; 0: as fast as possible)")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--threads", type=int, help="interpreter threads (default: the core count)")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--smoothing", type=int, default=1, help="average the scores of the last N frames")
    p.add_argument("--threshold", type=float, default=0.0, help="below this score the label is 'unknown'")
    p.add_argument("--status-every", type=float, default=10.0,
                   help="seconds between status messages, sent on the port and printed as one line on stdout "
                        "(the journal, deploy.sh logs)")
    p.add_argument("--quiet-status", action="store_true", help="no status lines on stdout")
    p.add_argument("--thumbnail-every", type=float, default=0.0, metavar="S",
                   help="image models: a small JPEG of the latest frame every S seconds, to MQTT (retained "
                        "PREFIX/ID/thumbnail) and --dashboard (needs Pillow; default 0: none)")
    p.add_argument("--capture-dir", type=Path, metavar="DIR",
                   help="keep frames the model doubts (and every Nth) here, in a format build_model reads")
    p.add_argument("--capture-below", type=float, default=0.6, metavar="SCORE",
                   help="with --capture-dir: keep frames whose top score is below this (default 0.6)")
    p.add_argument("--capture-every", type=int, default=0, metavar="N",
                   help="with --capture-dir: also keep every Nth frame, an unbiased sample (default 0: none)")
    p.add_argument("--capture-max-mb", type=float, default=100.0, metavar="MB",
                   help="with --capture-dir: the folder's bound; the oldest captures go (default 100)")
    p.add_argument("--dashboard", metavar="HOST:PORT",
                   help="serve the live dashboard from this device, e.g. 127.0.0.1:8080 (its own predictions); "
                        "any address but loopback needs --dashboard-token")
    p.add_argument("--dashboard-token", type=Path, metavar="FILE",
                   help="a file (mode 600) whose first line is the token the page asks for")
    p.add_argument("--dashboard-cert", type=Path, metavar="FILE", help="serve the dashboard over HTTPS: the "
                                                                      "certificate (PEM) ...")
    p.add_argument("--dashboard-key", type=Path, metavar="FILE", help="... and its private key")
    return p


def summary_text(stats, sink) -> str:
    s = stats.status(sink, 0)
    parts = [f"frames {s['frames']}", f"predictions {s['predictions']}", f"bad frames {s['bad_frames']}",
             f"deadline misses {s['misses']}", f"drops {s['drops']}", f"reconnects {s['reconnects']}",
             f"latency p50 {s['latency_ms']['p50']:.3f} ms p99 {s['latency_ms']['p99']:.3f} ms"]
    if "accuracy" in s:
        parts.append(f"accuracy {s['accuracy'] * 100:.2f}% on {stats.labelled} labelled frames")
    return "device: " + ", ".join(parts)


MAX_THREADS = 64
MIN_PERIOD_S = 1e-4  # seconds; shorter is not a period any clock here keeps


MAX_BAUD = 4_000_000  # the highest rate Linux serial drivers name (B4000000)
MAX_SECONDS = 10 * 365 * 86400.0  # a duration beyond ten years is a typo


def check_args(args) -> None:
    """Refuse values the loop cannot honour, each with one line that says what to pass."""
    def within(name, value, low, high, low_open=False):
        if not math.isfinite(value) or not low <= value <= high or (low_open and value == low):
            raise DeviceError(f"--{name} must be a finite number {'above' if low_open else 'of at least'} {low:g} "
                              f"and at most {high:g}, not {value}")

    def period(name, value):  # 0 (as fast as it can, or off) or a period a clock can keep
        if value != 0 and not MIN_PERIOD_S <= value <= MAX_PERIOD_S:
            raise DeviceError(f"--{name} must be 0 or {MIN_PERIOD_S:g} to {MAX_PERIOD_S:g} seconds, not {value}")
    within("period", args.period, 0.0, MAX_PERIOD_S)
    period("period", args.period)
    within("status-every", args.status_every, 0.0, MAX_PERIOD_S, low_open=True)
    within("threshold", args.threshold, 0.0, MAX_SCORE)
    if args.duration is not None:
        within("duration", args.duration, 0.0, MAX_SECONDS, low_open=True)
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise DeviceError(f"--threads must be 1 to {MAX_THREADS} (this machine has {os.cpu_count()} cores)")
    if not 1 <= args.topk <= 255:
        raise DeviceError("--topk must be 1 to 255")
    if args.smoothing < 1:
        raise DeviceError("--smoothing must be at least 1 frame")
    if args.max_frames is not None and args.max_frames < 0:
        raise DeviceError("--max-frames must be 0 or more")
    if not 1 <= args.baud <= MAX_BAUD:
        raise DeviceError(f"--baud must be 1 to {MAX_BAUD}")
    within("thumbnail-every", args.thumbnail_every, 0.0, MAX_PERIOD_S)
    period("thumbnail-every", args.thumbnail_every)
    if args.capture_dir is None and (args.capture_every or args.capture_below != 0.6 or args.capture_max_mb != 100.0):
        raise DeviceError("--capture-below, --capture-every and --capture-max-mb are for --capture-dir DIR")
    within("capture-below", args.capture_below, -MAX_SCORE, MAX_SCORE)
    within("capture-max-mb", args.capture_max_mb, 0.0, 1e6, low_open=True)
    if args.capture_every < 0:
        raise DeviceError("--capture-every must be 0 (none) or more")


def dashboard_options(args) -> dict:
    """The Dashboard's keyword arguments from --dashboard-token, --dashboard-cert and --dashboard-key."""
    if not args.dashboard and (args.dashboard_token or args.dashboard_cert or args.dashboard_key):
        raise DeviceError("--dashboard-token, --dashboard-cert and --dashboard-key are for --dashboard HOST:PORT")
    return {"token_file": args.dashboard_token, "cert": args.dashboard_cert, "key": args.dashboard_key}


def status_line(msg: dict) -> str:
    """One line for the journal: what a person checks first on a live device."""
    lat = msg.get("latency_ms", {})
    extra = "".join(f" {k.replace('_', ' ')} {msg[k]}" for k in ("bad_lines", "source_reconnects") if k in msg)
    return (f"status: frames {msg['frames']} predictions {msg['predictions']} bad frames {msg['bad_frames']} "
            f"misses {msg['misses']} drops {msg['drops']} reconnects {msg['reconnects']}{extra} "
            f"p50 {lat.get('p50', 0):.3f} ms p99 {lat.get('p99', 0):.3f} ms uptime {msg['uptime']:.0f} s")


def _thumbnails(sink):
    """A frame to a JPEG for the outputs that show pictures (MQTT, the dashboard); a serial line does not."""
    if not sink.shows_pictures:
        raise DeviceError("--thumbnail-every needs an output that shows pictures: an mqtt:// --port or --dashboard")

    def on_frame(frame) -> None:
        if thumbnail.is_image(frame):  # a frame that is not an image is passed over
            sink.thumbnail(thumbnail.jpeg(frame))
    return on_frame


def main(argv: list[str] | None = None) -> int:
    """Exit 0 (or 130 after SIGINT), 1 for an error or a fault the loop cannot recover from, 2 for usage."""
    return run_cli("device", parser(), serve, argv)


def serve(args) -> int:
    stop = threading.Event()
    interrupted = []
    sink = source = None
    try:
        check_args(args)
        checked = open_bundle(args.model, num_threads=args.threads)
        b, model = checked.bundle, checked.model
        pre = Preprocessor(b.spec)
        try:
            encoder = Encoder(args.format, b.spec.labels)
        except ValueError as e:
            raise DeviceError(str(e)) from None
        if args.thumbnail_every > 0:
            if b.spec.kind != "image":
                raise DeviceError(f"--thumbnail-every is for image models; this one is a {b.spec.kind} model")
            thumbnail.check_available()
        source = open_source(args.source, b.spec)
        facts = {"shape": list(b.spec.input.shape), "dtype": b.spec.input.dtype,
                 "layout": b.spec.input.preprocess.layout}
        hello_record = Hello(b.spec.labels, args.period, args.format, b.spec.tflite_sha256, facts)
        hello = encoder.encode(hello_record)
        sink = open_sinks(args.port, dashboard=args.dashboard, board=dashboard_options(args), baudrate=args.baud,
                          hello=hello,
                          hello_record=hello_record, stream_format=args.format,
                          log=lambda text: print(text, file=sys.stderr, flush=True))

        def on_signal(sig, _frame):
            if sig == signal.SIGINT:
                interrupted.append(sig)
            stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        cfg = app.RunConfig(period=args.period, max_frames=args.max_frames, duration=args.duration, topk=args.topk,
                            smoothing=args.smoothing, threshold=args.threshold, status_every=args.status_every,
                            thumbnail_every=args.thumbnail_every)
        on_frame = _thumbnails(sink) if args.thumbnail_every > 0 else None
        printer = None if args.quiet_status else (lambda msg: print(status_line(msg), flush=True))
        capture = (Capture(args.capture_dir, args.capture_below, args.capture_every,
                           int(args.capture_max_mb * 1e6)) if args.capture_dir else None)
        notifier = Notifier()
        notifier.ready()
        try:
            stats = app.run(model, pre, source, sink, encoder, cfg, stop, hello=hello, on_status=printer,
                            watchdog=notifier, on_frame=on_frame, capture=capture)
        finally:
            notifier.stopping()
            notifier.close()
            if capture:
                capture.close()
        sink.flush(2.0)
        closed, sink = sink, None
        closed.close()  # before the summary: what a queue file could not keep is counted in it as drops
        print(summary_text(stats, closed), file=sys.stderr)
        summary = {**stats.status(closed, args.period), **(capture.counters() if capture else {})}
        print(json.dumps({"summary": summary}), file=sys.stderr)
        return 130 if interrupted else 0
    finally:
        if sink is not None:
            sink.close()
        if source is not None:
            source.close()


def run() -> None:
    sys.exit(main())
