"""Devices over MQTT to a real Mosquitto broker (Debian's, started here): topics, retained state and the
last will, store-and-forward across a broker restart, TLS with a password, many devices, bad input."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from brokers import Mosquitto
from conftest import ROOT, start_socat, wait_for
from contract import ContractError
from dashboard.fleet import Fleet

paho = pytest.importorskip("paho.mqtt.client")


def device(bundle, *ports, period=0.02, extra=(), **kw):
    """A device process replaying the bundle's test set in a loop."""
    cmd = [sys.executable, "-m", "device", "--model", str(bundle), "--source",
           f"replay:{bundle / 'testset.npz'}?loop=1", "--period", str(period), "--quiet-status", *extra]
    for p in ports:
        cmd += ["--port", p]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def summary(proc) -> dict:
    out, err = proc.communicate(timeout=60)
    lines = [ln for ln in err.splitlines() if ln.startswith('{"summary"')]
    assert proc.returncode == 0 and lines, err[-2000:]
    return json.loads(lines[-1])["summary"]


def wait_for_line(stream, text, timeout):
    """Read a child's text stream until a line holds ``text``; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    seen = []
    while time.monotonic() < end:
        ready, _, _ = select.select([stream], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            break
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return
    pytest.fail(f"no line with {text!r} within {timeout} s: {''.join(seen)[-1000:]}")


class Listener:
    """A Fleet fed by the monitor's own Subscriber."""

    def __init__(self, url, session=None):
        from monitor.subscriber import Subscriber

        self.fleet = Fleet()
        self.sub = Subscriber(url, self.fleet.message, session=session)
        # messages that are not retained reach only a subscription the broker has acknowledged
        assert self.sub.wait_subscribed(10), f"no subscription acknowledgement from {url} within 10 s"

    def device(self, name):
        return self.fleet.devices.get(name)

    def close(self):
        self.sub.close()


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker")
    yield b
    b.stop()


def test_broker_urls_are_parsed_strictly():
    from contract.mqtt import parse

    good = parse("mqtt://127.0.0.1:1884/site/a?device=pi-1&qos=0&queue=50")
    assert (good.host, good.port, good.path, good.options["qos"], good.options["queue"]) == \
        ("127.0.0.1", 1884, "site/a", 0, 50)
    assert parse("mqtts://broker.local/x").port == 8883
    for url, words in [("mqtt://user:secret@host/x", "no user name or password in the URL"),
                       ("mqtt://host", "needs a topic prefix"), ("mqtt://host/x#", "without '#'"),
                       ("mqtt://host:99999/x", "port must be a number"), ("mqtt:///x", "no broker host"),
                       ("mqtt://host/x?qos=3", "qos='3' must be one of 0, 1, 2"),
                       ("mqtt://host/x?device=a/b", "device='a/b' must be"),
                       ("mqtt://host/x?colour=red", "has no option 'colour'"),
                       ("mqtt://host/x?ca=ca.pem", "ca= is for TLS"), ("http://host/x", "use mqtt://")]:
        with pytest.raises(ContractError, match=re.escape(words)):
            parse(url)


def test_a_device_publishes_to_its_topics_and_to_serial_at_once(digits_bundle, broker, tmp_path):
    """Predictions not retained, hello and status retained for a late subscriber; a serial pty fed alongside."""
    socat = start_socat(tmp_path)
    try:
        listen = Listener(f"{broker.url}/plant/+")
        proc = device(digits_bundle, f"{broker.url}/plant?device=cell-7", str(tmp_path / "app"),
                      extra=("--max-frames", "120", "--status-every", "0.5"))
        import serial

        port = serial.serial_for_url(str(tmp_path / "host"), timeout=0.1)
        chunks, done = [], threading.Event()
        reader = threading.Thread(target=lambda: [chunks.append(port.read(65536)) for _ in iter(done.is_set, True)])
        reader.start()  # the pty is read while the device writes: a full pty would make it drop
        stats = summary(proc)
        end = time.monotonic() + 5
        while b"".join(chunks).count(b'"type":"prediction"') < 120 and time.monotonic() < end:
            time.sleep(0.05)
        done.set()
        reader.join(2)
        port.close()
        got = b"".join(chunks)
        assert got.count(b'"type":"prediction"') == 120  # the serial side got every prediction too
        wait_for(lambda: listen.device("cell-7") and listen.device("cell-7").predictions == 120, what="120 over MQTT")
        m = listen.device("cell-7")
        assert m.gaps == 0 and m.errors == 0 and stats["drops"] == 0
        wait_for(lambda: m.online is False, what="offline after a clean exit")
        assert listen.fleet.foreign == 0
        listen.close()
        # a subscriber that comes later still learns the labels and the last state (retained)
        retained = {}
        c = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2)
        c.on_message = lambda c, u, msg: retained.setdefault(msg.topic, (msg.retain, json.loads(msg.payload)))
        c.connect("127.0.0.1", broker.port)
        c.subscribe("plant/#", qos=1)
        c.loop_start()
        wait_for(lambda: len(retained) >= 2, what="the retained topics")
        time.sleep(0.3)
        c.loop_stop()
        assert set(retained) == {"plant/cell-7/hello", "plant/cell-7/status"}  # predictions are not retained
        hello = retained["plant/cell-7/hello"][1]
        assert hello["labels"] == [str(i) for i in range(10)] and len(hello["model_sha256"]) == 64
        assert hello["input"]["dtype"] == "int8"
        assert retained["plant/cell-7/status"][1] == {"type": "status", "state": "offline"}
    finally:
        socat.kill()


def _restart_run(bundle, tmp_path, queue: int, outage_s: float) -> tuple[dict, object]:
    b = Mosquitto(tmp_path / f"broker-{queue}", persistence=True)
    try:
        listen = Listener(f"{b.url}/site/+", session=f"tinysense-test-{queue}")  # durable: kept across the restart
        proc = device(bundle, f"{b.url}/site?device=d1&queue={queue}", period=0.02, extra=("--duration", "7"))
        wait_for(lambda: listen.device("d1") and listen.device("d1").predictions > 30, what="the first predictions")
        b.stop()
        time.sleep(outage_s)
        b.start()
        stats = summary(proc)
        m = listen.device("d1")
        wait_for(lambda: m.predictions + m.gaps >= stats["predictions"], timeout=40, what="the queue delivered")
        time.sleep(0.5)
        listen.close()
        return stats, m
    finally:
        b.stop()


def test_a_broker_restart_loses_nothing_within_the_queue_and_gaps_equal_drops_beyond(digits_bundle, tmp_path):
    stats, m = _restart_run(digits_bundle, tmp_path, queue=1000, outage_s=2.0)
    assert stats["drops"] == 0 and m.gaps == 0 and m.predictions == stats["predictions"]
    assert stats["reconnects"] >= 1
    stats, m = _restart_run(digits_bundle, tmp_path, queue=20, outage_s=2.5)
    assert stats["drops"] > 0  # 2.5 s at 50 Hz is more than 20 messages
    assert m.gaps == stats["drops"]  # exactly the dropped ones are missing
    assert m.predictions + m.gaps == stats["predictions"]


def test_ten_devices_appear_and_a_killed_one_goes_offline_by_its_last_will(digits_bundle, broker, tmp_path):
    from dashboard.server import Dashboard
    import urllib.request

    listen = Listener(f"{broker.url}/fleet/+")
    board = Dashboard(listen.fleet, "127.0.0.1:0")
    procs = [device(digits_bundle, f"{broker.url}/fleet?device=dev{i:02d}", period=0.1, extra=("--duration", "120"))
             for i in range(10)]
    try:
        wait_for(lambda: len(listen.fleet.devices) == 10 and all(m.predictions > 0 and m.online
                                                                   for m in listen.fleet.devices.values()),
                 timeout=90, what="10 devices predicting")
        state = json.loads(urllib.request.urlopen(f"http://{board.address}/state", timeout=5).read())
        assert sorted(state["devices"]) == [f"dev{i:02d}" for i in range(10)]
        procs[3].send_signal(signal.SIGKILL)  # no clean goodbye: the broker sends the will
        wait_for(lambda: listen.device("dev03").online is False, timeout=15, what="dev03 offline")
        assert all(m.online for name, m in listen.fleet.devices.items() if name != "dev03")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        board.close()
        listen.close()


def test_tls_and_a_password_and_what_wrong_credentials_say(digits_bundle, tmp_path):
    b = Mosquitto(tmp_path / "tls", tls=True, users={"pi": "s3cret word"})
    try:
        good = tmp_path / "login"
        good.write_text("pi\ns3cret word\n")
        good.chmod(0o600)
        url = f"{b.url}/secure?device=t1&ca={b.ca}&credentials={good}"
        listen = Listener(f"{b.url}/secure/+?ca={b.ca}&credentials={good}")
        stats = summary(device(digits_bundle, url, extra=("--max-frames", "40")))
        wait_for(lambda: listen.device("t1") and listen.device("t1").predictions == 40, what="40 over TLS")
        assert stats["drops"] == 0
        listen.close()
        bad = tmp_path / "wrong"
        bad.write_text("pi\nnot it\n")
        bad.chmod(0o600)
        r = device(digits_bundle, f"{b.url}/secure?device=t2&ca={b.ca}&credentials={bad}", extra=("--duration", "20"))
        out, err = r.communicate(timeout=30)
        assert r.returncode == 1 and "refused the connection" in err and "Traceback" not in err
        assert "not it" not in err  # the password never reaches a log
        bad.chmod(0o644)
        r = device(digits_bundle, f"{b.url}/secure?device=t3&ca={b.ca}&credentials={bad}", extra=("--max-frames", "1"))
        out, err = r.communicate(timeout=30)
        assert r.returncode == 1 and f"chmod 600 {bad}" in err
        env = {**os.environ, "TINYSENSE_MQTT_USERNAME": "pi", "TINYSENSE_MQTT_PASSWORD": "s3cret word"}
        stats = summary(device(digits_bundle, f"{b.url}/secure?device=t4&ca={b.ca}", extra=("--max-frames", "5"),
                               env=env))
        assert stats["predictions"] == 5 and stats["drops"] == 0
    finally:
        b.stop()


def test_an_unreachable_broker_at_start_and_a_queue_file_that_survives_a_restart(digits_bundle, tmp_path):
    b = Mosquitto(tmp_path / "later")
    b.stop()  # its port, with nothing listening yet
    qfile = tmp_path / "queue.jsonl"
    url = f"{b.url}/late?device=q1&queue_file={qfile}"
    r = device(digits_bundle, url, extra=("--max-frames", "30"))
    out, err = r.communicate(timeout=60)
    assert r.returncode == 0 and "is not reachable" in err and "queueing up to 1000" in err
    assert len(qfile.read_text().splitlines()) == 30  # every prediction kept for later
    b.start()
    try:
        listen = Listener(f"{b.url}/late/+")
        stats = summary(device(digits_bundle, url, extra=("--max-frames", "10")))
        wait_for(lambda: listen.device("q1") and listen.device("q1").predictions == 40, what="30 kept + 10 new")
        assert not qfile.exists() and stats["drops"] == 0
        listen.close()
    finally:
        b.stop()


def test_payloads_that_are_not_ours_are_counted_never_a_crash(broker):
    listen = Listener(f"{broker.url}/mixed/+")
    c = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    for topic, payload in [("mixed/x/prediction", b"\xff\xfe not json"),
                           ("mixed/x/prediction", b'{"type":"prediction"}'),
                           ("mixed/x/temperature", b"21.5"), ("mixed/x/status", b'{"type":"status","state":"maybe"}'),
                           ("mixed/x/prediction",
                            b'{"type":"prediction","seq":0,"t":1,"label":"a","score":NaN,"topk":[]}'),
                           ("mixed/x/prediction", b'{"type":"hello","labels":["a"]}')]:
        c.publish(topic, payload, qos=1).wait_for_publish(5)
    wait_for(lambda: listen.fleet.foreign >= 5, what="the foreign messages counted")
    from dashboard.server import Dashboard
    board = Dashboard(listen.fleet, "127.0.0.1:0")
    import urllib.request
    state = json.loads(urllib.request.urlopen(f"http://{board.address}/state", timeout=5).read())  # NaN -> null
    assert state["foreign"] == listen.fleet.foreign
    board.close()
    c.loop_stop()
    listen.close()


def test_the_monitor_cli_reads_mqtt_per_device(digits_bundle, broker):
    mon = subprocess.Popen([sys.executable, "-m", "monitor", f"{broker.url}/cli/+", "--json", "--duration", "25",
                            "--max-messages", "60"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    wait_for_line(mon.stderr, "monitor: subscribed to cli/+", timeout=20)  # predictions are not retained
    procs = [device(digits_bundle, f"{broker.url}/cli?device={n}", extra=("--max-frames", "30")) for n in ("a", "b")]
    for p in procs:
        summary(p)
    out, err = mon.communicate(timeout=40)
    assert mon.returncode == 0, err
    report = json.loads(out)
    assert sorted(report["devices"]) == ["a", "b"]
    assert all(d["predictions"] == 30 and d["gaps"] == 0 for d in report["devices"].values())
    r = subprocess.run([sys.executable, "-m", "monitor", "mqtt://127.0.0.1/"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 1 and "needs a topic prefix" in r.stderr and "Traceback" not in r.stderr


def test_thumbnails_go_to_mqtt_retained_and_bad_ones_are_not_ours(digits_bundle, broker):
    from PIL import Image
    import io

    from contract.protocol import looks_like_jpeg
    from device.thumbnail import jpeg

    small = jpeg(np.linspace(0, 16, 64, dtype=np.float32).reshape(8, 8, 1))  # a digit's 8x8 frame
    assert looks_like_jpeg(small) and Image.open(io.BytesIO(small)).size == (160, 160)
    assert Image.open(io.BytesIO(jpeg(np.zeros((480, 640, 3), np.uint8)))).size == (160, 120)
    listen = Listener(f"{broker.url}/cam/+")
    stats = summary(device(digits_bundle, f"{broker.url}/cam?device=c1", extra=("--max-frames", "40",
                                                                               "--thumbnail-every", "0.1")))
    wait_for(lambda: "c1" in listen.fleet.thumbnails, what="a thumbnail")
    assert looks_like_jpeg(listen.fleet.thumbnails["c1"]) and stats["predictions"] == 40
    before = listen.fleet.foreign
    c = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    c.publish("cam/c2/thumbnail", b"GIF89a not a jpeg", qos=1).wait_for_publish(5)
    wait_for(lambda: listen.fleet.foreign == before + 1, what="the bad picture counted")
    c.loop_stop()
    listen.close()
    late = Listener(f"{broker.url}/cam/+")  # retained: a dashboard that starts later shows the last frame
    wait_for(lambda: "c1" in late.fleet.thumbnails, what="the retained thumbnail")
    late.close()
    r = device(digits_bundle, "null", extra=("--max-frames", "1", "--thumbnail-every", "1"))
    assert r.wait(60) == 1 and "needs an output that shows pictures" in r.stderr.read()


def test_thumbnails_reach_every_output_that_shows_pictures_with_two_ports_and_a_dashboard(digits_bundle, broker):
    """Two --port and --dashboard once nested FanOut([FanOut(...), DashboardSink]), and the one-level
    thumbnail lookup skipped MQTT: now the sink protocol carries thumbnails at any depth."""
    import urllib.request

    from brokers import free_port
    from device.sinks import FanOut, NullSink

    class Pictures(NullSink):
        shows_pictures = True

        def __init__(self):
            self.got = []

        def thumbnail(self, jpeg):
            self.got.append(jpeg)
    inner, outer = Pictures(), Pictures()
    nested = FanOut([FanOut([NullSink(), inner]), outer])
    nested.thumbnail(b"\xff\xd8 a picture \xff\xd9")
    assert nested.shows_pictures and inner.got == outer.got == [b"\xff\xd8 a picture \xff\xd9"]
    assert not FanOut([NullSink(), FanOut([NullSink()])]).shows_pictures

    listen = Listener(f"{broker.url}/two/+")
    port = free_port()
    proc = device(digits_bundle, "null", f"{broker.url}/two?device=d2",
                  extra=("--duration", "6", "--thumbnail-every", "0.2", "--dashboard", f"127.0.0.1:{port}"))
    try:
        wait_for(lambda: "d2" in listen.fleet.thumbnails, what="the MQTT thumbnail")

        def served() -> bytes | None:
            try:
                names = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=2).read())
                name = next(iter(names["devices"]))
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/thumbnail/{name}.jpg", timeout=2).read()
            except (OSError, StopIteration, ValueError):
                return None
        wait_for(lambda: served() is not None, what="the dashboard's thumbnail")
        from contract.protocol import looks_like_jpeg

        assert looks_like_jpeg(served()) and looks_like_jpeg(listen.fleet.thumbnails["d2"])
    finally:
        summary(proc)
        listen.close()


def test_with_the_acl_a_device_speaks_only_for_itself_and_a_monitor_only_listens(digits_bundle, tmp_path):
    """Per-device logins and an ACL written by python -m monitor.broker, enforced by a real Mosquitto."""
    from monitor.broker import main as broker

    auth = tmp_path / "auth"
    auth.mkdir()
    files = ["--passwd", str(auth / "passwd"), "--acl", str(auth / "acl")]
    for role, name in (("device", "cam-1"), ("device", "cam-2"), ("monitor", "watch"), ("device", "cam-1")):
        assert broker([role, name, "--prefix", "site", "--credentials", str(auth / f"{name}.login"), *files]) == 0
    assert (auth / "passwd").read_text().count("cam-1:$7$101$") == 1  # the second time replaced the first
    assert (auth / "acl").read_text().count("user cam-1\ntopic write site/cam-1/#") == 1
    assert (auth / "cam-1.login").stat().st_mode & 0o777 == 0o600
    b = Mosquitto(tmp_path / "broker", auth=["allow_anonymous false", f"password_file {auth / 'passwd'}",
                                             f"acl_file {auth / 'acl'}"])
    try:
        listen = Listener(f"{b.url}/site/+?credentials={auth / 'watch.login'}")
        summary(device(digits_bundle, f"{b.url}/site?device=cam-1&credentials={auth / 'cam-1.login'}",
                       extra=("--max-frames", "10")))
        wait_for(lambda: listen.device("cam-1") and listen.device("cam-1").predictions == 10, what="cam-1's 10")
        cam1 = listen.device("cam-1")
        wait_for(lambda: cam1.online is False, what="cam-1 offline after its clean exit")
        labels = cam1.hello.labels

        def client(login: str):
            user, password = (auth / f"{login}.login").read_text().splitlines()
            c = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2)
            c.username_pw_set(user, password)
            c.connect("127.0.0.1", b.port)
            c.loop_start()
            wait_for(c.is_connected, what=f"{login}'s login accepted")
            return c
        hello = json.dumps({"type": "hello", "labels": list(reversed(labels)), "period": 0.02}).encode()
        online = b'{"type":"status","state":"online"}'
        for login, topic, payload in [("cam-1", "site/cam-2/hello", hello), ("cam-1", "site/cam-2/status", online),
                                      ("watch", "site/cam-1/hello", hello), ("watch", "site/cam-1/status", online)]:
            c = client(login)
            info = c.publish(topic, payload, qos=1, retain=True)
            # the broker decides at once: it acknowledges and drops it, or it drops the client (Mosquitto 2.0)
            wait_for(lambda c=c, info=info: info.is_published() or not c.is_connected(), what="the broker's answer")
            c.loop_stop()
            c.disconnect()
        liar = client("cam-1")
        marker = {"type": "prediction", "seq": 10, "t": 1.0, "label": labels[3], "score": 0.9,
                  "topk": [[labels[3], 0.9]], "ms": {"invoke": 1.0}}
        liar.publish("site/cam-1/prediction", json.dumps(marker), qos=1).wait_for_publish(5)  # its own: allowed
        wait_for(lambda: cam1.predictions == 11, what="cam-1's own message after the forged ones")
        assert "cam-2" not in listen.fleet.devices  # cam-1's login cannot speak for cam-2
        assert cam1.hello.labels == labels and cam1.online is False  # the monitor's login cannot speak at all
        assert listen.fleet.foreign == 0 and cam1.hellos_refused == 0  # dropped at the broker, never delivered
        liar.loop_stop()
        liar.disconnect()
        listen.close()
    finally:
        b.stop()


def test_a_queue_file_that_cannot_be_written_counts_its_losses_and_one_not_ours_is_never_published(
        digits_bundle, tmp_path):
    import resource

    b = Mosquitto(tmp_path / "later")
    b.stop()  # nothing listening: every prediction stays queued
    qdir = tmp_path / "q"
    qdir.mkdir()
    qfile = qdir / "queue.jsonl"

    def small_files():  # a full disk: writes past 200 bytes fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
    stats = summary(device(digits_bundle, f"{b.url}/late?device=q1&queue_file={qfile}", extra=("--max-frames", "30"),
                           preexec_fn=small_files))
    assert stats["drops"] == 30  # once: 0, and the predictions silently gone
    assert list(qdir.iterdir()) == []  # no queue file half written, no temporary file left
    qfile.write_bytes(b"\x00\xffrandom bytes\n" + b'{"type":"prediction","seq":1}\n')
    b.start()
    try:
        listen = Listener(f"{b.url}/late/+")
        r = device(digits_bundle, f"{b.url}/late?device=q1&queue_file={qfile}", extra=("--max-frames", "5"))
        stats = summary(r)
        wait_for(lambda: listen.device("q1") and listen.device("q1").predictions == 5, what="the 5 new ones")
        assert listen.fleet.foreign == 0 and listen.device("q1").errors == 0  # nothing of the file was published
        assert not qfile.exists() and (qdir / "queue.jsonl.rejected").is_file()
        listen.close()
    finally:
        b.stop()
