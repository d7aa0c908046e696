"""systemd's notify protocol (sd_notify) without libsystemd: READY, WATCHDOG pings, STOPPING.

Under ``Type=notify`` with ``WatchdogSec=``, systemd sets NOTIFY_SOCKET (a Unix datagram
socket; a leading '@' means the abstract namespace) and WATCHDOG_USEC. The frame loop
pings at most every half of that interval; a loop that hangs stops pinging and systemd
restarts the service. Without those variables every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + addr[1:]) if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        self.interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None  # seconds between pings
        self.sent = 0
        self._last = 0.0
        self._sock = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def _send(self, text: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(text.encode(), self.address)
            self.sent += 1
        except OSError:
            pass  # systemd is gone or restarting us; the watchdog decides, not this process

    def ready(self) -> None:
        self._send("READY=1")

    def ping(self) -> None:
        """A watchdog ping, rate-limited to half the interval (cheap enough for every frame)."""
        if self.interval is None:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
