"""The dashboard on a network: a token off loopback, TLS, a bounded number of clients, stalled ones dropped."""

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from brokers import make_certs
from conftest import ROOT, wait_for
from dashboard import DashboardError
from dashboard import server as srv
from dashboard.fleet import Fleet
from dashboard.server import Dashboard

TOKEN = "k7Q+this-is-the/token_0123="  # '+', '/' and '=' as base64 writes them


def token_file(tmp_path, text=TOKEN, mode=0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def get(url: str, headers=None, context=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_off_loopback_a_token_is_needed_and_checked(tmp_path):
    with pytest.raises(DashboardError, match="is open to the network: give a token file"):
        Dashboard(Fleet(), "0.0.0.0:0")
    with pytest.raises(DashboardError, match="chmod 600"):
        Dashboard(Fleet(), "0.0.0.0:0", token_file(tmp_path, mode=0o644))
    with pytest.raises(DashboardError, match="shorter than 16"):
        Dashboard(Fleet(), "0.0.0.0:0", token_file(tmp_path, "short"))
    r = subprocess.run([sys.executable, "-m", "monitor", "loop://", "--http", "0.0.0.0:0", "--duration", "1"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1 and "is open to the network" in r.stderr and "\n" not in r.stderr.strip()

    board = Dashboard(Fleet(), "127.0.0.1:0", token_file(tmp_path))  # given, it is asked for on loopback too
    try:
        base = f"http://{board.address}"
        for path in ("/", "/state", "/events", "/thumbnail/x.jpg", "/app.js"):
            assert get(base + path)[0] == 401, path
        assert get(base + "/state", {"Authorization": "Bearer wrong-token-of-the-same-size"})[0] == 401
        assert get(base + "/state?token=nope")[0] == 401
        status, _, body = get(base + "/state", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and "devices" in json.loads(body)
        status, headers, _ = get(base + f"/?token={TOKEN}")  # the link a person opens once
        assert status == 200 and "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert get(base + "/state", {"Cookie": cookie})[0] == 200  # the page's own requests, EventSource too
    finally:
        board.close()
    assert get(f"http://{Dashboard(Fleet(), '127.0.0.1:0').address}/state")[0] == 200  # loopback: no token needed


def test_tls_with_a_certificate_file(tmp_path):
    ca = make_certs(tmp_path / "certs")
    board = Dashboard(Fleet(), "127.0.0.1:0", token_file(tmp_path), cert=tmp_path / "certs" / "server.crt",
                      key=tmp_path / "certs" / "server.key")
    try:
        port = board.address.rsplit(":", 1)[1]
        status, headers, _ = get(f"https://127.0.0.1:{port}/?token={TOKEN}", context=ssl.create_default_context(
            cafile=str(ca)))
        assert status == 200 and "Secure" in headers["Set-Cookie"]
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=5).read()  # no plain HTTP
    finally:
        board.close()
    with pytest.raises(DashboardError, match="needs both"):
        Dashboard(Fleet(), "127.0.0.1:0", cert=tmp_path / "certs" / "server.crt")


def test_clients_are_bounded_and_stalled_ones_dropped(monkeypatch):
    monkeypatch.setattr(srv._Handler, "timeout", 1.0)  # REQUEST_TIMEOUT_S, shortened for the test
    monkeypatch.setattr(srv, "PUSH_TIMEOUT_S", 1.0)
    monkeypatch.setattr(srv, "STREAM_SNDBUF", 4096)
    fleet = Fleet()
    for i in range(200):  # a large state, so a stream that is not read fills its buffers within a few pushes
        fleet.message(f"d{i:03d}", "hello", json.dumps({"type": "hello", "labels": ["x" * 60] * 20}).encode())
        fleet.message(f"d{i:03d}", "prediction", json.dumps(
            {"type": "prediction", "seq": 1, "t": 1.0, "label": "x" * 60, "score": 0.5,
             "topk": [["x" * 60, 0.5]] * 10, "ms": {"invoke": 1.0}}).encode())
    idle_threads = threading.active_count()
    board = Dashboard(fleet, "127.0.0.1:0", max_clients=4)
    host, port = board.address.rsplit(":", 1)
    try:
        silent = [socket.create_connection((host, int(port))) for _ in range(4)]  # connect, never ask
        wait_for(lambda: board.clients == 4, what="4 connections served")
        status, headers, _ = get(f"http://{board.address}/state")
        assert status == 503 and headers["Retry-After"] == "5" and board.turned_away == 1  # no thread for it
        wait_for(lambda: board.clients == 0, what="the silent clients dropped after their timeout")
        assert get(f"http://{board.address}/state")[0] == 200
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((host, int(port)))
        stalled.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read what it pushes
        wait_for(lambda: board.clients == 1, what="the stream served")
        wait_for(lambda: board.clients == 0, what="the stalled stream dropped")
        for s in (*silent, stalled):
            s.close()
        wait_for(lambda: threading.active_count() <= idle_threads + 1, what="threads back to idle (+ the server's)")
    finally:
        board.close()


def test_one_encoding_per_push_for_every_stream(monkeypatch):
    calls = []
    real = srv.state_json
    monkeypatch.setattr(srv, "state_json", lambda fleet: calls.append(1) or real(fleet))
    board = Dashboard(Fleet(), "127.0.0.1:0")
    try:
        for _ in range(50):
            board.state_json()
        assert len(calls) == 1  # fifty readers within one push period: one encoding
        time.sleep(srv.PUSH_S + 0.05)
        board.state_json()
        assert len(calls) == 2
    finally:
        board.close()


def test_one_client_cannot_take_every_slot(monkeypatch):
    monkeypatch.setattr(srv, "MAX_PER_CLIENT", 2)
    board = Dashboard(Fleet(), "127.0.0.1:0", max_clients=8)
    host, port = board.address.rsplit(":", 1)
    try:
        silent = [socket.create_connection((host, int(port))) for _ in range(2)]
        wait_for(lambda: board.clients == 2, what="2 connections served")
        assert get(f"http://{board.address}/state")[0] == 503  # the third from the same address
        for s in silent:
            s.close()
        wait_for(lambda: board.clients == 0, what="the silent ones gone")
        assert get(f"http://{board.address}/state")[0] == 200
    finally:
        board.close()
