"""Where encoded messages go: a serial port (any pyserial URL or path), an MQTT broker, nowhere, or several.

Every output is a ``Sink``: ``send`` (never blocks), ``thumbnail`` (a JPEG of the latest frame,
for the outputs that show pictures), ``flush``, ``check`` (raise when the output has died),
``close``, and ``drops`` / ``reconnects`` counters. ``FanOut`` feeds one stream to several sinks,
so a network sink can be added without touching the loop.

The classification loop never waits on the link. ``send`` appends to a bounded
queue (the oldest message is dropped and counted when it is full); a writer
thread owns the port, writes with a timeout, and when the port vanishes (an
unplugged USB adapter, a closed pty) reopens it with backoff while the loop goes on.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from typing import Callable, Protocol

from contract.protocol import JsonlCodec
from dashboard.fleet import Fleet
from dashboard.server import Dashboard

from . import DeviceError
from .mqtt import MqttSink

QUEUE_MESSAGES = 256
BATCH_BYTES = 4096  # one write() carries up to this much
BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class Sink(Protocol):
    drops: int  # messages given up on (a full queue, a link too slow)
    reconnects: int
    shows_pictures: bool  # whether thumbnail() goes anywhere

    def send(self, data: bytes, record=None) -> None: ...  # the encoded form, and the record it encodes

    def thumbnail(self, jpeg: bytes) -> None: ...  # the latest frame; dropped by outputs without pictures

    def flush(self, timeout: float = 2.0) -> bool: ...

    def check(self) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """Accepts everything and sends nothing (``--port null``): for benchmarks and dry runs.

    Nothing is ever dropped or reconnected, so its counters are honestly zero.
    """

    drops = reconnects = 0
    shows_pictures = False

    def send(self, data: bytes, record=None) -> None:
        pass

    def thumbnail(self, jpeg: bytes) -> None:
        pass

    def check(self) -> None:
        pass

    def flush(self, timeout: float = 0.0) -> bool:
        return True

    def close(self) -> None:
        pass


class SerialSink:
    """A pyserial port fed from a bounded queue by one writer thread.

    ``hello`` (bytes, optional) is written first on every (re)connect so a
    receiver that joins late learns the labels. ``opener`` builds the port; it
    defaults to ``serial.serial_for_url`` and is passed in by tests.
    """

    shows_pictures = False  # a serial line carries the stream only

    def __init__(self, url: str, baudrate: int = 115200, write_timeout: float = 0.5,
                 queue_messages: int = QUEUE_MESSAGES, hello: bytes = b"", opener: Callable | None = None):
        import serial

        self.url = url
        self._serial = serial
        self._open = opener or (lambda: serial.serial_for_url(url, baudrate=baudrate, write_timeout=write_timeout,
                                                              timeout=0))
        self.hello = hello
        self.queue: collections.deque[bytes] = collections.deque()
        self.limit = queue_messages
        self.drops = 0  # messages dropped because the queue was full or a write timed out
        self.reconnects = 0
        self.sent = 0
        self._cond = threading.Condition()
        self._closing = False
        self._writing = 0  # messages taken by the writer and not yet written
        self.failure: BaseException | None = None  # what killed the writer thread, if anything did
        try:
            self.port = self._open()
            self._write(self.hello)
        except (serial.SerialException, OSError, ValueError) as e:
            raise DeviceError(f"cannot open port {url} ({e}): check the path, the cable and the dialout "
                              "group") from None
        self._thread = threading.Thread(target=self._run, name="serial-writer", daemon=True)
        self._thread.start()

    def send(self, data: bytes, record=None) -> None:
        """Queue one message; O(1), never blocks on the link."""
        with self._cond:
            if len(self.queue) >= self.limit:
                self.queue.popleft()
                self.drops += 1
            self.queue.append(data)
            if len(self.queue) == 1:  # the writer may be asleep on an empty queue
                self._cond.notify()

    def thumbnail(self, jpeg: bytes) -> None:
        pass

    def _write(self, data: bytes) -> None:
        if data:
            self.port.write(data)

    def _take_batch(self) -> list[bytes] | None:
        """Everything queued (up to BATCH_BYTES), removed under the lock; None when closing and done."""
        with self._cond:
            while not self.queue and not self._closing:
                self._cond.wait()
            if not self.queue or (self._closing and self.port is None):
                return None
            batch, size = [], 0
            while self.queue and size < BATCH_BYTES:
                batch.append(self.queue.popleft())
                size += len(batch[-1])
            self._writing = len(batch)
            return batch

    def _put_back(self, batch: list[bytes]) -> None:
        """After a failed write: the batch goes back to the front, oldest dropped beyond the limit."""
        with self._cond:
            self.queue.extendleft(reversed(batch))
            while len(self.queue) > self.limit:
                self.queue.popleft()
                self.drops += 1

    def _run(self) -> None:
        """The writer thread; an exception it does not expect is kept in ``failure`` for the loop to raise."""
        try:
            self._write_loop()
        except BaseException as e:  # noqa: BLE001 - recorded, then the loop ends the process
            self.failure = e
            with self._cond:
                self._cond.notify_all()

    def check(self) -> None:
        """Raise DeviceError when the writer thread has died: the app then exits non-zero (systemd restarts it)."""
        if self.failure is not None:
            e = self.failure
            raise DeviceError(f"the serial writer for {self.url} stopped ({type(e).__name__}: {str(e)[:120]}); "
                              "exiting so the service manager restarts the device")

    def _write_loop(self) -> None:
        attempt = 0
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            while self.port is None and not self._closing:
                if self._reopen(attempt):
                    attempt = 0
                else:
                    attempt += 1
            if self.port is None:  # closing with the port gone: what is left cannot be sent
                return
            try:
                self._write(b"".join(batch))
                self.sent += len(batch)
            except self._serial.SerialTimeoutException:
                self.drops += len(batch)  # the link is too slow for these; newer ones may fit
            except (self._serial.SerialException, OSError):
                self._drop_port()
                self._put_back(batch)  # resent after the reconnect
            with self._cond:
                self._writing = 0
                self._cond.notify_all()

    def _drop_port(self) -> None:
        try:
            self.port.close()
        except (self._serial.SerialException, OSError):
            pass
        self.port = None

    def _reopen(self, attempt: int) -> bool:
        with self._cond:
            if self._closing:
                return False
            self._cond.wait(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
        try:
            self.port = self._open()
            self._write(self.hello)
        except (self._serial.SerialException, OSError, ValueError):
            self.port = None
            return False
        self.reconnects += 1
        return True

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait up to ``timeout`` seconds for the queue to drain; True when it did."""
        end = time.monotonic() + timeout
        with self._cond:
            while (self.queue or self._writing) and self.port is not None and self.failure is None:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return not self.queue

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=3)
        if self.port is not None:
            try:
                self.port.flush()
            except (self._serial.SerialException, OSError):
                pass
            self._drop_port()


class FanOut:
    """One stream to several sinks; the counters are their sums, and any dead one ends the run."""

    def __init__(self, sinks: list):
        self.sinks = list(sinks)

    @property
    def drops(self) -> int:
        return sum(s.drops for s in self.sinks)

    @property
    def reconnects(self) -> int:
        return sum(s.reconnects for s in self.sinks)

    @property
    def shows_pictures(self) -> bool:
        return any(s.shows_pictures for s in self.sinks)

    def send(self, data: bytes, record=None) -> None:
        for s in self.sinks:
            s.send(data, record)

    def thumbnail(self, jpeg: bytes) -> None:
        for s in self.sinks:
            s.thumbnail(jpeg)  # at any depth: a FanOut inside a FanOut passes it on

    def flush(self, timeout: float = 2.0) -> bool:
        end = time.monotonic() + timeout
        return all([s.flush(max(0.0, end - time.monotonic())) for s in self.sinks])

    def check(self) -> None:
        for s in self.sinks:
            s.check()

    def close(self) -> None:
        for s in self.sinks:
            s.close()


class DashboardSink:
    """The dashboard served by the device itself (``--dashboard``): its own records, in process.

    A Sink like the others; ``send`` updates the fleet of one under its lock (a few tens of
    microseconds a frame), and the page reads it from the server's threads.
    """

    drops = reconnects = 0
    shows_pictures = True

    def __init__(self, address: str, hello=None, name: str | None = None, **board):
        """``board``: the Dashboard's token_file, cert and key."""
        self.codec = JsonlCodec(())
        self.fleet = Fleet()
        self.name = name or socket.gethostname() or "device"
        self.board = Dashboard(self.fleet, address, flag="--dashboard", **board)
        if hello is not None:
            self.send(b"", hello)

    def send(self, data: bytes, record=None) -> None:
        if record is not None:
            self.fleet.feed(self.name, self.codec.encode(record))

    def thumbnail(self, jpeg: bytes) -> None:
        self.fleet.thumbnail(self.name, jpeg)

    def flush(self, timeout: float = 0.0) -> bool:
        return True

    def check(self) -> None:
        pass

    def close(self) -> None:
        self.board.close()


def open_sink(url: str, hello_record=None, log=lambda *a: None, stream_format: str = "jsonl", **kwargs) -> Sink:
    """``null`` for no output, ``mqtt://`` or ``mqtts://`` for a broker, anything else a pyserial URL or path."""
    if url == "null":
        return NullSink()
    if url.startswith("null"):
        raise DeviceError(f"port {url!r}: null takes no options")
    if url.startswith(("mqtt:", "mqtts:")):
        return MqttSink(url, hello=hello_record, log=log, stream_format=stream_format)
    return SerialSink(url, **kwargs)


def open_sinks(urls: list[str], dashboard: str | None = None, board: dict | None = None, **kwargs) -> Sink:
    """One sink per URL, and the device's own dashboard when an address is given (``board``: its token_file,
    cert and key); several become one FanOut. A failure closes the ones already open."""
    opened = []
    try:
        for url in urls:
            opened.append(open_sink(url, **kwargs))
        if dashboard:
            opened.append(DashboardSink(dashboard, kwargs.get("hello_record"), **(board or {})))
    except BaseException:
        for s in opened:
            s.close()
        raise
    return opened[0] if len(opened) == 1 else FanOut(opened)
