"""The device app as a process, over real pseudo terminals (socat), as it runs on a Pi."""

import json
import signal
import subprocess
import sys
import time

import pytest
import serial

from conftest import ROOT, start_socat
from contract.protocol import Decoder


def device_cmd(bundle, port, *extra, loop=False):
    source = f"replay:{bundle / 'testset.npz'}" + ("?loop=1" if loop else "")
    return [sys.executable, "-m", "device", "--model", str(bundle), "--port", str(port), "--source", source, *extra]


def read_for(port, seconds, dec):
    msgs, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        msgs += dec.feed(port.read(4096))
    return msgs


def summary_of(stderr: str) -> dict:
    line = [ln for ln in stderr.splitlines() if ln.startswith('{"summary"')][-1]
    return json.loads(line)["summary"]


def test_app_to_monitor_cli_over_a_pty(digits_bundle, tmp_path):
    socat = start_socat(tmp_path)
    try:
        mon = subprocess.Popen([sys.executable, "-m", "monitor", str(tmp_path / "host"), "--format", "binary",
                                "--max-messages", "269", "--duration", "60", "--json", "-q"],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
        time.sleep(0.5)
        app = subprocess.run(device_cmd(digits_bundle, tmp_path / "app", "--format", "binary", "--period", "0.005"),
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        out, _ = mon.communicate(timeout=30)
    finally:
        socat.terminate()
    assert app.returncode == 0, app.stderr
    got = json.loads(out.strip().splitlines()[-1])
    assert got["predictions"] == 269 and got["gaps"] == 0 and got["errors"] == 0
    assert got["accuracy"] > 0.9
    assert summary_of(app.stderr)["frames"] == 269


def test_unplugged_port_is_reopened_and_counted(digits_bundle, tmp_path):
    socat = start_socat(tmp_path)
    app = subprocess.Popen(device_cmd(digits_bundle, tmp_path / "app", "--period", "0.02", "--status-every", "0.2",
                                      "--duration", "8", loop=True), stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        dec = Decoder("jsonl")
        with serial.Serial(str(tmp_path / "host"), timeout=0.05) as host:
            before = read_for(host, 1.5, dec)
        socat.terminate()  # the cable is pulled: both pty ends vanish
        socat.wait(5)
        time.sleep(1.0)
        socat = start_socat(tmp_path)  # and plugged back in
        with serial.Serial(str(tmp_path / "host"), timeout=0.05) as host:
            after = read_for(host, 3.0, dec)
        _, err = app.communicate(timeout=30)
    finally:
        socat.terminate()
        app.kill()
    assert app.returncode == 0, err
    seq_before = [m.seq for m in before if m.type == "prediction"]
    seq_after = [m.seq for m in after if m.type == "prediction"]
    assert seq_before and seq_after and min(seq_after) > max(seq_before)  # seq keeps counting across the gap
    assert any(m.type == "hello" for m in after)  # a late reader still learns the labels
    statuses = [m for m in after if m.type == "status"]
    assert statuses and statuses[-1].reconnects >= 1
    summary = summary_of(err)
    assert summary["reconnects"] >= 1 and summary["frames"] > len(seq_before) + len(seq_after)


def test_sigterm_finishes_flushes_and_exits_zero(digits_bundle, tmp_path):
    socat = start_socat(tmp_path)
    try:
        app = subprocess.Popen(device_cmd(digits_bundle, tmp_path / "app", "--period", "0.05", loop=True),
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
        dec = Decoder("jsonl")
        with serial.Serial(str(tmp_path / "host"), timeout=0.05) as host:
            first = read_for(host, 1.5, dec)
            app.send_signal(signal.SIGTERM)
            _, err = app.communicate(timeout=10)
            rest = read_for(host, 0.5, dec)
    finally:
        socat.terminate()
    assert app.returncode == 0
    assert any(m.type == "prediction" for m in first)
    assert (first + rest)[-1].type == "status"  # the final status was flushed before closing
    assert "device: frames" in err and "Traceback" not in err


@pytest.mark.parametrize("args, words", [
    (["--port", "/dev/nonexistent-tty"], "cannot open port"),
    (["--source", "webcam:0"], "unknown source"),
    (["--model", "/nonexistent"], "does not exist"),
    (["--period", "-1"], "--period"),
])
def test_startup_errors_are_one_line(digits_bundle, args, words):
    base = {"--model": str(digits_bundle), "--source": f"replay:{digits_bundle / 'testset.npz'}", "--port": "null"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    argv = [x for kv in base.items() for x in kv]
    r = subprocess.run([sys.executable, "-m", "device", *argv], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("INFO:")]
    assert len(lines) == 1 and words in lines[0] and lines[0].startswith("device: error:")


def test_serial_sensor_source_over_a_pty(tmp_path):
    """A sensor sending CSV lines, one per sample, into a sliding window; bad lines counted."""
    import numpy as np

    from contract.bundle import ModelSpec
    from device.sources import open_source

    spec = ModelSpec.from_dict({
        "labels": ["a", "b"], "kind": "sensor", "tflite_sha256": "0",
        "input": {"shape": [1, 4, 3], "dtype": "int8", "scale": 0.1, "zero_point": 0,
                  "preprocess": {"mean": 0, "std": 1, "layout": "NWC"}},
        "output": {"shape": [1, 2], "dtype": "int8", "scale": 0.0039, "zero_point": -128}})
    socat = start_socat(tmp_path, "sensor", "mcu")
    try:
        src = open_source(f"serial-sensor:{tmp_path / 'sensor'}?baud=115200", spec)
        with serial.Serial(str(tmp_path / "mcu")) as mcu:
            mcu.write(b"1,2,3\n4,5,6\nbad line\n7,8\n10,11,12\n13,14,15\n")
            frame = next(src)
        src.close()
    finally:
        socat.terminate()
    assert frame.data.shape == (4, 3)
    assert np.array_equal(frame.data[-1], [13, 14, 15]) and src.bad_lines == 2


def test_device_imports_and_runs_without_tensorflow(digits_bundle):
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'build_model',\n"
        "                                  'tensorflow_model_optimization'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from device.cli import main\n"
        f"sys.exit(main(['--model', {str(digits_bundle)!r}, '--source', 'synthetic', '--port', 'null',\n"
        "                '--period', '0', '--max-frames', '20']))\n")
    r = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "predictions 20" in r.stderr
