"""python -m device record: a simulated sensor on a real pty into a dataset build_model reads."""

import json
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import serial

from conftest import ROOT, start_socat
from sensors import Sensor


def record(*args, timeout=60, **kw):
    return subprocess.run([sys.executable, "-m", "device", "record", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, **kw)


def record_gestures(reader, writer, out, count: int, *extra):
    """``count`` recordings of 25 samples of each gesture into ``out``; the last run's result."""
    for gesture in ("wave", "shake"):
        s = Sensor(writer, gesture=gesture)
        r = record("--source", f"serial-sensor:{reader}", "--label", gesture, "--out", out, "--window", "25",
                   "--count", count, *extra)
        s.close()
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture
def sensor_pty(tmp_path):
    socat = start_socat(tmp_path, "sensor", "reader")
    yield tmp_path / "reader", tmp_path / "sensor"
    socat.kill()


def test_two_labels_recorded_into_one_csv_that_build_model_reads(sensor_pty, tmp_path):
    from build_model import datasets

    reader, writer = sensor_pty
    out = tmp_path / "gestures"
    r = record_gestures(reader, writer, out, 10, "--rate", "50")
    assert "3 axes separated by ',' at" in r.stdout
    spec = r.stdout.strip().splitlines()[-1]
    assert spec == f"--dataset csv:{out / 'recordings.csv'} --channels 3"  # the last line: what trains on it
    rows = (out / "recordings.csv").read_text().splitlines()
    assert rows[0].startswith("label,split,t0_c0") and len(rows) == 21
    assert sum(r.split(",")[1] == "test" for r in rows[1:]) == 4  # every fifth of a label
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"wave": 10, "shake": 10} and len(manifest["sessions"]) == 2
    assert abs(manifest["sessions"][0]["rate_hz"] - 50) < 5
    ds = datasets.load(f"csv:{out / 'recordings.csv'}", channels=3)
    assert ds.labels == ("shake", "wave") and ds.sample_shape == (25, 3) and len(ds.test.y) == 4


@pytest.mark.parametrize("args, words", [
    (["--label", "a,b"], "--label 'a,b': use 1 to 64 letters"),
    (["--label", "../x"], "--label '../x'"),
    (["--label", "ok", "--window", "1"], "--window must be at least 2"),
    (["--label", "ok", "--rate", "nan"], "--rate must be a number"),
    (["--label", "ok", "--source", "serial-sensor:/dev/nope"], "cannot open the sensor port /dev/nope"),
    (["--label", "ok", "--source", "camera"], "source"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, words):
    full = ["--source", "serial-sensor:/dev/null", "--out", tmp_path / "d", "--count", "1", *args]
    r = record(*full)
    assert r.returncode in (1, 2) and words in r.stderr and "\n" not in r.stderr.strip(), r.stderr
    assert not (tmp_path / "d" / "recordings.csv").exists()


def test_a_silent_sensor_is_one_line_not_a_hang(sensor_pty, tmp_path):
    reader, _ = sensor_pty  # nobody writes
    r = record("--source", f"serial-sensor:{reader}", "--label", "wave", "--out", tmp_path / "d", "--count", "3")
    assert r.returncode == 1 and "no line from" in r.stderr and "check the sensor" in r.stderr


def test_a_wrong_rate_is_refused_and_counted_and_the_dataset_stays_as_it_was(sensor_pty, tmp_path):
    reader, writer = sensor_pty
    s = Sensor(writer, rate=50)
    r = record("--source", f"serial-sensor:{reader}", "--label", "wave", "--out", tmp_path / "d", "--window", "20",
               "--rate", "100", "--duration", "3")
    s.close()
    assert r.returncode == 1 and "refused for their rate (check --rate)" in r.stderr
    assert "is not --rate 100" in r.stdout
    assert not (tmp_path / "d" / "recordings.csv").exists() and not (tmp_path / "d" / "manifest.json").exists()


def test_an_unplugged_sensor_leaves_the_dataset_as_it_was(sensor_pty, tmp_path):
    reader, writer = sensor_pty
    out = tmp_path / "d"
    s = Sensor(writer)
    assert record("--source", f"serial-sensor:{reader}", "--label", "wave", "--out", out, "--window", "10",
                  "--count", "3").returncode == 0
    before = (out / "recordings.csv").read_bytes()
    p = subprocess.Popen([sys.executable, "-m", "device", "record", "--source", f"serial-sensor:{reader}", "--label",
                          "wave", "--out", str(out), "--window", "10", "--count", "1000"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    s.close()
    subprocess.run(["pkill", "-f", f"link={writer}"], check=False)  # the cable pulled: socat and its pty gone
    out_text, err = p.communicate(timeout=30)
    assert p.returncode == 1 and "went away" in err and "nothing of this session was kept" in err
    assert (out / "recordings.csv").read_bytes() == before


def test_a_full_disk_leaves_the_dataset_as_it_was(sensor_pty, tmp_path):
    reader, writer = sensor_pty
    out = tmp_path / "d"
    s = Sensor(writer)

    def small_files():  # writes past 3 KB fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
    r = record("--source", f"serial-sensor:{reader}", "--label", "wave", "--out", out, "--window", "25",
               "--count", "10", preexec_fn=small_files)
    s.close()
    assert r.returncode == 1 and "record: error:" in r.stderr and "\n" not in r.stderr.strip()
    assert sorted(p.name for p in out.iterdir()) == []  # no csv, no manifest, no temporary file


def test_ctrl_c_keeps_the_whole_recordings(sensor_pty, tmp_path):
    reader, writer = sensor_pty
    s = Sensor(writer)
    p = subprocess.Popen([sys.executable, "-m", "device", "record", "--source", f"serial-sensor:{reader}", "--label",
                          "wave", "--out", str(tmp_path / "d"), "--window", "25", "--count", "1000"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    s.close()
    rows = (tmp_path / "d" / "recordings.csv").read_text().splitlines()[1:]
    assert p.returncode == 130 and "Traceback" not in err and len(rows) >= 2
    assert all(len(r.split(",")) == 2 + 25 * 3 for r in rows)  # whole recordings only
    assert out.strip().splitlines()[-1].startswith("--dataset csv:")


def test_pictures_into_class_folders(tmp_path):
    from build_model import datasets

    rng = np.random.default_rng(0)
    np.save(tmp_path / "frames.npy", rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8))
    for label in ("red", "blue"):
        r = record("--source", f"replay:{tmp_path / 'frames.npy'}", "--label", label, "--out", tmp_path / "pics",
                   "--count", "4", "--every", "0.01")
        assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == f"--dataset images:{tmp_path / 'pics'}"
    assert len(list((tmp_path / "pics" / "red").glob("*.png"))) == 4
    assert not [p for p in (tmp_path / "pics").iterdir() if p.name.startswith(".record-")]
    assert datasets.load(f"images:{tmp_path / 'pics'}", image_size=8).labels == ("blue", "red")


@pytest.mark.slow
def test_the_whole_loop_record_train_deploy_and_classify_the_same_sensor(sensor_pty, tmp_path):
    """Two gestures recorded from a pty sensor -> build_model -> the device on that sensor -> the monitor."""
    from build_model.cli import main as build

    from dashboard.fleet import Monitor

    reader, writer = sensor_pty
    out = tmp_path / "gestures"
    r = record_gestures(reader, writer, out, 20)
    spec = r.stdout.strip().splitlines()[-1].split()  # --dataset csv:... --channels 3, as printed
    bundle = tmp_path / "bundle"
    assert build([*spec, "--out", str(bundle), "--epochs", "40", "--quiet"]) == 0
    host = start_socat(tmp_path, "app", "host")  # the device's stream to the monitor
    try:
        seen = {}
        for gesture in ("wave", "shake"):
            s = Sensor(writer, gesture=gesture)
            dev = subprocess.Popen([sys.executable, "-m", "device", "--model", str(bundle), "--source",
                                    f"serial-sensor:{reader}", "--port", str(tmp_path / "app"), "--period", "0.1",
                                    "--max-frames", "40", "--quiet-status"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
            m = Monitor("jsonl")
            port = serial.Serial(str(tmp_path / "host"), timeout=0.1)
            end = time.monotonic() + 60
            while m.predictions < 35 and time.monotonic() < end:
                m.feed(port.read(4096))
            dev.communicate(timeout=30)
            port.close()
            s.close()
            seen[gesture] = m.counts.get(gesture, 0) / max(m.predictions, 1)
        accuracy = (seen["wave"] + seen["shake"]) / 2
        assert accuracy > 0.8, seen  # the majority baseline is 0.5
    finally:
        host.kill()


def test_the_record_view_drives_the_same_recorder_behind_the_token_gate(sensor_pty, tmp_path):
    """python -m device record --dashboard: start and stop over HTTP; off loopback only with the token,
    and a POST only as JSON from the page's own origin."""
    from brokers import free_port
    from build_model import datasets
    from conftest import wait_for
    from test_dashboard_access import TOKEN, get, token_file

    reader, writer = sensor_pty
    out = tmp_path / "d"
    base = ["--source", f"serial-sensor:{reader}", "--out", out, "--window", "25"]
    r = record(*base, "--dashboard", "0.0.0.0:0")
    assert r.returncode == 1 and "is open to the network" in r.stderr and "\n" not in r.stderr.strip()
    r = record(*base, "--dashboard", "127.0.0.1:0", "--count", "3")
    assert r.returncode == 2 and "leave out --count" in r.stderr
    assert not out.exists() or not list(out.iterdir())

    s = Sensor(writer)
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "device", "record", *map(str, base), "--dashboard", f"0.0.0.0:{port}",
                          "--dashboard-token", str(token_file(tmp_path))], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def post(path, body, headers=None):
        req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **auth, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as f:
                return f.status, json.loads(f.read())
        except urllib.error.HTTPError as e:
            body = e.read()
            return e.code, json.loads(body) if e.headers.get("Content-Type") == "application/json" else body

    def serving():
        try:
            return get(url + "/record/state", auth)[0] == 200
        except OSError:  # not listening yet: the sensor's format is detected first
            return False

    try:
        wait_for(serving, 30, "the record view")
        for path in ("/", "/record/state", "/record.js"):
            assert get(url + path)[0] == 401, path
        assert post("/record/start", {"label": "wave"}, {"Authorization": "Bearer not-the-token-at-all"})[0] == 401
        assert post("/record/start", {"label": "wave"}, {"Content-Type": "text/plain"})[0] == 403  # a form's post
        assert post("/record/start", {"label": "wave"}, {"Origin": "http://evil.example"})[0] == 403
        status, answer = post("/record/start", {"label": "a,b"})
        assert status == 400 and "use 1 to 64 letters" in answer["error"]
        assert get(url + "/state", auth)[0] == 404  # the record view serves no fleet
        status, state = post("/record/start", {"label": "wave", "count": 5}, {"Origin": f"http://127.0.0.1:{port}"})
        assert status == 200 and state["recording"]["label"] == "wave" and state["format"]["axes"] == 3
        assert post("/record/start", {"label": "shake"})[0] == 400  # one recording at a time
        wait_for(lambda: json.loads(get(url + "/record/state", auth)[2])["counts"].get("wave") == 5, 30, "5 waves")
        s.gesture = "shake"
        assert post("/record/start", {"label": "shake"})[0] == 200  # until stopped
        wait_for(lambda: json.loads(get(url + "/record/state", auth)[2])["recording"]["taken"] >= 5, 30, "5 shakes")
        status, state = post("/record/stop", {})
        assert status == 200 and state["recording"] is None and state["counts"]["shake"] >= 5
        assert len(state["signal"]) == 3 and len(state["signal"][0]) > 50  # the live signal, each axis
    finally:
        p.terminate()
        stdout, stderr = p.communicate(timeout=30)
        s.close()
    assert p.returncode == 130 and "Traceback" not in stderr, stderr
    assert stdout.strip().splitlines()[-1] == f"--dataset csv:{out / 'recordings.csv'} --channels 3"
    ds = datasets.load(f"csv:{out / 'recordings.csv'}", channels=3)
    assert ds.labels == ("shake", "wave") and ds.sample_shape == (25, 3)


def test_the_record_view_shows_the_camera_frame_and_records_pictures(tmp_path):
    from brokers import free_port
    from conftest import wait_for
    from test_dashboard_access import get

    np.save(tmp_path / "frames.npy", np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8))
    port, out = free_port(), tmp_path / "pics"
    p = subprocess.Popen([sys.executable, "-m", "device", "record", "--source", f"replay:{tmp_path / 'frames.npy'}",
                          "--out", str(out), "--every", "0.05", "--dashboard", f"127.0.0.1:{port}"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"

    def state():
        try:
            return json.loads(get(url + "/record/state")[2])
        except OSError:
            return None

    try:
        wait_for(lambda: (state() or {}).get("frame", 0) > 0, 30, "a frame on the page")
        status, headers, jpeg = get(url + "/record/frame.jpg")
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
        req = urllib.request.Request(url + "/record/start", data=b'{"label": "red", "count": 5}', method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).close()
        wait_for(lambda: state()["counts"].get("red") == 5, 30, "5 pictures")  # the replay of 3 starts over
    finally:
        p.terminate()
        stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == 130 and "Traceback" not in stderr, stderr
    assert len(list((out / "red").glob("*.png"))) == 5 and not list(out.glob(".record-*"))
    assert stdout.strip().splitlines()[-1] == f"--dataset images:{out}"
