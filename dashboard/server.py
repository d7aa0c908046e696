"""A live classification dashboard over HTTP, fed by a monitor's Fleet: no CDN, no internet, stdlib only.

``GET /`` the page (dashboard/web/: HTML, CSS and JavaScript that ship in the package), ``GET /state``
the fleet as JSON, ``GET /thumbnail/DEVICE.jpg`` a device's latest frame when it sends one,
``GET /events`` the same as server-sent events, pushed four times a second.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from . import DashboardError

PUSH_S = 0.25  # how often a stream sends the fleet
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}


def parse_address(text: str, flag: str = "--http") -> tuple[str, int]:
    """(host, port) of a HOST:PORT the dashboard listens on; ``flag`` names the option in the error."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise DashboardError(f"{flag} {text!r}: give HOST:PORT, e.g. 127.0.0.1:8080 (0.0.0.0:8080 for every "
                             "interface)")
    return host.strip("[]"), int(port)


def _static(name: str) -> bytes:
    return resources.files("dashboard").joinpath("web", name).read_bytes()


def state_json(fleet) -> bytes:
    """``GET /state``: the fleet as JSON. Every number in it passed the protocol's gate (finite, in
    range), so no NaN can reach the page's JSON.parse; ``allow_nan=False`` makes that a fault, not a page
    that stops updating."""
    return json.dumps(fleet.snapshot(), separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


class Dashboard:
    """The HTTP server in a thread of its own; ``close`` ends the streams and the server."""

    def __init__(self, fleet, address: str):
        host, port = parse_address(address)
        self.fleet = fleet
        self.closing = threading.Event()
        self.pages = {path: (_static(name), kind) for path, (name, kind) in STATIC.items()}
        handler = type("Handler", (_Handler,), {"board": self})
        try:
            self.server = ThreadingHTTPServer((host, port), handler)
        except OSError as e:
            raise DashboardError(f"cannot serve the dashboard on {address} ({e.strerror}): choose another --http "
                              "address or port") from None
        self.server.daemon_threads = True
        self.address = f"{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="dashboard", daemon=True)
        self._thread.start()

    def state_json(self) -> bytes:
        return state_json(self.fleet)

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    board: Dashboard
    server_version = "tinysense-dashboard"

    def log_message(self, fmt, *args):  # no access log on stderr
        pass

    def _send(self, body: bytes, kind: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # http.server's name for it
        path = self.path.split("?", 1)[0]
        if path in self.board.pages:
            self._send(*self.board.pages[path])
        elif path == "/state":
            self._send(self.board.state_json(), "application/json")
        elif path == "/events":
            self._events()
        elif path.startswith("/thumbnail/") and path.endswith(".jpg"):
            from urllib.parse import unquote

            with self.board.fleet.lock:
                jpeg = self.board.fleet.thumbnails.get(unquote(path[len("/thumbnail/"):-4]))
            if jpeg is None:
                self._send(b"no thumbnail\n", "text/plain", 404)
            else:
                self._send(jpeg, "image/jpeg")
        else:
            self._send(b"not found\n", "text/plain", 404)

    def _events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        try:
            while not self.board.closing.is_set():
                self.wfile.write(b"data: " + self.board.state_json() + b"\n\n")
                self.wfile.flush()
                self.board.closing.wait(PUSH_S)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away
