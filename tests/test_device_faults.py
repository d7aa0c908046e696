"""Issue 11's failures, each reproduced: nothing on the device fails silently or with a traceback."""

from __future__ import annotations

import json
import math
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import serial

from conftest import ROOT, start_socat
from contract import ContractError, bundle
from device import DeviceError, app
from contract.bundle import ModelSpec
from dashboard.fleet import Monitor
from monitor.terminal import render
from contract.preprocess import Preprocessor
from contract.protocol import MAX_TOPK, Decoder, Encoder, seal
from contract.runtime import Model
from device.sinks import SerialSink
from device.sources import CaptureError, ReplaySource, open_source

LABELS = [f"c{i}" for i in range(10)]


def sensor_spec(steps=4, channels=3) -> ModelSpec:
    return ModelSpec.from_dict({
        "labels": ["a", "b"], "kind": "sensor", "tflite_sha256": "0" * 64,
        "input": {"shape": [1, steps, channels], "dtype": "int8", "scale": 0.1, "zero_point": 0,
                  "preprocess": {"mean": 0, "std": 1, "layout": "NWC"}},
        "output": {"shape": [1, 2], "dtype": "int8", "scale": 0.0039, "zero_point": -128}})


# --- sensor source ---------------------------------------------------------------------------------

def _frame_within(src, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            return next(src)
        except CaptureError:
            time.sleep(0.05)
    return None


def test_vanished_sensor_port_comes_back_and_frames_resume(tmp_path):
    socat = start_socat(tmp_path, "sensor", "mcu")
    src = open_source(f"serial-sensor:{tmp_path / 'sensor'}", sensor_spec())
    src.max_wait = 0.3
    try:
        with serial.Serial(str(tmp_path / "mcu")) as mcu:
            mcu.write(b"1,2,3\n" * 4)
            assert _frame_within(src, 2.0) is not None
        socat.terminate()  # the sensor is unplugged for 4 s
        socat.wait(5)
        failed = 0
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            with pytest.raises(CaptureError):
                next(src)
            failed += 1
        socat = start_socat(tmp_path, "sensor", "mcu")
        with serial.Serial(str(tmp_path / "mcu")) as mcu:
            stop = threading.Event()
            feeder = threading.Thread(target=lambda: [mcu.write(b"4,5,6\n") or time.sleep(0.02)
                                                      for _ in iter(stop.is_set, True)], daemon=True)
            feeder.start()
            frame = _frame_within(src, 5.0)
            stop.set()
            feeder.join()
    finally:
        socat.terminate()
        src.close()
    assert failed > 0 and frame is not None and np.array_equal(frame.data[-1], [4, 5, 6])
    assert src.reconnects == 1 and src.counters()["source_reconnects"] == 1


def test_non_finite_samples_are_bad_lines():
    src = open_source("serial-sensor:loop://", sensor_spec())
    for line in (b"nan,1,2", b"inf,1,2", b"1e999,1,2", b"1,2", b"1,2,3"):
        src.add_line(line)
    assert src.bad_lines == 4 and len(src.window) == 1
    src.close()


def test_a_flood_of_lines_does_not_starve_frames():
    src = open_source("serial-sensor:loop://", sensor_spec())
    src.max_wait = 1.0
    # pyserial's loop:// holds 4,096 bytes and, without a write timeout, blocks a writer for good once
    # it is full: the pourer would never see stop and the join below would hang the suite
    src.port.write(b"1,2,3\n" * 600)  # 3,600 bytes: far more than one read takes
    src.port.write_timeout = 0.5  # loop:// also refuses a write that would take longer at the baud rate
    stop = threading.Event()
    poured = []

    def pour():
        while not stop.is_set():
            try:
                src.port.write(b"1,2,3\n" * 50)
                poured.append(1)
            except (serial.SerialTimeoutException, queue.Full):  # full: the reader is behind; keep pouring
                pass
    t = threading.Thread(target=pour, daemon=True)
    t.start()
    try:
        frames = [next(src) for _ in range(5)]
    finally:
        stop.set()
        t.join(timeout=5)
        src.close()
    assert not t.is_alive(), "the pouring thread did not stop: a write blocked without its timeout"
    assert len(frames) == 5 and poured


# --- the writer ------------------------------------------------------------------------------------

class BrokenPort:
    """A port whose write raises what no serial handler expects."""

    def write(self, data):
        if data:
            raise RuntimeError("driver bug")

    def close(self):
        pass

    def flush(self):
        pass


def test_a_fault_in_the_writer_ends_the_run_with_one_line(digits_bundle):
    b = bundle.load(digits_bundle)
    model = Model(b.model, num_threads=1)
    enc = Encoder("jsonl", b.spec.labels)
    sink = SerialSink("broken://", opener=BrokenPort)
    source = ReplaySource(str(digits_bundle / "testset.npz"), b.spec, loop=True)
    with pytest.raises(DeviceError, match="serial writer .* stopped \\(RuntimeError: driver bug\\)"):
        app.run(model, Preprocessor(b.spec), source, sink, enc, app.RunConfig(period=0.001, duration=5))
    sink.close()


def test_loop_url_writer_fault_exits_non_zero(digits_bundle):
    """pyserial's loop:// fills up (nobody reads it) and raises queue.Full in the writer thread."""
    r = subprocess.run([sys.executable, "-m", "device", "--model", str(digits_bundle), "--source",
                        f"replay:{digits_bundle / 'testset.npz'}?loop=1", "--port", "loop://", "--period", "0.001",
                        "--duration", "30", "--quiet-status"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("device: error: the serial writer") and "Traceback" not in r.stderr


# --- the contract ----------------------------------------------------------------------------------

def _edit(digits_bundle, tmp_path, change):
    b = shutil.copytree(digits_bundle, tmp_path / "b")
    data = json.loads((b / "model.json").read_text())
    change(data)
    (b / "model.json").write_text(json.dumps(data))
    return b


@pytest.mark.parametrize("change, words", [
    (lambda d: d["input"].update(scale=math.nan), "input.scale must be a finite positive"),
    (lambda d: d["input"].update(scale=-0.1), "input.scale must be a finite positive"),
    (lambda d: d["input"].update(scale="0.1"), "input.scale must be a number"),
    (lambda d: d["input"]["preprocess"].update(std=-1.0), "std must be a finite positive"),
    (lambda d: d["input"]["preprocess"].update(std="x"), "std must be a number"),
    (lambda d: d["input"]["preprocess"].update(mean=[1.0, 2.0]), "mean has 2 values for 1 channels"),
    (lambda d: d["input"]["preprocess"].update(layout="NCHW"), "layout 'NCHW' is not one of"),
    (lambda d: d["input"]["preprocess"].update(size=[8, "8"]), "size\\[1\\] must be a whole number"),
    (lambda d: d["input"]["preprocess"].update(color="purple"), "color 'purple'"),
    (lambda d: d["output"].update(shape=[]), "output.shape must be a non-empty list"),
    (lambda d: d["input"].update(zero_point=300), "zero_point 300 is outside int8"),
    (lambda d: d.update(kind="audio"), "kind 'audio'"),
    (lambda d: d.update(labels="abc"), "labels must be a non-empty list"),
    (lambda d: d.update(provenance=nested(100)), "nests deeper than"),
    (lambda d: d.update(format="tinysense-bundle/999"), "format 'tinysense-bundle/999' is not"),
    (lambda d: d.update(seed="zero"), "seed must be a whole number"),
    (lambda d: d.update(variant=3), "variant must be a string"),
    (lambda d: d.update(labels=["a\u001b[2J"] + d["labels"][1:]), "label must be a printable string"),
    (lambda d: d.update(labels=["x" * 65] + d["labels"][1:]), "at most 64 UTF-8 bytes"),
])
def test_bad_model_json_values_are_refused(digits_bundle, tmp_path, change, words):
    b = _edit(digits_bundle, tmp_path, change)
    with pytest.raises(ContractError, match=words):
        bundle.load(b)


def nested(depth):
    v = []
    for _ in range(depth):
        v = [v]
    return v


def test_bad_model_json_is_one_line_from_the_cli(digits_bundle, tmp_path):
    b = _edit(digits_bundle, tmp_path, lambda d: d["input"].update(scale=math.nan))
    r = subprocess.run([sys.executable, "-m", "device", "--model", str(b), "--source", "synthetic", "--port", "null",
                        "--max-frames", "1"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "finite positive" in r.stderr


@pytest.mark.parametrize("text", [" " * (bundle.MAX_JSON_BYTES + 1), "é" * (bundle.MAX_JSON_BYTES // 2 + 1)])
def test_oversized_model_json_is_refused(digits_bundle, tmp_path, text):
    b = shutil.copytree(digits_bundle, tmp_path / "b")
    (b / "model.json").write_text(text)  # the second: fewer characters than the bound, more bytes
    with pytest.raises(ContractError, match="more than the"):
        bundle.load(b)


# --- messages and the monitor ----------------------------------------------------------------------

def prediction(seq, **extra):
    return {"type": "prediction", "seq": seq, "t": 1.0, "label": "c1", "score": 0.75, "topk": [["c1", 0.75]],
            "ms": {"capture": 0.1, "preprocess": 0.1, "invoke": 0.5, "postprocess": 0.1}, **extra}


@pytest.mark.parametrize("fmt", ["jsonl", "binary"])
def test_encoder_bounds(fmt):
    enc, dec = Encoder(fmt, LABELS), Decoder(fmt, LABELS)
    big = prediction(2 ** 32 + 5, truth=40000, topk=[["c1", 0.1]] * 300)
    out = dec.feed(enc.encode(big) + enc.encode({"type": "skip", "seq": 2 ** 40, "t": 1.0, "reason": "x"}))
    assert out[0].seq == 2 ** 32 + 5 and out[0].truth == 40000 and len(out[0].topk) == MAX_TOPK
    assert out[1].seq == 2 ** 40 and dec.errors == 0
    if fmt == "jsonl":
        assert out[0].topk_capped is True


@pytest.mark.parametrize("fmt", ["jsonl", "binary"])
def test_a_hello_of_any_size_decodes(fmt):
    labels = [f"class-{i:04d}" for i in range(1000)]
    frame = Encoder(fmt, labels).encode({"type": "hello", "labels": labels, "period": 1.0})
    assert len(frame) > 4096
    dec = Decoder(fmt)
    assert list(dec.feed(frame)[0].labels) == labels and dec.labels == labels


P = '{"type":"prediction","seq":3,"label":"c1","score":1,"topk":[["c1",1]]'  # a good prediction, unclosed


@pytest.mark.parametrize("line, refused", [
    ('{"type":"prediction","label":"c1"}', "field"),  # no seq: the old monitor died with KeyError
    ('{"type":"hello","labels":"abc"}', "field"),  # the old Decoder.feed raised TypeError
    ('{"type":"prediction","seq":"3","label":"c1","score":1,"topk":[]}', "field"),
    ('{"type":"prediction","seq":3,"label":"c1","score":1,"topk":[],"ms":[1,2]}', "field"),
    ('{"type":"hello","labels":["a"],"period":"soon"}', "field"),
    ('{"labels":["a"]}', "type"),  # a hello without its type (the old binary path: KeyError)
    ('{"type":"x"}', "type"),
    (P.replace('"score":1', '"score":1e9') + "}", "field"),  # the old render asked for 30 GB of '#'
    (P.replace('"score":1', '"score":NaN') + "}", "field"),
    (P.replace('[["c1",1]]', '[["3","x"]]') + "}", "field"),
    (P.replace('"seq":3', '"seq":-1') + "}", "field"),
    (P.replace('"seq":3', f'"seq":{2 ** 64}') + "}", "field"),
    (P + ',"truth":1099511627776}', "field"),
    (P + ',"ms":{' + ",".join(f'"s{i}":1' for i in range(40)) + "}}", "field"),
    (P + ',"ms":{"invoke":1e400}}', "field"),
    (P.replace('"label":"c1"', '"label":"e\\u001b[2Jf"') + "}", "field"),  # clears a terminal
    (P.replace('"label":"c1"', '"label":"' + "x" * 100 + '"') + "}", "field"),
    ('{"type":"hello","labels":[' + ",".join(f'"c{i}"' for i in range(2000)) + "]}", "field"),
    ('{"type":"hello","labels":["a"],"period":1e10}', "field"),
    ('{"type":"hello","labels":["a"],"input":' + "[" * 950 + "]" * 950 + "}", "field"),  # RecursionError once
    ('{"type":"hello","labels":["a"],"x":' + "[" * 100000 + "]" * 100000 + "}", "json"),
    ('{"type":"hello","labels":["a"],"format":"tinysense/999"}', "field"),
    ('{"type":"status","state":"maybe"}', "field"),
    ('{"type":"status","frames":1,"drops":-1}', "field"),
    ('{"type":"status","frames":1,"accuracy":2}', "field"),
    (P + "}", None),
    ('{"type":"status","state":"offline"}', None),
])
def test_the_gate_counts_what_it_refuses_by_kind(line, refused):
    m = Monitor("jsonl", LABELS)
    m.feed(seal(line.encode()) + b"\n")
    assert m.decoder.refused == ({refused: 1} if refused else {})
    assert m.predictions == int(line == P + "}")
    render(m)
    json.dumps(m.state(), allow_nan=False)


def test_a_jsonl_line_is_sealed_and_checked():
    enc = Encoder("jsonl", LABELS)
    line = enc.encode(prediction(5))
    assert line.rstrip().endswith(b'"}') and b',"crc":"' in line
    assert json.loads(line)["seq"] == 5  # still one JSON object a person can read
    m = Monitor("jsonl", LABELS)
    m.feed(line.replace(b'"seq":5', b'"seq":6'))  # damage that stays valid JSON
    m.feed(line.replace(b',"crc"', b',"crx"'))  # the seal itself damaged
    m.feed(b'{"type":"prediction","seq":3,"label":"c1","score":1,"topk":[]}\n')  # no seal at all
    assert m.predictions == 0 and m.decoder.refused == {"crc": 3}
    assert m.feed(line)[0].seq == 5
    unsealed = Decoder("jsonl", LABELS, require_crc=False)  # MQTT: checked when present
    assert unsealed.feed(b'{"type":"prediction","seq":3,"label":"c1","score":1,"topk":[]}\n')[0].seq == 3
    assert unsealed.feed(line.replace(b'"seq":5', b'"seq":6')) == [] and unsealed.refused == {"crc": 1}


@pytest.mark.parametrize("fmt", ["jsonl", "binary"])
def test_monitor_survives_a_bit_flip_fuzz(fmt):
    enc = Encoder(fmt, LABELS)
    stream = b"".join([enc.encode({"type": "hello", "labels": LABELS, "period": 0.1})]
                      + [enc.encode(prediction(i, truth=i % 10)) for i in range(40)]
                      + [enc.encode({"type": "status", "frames": 40, "misses": 0, "drops": 0})])
    rng = np.random.default_rng(0)
    for _ in range(300):  # bounded: 300 damaged copies, 1 to 8 flipped bits each
        damaged = bytearray(stream)
        for pos in rng.integers(0, len(damaged) * 8, rng.integers(1, 9)):
            damaged[pos // 8] ^= 1 << (pos % 8)
        m = Monitor(fmt)
        for i in range(0, len(damaged), 97):  # in odd chunks, as a port delivers them
            m.feed(bytes(damaged[i:i + 97]))
        m.summary()
        render(m)
        assert m.predictions + m.skips <= 40 + m.errors


def test_monitor_says_when_the_format_does_not_match():
    stream = b"".join(Encoder("jsonl", LABELS).encode(prediction(i)) for i in range(5))
    m = Monitor("binary")
    m.feed(stream + b"\x00")
    assert m.predictions == 0 and m.errors >= 1 and "--format jsonl" in m.hint()
    m = Monitor("jsonl")
    m.feed(b"".join(Encoder("binary", LABELS).encode(prediction(i)) for i in range(5)) + b"\n")
    assert m.predictions == 0 and "--format binary" in m.hint()


def test_device_and_monitor_agree_on_accuracy_with_a_threshold(digits_bundle):
    b = bundle.load(digits_bundle)
    enc = Encoder("jsonl", b.spec.labels)

    class Collect:
        drops = reconnects = 0

        def __init__(self):
            self.data = []

        def send(self, data, record=None):
            self.data.append(data)

        def check(self):
            pass
    sink = Collect()
    stats = app.run(Model(b.model, num_threads=1), Preprocessor(b.spec),
                    ReplaySource(str(digits_bundle / "testset.npz"), b.spec), sink, enc,
                    app.RunConfig(period=0, threshold=0.999))
    m = Monitor("jsonl")
    m.feed(b"".join(sink.data))
    assert m.counts.get("unknown", 0) > 0  # the threshold bites
    assert m.summary()["accuracy"] == round(stats.correct / stats.labelled, 6)


# --- replay and the command line -------------------------------------------------------------------

def test_damaged_replay_files_are_one_line(digits_bundle, tmp_path):
    spec = bundle.load(digits_bundle).spec
    good = (digits_bundle / "testset.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    (tmp_path / "noise.npz").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:  # a valid zip holding a damaged array
        z.writestr("x.npy", b"\x93NUMPY garbage")
    for name in ("cut.npz", "noise.npz", "bad.npz"):
        with pytest.raises(DeviceError, match="cannot read replay file"):
            ReplaySource(str(tmp_path / name), spec)


def test_replay_files_that_lie_are_refused_before_anything_is_allocated(digits_bundle, tmp_path):
    spec = bundle.load(digits_bundle).spec
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 8, 8), np.float32))
    header["shape"] = (2 ** 40, 8, 8)  # 23 TiB of float32 claimed by a file of a few hundred bytes
    with zipfile.ZipFile(tmp_path / "liar.npz", "w") as z, z.open("x.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    assert (tmp_path / "liar.npz").stat().st_size < 1000
    with pytest.raises(DeviceError, match="claims 256,000,000,000,000,000 bytes|claims .* bytes of data in"):
        ReplaySource(str(tmp_path / "liar.npz"), spec)  # once a MemoryError
    x = np.zeros((4, 8, 8), np.float32)
    np.savez(tmp_path / "far.npz", x=x, y=np.array([0, 1, 2 ** 40, 3]))  # once struct.error in a binary run
    with pytest.raises(DeviceError, match="y holds class ids outside 0 to 9"):
        ReplaySource(str(tmp_path / "far.npz"), spec)


def test_nan_frames_are_bad_frames_not_predictions(digits_bundle, tmp_path):
    x = np.full((6, 8, 8), np.nan, np.float32)
    x[::2] = 3.0  # every other frame is real
    np.savez(tmp_path / "nan.npz", x=x)
    r = subprocess.run([sys.executable, "-m", "device", "--model", str(digits_bundle), "--source",
                        f"replay:{tmp_path / 'nan.npz'}", "--port", "null", "--period", "0"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    stats = json.loads([ln for ln in r.stderr.splitlines() if ln.startswith('{"summary"')][-1])["summary"]
    assert r.returncode == 0 and stats["frames"] == 6 and stats["bad_frames"] == 3 and stats["predictions"] == 3


def test_a_testset_for_another_model_is_refused(digits_bundle, tmp_path):
    spec = bundle.load(digits_bundle).spec
    np.savez(tmp_path / "sensor.npz", x=np.zeros((10, 50, 6), np.float32), y=np.zeros(10, np.int64),
             labels=np.array(["walk", "run", "sit", "stand"]))
    with pytest.raises(DeviceError, match="recorded for the classes walk, run"):
        ReplaySource(str(tmp_path / "sensor.npz"), spec)


@pytest.mark.parametrize("args, words", [
    (["--period", "nan"], "--period must be a finite number"),
    (["--period", "inf"], "--period must be a finite number"),
    (["--threads", "100000"], "--threads must be 1 to 64"),
    (["--topk", "300"], "--topk must be 1 to 255"),
    (["--status-every", "0"], "--status-every must be"),
    (["--period", "1e10"], "--period must be a finite number of at least 0 and at most 86400"),  # was OverflowError
    (["--period", "1e-320"], "--period must be 0 or 0.0001 to 86400 seconds"),
    (["--baud", "4000000000"], "--baud must be 1 to 4000000"),
    (["--duration", "1e300"], "--duration must be"),
])
def test_bad_flags_are_one_line(digits_bundle, args, words):
    r = subprocess.run([sys.executable, "-m", "device", "--model", str(digits_bundle), "--source", "synthetic",
                        "--port", "null", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1 and r.stderr.strip() == f"device: error: {r.stderr.strip()[15:]}"
    assert words in r.stderr and "\n" not in r.stderr.strip()


def test_sigint_exits_130_with_status_lines_and_no_litert_info(digits_bundle):
    p = subprocess.Popen([sys.executable, "-m", "device", "--model", str(digits_bundle), "--source",
                          f"replay:{digits_bundle / 'testset.npz'}?loop=1", "--port", "null", "--period", "0.01",
                          "--status-every", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=ROOT)
    time.sleep(2.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 130, err
    status = [ln for ln in out.splitlines() if ln.startswith("status: frames")]
    assert len(status) >= 3 and "XNNPACK" not in err and "Traceback" not in err


def test_systemd_watchdog_pings_over_notify_socket(digits_bundle, tmp_path):
    """READY=1, then WATCHDOG=1 from the frame loop (even between frames of a long period), then STOPPING=1."""
    import os
    import socket

    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}  # ping every 0.2 s
    p = subprocess.Popen([sys.executable, "-m", "device", "--model", str(digits_bundle), "--source", "synthetic",
                          "--port", "null", "--period", "5", "--duration", "2", "--quiet-status"], env=env, cwd=ROOT,
                         stderr=subprocess.PIPE, text=True)
    got = []
    try:
        while True:
            got.append(sock.recv(64).decode())
            if got[-1] == "STOPPING=1":
                break
    finally:
        p.wait(20)
        sock.close()
    assert p.returncode == 0, p.stderr.read()
    assert got[0] == "READY=1" and got[-1] == "STOPPING=1"
    assert got.count("WATCHDOG=1") >= 5  # a 5 s period did not starve the watchdog in 2 s


@pytest.mark.parametrize("text, words", [
    ("replay:t.npz?lop=1", "has no option 'lop' \\(its options: loop\\)"),  # used to play once, silently
    ("replay:t.npz?loop=maybe", "loop='maybe' must be 1 or 0"),
    ("serial-sensor:/dev/ttyACM0?baud=fast", "baud='fast' must be a positive whole number"),
    ("picamera2:?format=JPEG", "format='JPEG' must be one of XRGB8888"),
    ("synthetic:?seed=1&speed=2", "has no option 'speed'"),
    ("webcam:0", "unknown source 'webcam:0'"),
    ("replay:", "needs a path"),
])
def test_source_specs_refuse_what_they_do_not_understand(digits_bundle, text, words):
    with pytest.raises(ContractError, match=words):
        open_source(text, bundle.load(digits_bundle).spec)


def test_fan_out_feeds_every_output_and_sums_their_counters(digits_bundle, tmp_path):
    """Two real ptys at once through one --port each; both see the whole stream."""
    socat_a = start_socat(tmp_path, "a-app", "a-host")
    socat_b = start_socat(tmp_path, "b-app", "b-host")
    try:
        with serial.Serial(str(tmp_path / "a-host"), timeout=0.1) as a, \
                serial.Serial(str(tmp_path / "b-host"), timeout=0.1) as b:
            streams: list[list[int]] = [[], []]
            done = threading.Event()

            def drain(port, out):  # read while the app runs: a pty holds only a few KB
                dec = Decoder("jsonl")
                while not done.is_set():
                    out += [m.seq for m in dec.feed(port.read(65536)) if m.type == "prediction"]
            readers = [threading.Thread(target=drain, args=(p, o), daemon=True) for p, o in zip((a, b), streams)]
            for t in readers:
                t.start()
            r = subprocess.run([sys.executable, "-m", "device", "--model", str(digits_bundle), "--source",
                                f"replay:{digits_bundle / 'testset.npz'}", "--port", str(tmp_path / "a-app"),
                                "--port", str(tmp_path / "b-app"), "--period", "0.005", "--quiet-status"],
                               capture_output=True, text=True, timeout=60, cwd=ROOT)
            time.sleep(1.0)
            done.set()
            for t in readers:
                t.join(5)
    finally:
        socat_a.terminate()
        socat_b.terminate()
    assert r.returncode == 0, r.stderr
    n = len(np.load(digits_bundle / "testset.npz")["y"])
    assert streams[0] == streams[1] == list(range(n))


def test_null_sink_counts_nothing_it_did_not_do():
    from device.sinks import FanOut, NullSink

    fan = FanOut([NullSink(), NullSink()])
    fan.send(b"x")
    fan.check()
    assert fan.drops == 0 and fan.reconnects == 0 and fan.flush(0.1) and not hasattr(NullSink(), "sent")


def test_one_gate_for_every_side(digits_bundle, tmp_path):
    """device, firmware_export and build_model all open a bundle through runtime.open_bundle."""
    from contract.runtime import open_bundle
    from firmware_export.export import read_source

    checked = open_bundle(digits_bundle, num_threads=1)
    assert checked.spec.labels == tuple(str(i) for i in range(10)) and checked.model.input.dtype == np.int8
    b = _edit(digits_bundle, tmp_path, lambda d: d["input"].update(zero_point=d["input"]["zero_point"] + 1))
    for opener in (lambda p: open_bundle(p), read_source):
        with pytest.raises(ContractError, match="zero point"):
            opener(b)
