"""The device loop with --capture-dir on and off, side by side in one run.
Rerun: .venv/bin/python bench/capture_bench.py [BUNDLE] [--seconds 10] [--every 10]

Four device processes one after the other, each replaying the bundle's test set for the given
time: at --period 0 (as fast as it can) and at --period 0.005 (200 frames a second), each without
and with ``--capture-dir`` (``--capture-below 0.6 --capture-every N``). Printed: frames per second
(the summary's frames over its uptime) and the ratio with capture to without, and what was captured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def arg(name: str, default):
    if name in sys.argv:
        return type(default)(sys.argv[sys.argv.index(name) + 1])
    return default


def run(bundle: Path, period: float, seconds: float, capture: list[str]) -> dict:
    r = subprocess.run([sys.executable, "-m", "device", "--model", str(bundle), "--source",
                        f"replay:{bundle / 'testset.npz'}?loop=1", "--port", "null", "--period", str(period),
                        "--threads", "1", "--duration", str(seconds), "--quiet-status", *capture],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    line = [ln for ln in r.stderr.splitlines() if ln.startswith('{"summary"')]
    if r.returncode != 0 or not line:
        raise SystemExit(f"the device failed: {r.stderr[-500:]}")
    return json.loads(line[-1])["summary"]


def main() -> None:
    rest = [a for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--") and not sys.argv[i - 1].startswith("--")]
    bundle = Path(rest[0]) if rest else ROOT / "out" / "digits"
    if not (bundle / "testset.npz").is_file():
        raise SystemExit(f"no bundle with a test set at {bundle}: make demo builds out/digits")
    seconds, every = arg("--seconds", 10.0), arg("--every", 10)
    print(f"device loop, {seconds:g} s per run, capture: --capture-below 0.6 --capture-every {every}")
    for period in (0.0, 0.005):
        with tempfile.TemporaryDirectory() as tmp:
            off = run(bundle, period, seconds, [])
            on = run(bundle, period, seconds, ["--capture-dir", str(Path(tmp) / "cap"), "--capture-every", str(every)])
        a, b = off["frames"] / off["uptime"], on["frames"] / on["uptime"]
        print(f"  --period {period:g}: {a:.0f} frames/s without, {b:.0f} with capture, ratio {b / a:.2f}; "
              f"captured {on['captured']}, lost (queue full) {on['capture_lost']}, dropped (size bound) "
              f"{on['capture_dropped']}; p50 latency {off['latency_ms']['p50']:.3f} / {on['latency_ms']['p50']:.3f} ms")


if __name__ == "__main__":
    main()
