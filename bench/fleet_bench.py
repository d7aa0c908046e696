"""A fleet over MQTT, measured in one run against a real local Mosquitto.
Rerun: .venv/bin/python bench/fleet_bench.py [BUNDLE] [--devices 20] [--seconds 60] [--rate 10]
       [--flood [--forge] [--broker-limit]]

1. N device processes (replaying the bundle's test set) at RATE Hz publish to one broker for the
   given time; the monitor's own Subscriber receives everything. Printed: end-to-end latency from
   frame capture to the monitor (p50/p99: the receive time minus the prediction's t plus its
   per-stage milliseconds; both clocks are this machine's), loss (predictions the devices
   reported against those received), gaps, duplicates, and the broker's CPU (user + system time
   from /proc over the wall time, in % of one core).
2. One device as fast as it can go (--period 0) for 10 s to MQTT, then to a serial pty (socat),
   in the same run: predictions per second, and their ratio.

With --flood (instead of 1 and 2): the monitor CLI itself (``python -m monitor ... --http``) under a
hostile publisher at --flood-rate messages/s (default 5,000) beside the N honest devices, for the
given time: new device ids (refused records and garbage; with --forge, valid hellos that only an
ACL keeps out), non-JSON, 10 MB payloads, nesting 100,000 deep. Printed: honest predictions lost
(reported by the devices against the monitor's final summary), the monitor's RSS growth (VmRSS
from /proc, sampled every 0.5 s), and ``GET /state``'s time (median and worst) and size. With
--broker-limit the broker runs with the README's ``max_packet_size`` (what monitor.broker config
prints), so a 10 MB payload never reaches the monitor.
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


def flooder(url_port: int, rate: float, seconds: float, stop: threading.Event, forge: bool) -> dict:
    """Publish hostile messages at ``rate`` per second under bench/+ (QoS 0, as an attacker would); counts.

    With ``forge`` four in ten are valid hellos under invented ids (what only a broker's ACL keeps
    out); without, those are records the gate refuses (a hello whose labels are not a list)."""
    import paho.mqtt.client as paho

    c = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", url_port)
    c.loop_start()
    rng = np.random.default_rng(0)
    deep = b'{"type":"hello","labels":["a"],"input":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    big = b"{" + b" " * (10 << 20) + b"}"
    hello = json.dumps({"type": "hello", "labels": ["x"] * 10 if forge else "x" * 10, "period": 0.1}).encode()
    kind = "new_id_hello" if forge else "new_id_bad_hello"
    sent = {kind: 0, "new_id_garbage": 0, "non_json": 0, "deep": 0, "10MB": 0}
    start = time.monotonic()
    n = 0
    while not stop.is_set() and time.monotonic() - start < seconds:
        due = int((time.monotonic() - start) * rate)
        while n < due:
            n += 1
            pick = n % 1000
            if pick == 0:
                c.publish(f"bench/big{n}/hello", big)
                sent["10MB"] += 1
            elif pick < 10:
                c.publish(f"bench/deep{n}/hello", deep)
                sent["deep"] += 1
            elif pick < 400:
                c.publish(f"bench/fake{n}/hello", hello)
                sent[kind] += 1
            elif pick < 700:
                c.publish(f"bench/junk{n}/prediction", rng.bytes(60))
                sent["new_id_garbage"] += 1
            else:
                c.publish(f"bench/dev{pick % 20:02d}/prediction", b"not json at all " + rng.bytes(20))
                sent["non_json"] += 1
        time.sleep(0.002)
    c.loop_stop()
    c.disconnect()
    return sent


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def flood_phase(bundle: Path, broker: Mosquitto, n: int, seconds: float, rate: float, flood: float,
                forge: bool) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http = s.getsockname()[1]
    mon = subprocess.Popen([sys.executable, "-m", "monitor", f"{broker.url}/bench/+", "--http", f"127.0.0.1:{http}",
                            "--quiet", "--json", "--duration", str(seconds + 20)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http}/state", timeout=1).read()
            break
        except OSError:
            time.sleep(0.2)
    time.sleep(1.0)  # subscribed (the dashboard comes up first)
    rss0 = rss_kb(mon.pid)
    procs = [device(bundle, f"{broker.url}/bench?device=dev{i:02d}", 1 / rate, seconds) for i in range(n)]
    stop = threading.Event()
    counts: dict = {}
    attacker = threading.Thread(target=lambda: counts.update(flooder(broker.port, flood, seconds, stop, forge)))
    attacker.start()
    times_ms, worst_bytes, rss_max = [], 0, 0
    while any(p.poll() is None for p in procs):
        t0 = time.perf_counter()
        body = urllib.request.urlopen(f"http://127.0.0.1:{http}/state", timeout=10).read()
        times_ms.append((time.perf_counter() - t0) * 1e3)
        worst_bytes = max(worst_bytes, len(body))
        rss_max = max(rss_max, rss_kb(mon.pid))
        time.sleep(0.5)
    reported = {f"dev{i:02d}": summary(p) for i, p in enumerate(procs)}
    stop.set()
    attacker.join()
    time.sleep(3.0)  # the last honest messages through the broker
    mon.send_signal(2)
    out, err = mon.communicate(timeout=60)
    final = json.loads(out)
    honest = {k: v for k, v in final["devices"].items() if k in reported}
    lost = sum(reported[k]["predictions"] - honest.get(k, {}).get("predictions", 0) for k in reported)
    print(f"flood{' with forged hellos' if forge else ''}: {n} honest devices at {rate:g} Hz beside {flood:g} "
          f"hostile messages/s for {seconds:g} s "
          f"(one Mosquitto on 127.0.0.1, 2 cores shared; sent {sum(counts.values())}: {counts})")
    print(f"  honest predictions: devices reported {sum(r['predictions'] for r in reported.values())}, lost {lost}; "
          f"monitor exit {mon.returncode}")
    print(f"  cards {len(final['devices'])} (at most 256), overflow {final.get('overflow', 0)}, "
          f"evicted {final.get('evicted', 0)}, foreign {final['foreign']}")
    print(f"  monitor RSS: {rss0 / 1024:.1f} MB before, {rss_max / 1024:.1f} MB at most, growth "
          f"{(rss_max - rss0) / 1024:.1f} MB")
    print(f"  GET /state ({len(times_ms)} requests): median {np.median(times_ms):.1f} ms, worst "
          f"{max(times_ms):.1f} ms, largest {worst_bytes / 1024:.1f} KB")


def main() -> None:
    rest = [a for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--") and not sys.argv[i - 1].startswith("--")]
    bundle = Path(rest[0]) if rest else ROOT / "out" / "digits"
    if not (bundle / "testset.npz").is_file():
        raise SystemExit(f"no bundle with a test set at {bundle}: make demo builds out/digits")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from monitor.broker import MAX_PACKET

        limit = [f"max_packet_size {MAX_PACKET}", "allow_anonymous true"] if "--broker-limit" in sys.argv else None
        broker = Mosquitto(tmp / "broker", auth=limit)
        try:
            if "--flood" in sys.argv:
                flood_phase(bundle, broker, arg("--devices", 20), arg("--seconds", 60.0), arg("--rate", 10.0),
                            arg("--flood-rate", 5000.0), "--forge" in sys.argv)
                return
            fleet_phase(bundle, broker, arg("--devices", 20), arg("--seconds", 60.0), arg("--rate", 10.0))
            throughput_phase(bundle, broker, tmp)
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
