"""A live classification dashboard over HTTP, fed by a monitor's Fleet: no CDN, no internet, stdlib only.

``GET /`` the page (dashboard/web/: HTML, CSS and JavaScript that ship in the package), ``GET /state``
the fleet as JSON, ``GET /thumbnail/DEVICE.jpg`` a device's latest frame when it sends one,
``GET /events`` the same as server-sent events, pushed four times a second.

With a recorder (``python -m device record --dashboard``) it serves the record view instead:
``GET /`` the page, ``GET /record/state`` the recorder's JSON, ``GET /record/frame.jpg`` the
camera's latest frame, ``POST /record/start`` (``{"label": ..., "count": N or null}``) and ``POST
/record/stop``. A POST must be JSON (``Content-Type: application/json``, which an HTML form on
another site cannot send without a preflight we never answer) and, when the browser says where it
comes from, from this page's own origin.

Safe to put on a network: loopback needs nothing, any other address needs a token (a file of mode
0600, as the MQTT credentials are) that every request carries (``Authorization: Bearer TOKEN``, or
``?token=TOKEN`` once, which sets a cookie for the page's own requests); TLS with a certificate
file. At most MAX_CLIENTS connections are served at once, the rest get 503 without a thread; the
state is encoded once per push for every stream; a client that sends no request, or cannot take a
push, within its timeout is dropped.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket
import ssl
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

from contract import TinysenseError

from . import DashboardError

PUSH_S = 0.25  # how often a stream sends the fleet
MAX_CLIENTS = 32  # connections served at once; more get 503 at once, without a thread of their own
MAX_PER_CLIENT = 16  # of them from one address, so one client cannot take every slot
REQUEST_TIMEOUT_S = 10.0  # a client that has not sent its request by then is dropped
PUSH_TIMEOUT_S = 5.0  # a stream whose client cannot take a push (its buffers full) for this long is dropped
STREAM_SNDBUF = 64 * 1024  # bytes a stalled stream can hold on our side before a push blocks
MIN_TOKEN = 16  # characters
COOKIE = "tinysense_token"
MAX_POST = 4096  # bytes of a POST's body
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8"),
          "/record": ("record.html", "text/html; charset=utf-8"),
          "/record.js": ("record.js", "text/javascript; charset=utf-8")}


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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path, flag: str) -> str:
    """The token on the first line of a file only its owner can read."""
    try:
        mode, lines = path.stat().st_mode, path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DashboardError(f"cannot read the token file {path} ({getattr(e, 'strerror', None) or e}): give "
                             f"{flag} a file whose first line is the token") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DashboardError(f"the token file {path} can be read by others: chmod 600 {path}")
    token = lines[0].strip() if lines else ""
    if not re.fullmatch(r"[A-Za-z0-9._~+/=-]*", token):
        raise DashboardError(f"the token in {path} has characters a cookie cannot carry: use letters, digits and "
                             "-._~+/=")
    if len(token) < MIN_TOKEN:
        raise DashboardError(f"the token in {path} is shorter than {MIN_TOKEN} characters: write a longer one, "
                             "e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'")
    return token


def check_access(address: str, token_file, cert, key, flag: str = "--http") -> tuple[str, int]:
    """(host, port) when the address and its protection go together: any address but loopback needs a
    token file, and TLS both a certificate and a key. (The files themselves are read when serving.)"""
    host, port = parse_address(address, flag)
    if token_file is None and not is_loopback(host):
        raise DashboardError(f"{flag} {address} is open to the network: give a token file ({flag}-token FILE, "
                             f"mode 600), or serve on 127.0.0.1")
    if (cert is None) != (key is None):
        raise DashboardError(f"TLS needs both {flag}-cert and {flag}-key")
    return host, port


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``max_clients`` at once; the others are answered 503 and closed here."""

    daemon_threads = True

    def __init__(self, address, handler, max_clients: int, tls: ssl.SSLContext | None):
        self._slots = threading.BoundedSemaphore(max_clients)
        self.tls = tls
        self.turned_away = 0
        self.clients = 0  # connections being served now
        self._count = threading.Lock()
        self._per_client: dict[str, int] = {}
        super().__init__(address, handler)

    def get_request(self):
        sock, addr = super().get_request()
        if self.tls is not None:  # the handshake happens in the connection's own thread, under its timeout
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request, client_address):
        host = client_address[0]
        with self._count:
            crowded = self._per_client.get(host, 0) >= MAX_PER_CLIENT
            if not crowded:
                self._per_client[host] = self._per_client.get(host, 0) + 1
        if crowded or not self._slots.acquire(blocking=False):
            if not crowded:
                with self._count:
                    self._per_client[host] -= 1
            self.turned_away += 1
            if self.tls is None:
                try:
                    request.settimeout(1.0)
                    request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 5\r\n"
                                    b"Connection: close\r\n\r\n")
                except OSError:
                    pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        with self._count:
            self.clients += 1
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count:
                self.clients -= 1
                host = client_address[0]
                self._per_client[host] -= 1
                if not self._per_client[host]:
                    del self._per_client[host]
            self._slots.release()


class Dashboard:
    """The HTTP server in a thread of its own; ``close`` ends the streams and the server.

    ``token_file``: needed for any address but loopback. ``cert``/``key``: serve HTTPS. ``fleet``:
    what the live view shows; ``recorder``: serve the record view instead, driving it (``state()``
    -> dict, ``frame()`` -> JPEG bytes or None, ``start(label, count)``, ``stop()``; a refusal is a
    TinysenseError whose line the page shows).
    """

    def __init__(self, fleet, address: str, token_file: Path | None = None, cert: Path | None = None,
                 key: Path | None = None, max_clients: int = MAX_CLIENTS, flag: str = "--http", recorder=None):
        host, port = check_access(address, token_file, cert, key, flag)
        self.token = read_token(Path(token_file), f"{flag}-token") if token_file is not None else None
        tls = None
        if cert is not None:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                tls.load_cert_chain(str(cert), str(key))
            except (OSError, ssl.SSLError) as e:
                raise DashboardError(f"cannot use the certificate {cert} with the key {key} ({e}): give a PEM "
                                     "certificate and its private key") from None
        self.tls = tls is not None
        self.fleet, self.recorder = fleet, recorder
        self.closing = threading.Event()
        self.pages = {path: (_static(name), kind) for path, (name, kind) in STATIC.items()}
        if fleet is None:  # the record view alone
            self.pages = {"/": self.pages["/record"], **{p: self.pages[p] for p in ("/record.js", "/style.css")}}
        elif recorder is None:
            self.pages = {p: v for p, v in self.pages.items() if not p.startswith("/record")}
        self._encoded: tuple[float, bytes] = (-1e9, b"")
        self._encoding = threading.Lock()
        handler = type("Handler", (_Handler,), {"board": self})
        try:
            self.server = _Server((host, port), handler, max_clients, tls)
        except OSError as e:
            raise DashboardError(f"cannot serve the dashboard on {address} ({e.strerror}): choose another {flag} "
                                 "address or port") from None
        self.address = f"{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="dashboard", daemon=True)
        self._thread.start()

    @property
    def clients(self) -> int:
        """Connections being served now (at most ``max_clients``)."""
        return self.server.clients

    @property
    def turned_away(self) -> int:
        """Connections answered 503: more than ``max_clients`` at once."""
        return self.server.turned_away

    def state_json(self) -> bytes:
        """The fleet as JSON, encoded at most once per PUSH_S for every stream and request together."""
        with self._encoding:
            t, body = self._encoded
            if time.monotonic() - t >= PUSH_S:
                body = state_json(self.fleet)
                self._encoded = (time.monotonic(), body)
            return body

    def allows(self, handler: "_Handler") -> tuple[bool, bool]:
        """(allowed, set the cookie): the token from the Authorization header, the cookie or ?token=."""
        if self.token is None:
            return True, False
        auth = handler.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return True, False
        for part in handler.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self.token.encode()):
                return True, False
        # unquote, not parse_qs: a '+' in a token is itself, not a space
        query = next((unquote(v) for k, _, v in (p.partition("=") for p in urlsplit(handler.path).query.split("&"))
                      if k == "token"), "")
        if query and hmac.compare_digest(query.encode(), self.token.encode()):
            return True, True
        return False, False

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    board: Dashboard
    server_version = "tinysense-dashboard"
    timeout = REQUEST_TIMEOUT_S  # on the socket: a client that sends nothing is dropped
    _cookie = False

    def handle(self):
        # the whole request (and a TLS handshake) within REQUEST_TIMEOUT_S, not only each read: a client
        # that sends a byte now and then cannot keep its slot
        deadline = threading.Timer(REQUEST_TIMEOUT_S, self._cut)
        self._deadline = deadline
        deadline.start()
        try:
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.do_handshake()
            super().handle()
        except (OSError, ssl.SSLError):  # a client gone, stalled past its timeout, or not speaking TLS
            self.close_connection = True
        finally:
            deadline.cancel()

    def _cut(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if self.command != "POST":  # a POST's body is read within the deadline too
            self._deadline.cancel()  # the request is in: a stream may last as long as its client reads
        return ok

    def log_message(self, fmt, *args):  # no access log on stderr
        pass

    def _send(self, body: bytes, kind: str, status: int = 200) -> None:
        self.send_response(status)
        self._headers(kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _headers(self, kind: str) -> None:
        self.send_header("Content-Type", kind)
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self._cookie:
            secure = "; Secure" if self.board.tls else ""
            self.send_header("Set-Cookie", f"{COOKIE}={self.board.token}; HttpOnly; SameSite=Strict; Path=/{secure}")

    def _allowed(self) -> bool:
        allowed, self._cookie = self.board.allows(self)
        if not allowed:
            self._send(b"a token is needed: open /?token=TOKEN once, or send Authorization: Bearer TOKEN\n",
                       "text/plain", 401)
        return allowed

    def _json(self, value, status: int = 200) -> None:
        self._send(json.dumps(value, separators=(",", ":"), allow_nan=False).encode(), "application/json", status)

    def do_GET(self):  # http.server's name for it
        if not self._allowed():
            return
        path = urlsplit(self.path).path
        recorder, fleet = self.board.recorder, self.board.fleet
        if path in self.board.pages:
            self._send(*self.board.pages[path])
        elif recorder is not None and path == "/record/state":
            self._json(recorder.state())
        elif recorder is not None and path == "/record/frame.jpg":
            jpeg = recorder.frame()
            if jpeg is None:
                self._send(b"no frame\n", "text/plain", 404)
            else:
                self._send(jpeg, "image/jpeg")
        elif fleet is None:
            self._send(b"not found\n", "text/plain", 404)
        elif path == "/state":
            self._send(self.board.state_json(), "application/json")
        elif path == "/events":
            self._events()
        elif path.startswith("/thumbnail/") and path.endswith(".jpg"):
            with self.board.fleet.lock:
                jpeg = self.board.fleet.thumbnails.get(unquote(path[len("/thumbnail/"):-4]))
            if jpeg is None:
                self._send(b"no thumbnail\n", "text/plain", 404)
            else:
                self._send(jpeg, "image/jpeg")
        else:
            self._send(b"not found\n", "text/plain", 404)

    def do_POST(self):  # http.server's name for it
        try:
            if not self._allowed():
                return
            path, recorder = urlsplit(self.path).path, self.board.recorder
            if recorder is None or path not in ("/record/start", "/record/stop"):
                self._send(b"not found\n", "text/plain", 404)
                return
            kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            origin = self.headers.get("Origin")
            scheme = "https" if self.board.tls else "http"
            if kind != "application/json" or (origin is not None and origin != f"{scheme}://{self.headers['Host']}"):
                self._json({"error": "send JSON from the record page itself"}, 403)
                return
            length = self.headers.get("Content-Length", "")
            if not length.isdigit() or int(length) > MAX_POST:
                self._json({"error": f"send a JSON body of at most {MAX_POST} bytes with its Content-Length"}, 413)
                return
            try:
                body = json.loads(self.rfile.read(int(length)) or b"{}")
            except (ValueError, UnicodeDecodeError):
                body = None
            self._deadline.cancel()
            if not isinstance(body, dict):
                self._json({"error": "send a JSON object, e.g. {\"label\": \"wave\", \"count\": 10}"}, 400)
                return
            try:
                if path == "/record/start":
                    recorder.start(body.get("label"), body.get("count"))
                else:
                    recorder.stop()
            except TinysenseError as e:
                self._json({"error": str(e)}, 400)
                return
            self._json(recorder.state())
        finally:
            self._deadline.cancel()

    def _events(self) -> None:
        self.send_response(200)
        self._headers("text/event-stream")
        self.end_headers()
        self.connection.settimeout(PUSH_TIMEOUT_S)  # a push that cannot go out in this time: the client stalled
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        try:
            while not self.board.closing.is_set():
                self.wfile.write(b"data: " + self.board.state_json() + b"\n\n")
                self.wfile.flush()
                self.board.closing.wait(PUSH_S)
        except (OSError, ssl.SSLError):
            pass  # the page went away, or stopped reading
        self.close_connection = True
