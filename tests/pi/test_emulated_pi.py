"""deploy.sh against an emulated Raspberry Pi (arm64 under qemu-user), end to end: a real deploy,
predictions read on the host and checked against the test set, a deploy that changes nothing, a
bundle update, remove. Run by 'make pi-test' (CI runs it after 'make test')."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from conftest import ROOT
from contract.protocol import Decoder

pytestmark = [pytest.mark.skipif(not os.environ.get("TINYSENSE_PI_TEST"),
                                 reason="the emulated Pi takes minutes: 'make pi-test' runs it"),
              pytest.mark.timeout(1800)]  # a first run debootstraps the rootfs (about 15 minutes)

DEPLOY = ROOT / "deploy.sh"


class Receiver:
    """A TCP server on 127.0.0.1 that the app reaches as --port socket://; keeps every decoded message."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.5)
        self.url = f"socket://127.0.0.1:{self.sock.getsockname()[1]}"
        self.messages: list[dict] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            dec = Decoder("jsonl")
            conn.settimeout(0.5)
            with conn:
                while not self._stop.is_set():
                    try:
                        data = conn.recv(65536)
                    except socket.timeout:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    self.messages += dec.feed(data)

    def predictions(self, since: int = 0) -> list[dict]:
        return [m for m in self.messages[since:] if m.type == "prediction"]

    def wait_for(self, count: int, seconds: float, since: int = 0) -> list[dict]:
        end = time.monotonic() + seconds
        while time.monotonic() < end and len({m.seq for m in self.predictions(since)}) < count:
            time.sleep(0.5)
        return self.predictions(since)

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def deploy(*args, timeout=1800):
    return subprocess.run([str(DEPLOY), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_deploy_to_an_emulated_pi(digits_bundle, tmp_path):
    from emulated_pi import EmulatedPi, build

    t0 = time.monotonic()
    root = build(log=print)
    pi = EmulatedPi(root, tmp_path / "pi").start()
    print(f"emulated Pi up in {time.monotonic() - t0:.0f} s")
    rx = Receiver()
    testset = np.load(digits_bundle / "testset.npz")
    n = len(testset["y"])
    ssh = ["--ssh-config", pi.ssh_config, "--remote-dir", "/home/pi/tinysense"]
    args = [*ssh, "--model", digits_bundle, "--port", rx.url, "--period", "0.05", "--no-systemd"]
    try:
        r = pi.ssh("uname -m; grep -c processor /proc/cpuinfo; ps -e | wc -l")
        assert r.returncode == 0 and r.stdout.split()[0] == "aarch64", r.stderr
        assert int(r.stdout.split()[2]) < 20  # a pid namespace: ps sees the Pi's processes only

        t1 = time.monotonic()
        r = deploy("pi", pi.host, *args)
        assert r.returncode == 0, r.stdout + r.stderr
        print(f"first deploy (venv, pip install under emulation): {time.monotonic() - t1:.0f} s")
        preds = rx.wait_for(n, 600)
        first = {}
        for m in preds:
            first.setdefault(m.seq, m)
        assert set(range(n)) <= set(first), f"{len(first)} of {n} frames arrived"
        correct = sum(int(first[i].label == str(testset["y"][i])) for i in range(n))
        report = json.loads((digits_bundle / "report.json").read_text())
        built = report["variants"][report["bundle_variant"]]["accuracy"]
        print(f"emulated Pi: {correct} of {n} correct ({correct / n:.4f}); the build measured {built:.4f}")
        assert abs(correct / n - built) <= 1.5 / n  # XNNPACK on the Pi vs the build's reference: at most 1 flip

        again = deploy("pi", pi.host, *args)
        assert again.returncode == 0 and "nothing changed" in again.stderr, again.stderr

        newer = tmp_path / "digits-v2"
        shutil.copytree(digits_bundle, newer)
        np.savez(newer / "testset.npz", x=testset["x"][:50], y=testset["y"][:50], labels=testset["labels"])
        mark = len(rx.messages)
        r = deploy("pi", pi.host, *[newer if a == digits_bundle else a for a in args])
        assert r.returncode == 0, r.stdout + r.stderr
        assert rx.wait_for(10, 300, since=mark) and rx.connections >= 2

        status = deploy("status", pi.host, *ssh)
        assert status.returncode == 0 and "running" in status.stdout
        logs = deploy("logs", pi.host, *ssh)
        assert logs.returncode == 0 and "status: frames" in logs.stdout  # the app's live status lines

        removed = deploy("remove", pi.host, *ssh)
        assert removed.returncode == 0
        r = pi.ssh("ls -A /home/pi; test -e /home/pi/.cache/pip && echo PIP-CACHE || true")
        assert "tinysense" not in r.stdout and "PIP-CACHE" not in r.stdout
    finally:
        deploy("remove", pi.host, *ssh, timeout=120)
        rx.close()
        pi.stop()
    print(f"pi-test: {time.monotonic() - t0:.0f} s in all")
