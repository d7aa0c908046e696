"""The device's MQTT sink: its records to a broker, the classification loop never waiting on the network.

While the broker is unreachable, predictions wait in a bounded queue (``queue=N``, default
1000): beyond it the oldest is dropped and counted, so a receiver's sequence gaps equal the
drops. Retained topics keep only their latest message. When the broker returns, the queue is
delivered in order. ``queue_file=PATH`` keeps the queue across a restart. URLs, topics and
credentials: contract/mqtt.py.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from pathlib import Path

from contract import atomic
from contract.mqtt import client_for, parse, refused, start
from contract.protocol import Decoder, JsonlCodec, ProtocolError

from . import DeviceError

QUEUE_MESSAGES = 1000
WINDOW = 512  # messages handed to paho and not yet acknowledged
OFFLINE = json.dumps({"type": "status", "state": "offline"})


class MqttSink:
    """A device's records to an MQTT broker; the classification loop never waits on the network.

    ``send(data, record)`` takes the record (the bytes are the serial form, unused here).
    A pump thread hands queued messages to paho, at most WINDOW unacknowledged at a time; paho
    resends those after a reconnect. A broker that refuses the login ends the run (``check``).
    """

    shows_pictures = True

    def __init__(self, url: str, hello=None, log=lambda *a: None, client=None, stream_format: str = "jsonl"):
        self.broker = parse(url)
        opts = self.broker.options
        self.device = opts.get("device") or _topic_part_or_host()
        self.qos = opts.get("qos", 1)
        self.limit = opts.get("queue", QUEUE_MESSAGES)
        self.queue_file: Path | None = opts.get("queue_file")
        self.base = f"{self.broker.path}/{self.device}"
        self.log = log
        self.codec = JsonlCodec(())
        # the serial stream's bytes are this very message when it is jsonl: encoded once, sent twice
        self._same_bytes = stream_format == self.codec.format
        self.drops = 0
        self.reconnects = 0
        self.sent = 0  # acknowledged by the broker
        self.failure: str | None = None
        self._pending: collections.deque = collections.deque()  # (topic, payload) of predictions and skips
        self._retained: dict[str, bytes] = {}  # topic -> latest payload, published before the queue
        self._hello = self._payload(hello) if hello is not None else None
        self._acks: collections.deque = collections.deque()
        self._inflight = 0
        self._connected = False
        self._ever_connected = False
        self._closing = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._said_unreachable = False
        self._load_queue()
        self.client = client or client_for(self.broker, f"tinysense-{self.device}")
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.client.will_set(f"{self.base}/status", OFFLINE, qos=1, retain=True)
        self.client.max_inflight_messages_set(WINDOW)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_connect_fail = self._on_connect_fail
        start(self.client, self.broker, self._unreachable)
        self._thread = threading.Thread(target=self._pump, name="mqtt-pump", daemon=True)
        self._thread.start()

    # --- paho callbacks (the network thread): no lock of ours is taken here ---------------------

    def _on_connect(self, client, userdata, flags, reason, properties=None):
        why = refused(reason)
        if why:
            self.failure = (f"the MQTT broker {self.broker.where} refused the connection ({why}): check the "
                            "user name and password (credentials=FILE or the environment)")
            self._wake.set()
            return
        if self._ever_connected:
            self.reconnects += 1
        if self._said_unreachable:
            self.log(f"mqtt: connected to {self.broker.where}; delivering {len(self._pending)} queued messages")
            self._said_unreachable = False
        self._ever_connected = True
        self._connected = True
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties=None):
        self._connected = False  # paho keeps what is unacknowledged and resends it after the reconnect
        self._wake.set()

    def _on_connect_fail(self, client, userdata):
        self._unreachable(None)

    def _on_publish(self, client, userdata, mid, reason=None, properties=None):
        self._acks.append(mid)
        self._wake.set()

    # --- the queue ---------------------------------------------------------------------------------

    def _payload(self, record) -> bytes:
        return self.codec.encode(record).rstrip(b"\n")

    def _unreachable(self, error) -> None:
        if not self._said_unreachable:
            self._said_unreachable = True
            cause = f" ({error})" if error else ""
            self.log(f"mqtt: the broker {self.broker.where} is not reachable{cause}; queueing up to {self.limit} "
                     "predictions and retrying")

    def send(self, data: bytes, record=None) -> None:
        """Queue one record; O(1), never blocks on the network."""
        if record is None:
            return
        kind = record.type
        if kind == "hello":
            self._hello = self._payload(record)
            return
        with self._lock:
            if kind == "status":
                values = {**record.to_dict(), "state": "online"}
                self._retained[f"{self.base}/status"] = json.dumps(values, separators=(",", ":")).encode()
            else:
                if len(self._pending) >= self.limit:
                    self._pending.popleft()
                    self.drops += 1
                payload = data.rstrip(b"\n") if self._same_bytes and data else self._payload(record)
                self._pending.append((f"{self.base}/prediction", payload))
        self._wake.set()

    def thumbnail(self, jpeg: bytes) -> None:
        """The latest frame as a JPEG on PREFIX/ID/thumbnail, retained; only the newest waits in the queue."""
        with self._lock:
            self._retained[f"{self.base}/thumbnail"] = jpeg
        self._wake.set()

    def _next(self):
        """(topic, payload, retain) to hand to paho next, or None."""
        with self._lock:
            if self._retained:
                topic = next(iter(self._retained))
                return topic, self._retained.pop(topic), True
            if self._pending:
                topic, payload = self._pending.popleft()
                return topic, payload, False
        return None

    def _pump(self) -> None:
        was_connected = False
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            while self._acks:
                self._acks.popleft()
                self._inflight = max(0, self._inflight - 1)
                self.sent += 1
            if self._closing and not self._connected:
                return
            if self.failure:
                return
            if not self._connected:
                was_connected = False
                continue
            if not was_connected:  # a (re)connect: hello and status first, retained for late subscribers
                was_connected = True
                if self._hello is not None:
                    self.client.publish(f"{self.base}/hello", self._hello, qos=1, retain=True)
                    self._inflight += 1
                with self._lock:
                    if f"{self.base}/status" not in self._retained:
                        self._retained[f"{self.base}/status"] = b'{"type":"status","state":"online"}'
            while self._inflight < WINDOW and self._connected:
                item = self._next()
                if item is None:
                    break
                topic, payload, retain = item
                info = self.client.publish(topic, payload, qos=1 if retain else self.qos, retain=retain)
                # NO_CONN: paho keeps a QoS>0 message and sends it after the reconnect
                if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
                    with self._lock:  # back where it came from (a newer retained message wins)
                        if retain:
                            self._retained.setdefault(topic, payload)
                        else:
                            self._pending.appendleft((topic, payload))
                    break
                if retain or self.qos:
                    self._inflight += 1  # acknowledged later, after a reconnect if need be
                else:
                    self.sent += 1

    def check(self) -> None:
        if self.failure:
            raise DeviceError(self.failure)

    def queued(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._retained)

    def flush(self, timeout: float = 2.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.failure or not self._connected:
                return False
            if not self.queued() and self._inflight == 0:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        """Say offline (retained), deliver what the broker can take in a moment, keep the rest on file."""
        if self._connected and not self.failure:
            self.flush(2.0)
            info = self.client.publish(f"{self.base}/status", OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(1.0)
            except (RuntimeError, ValueError):
                pass
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()
        self._wake.set()
        self._thread.join(timeout=3)
        self._save_queue()

    # --- the queue on file --------------------------------------------------------------------------

    def _load_queue(self) -> None:
        if self.queue_file is None or not self.queue_file.is_file():
            return
        try:
            lines = [ln for ln in self.queue_file.read_bytes().splitlines() if ln.strip()]
        except OSError as e:
            raise DeviceError(f"cannot read the MQTT queue file {self.queue_file} ({e.strerror})") from None
        decoder = Decoder("jsonl", require_crc=False)  # sealed when queued (an older version's: unsealed)
        for n, line in enumerate(lines, 1):
            try:
                ours = decoder.decode(line).type in ("prediction", "skip")
            except ProtocolError:
                ours = False
            if not ours:  # never published as is; the service goes on with an empty queue
                rejected = self.queue_file.with_name(self.queue_file.name + ".rejected")
                try:
                    self.queue_file.replace(rejected)
                    where = f"moved to {rejected}"
                except OSError as e:
                    where = f"left where it is ({e.strerror})"
                self.log(f"mqtt: {self.queue_file} is not a queue of this device's (line {n} is not a "
                         f"prediction): {where}, nothing of it published")
                return
        for line in lines[-self.limit:]:
            self._pending.append((f"{self.base}/prediction", line))
        self.queue_file.unlink()

    def _save_queue(self) -> None:
        if self.queue_file is None:
            return
        with self._lock:
            left = [payload for _, payload in self._pending]
        if not left:
            return
        try:
            atomic.write_bytes(self.queue_file, b"\n".join(left) + b"\n")  # a failed write leaves no temp file
        except OSError as e:
            self.drops += len(left)  # lost: the summary counts them
            self.log(f"mqtt: could not keep {len(left)} queued messages in {self.queue_file} ({e.strerror}); "
                     "they are lost (counted as drops)")


def _topic_part_or_host() -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    return name[:128] or "device"
