"""The device's own dashboard under many clients, against the bare loop, in one run.
Rerun: .venv/bin/python bench/dashboard_bench.py [BUNDLE] [--seconds 15] [--readers 200] [--stalled 100]
       [--period 0.005] (0: as fast as it can, which measures the CPU the clients take from it)

One device process classifies as fast as it can (--period 0) and serves --dashboard on loopback:
for the given time idle (nobody on the page), then as long with READERS clients that read the
event stream (and retry after a 503) and STALLED clients that ask for it and never read. Printed:
frames per second in each span (from the device's status lines, one a second) and their ratio,
the device's threads (from /proc) idle, under load and after the clients left, and how many
reader connections were served or turned away (503).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def arg(name: str, default):
    if name in sys.argv:
        return type(default)(sys.argv[sys.argv.index(name) + 1])
    return default


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


class Device:
    """A device process whose status lines (one a second) give its frame count as it runs."""

    def __init__(self, bundle: Path, port: int, seconds: float, period: float):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "device", "--model", str(bundle), "--source",
             f"replay:{bundle / 'testset.npz'}?loop=1", "--port", "null", "--period", str(period), "--threads", "1",
             "--duration", str(seconds), "--status-every", "1", "--dashboard", f"127.0.0.1:{port}"], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.seen: list[tuple[float, int]] = []  # (monotonic time, frames)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("status: frames "):
                self.seen.append((time.monotonic(), int(line.split()[2])))

    def rate(self, start: float, end: float) -> float:
        """Frames per second between the first status line after ``start`` and the last before ``end``."""
        inside = [(t, n) for t, n in self.seen if start <= t <= end]
        if len(inside) < 2:
            raise SystemExit("the device printed too few status lines to measure its rate")
        (t0, n0), (t1, n1) = inside[0], inside[-1]
        return (n1 - n0) / (t1 - t0)

    def finish(self) -> None:
        self.proc.wait(timeout=600)
        self._reader.join(5)
        if self.proc.returncode != 0:
            raise SystemExit(f"the device failed with exit code {self.proc.returncode}")


def wait_listening(port: int) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the device's dashboard did not come up within 30 s")


RETRY_S = 3.0  # what a browser's EventSource waits before it asks again


def reader(port: int, stop: threading.Event, counts: dict, lock: threading.Lock) -> None:
    """Read the event stream; after a 503 (or a dropped connection) wait RETRY_S and ask again, as a page does."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /events HTTP/1.1\r\nHost: bench\r\n\r\n")
                first = s.recv(65536)
                key = "served" if first.startswith(b"HTTP/1.0 200") or first.startswith(b"HTTP/1.1 200") else "503"
                with lock:
                    counts[key] = counts.get(key, 0) + 1
                while key == "served" and not stop.is_set() and s.recv(65536):
                    pass
        except OSError:
            pass
        stop.wait(RETRY_S)


def main() -> None:
    rest = [a for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--") and not sys.argv[i - 1].startswith("--")]
    bundle = Path(rest[0]) if rest else ROOT / "out" / "digits"
    if not (bundle / "testset.npz").is_file():
        raise SystemExit(f"no bundle with a test set at {bundle}: make demo builds out/digits")
    seconds, n_read, n_stall = arg("--seconds", 15.0), arg("--readers", 200), arg("--stalled", 100)
    period = arg("--period", 0.005)  # 200 frames a second, the rate the issue measured at
    port = free_port()
    dev = Device(bundle, port, 2 * seconds + 25, period)
    wait_listening(port)
    time.sleep(2.0)  # past the first frames
    t = time.monotonic()
    time.sleep(seconds)
    idle_rate, idle_threads = dev.rate(t, time.monotonic()), threads(dev.proc.pid)

    stop, lock, counts = threading.Event(), threading.Lock(), {}
    stalled = []
    for _ in range(n_stall):  # they ask first, and hold on
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /events HTTP/1.1\r\nHost: bench\r\n\r\n")
        stalled.append(s)
    pool = [threading.Thread(target=reader, args=(port, stop, counts, lock), daemon=True) for _ in range(n_read)]
    for th in pool:
        th.start()
    most = 0
    t = time.monotonic()
    while time.monotonic() < t + seconds:
        most = max(most, threads(dev.proc.pid))
        time.sleep(0.5)
    busy_rate = dev.rate(t, time.monotonic())
    stop.set()
    for s in stalled:
        s.close()
    for th in pool:
        th.join(5)
    time.sleep(3.0)  # the clients gone: the device's threads should be back to idle
    after = threads(dev.proc.pid)
    dev.finish()
    print(f"device dashboard, one device process at --period {period:g}, {seconds:g} s idle then {seconds:g} s "
          "with the clients (2 cores shared with them):")
    print(f"  frames/s: idle {idle_rate:.0f}, with {n_read} reading and {n_stall} stalled clients {busy_rate:.0f}, "
          f"ratio {busy_rate / idle_rate:.2f}")
    print(f"  device threads: idle {idle_threads}, under load at most {most}, after the clients left {after}")
    print(f"  reader connections: served {counts.get('served', 0)}, answered 503 {counts.get('503', 0)}")


if __name__ == "__main__":
    main()
