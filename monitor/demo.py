"""``python -m monitor.demo BUNDLE``: the app on the replayed test set, streaming through a real
pseudo terminal to the monitor on the other end; prints what the monitor saw.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import subprocess
import sys
import threading
import tty
from pathlib import Path

from contract.cli import run_cli
from dashboard.fleet import Monitor

from . import MonitorError
from .cli import watch
from .terminal import render


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m monitor.demo")
    p.add_argument("bundle", type=Path)
    p.add_argument("--format", choices=("jsonl", "binary"), default="binary")
    p.add_argument("--period", type=float, default=0.02, help="seconds between frames (default 0.02)")
    return run_cli("demo", p, demo, argv)


def demo(args) -> int:
    if not (args.bundle / "testset.npz").is_file():
        raise MonitorError(f"{args.bundle} has no testset.npz: build it with python -m build_model")

    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    port = os.ttyname(slave)
    cmd = [sys.executable, "-m", "device", "--model", str(args.bundle),
           "--source", f"replay:{args.bundle / 'testset.npz'}", "--port", port, "--format", args.format,
           "--period", str(args.period), "--status-every", "1"]
    print(f"demo: {' '.join(cmd[1:])}", file=sys.stderr)
    app = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    monitor = Monitor(args.format)
    done = threading.Event()

    def read() -> bytes:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            return os.read(master, 4096)
        if app.poll() is not None:
            done.set()
        return b""

    watch(read, monitor, done)
    _, err = app.communicate()
    os.close(master)
    os.close(slave)
    device_lines = [ln for ln in err.splitlines() if ln.startswith("device:")]
    print("\n".join(device_lines))
    print("monitor (the other end of the pty):")
    print(render(monitor))
    print(json.dumps({"monitor": monitor.summary()}))
    return app.returncode


if __name__ == "__main__":
    sys.exit(main())
