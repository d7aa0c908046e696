"""``python -m device``: classify frames with a bundle's int8 model and stream the results over serial."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from . import DeviceError
from .protocol import FORMATS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m device",
                                description="Run a bundle's int8 model on frames from a camera, a sensor or a "
                                            "replay, and stream predictions over serial.")
    p.add_argument("--model", required=True, help="bundle folder (model.tflite + model.json)")
    p.add_argument("--source", required=True,
                   help="replay:PATH[?loop=1], serial-sensor:PORT[?baud=N], picamera2[:?format=F], synthetic")
    p.add_argument("--port", required=True,
                   help="serial port: /dev/serial0, /dev/ttyUSB0, a pty path, loop://, socket://HOST:PORT, or null")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument("--period", type=float, default=1.0, help="seconds between frames (default 1; 0: as fast as possible)")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--threads", type=int, help="interpreter threads (default: the core count)")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--smoothing", type=int, default=1, help="average the scores of the last N frames")
    p.add_argument("--threshold", type=float, default=0.0, help="below this score the label is 'unknown'")
    p.add_argument("--status-every", type=float, default=10.0, help="seconds between status messages")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def summary_text(stats, sink) -> str:
    s = stats.status(sink, 0)
    parts = [f"frames {s['frames']}", f"predictions {s['predictions']}", f"bad frames {s['bad_frames']}",
             f"deadline misses {s['misses']}", f"drops {s['drops']}", f"reconnects {s['reconnects']}",
             f"latency p50 {s['latency_ms']['p50']:.3f} ms p99 {s['latency_ms']['p99']:.3f} ms"]
    if "accuracy" in s:
        parts.append(f"accuracy {s['accuracy'] * 100:.2f}% on {stats.labelled} labelled frames")
    return "device: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    stop = threading.Event()
    sink = source = None
    try:
        from . import bundle as bundle_mod
        from . import app
        from .preprocess import Preprocessor
        from .protocol import Encoder
        from .runtime import Model
        from .sinks import open_sink
        from .sources import open_source

        if args.period < 0:
            raise DeviceError("--period must be 0 or more seconds")
        b = bundle_mod.load(args.model)
        model = Model(b.model, num_threads=args.threads)
        model.check(b.spec)
        pre = Preprocessor(b.spec)
        encoder = Encoder(args.format, b.spec.labels)
        source = open_source(args.source, b.spec)
        hello = encoder.encode({"type": "hello", "labels": list(b.spec.labels), "period": args.period,
                                "format": args.format, "model_sha256": b.spec.tflite_sha256})
        sink = open_sink(args.port, baudrate=args.baud, hello=hello)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        cfg = app.RunConfig(period=args.period, max_frames=args.max_frames, duration=args.duration, topk=args.topk,
                        smoothing=args.smoothing, threshold=args.threshold, status_every=args.status_every)
        stats = app.run(model, pre, source, sink, encoder, cfg, stop, hello=hello)
        sink.flush(2.0)
        print(summary_text(stats, sink), file=sys.stderr)
        print(json.dumps({"summary": stats.status(sink, args.period)}), file=sys.stderr)
        return 0
    except DeviceError as e:
        if args.debug:
            raise
        print(f"device: error: {e}", file=sys.stderr)
        return 1
    finally:
        if sink is not None:
            sink.close()
        if source is not None:
            source.close()


def run() -> None:
    sys.exit(main())
