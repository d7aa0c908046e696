"""``python -m monitor PORT``: decode a device's stream live on the host.

Shows the latest label and score, a bar per class, latency against the period,
and counters for sequence gaps and damaged frames. Garbage on the line is
counted and skipped; a vanished port is reopened.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

from contract.cli import run_cli
from contract.errors import UsageError
from contract.protocol import FORMATS, MAX_LABEL_BYTES, MAX_LABELS, MAX_MESSAGE
from dashboard.fleet import MAX_DEVICES, STALE_MIN_S, STALE_PERIODS, Fleet, Monitor
from dashboard.server import Dashboard

from . import MonitorError
from .subscriber import Subscriber
from .terminal import render, render_fleet


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
    p = argparse.ArgumentParser(
        prog="python -m monitor", description="Decode a tinysense device stream live.",
        epilog=f"Limits: a message of at most {MAX_MESSAGE // 1024} KiB; {MAX_LABELS} labels of {MAX_LABEL_BYTES} "
               f"bytes per hello; {MAX_DEVICES} devices per fleet (messages from more are counted as overflow, no "
               f"card); a device silent for {STALE_PERIODS} periods (at least {STALE_MIN_S:g} s) is stale. A "
               "message beyond a bound is counted by kind and dropped.")
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
    p.add_argument("--http-token", type=Path, metavar="FILE",
                   help="a file (mode 600) whose first line is the token the dashboard asks for; needed for any "
                        "address but loopback")
    p.add_argument("--http-cert", type=Path, metavar="FILE", help="serve the dashboard over HTTPS with this "
                                                                 "certificate (PEM) ...")
    p.add_argument("--http-key", type=Path, metavar="FILE", help="... and its private key")
    p.add_argument("--session", help="MQTT: a durable subscription of this name (the broker keeps messages for "
                                     "it while the monitor is away)")
    return run_cli("monitor", p, monitor_any, argv)


MAX_BAUD = 4_000_000  # the highest rate Linux serial drivers name (B4000000)
MAX_SECONDS = 10 * 365 * 86400.0


def check_args(args) -> None:
    """One line for a flag out of range, before anything opens."""
    if args.duration is not None and not (math.isfinite(args.duration) and 0 < args.duration <= MAX_SECONDS):
        raise UsageError(f"--duration must be a number of seconds above 0 and at most {MAX_SECONDS:g}, "
                         f"not {args.duration}")
    if not 1 <= args.baud <= MAX_BAUD:
        raise UsageError(f"--baud must be 1 to {MAX_BAUD}")
    if args.max_messages is not None and args.max_messages < 1:
        raise UsageError("--max-messages must be 1 or more")


def monitor_any(args) -> int:
    check_args(args)
    if args.port.startswith(("mqtt:", "mqtts:")):
        return monitor_mqtt(args)
    if args.session:
        raise MonitorError("--session is for an MQTT source")
    return monitor_port(args)


def _dashboard(args, fleet: Fleet):
    if not args.http:
        return None
    board = Dashboard(fleet, args.http, args.http_token, args.http_cert, args.http_key)
    print(f"monitor: dashboard on http{'s' if board.tls else ''}://{board.address}/", file=sys.stderr, flush=True)
    return board


class _Stop(threading.Event):
    """Set by SIGINT or SIGTERM; ``code`` is the exit code they ask for (130 after SIGINT, as a shell expects)."""

    code = 0


def _stop_on_signals() -> _Stop:
    stop = _Stop()

    def on_signal(sig, _frame) -> None:
        if sig == signal.SIGINT:
            stop.code = 130
        stop.set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stop


def monitor_mqtt(args) -> int:
    """Every device under a topic filter: one summary each, and the dashboard when asked."""
    if args.format != "jsonl":
        raise MonitorError("MQTT messages are JSON: leave --format at jsonl")
    stop = _stop_on_signals()
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    fleet = Fleet("jsonl", args.labels.split(",") if args.labels else (), notice=say)
    board = _dashboard(args, fleet)
    sub = None
    try:
        sub = Subscriber(args.port, fleet.message, session=args.session, log=say)
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
                sys.stdout.write("\x1b[H\x1b[2J" + render_fleet(fleet) + "\n")
                sys.stdout.flush()
            stop.wait(0.25)
        sub.check()
    finally:
        if sub is not None:
            sub.close()
        if board is not None:
            board.close()
    print(json.dumps(fleet.summary()) if args.json else render_fleet(fleet))
    return stop.code


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
        sys.stdout.write("\x1b[H\x1b[2J" + render(m) + "\n")
        sys.stdout.flush()

    try:
        state["port"] = serial.serial_for_url(args.port, baudrate=args.baud, timeout=0.1)
    except (serial.SerialException, ValueError) as e:
        raise MonitorError(f"cannot open {args.port} ({e}): check the path") from None
    board = _dashboard(args, fleet)
    try:
        watch(read, monitor, stop, args.duration, args.max_messages, draw if live else None, lock=fleet.lock)
    finally:
        if state["port"] is not None:
            state["port"].close()
        if board is not None:
            board.close()
    print(json.dumps(monitor.summary()) if args.json else render(monitor))
    if monitor.hint():
        print(monitor.hint(), file=sys.stderr)
    return stop.code


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
