"""The receiving side under hostile input: the gate, the bounds of a fleet, who may speak for a device.

The fuzz here is structure-aware and seeded: messages of the right shape with hostile values
(huge, negative, NaN, deep, long, control characters), in both formats and as MQTT payloads,
fed to everything that reads them (decoder, monitor, fleet, terminal view, dashboard state).
"""

import json
import random
import signal
import struct
import subprocess
import sys
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
import pytest

from contract.protocol import (MAX_LABEL_BYTES, MAX_LABELS, MAX_MESSAGE, Decoder, Encoder, cobs_encode, seal)
from dashboard.fleet import MAX_DEVICES, STALE_MIN_S, Fleet, Monitor
from dashboard.server import state_json
from monitor.terminal import render, render_fleet

ROOT = Path(__file__).resolve().parents[1]
LABELS = [f"c{i}" for i in range(10)]
FUZZ_INPUTS = 20_000


def hostile_value(rng: random.Random, depth: int = 0):
    """A JSON value a stranger might send where a number, a string or a list is expected."""
    pick = rng.randrange(14) if depth < 3 else rng.randrange(4)  # containers only near the top
    if pick == 0:
        return rng.choice([0, 1, -1, 2 ** 31, 2 ** 63, 2 ** 64, -(2 ** 64), 10 ** 30, 3])
    if pick == 1:
        return rng.choice([0.5, 1e9, -1e9, 1e308, -1e-320, float("nan"), float("inf"), float("-inf"), 1e-320])
    if pick == 2:
        return rng.choice(["", "c1", "unknown", "e\x1b[2Jf", "\x00\r\n", "x" * rng.randrange(1, 5000), "\ud800",
                           "é" * 40, "3"])
    if pick == 3:
        return rng.choice([True, False, None])
    if pick == 4:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    if pick == 5:
        return {str(hostile_value(rng, 3))[:20]: hostile_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}
    if pick == 6:
        return [[rng.choice(LABELS + ["3", "", "\x1b"]), hostile_value(rng, 3)] for _ in range(rng.randrange(0, 300))]
    if pick == 7:
        n = rng.choice([1, 10, 500, 2000])
        return [rng.choice(LABELS) * rng.randrange(1, 20) for _ in range(n)]
    if pick == 8:
        return {s: hostile_value(rng, 3) for s in ("capture", "preprocess", "invoke", "postprocess")}
    if pick == 9:
        return {"shape": [rng.choice([1, -1, 2 ** 40, 0.5]) for _ in range(rng.randrange(12))], "dtype": "int8"}
    return rng.choice([0, 1, 5, 0.25, "c3", [], {}, 12])


FIELDS = {"hello": ["labels", "period", "format", "model_sha256", "input"],
          "prediction": ["seq", "t", "label", "score", "topk", "ms", "truth", "topk_capped"],
          "skip": ["seq", "t", "reason"],
          "status": ["frames", "predictions", "misses", "drops", "period", "uptime", "latency_ms", "stages_ms",
                     "accuracy", "state", "bad_lines"]}
GOOD = {"hello": {"type": "hello", "labels": LABELS, "period": 0.1},
        "prediction": {"type": "prediction", "seq": 1, "t": 1.0, "label": "c1", "score": 0.5,
                       "topk": [["c1", 0.5]], "ms": {"invoke": 1.0}, "truth": 1},
        "skip": {"type": "skip", "seq": 1, "t": 1.0, "reason": "bad frame"},
        "status": {"type": "status", "frames": 1, "misses": 0, "state": "online"}}


def hostile_message(rng: random.Random) -> dict:
    """A message of a real kind with some of its fields (or its type) replaced by hostile values."""
    kind = rng.choice(list(GOOD))
    msg = dict(GOOD[kind])
    if "seq" in msg:
        msg["seq"] = rng.randrange(0, 10 ** rng.randrange(1, 20))
    if rng.random() < 0.3:  # honest now and then, so what is taken into the state is fuzzed too
        return msg
    for key in rng.sample(FIELDS[kind], rng.randrange(1, 3)):
        if rng.random() < 0.15:
            msg.pop(key, None)
        else:
            msg[key] = hostile_value(rng)
    if rng.random() < 0.05:
        msg["type"] = hostile_value(rng)
    if rng.random() < 0.05:
        msg.pop("type")
    return msg


def deep(rng: random.Random) -> bytes:
    """A hello nested hundreds or thousands deep (json cannot even write it: text, then)."""
    n = rng.choice([900, 5000, 100_000])
    return b'{"type":"hello","labels":["a"],"input":' + b"[" * n + b"]" * n + b"}"


def jsonl_line(rng: random.Random) -> bytes:
    if rng.random() < 0.01:
        body = deep(rng)
    else:
        body = json.dumps(hostile_message(rng), separators=(",", ":")).encode(errors="surrogatepass")
    return (seal(body) if rng.random() < 0.9 else body) + b"\n"


def binary_frame(rng: random.Random) -> bytes:
    """A well-framed binary packet with a correct CRC and hostile contents (packed or JSON)."""
    kind = rng.choice([1, 1, 2, 3, 4, 9])
    if kind in (3, 4):
        body = deep(rng) if rng.random() < 0.01 else json.dumps(hostile_message(rng), separators=(",", ":")).encode(
            errors="surrogatepass")
    elif kind == 1:  # a packed prediction: plausible, or any seq, time, label index, score, truth and k
        k = rng.choice([0, 1, 3, 255])
        if rng.random() < 0.5:
            body = struct.pack("<QdHfiB", rng.randrange(10 ** 6), 1.7e9, rng.randrange(12), rng.random(),
                               rng.randrange(-1, 12), k)
            body += b"".join(struct.pack("<Hf", rng.choice([rng.randrange(12), 0xFFFF]), rng.random())
                             for _ in range(k)) + struct.pack("<4f", *(rng.random() for _ in range(4)))
        else:
            body = struct.pack("<QdHfiB", rng.getrandbits(64), rng.choice([1.0, float("nan"), 1e300, -5.0]),
                               rng.getrandbits(16), struct.unpack("<f", rng.getrandbits(32).to_bytes(4, "little"))[0],
                               rng.randrange(-2 ** 31, 2 ** 31), k)
            body += rng.randbytes(rng.choice([6 * k + 16, 6 * k + 10, 3]))
    else:
        body = rng.randbytes(rng.randrange(0, 40))
    packet = bytes([kind]) + body
    return cobs_encode(packet + struct.pack("<I", zlib.crc32(packet))) + b"\x00"


def crash_kinds(feed, inputs) -> dict:
    """Every exception ``feed`` raises, by type and the line it came from."""
    kinds = {}
    for data in inputs:
        try:
            feed(data)
        except Exception as e:  # noqa: BLE001 - the point is to catch anything
            where = traceback.extract_tb(e.__traceback__)[-1]
            kinds.setdefault(f"{type(e).__name__} at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}", repr(e)[:200])
    return kinds


def read_all(fleet: Fleet) -> None:
    render_fleet(fleet)
    json.loads(state_json(fleet))
    fleet.summary()


@pytest.mark.parametrize("fmt", ["jsonl", "binary"])
def test_no_crash_in_a_structure_aware_fuzz_of_the_stream_formats(fmt):
    rng = random.Random(f"fuzz-{fmt}")
    make = jsonl_line if fmt == "jsonl" else binary_frame
    fleet = Fleet(fmt, LABELS)
    m = fleet.monitor("port")
    start = time.monotonic()

    def feed(data: bytes) -> None:
        m.feed(data)
        if rng.random() < 0.02:
            read_all(fleet)
    inputs = [make(rng) for _ in range(FUZZ_INPUTS)]
    assert crash_kinds(feed, inputs) == {}
    read_all(fleet)
    assert m.errors > FUZZ_INPUTS // 4  # most hostile messages are refused, each one counted
    assert m.predictions > FUZZ_INPUTS // 20 and m.hello and m.status  # and what passed was taken in
    assert time.monotonic() - start < 120  # bounded: the fuzz itself may not become the hang it looks for


def test_no_crash_in_a_fuzz_of_mqtt_payloads():
    rng = random.Random("fuzz-mqtt")
    fleet = Fleet()

    def payload() -> tuple[str, str, bytes]:
        device = rng.choice(["d1", "d2", "d3", "", "\x1b[2J", "x" * 200, f"n{rng.randrange(10 ** 6)}"])
        data = rng.choice([jsonl_line(rng)] * 4 + [rng.randbytes(rng.randrange(0, 300)), b"\xff\xd8x\xff\xd9",
                                                   b"", b"null", b"[]"])
        kind = {"hello": "hello", "prediction": "prediction", "skip": "prediction", "status": "status"}.get(
            data[9:19].split(b'"')[0].decode(errors="replace"), "prediction")  # the topic of its own type
        if rng.random() < 0.1:
            kind = rng.choice(["hello", "prediction", "status", "thumbnail", "other"])
        return device, kind, data.rstrip(b"\n")

    def feed(message) -> None:
        fleet.message(*message)
        if rng.random() < 0.02:
            read_all(fleet)
    assert crash_kinds(feed, [payload() for _ in range(FUZZ_INPUTS)]) == {}
    read_all(fleet)
    assert fleet.internal == 0  # no fault of ours was hidden by the guard around paho's callback
    assert sum(m.predictions for m in fleet.devices.values()) > FUZZ_INPUTS // 50
    assert len(fleet.devices) <= MAX_DEVICES


def test_bit_flips_never_pass_as_other_predictions():
    """2,000 copies of each format's stream with 1 to 10 flipped bits: a prediction that arrives is the one sent."""
    sent = [{"type": "prediction", "seq": i, "t": 1700000000.0 + i, "label": LABELS[i % 10], "score": 0.5 + i / 1000,
             "topk": [[LABELS[i % 10], 0.5 + i / 1000], [LABELS[(i + 1) % 10], 0.25]],
             "ms": {"capture": 0.1, "preprocess": 0.2, "invoke": 1.5, "postprocess": 0.05}, "truth": (i * 7) % 10}
            for i in range(30)]
    rng = np.random.default_rng(7)
    for fmt in ("jsonl", "binary"):
        enc = Encoder(fmt, LABELS)
        hello = enc.encode({"type": "hello", "labels": LABELS, "period": 0.1})
        stream = b"".join(enc.encode(m) for m in sent)
        truth = {m["seq"]: Decoder(fmt, LABELS).feed(enc.encode(m))[0] for m in sent}
        altered = accepted = 0
        for _ in range(2000):
            damaged = bytearray(stream)
            for pos in rng.integers(0, len(damaged) * 8, rng.integers(1, 11)):
                damaged[pos // 8] ^= 1 << (pos % 8)
            dec = Decoder(fmt, LABELS)
            dec.feed(hello)
            for rec in dec.feed(bytes(damaged)):
                accepted += 1
                altered += rec.type != "prediction" or truth.get(rec.seq) != rec
        assert accepted > 10_000 and altered == 0, fmt  # most predictions survive; none is silently changed


def test_a_fleet_is_bounded():
    fleet = Fleet()
    longest = "é" * (MAX_LABEL_BYTES // 2)
    hello = seal(json.dumps({"type": "hello", "labels": [f"{i:04d}" + longest[4:] for i in range(MAX_LABELS)],
                             "period": 0.1}, separators=(",", ":")).encode())
    assert len(hello) <= MAX_MESSAGE  # the largest hello the gate takes fits in a message
    for i in range(MAX_DEVICES + 40):
        fleet.message(f"dev{i}", "hello", hello)
    for i in range(1000):  # devices that only ever sent what is not ours: counted, never a card
        fleet.message(f"stranger{i}", "prediction", b"not json")
        fleet.message(f"stranger{i}", "status", json.dumps({"type": "status", "frames": -1}).encode())
    big = {"type": "prediction", "seq": 1, "t": 1.0, "label": longest, "score": 0.5,
           "topk": [[longest, 0.5]] * 255, "ms": {f"stage{i}": 1.0 for i in range(32)}}
    for i in range(MAX_DEVICES):
        for seq in range(30):
            fleet.message(f"dev{i}", "prediction", json.dumps({**big, "seq": seq}).encode())
    fleet.message("dev0", "hello", b"{" + b" " * MAX_MESSAGE + b"}")  # a payload too big is not parsed
    assert len(fleet.devices) == MAX_DEVICES and fleet.overflow == 40
    assert fleet.foreign == 2001
    state = state_json(fleet)
    assert len(state) < 1_250_000, len(state)  # 256 worst-case cards; the 20-device fleet of the bench is far less
    one = json.loads(state)["devices"]["dev0"]
    assert len(one["topk"]) == 10 and "labels" not in one and len(one["recent"]) == 24


def test_a_silent_device_is_stale_whatever_its_status_said():
    m = Monitor("jsonl", LABELS, require_crc=False)
    m.feed(b'{"type":"hello","labels":["a"],"period":1.0}\n{"type":"status","state":"online"}\n')
    assert not m.stale() and m.live()
    later = time.monotonic() + max(STALE_MIN_S, 10 * 1.0) + 1
    assert m.stale(later)
    slow = Monitor("jsonl", LABELS, require_crc=False)  # a hello cannot claim a day's period to stay fresh
    slow.feed(b'{"type":"hello","labels":["a"],"period":86400}\n')
    assert not slow.stale(time.monotonic() + 599) and slow.stale(time.monotonic() + 601)
    fleet = Fleet()
    fleet.message("d", "hello", b'{"type":"hello","labels":["a"],"period":1.0}')
    fleet.devices["d"]._heard -= 60  # a minute of silence
    assert json.loads(state_json(fleet))["devices"]["d"]["stale"] is True
    assert "d STALE" in render_fleet(fleet)


def test_a_hello_changing_labels_while_live_is_refused_and_said():
    said = []
    fleet = Fleet(notice=said.append)
    real = b'{"type":"hello","labels":["cat","dog"],"period":1.0,"model_sha256":"' + b"a" * 64 + b'"}'
    fleet.message("d", "hello", real)
    fleet.message("d", "status", b'{"type":"status","state":"online"}')
    fleet.message("d", "hello", real.replace(b'["cat","dog"]', b'["dog","cat"]'))  # the retained-hello attack
    fleet.message("d", "hello", real.replace(b"a" * 64, b"b" * 64))
    m = fleet.devices["d"]
    assert m.hello.labels == ("cat", "dog") and m.hellos_refused == 2
    assert len(said) == 1 and "refused a hello that changes its labels" in said[0] and "ACL" in said[0]
    assert "hellos refused" in render(m) and fleet.summary()["devices"]["d"]["hellos_refused"] == 2
    fleet.message("d", "status", b'{"type":"status","state":"offline"}')  # the session ended: a redeploy
    fleet.message("d", "hello", real.replace(b'["cat","dog"]', b'["cat","dog","bird"]'))
    assert m.hello.labels == ("cat", "dog", "bird")


def test_the_terminal_shows_a_strangers_text_escaped():
    m = Monitor("jsonl", ["e\x1b[2Jf"])  # as given with --labels: no gate before the view
    m.feed(Encoder("jsonl").encode({"type": "prediction", "seq": 1, "t": 1.0, "label": "c1", "score": 7.5,
                                    "topk": [["c1", 7.5]], "ms": {}}))
    text = render(m)
    assert "\x1b" not in text and "e\\x1b[2Jf" in text
    assert "#" * 31 not in text  # a raw score beyond 1 fills the bar, no more


@pytest.mark.parametrize("args, words", [
    (["--duration", "nan"], "--duration must be a number of seconds above 0"),  # once it never stopped
    (["--duration", "-1"], "--duration must be"),
    (["--baud", "4000000000"], "--baud must be 1 to 4000000"),  # once an OverflowError traceback
    (["--max-messages", "0"], "--max-messages must be 1 or more"),
])
def test_the_monitors_bad_flags_are_one_line(args, words):
    r = subprocess.run([sys.executable, "-m", "monitor", "loop://", *args], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip().startswith("monitor: error: ") and words in r.stderr
    assert "\n" not in r.stderr.strip()


@pytest.mark.parametrize("program, when", [("monitor", 0.3), ("monitor", 2.0), ("device", 0.3)])
def test_sigint_at_any_moment_exits_130(program, when, digits_bundle):
    """(The device in its loop: test_device_faults.py's test_sigint_exits_130_with_status_lines_...)"""
    args = ["loop://", "--quiet"] if program == "monitor" else [
        "--model", str(digits_bundle), "--source", "synthetic", "--port", "null"]
    p = subprocess.Popen([sys.executable, "-m", program, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
    # early: importing numpy and paho (once a KeyboardInterrupt traceback); later: in the loop. (The first
    # tens of milliseconds are Python's own start, before any of our code: not ours to handle.)
    time.sleep(when)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130 and "Traceback" not in err, (p.returncode, err)


def test_the_limits_are_in_the_help():
    r = subprocess.run([sys.executable, "-m", "monitor", "--help"], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    text = " ".join(r.stdout.split())
    assert r.returncode == 0 and f"{MAX_DEVICES} devices per fleet" in text and "256 KiB" in text


def test_invented_hellos_keep_a_real_device_out_only_until_they_go_stale():
    fleet = Fleet()
    hello = b'{"type":"hello","labels":["a","b"],"period":0.1}'
    for i in range(MAX_DEVICES):
        fleet.message(f"fake{i}", "hello", hello)
    real = b'{"type":"prediction","seq":0,"t":1.0,"label":"a","score":0.9,"topk":[["a",0.9]],"ms":{}}'
    fleet.message("real", "prediction", real)
    assert "real" not in fleet.devices and fleet.overflow == 1  # the fakes are fresh
    for m in fleet.devices.values():
        m._heard -= STALE_MIN_S + 1  # silent since
    fleet.message("another-fake", "hello", hello)  # a hello does not evict
    fleet.message("real", "prediction", real)  # a device that classifies does
    assert "real" in fleet.devices and "another-fake" not in fleet.devices
    assert len(fleet.devices) == MAX_DEVICES and fleet.evicted == 1 and fleet.devices["real"].predictions == 1
