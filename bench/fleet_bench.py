"""A fleet over MQTT, measured in one run against a real local Mosquitto.
Rerun: .venv/bin/python bench/fleet_bench.py [BUNDLE] [--devices 20] [--seconds 60] [--rate 10]

1. N device processes (replaying the bundle's test set) at RATE Hz publish to one broker for the
   given time; the monitor's own Subscriber receives everything. Printed: end-to-end latency from
   frame capture to the monitor (p50/p99: the receive time minus the prediction's t plus its
   per-stage milliseconds; both clocks are this machine's), loss (predictions the devices
   reported against those received), gaps, duplicates, and the broker's CPU (user + system time
   from /proc over the wall time, in % of one core).
2. One device as fast as it can go (--period 0) for 10 s to MQTT, then to a serial pty (socat),
   in the same run: predictions per second, and their ratio.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from brokers import Mosquitto
from dashboard.fleet import Fleet
from monitor.subscriber import Subscriber


def arg(name: str, default):
    if name in sys.argv:
        return type(default)(sys.argv[sys.argv.index(name) + 1])
    return default


def device(bundle: Path, port: str, period: float, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "device", "--model", str(bundle), "--source",
                             f"replay:{bundle / 'testset.npz'}?loop=1", "--port", port, "--period", str(period),
                             "--duration", str(seconds), "--quiet-status", "--threads", "1"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def summary(proc: subprocess.Popen) -> dict:
    _, err = proc.communicate(timeout=600)
    line = [ln for ln in err.splitlines() if ln.startswith('{"summary"')]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"a device failed: {err[-500:]}")
    return json.loads(line[-1])["summary"]


class Timed:
    """The fleet, plus the capture-to-monitor latency of every prediction received."""

    def __init__(self):
        self.fleet = Fleet()
        self.latency_ms: list[float] = []
        self.lock = threading.Lock()

    def message(self, dev: str, kind: str, payload: bytes) -> None:
        now = time.time()
        self.fleet.message(dev, kind, payload)
        if kind == "prediction":
            try:
                m = json.loads(payload)
                with self.lock:
                    self.latency_ms.append((now - m["t"]) * 1e3 + sum(m["ms"].values()))
            except (ValueError, KeyError, TypeError):
                pass


def fleet_phase(bundle: Path, broker: Mosquitto, n: int, seconds: float, rate: float) -> None:
    timed = Timed()
    sub = Subscriber(f"{broker.url}/bench/+", timed.message)
    if not sub.wait_subscribed(10):
        raise SystemExit("fleet_bench: the broker did not acknowledge the subscription within 10 s")
    cpu0, wall0 = broker.cpu_seconds(), time.monotonic()
    procs = [device(bundle, f"{broker.url}/bench?device=dev{i:02d}", 1 / rate, seconds) for i in range(n)]
    reported = [summary(p) for p in procs]
    cpu, wall = broker.cpu_seconds() - cpu0, time.monotonic() - wall0
    time.sleep(1.0)
    sub.close()
    sent = sum(r["predictions"] for r in reported)
    got = sum(m.predictions for m in timed.fleet.devices.values())
    gaps = sum(m.gaps for m in timed.fleet.devices.values())
    dups = sum(m.duplicates for m in timed.fleet.devices.values())
    lat = np.asarray(timed.latency_ms)
    print(f"fleet: {n} devices at {rate:g} Hz for {seconds:g} s to one Mosquitto on 127.0.0.1 (2 cores shared)")
    print(f"  predictions: devices reported {sent}, monitor received {got} ({len(timed.fleet.devices)} devices), "
          f"loss {sent - got} ({(sent - got) / max(sent, 1) * 100:.3f}%), gaps {gaps}, duplicates {dups}, "
          f"device-side drops {sum(r['drops'] for r in reported)}")
    print(f"  capture -> monitor latency: p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms "
          f"(max {lat.max():.2f} ms)")
    print(f"  broker CPU: {cpu:.2f} s over {wall:.1f} s = {cpu / wall * 100:.1f}% of one core "
          f"({got / wall:.0f} messages/s in)")


def throughput_phase(bundle: Path, broker: Mosquitto, tmp: Path, seconds: float = 10.0) -> None:
    mqtt = summary(device(bundle, f"{broker.url}/speed?device=fast", 0, seconds))
    socat = subprocess.Popen(["socat", f"pty,raw,echo=0,link={tmp / 'app'}", f"pty,raw,echo=0,link={tmp / 'host'}"])
    try:
        for _ in range(100):
            if (tmp / "app").exists() and (tmp / "host").exists():
                break
            time.sleep(0.05)
        import serial

        drain = serial.Serial(str(tmp / "host"), timeout=0.1)
        stop = threading.Event()
        reader = threading.Thread(target=lambda: [drain.read(65536) for _ in iter(stop.is_set, True)], daemon=True)
        reader.start()
        pty = summary(device(bundle, str(tmp / "app"), 0, seconds))
        stop.set()
        reader.join(2)
        drain.close()
    finally:
        socat.kill()
    a, b = mqtt["predictions"] / mqtt["uptime"], pty["predictions"] / pty["uptime"]
    da = (mqtt["predictions"] - mqtt["drops"]) / mqtt["uptime"]
    db = (pty["predictions"] - pty["drops"]) / pty["uptime"]
    print(f"one device, --period 0, {seconds:g} s each, one after the other in this run:")
    print(f"  classified: MQTT (QoS 1) {a:.0f}/s, serial pty {b:.0f}/s, MQTT/serial = {a / b:.2f}")
    print(f"  delivered (classified minus drops): MQTT {da:.0f}/s (drops {mqtt['drops']}), serial pty {db:.0f}/s "
          f"(drops {pty['drops']}), MQTT/serial = {da / db:.2f}")


def main() -> None:
    rest = [a for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--") and not sys.argv[i - 1].startswith("--")]
    bundle = Path(rest[0]) if rest else ROOT / "out" / "digits"
    if not (bundle / "testset.npz").is_file():
        raise SystemExit(f"no bundle with a test set at {bundle}: make demo builds out/digits")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        broker = Mosquitto(tmp / "broker")
        try:
            fleet_phase(bundle, broker, arg("--devices", 20), arg("--seconds", 60.0), arg("--rate", 10.0))
            throughput_phase(bundle, broker, tmp)
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
