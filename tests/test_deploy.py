"""deploy.sh for real: shellcheck, dry runs with hostile values, and a deploy over ssh to an OpenSSH
server started on 127.0.0.1 with throwaway keys, a temporary home standing in for the Pi."""

import getpass
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import serial

from brokers import free_port
from conftest import ROOT, require_tool
from test_device_serial import start_socat

DEPLOY = ROOT / "deploy.sh"
# the sshd stand-in logs in as whoever runs the tests; as root, deploy.sh must be told that is meant
AS_ROOT = ["--allow-root"] if getpass.getuser() == "root" else []


def sh(*args, timeout=300, **kw):
    return subprocess.run([str(DEPLOY), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, **kw)


def test_shellcheck_is_clean():
    shellcheck = require_tool("shellcheck")
    r = subprocess.run([shellcheck, str(DEPLOY)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("host", ["pi@host;touch /tmp/x", "-oProxyCommand=sh@x", "pi@$(id)", "pi host", "nohost"])
def test_hostile_hosts_are_refused(digits_bundle, host):
    r = sh("pi", host, "--model", digits_bundle, "--dry-run")
    assert r.returncode == 1 and "is not USER@HOST" in r.stderr and r.stderr.count("\n") == 1


def test_dry_run_quotes_hostile_values_and_changes_nothing(digits_bundle, tmp_path):
    marker = tmp_path / "pwned"
    hostile = f"replay:a b;touch {marker};$(touch {marker})`touch {marker}`"
    remote = tmp_path / "pi home" / "tinysense"
    r = sh("pi", "pi@127.0.0.1", "--model", digits_bundle, "--source", hostile, "--remote-dir", remote, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "dry run: nothing was changed" in r.stderr
    assert "ssh -o BatchMode=yes" in r.stdout and "bash -s" in r.stdout
    assert "-m device.service unit --dir" in r.stdout  # the Pi writes the unit with the app's own code
    assert not marker.exists() and not remote.parent.exists()
    unit = sh("unit", "--model", digits_bundle, "--source", hostile, "--remote-dir", remote)
    assert unit.returncode == 0 and "$$(touch" in unit.stdout and not marker.exists()  # systemd-escaped


def test_bad_options_are_one_line(digits_bundle, tmp_path):
    for args, words in ((["--format", "xml"], "--format"), (["--period", "fast"], "--period"),
                        (["--model", tmp_path / "none"], "does not exist"), (["--bogus"], "unknown option")):
        base = ["pi", "pi@127.0.0.1", "--model", digits_bundle, "--dry-run"]
        r = sh(*base, *args)
        assert r.returncode == 1 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_systemd_unit_verifies(digits_bundle, tmp_path):
    analyze = require_tool("systemd-analyze")
    pi = tmp_path / "pi"
    (pi / "venv" / "bin").mkdir(parents=True)
    (pi / "current").mkdir()
    os.symlink(sys.executable, pi / "venv" / "bin" / "python")
    r = sh("unit", "--model", digits_bundle, "--remote-dir", pi, "--source", "picamera2", "--format", "binary")
    assert r.returncode == 0
    unit = tmp_path / "tinysense.service"
    unit.write_text(r.stdout)
    for line in ("Restart=on-failure", "SupplementaryGroups=dialout video", "StandardOutput=journal",
                 f"WorkingDirectory={pi}/current", "WantedBy=multi-user.target"):
        assert line in r.stdout
    assert "User=root" not in r.stdout or getpass.getuser() == "root"
    v = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert v.returncode == 0 and "tinysense.service:" not in v.stderr, v.stderr


def test_unit_escapes_the_folder_and_is_hardened(digits_bundle, tmp_path):
    odd = tmp_path / "a%h$HOME dir"
    r = sh("unit", "--model", digits_bundle, "--remote-dir", odd)
    assert r.returncode == 0, r.stderr
    unit = r.stdout
    assert f'ExecStart="{tmp_path}/a%%h$$HOME dir/venv/bin/python"' in unit  # no specifier, no $ expansion
    assert f"WorkingDirectory={tmp_path}/a%%h$HOME dir/current" in unit
    for line in ("Type=notify", "WatchdogSec=30", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                 "ProtectHome=read-only", f'ReadWritePaths="{tmp_path}/a%%h$$HOME dir"'):
        assert line in unit
    assert "@DIR@" not in unit and "@USER@" not in unit
    dry = sh("pi", "pi@127.0.0.1", "--model", digits_bundle, "--remote-dir", odd, "--dry-run")
    assert "-m device.service unit" in dry.stdout  # the target runs the very code that printed the unit above
    assert sh("unit", "--model", digits_bundle, "--remote-dir", "rel/dir").returncode == 1
    assert sh("unit", "--model", digits_bundle, "--remote-dir", "/a\\b").returncode == 1


def test_unit_with_mqtt_serial_and_a_dashboard_keeps_the_secret_out(digits_bundle, tmp_path):
    login = tmp_path / "login"
    login.write_text("pi\nvery secret\n")
    token = tmp_path / "token"
    token.write_text("a-token-nobody-guesses\n")
    token.chmod(0o600)
    short = tmp_path / "short"  # refused here, before the Pi's running service is touched
    short.write_text("abc\n")
    short.chmod(0o600)
    r = sh("unit", "--model", digits_bundle, "--remote-dir", "/srv/ts", "--port", "/dev/serial0", "--port",
           "mqtt://broker.lan/site?device=pi1", "--mqtt-credentials", login, "--dashboard", "0.0.0.0:8080",
           "--dashboard-token", token)
    assert r.returncode == 0, r.stderr
    assert ('"--port" "/dev/serial0" "--port" "mqtt://broker.lan/site?device=pi1&credentials=/srv/ts/mqtt-credentials"'
            ' "--dashboard" "0.0.0.0:8080" "--dashboard-token" "/srv/ts/dashboard-token"') in r.stdout
    assert "very secret" not in r.stdout and "nobody-guesses" not in r.stdout
    assert "After=network-online.target" in r.stdout
    for bad, words in [(["--port", "mqtt://pi:pw@broker/x"], "no user name or password"),
                       (["--mqtt-credentials", login], "needs an MQTT --port"),
                       (["--port", "mqtt://b/x", "--mqtt-credentials", tmp_path / "nope"], "does not exist"),
                       (["--dashboard", "8080"], "HOST:PORT"),
                       (["--dashboard", "0.0.0.0:8080"], "is open to the network: give a token file"),
                       (["--dashboard-token", token], "--dashboard-token needs --dashboard"),
                       (["--dashboard", "0.0.0.0:8080", "--dashboard-token", short], "shorter than 16")]:
        r = sh("unit", "--model", digits_bundle, *bad)
        assert r.returncode == 1 and words in r.stderr, (bad, r.stderr)


def test_firmware_lays_out_an_arduino_sketch(digits_bundle, tmp_path):
    require_tool("arm-none-eabi-g++")
    bundle = tmp_path / "digits"
    shutil.copytree(digits_bundle, bundle)
    r = sh("firmware", bundle, "--board", "nano33ble", "--out", tmp_path / "fw")
    assert r.returncode == 0, r.stderr
    sketch = tmp_path / "fw" / "digits"
    assert (sketch / "digits.ino").is_file() and (sketch / "digits_model_data.cpp").is_file()
    assert json.loads((sketch / "export.json").read_text())["target"] == "nrf52840"
    if not shutil.which("arduino-cli"):
        assert "arduino-cli compile --fqbn arduino:mbed_nano:nano33ble" in r.stderr
    r = sh("firmware", bundle, "--board", "pico", "--out", tmp_path / "pio", "--platformio")
    assert r.returncode == 0 and (tmp_path / "pio" / "platformio.ini").is_file()
    assert (tmp_path / "pio" / "src" / "digits_model_ops.h").is_file()
    assert not (tmp_path / "pio" / "src" / "digits.ino").exists()
    # PlatformIO builds C++ files: setup() and loop() come in a .cpp, defined exactly once
    src = "".join(p.read_text() for p in (tmp_path / "pio" / "src").glob("*.cpp"))
    assert src.count("\nvoid setup() {") == 1 and src.count("\nvoid loop() {") == 1
    # a folder named unlike a C identifier: one name everywhere (arduino-cli wants folder == sketch)
    odd = tmp_path / "My Digits"
    shutil.copytree(digits_bundle, odd)
    r = sh("firmware", odd, "--board", "nano33ble", "--out", tmp_path / "odd")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "odd" / "my_digits" / "my_digits.ino").is_file()
    r = sh("firmware", bundle, "--board", "nano33ble", "--out", tmp_path / "fl", "--flash", "/dev/ttyACM9")
    if not shutil.which("arduino-cli"):
        assert r.returncode == 1 and "nothing was flashed" in r.stderr
    r = sh("firmware", bundle, "--board", "uno", "--out", tmp_path / "x")
    assert r.returncode == 1 and "unknown board" in r.stderr
    r = sh("firmware", bundle, "--board", "esp32s3", "--out", tmp_path / "dry", "--dry-run")
    assert r.returncode == 0 and "firmware_export" in r.stdout and not (tmp_path / "dry").exists()


# ---- the real deploy over ssh ----------------------------------------------------------------

@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An OpenSSH server on 127.0.0.1 for this test module only: throwaway host and user keys."""
    sshd_bin = require_tool("sshd")
    keygen = require_tool("ssh-keygen")
    require_tool("ssh")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nLogLevel ERROR\n"
        f"PidFile {d / 'sshd.pid'}\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory sshd insists on
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    (d / "ssh_config").write_text(
        f"Host 127.0.0.1\n  Port {port}\n  IdentityFile {d / 'user_key'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {d / 'known_hosts'}\n  StrictHostKeyChecking accept-new\n")
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield {"config": d / "ssh_config", "host": f"{getpass.getuser()}@127.0.0.1"}
    proc.terminate()
    proc.wait(5)


def read_predictions(path: Path, seconds: float) -> list[dict]:
    out, buf, end = [], b"", time.monotonic() + seconds
    with serial.Serial(str(path), timeout=0.1) as port:
        while time.monotonic() < end and len(out) < 5:
            buf += port.read(4096)
            *lines, buf = buf.split(b"\n")
            out += [json.loads(ln) for ln in lines if ln.startswith(b"{")]
    return [m for m in out if m.get("type") == "prediction"]


def test_deploy_over_ssh_runs_is_idempotent_updates_and_removes(sshd, digits_bundle, tmp_path):
    from brokers import Mosquitto
    from dashboard.fleet import Fleet
    from monitor.subscriber import Subscriber

    home = tmp_path / "pi-home"
    home.mkdir()
    remote = home / "tinysense"
    socat = start_socat(tmp_path, "serial0", "host")
    broker = Mosquitto(tmp_path / "broker", users={"pi": "field pass"})
    login = tmp_path / "login"
    login.write_text("pi\nfield pass\n")
    login.chmod(0o600)
    board = free_port()
    ssh = ["--ssh-config", sshd["config"], "--remote-dir", remote]
    args = [*ssh, "--model", digits_bundle, "--port", tmp_path / "serial0", "--port", f"{broker.url}/farm?device=pi-a",
            "--mqtt-credentials", login, "--dashboard", f"127.0.0.1:{board}", "--period", "0.1", "--no-systemd",
            "--any-arch", *AS_ROOT]
    fleet = Fleet()
    sub = Subscriber(f"{broker.url}/farm/+?credentials={login}", fleet.message)
    assert sub.wait_subscribed(10), "the broker did not acknowledge the subscription"
    try:
        r = sh("pi", sshd["host"], *args)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (remote / "venv" / "bin" / "python").exists() and (remote / "current" / "model.json").is_file()
        preds = read_predictions(tmp_path / "host", 20)
        assert preds and preds[0]["label"] in [str(i) for i in range(10)]
        pid = (remote / "tinysense.pid").read_text()
        # serial and MQTT at once; the login copied with mode 0600 and never on the command line
        assert stat.S_IMODE((remote / "mqtt-credentials").stat().st_mode) == 0o600
        assert (remote / "mqtt-credentials").read_text() == login.read_text()
        end = time.monotonic() + 20
        while time.monotonic() < end and not (fleet.devices.get("pi-a") and fleet.devices["pi-a"].predictions):
            time.sleep(0.1)
        assert fleet.devices["pi-a"].predictions > 0
        assert "field pass" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        state = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{board}/state", timeout=5).read())
        assert next(iter(state["devices"].values()))["predictions"] > 0  # the dashboard served by the "Pi"

        again = sh("pi", sshd["host"], *args)
        assert again.returncode == 0 and "nothing changed" in again.stderr
        assert (remote / "tinysense.pid").read_text() == pid  # not restarted

        status = sh("status", sshd["host"], *ssh)
        assert status.returncode == 0 and "running" in status.stdout

        newer = tmp_path / "digits-v2"
        shutil.copytree(digits_bundle, newer)
        t = np.load(newer / "testset.npz")
        np.savez(newer / "testset.npz", x=t["x"][:50], y=t["y"][:50])
        old_target = os.readlink(remote / "current")
        r = sh("pi", sshd["host"], *[newer if a == digits_bundle else a for a in args])
        assert r.returncode == 0, r.stderr
        assert os.readlink(remote / "current") != old_target and not (remote / old_target).exists()
        assert (remote / "tinysense.pid").read_text() != pid  # restarted on the new bundle
        assert read_predictions(tmp_path / "host", 20)

        logs = sh("logs", sshd["host"], *ssh)
        assert logs.returncode == 0

        removed = sh("remove", sshd["host"], *ssh)
        assert removed.returncode == 0 and not remote.exists()
        assert sh("status", sshd["host"], *ssh).returncode != 0
    finally:
        sh("remove", sshd["host"], *ssh)
        sub.close()
        broker.stop()
        socat.terminate()


def test_preflight_names_each_problem_with_its_fix(sshd, digits_bundle, tmp_path):
    remote = tmp_path / "home" / "tinysense"
    r = sh("pi", sshd["host"], "--ssh-config", sshd["config"], "--remote-dir", remote, "--model", digits_bundle,
           "--port", tmp_path / "ttyNOPE")
    assert r.returncode == 1
    problems = [ln for ln in r.stdout.splitlines() if ln.startswith("problem:")]
    assert any("serial port" in p and "raspi-config" in p for p in problems)
    if os.uname().machine not in ("aarch64", "armv7l"):
        assert any("architecture" in p and "--any-arch" in p for p in problems)
    if getpass.getuser() == "root":
        assert any("as root" in p and "--allow-root" in p for p in problems)
    assert not remote.exists()


def test_a_hostile_source_cannot_run_commands_on_the_pi(sshd, digits_bundle, tmp_path):
    marker = tmp_path / "pwned"
    remote = tmp_path / "home" / "tinysense"
    r = sh("pi", sshd["host"], "--ssh-config", sshd["config"], "--remote-dir", remote, "--model", digits_bundle,
           "--port", "null", "--no-systemd", "--any-arch", *AS_ROOT, "--source", f"x;touch {marker};$(touch {marker})")
    try:
        assert r.returncode == 1 and "unknown source" in r.stdout + r.stderr  # the app refused it as data
        assert not marker.exists()
    finally:
        sh("remove", sshd["host"], "--ssh-config", sshd["config"], "--remote-dir", remote)
