"""MQTT output and input with paho-mqtt: per-device topics, QoS 1, store-and-forward while the broker is away.

``mqtt://HOST[:PORT]/PREFIX?device=ID&qos=1`` (``mqtts://`` for TLS, port 8883 by default). A
device publishes, one JSON message each (the jsonl form of the records in protocol.py):

- ``PREFIX/ID/prediction`` and skips: not retained, QoS 1 by default;
- ``PREFIX/ID/hello``: retained (labels, model sha256, period), on every connect;
- ``PREFIX/ID/status``: retained, the latest status with ``"state": "online"``; the broker's last
  will (and a clean shutdown) leaves ``{"type": "status", "state": "offline"}`` there;
- ``PREFIX/ID/thumbnail``: retained, a small JPEG of the latest frame (``--thumbnail-every``).

While the broker is unreachable, predictions wait in a bounded queue (``queue=N``, default
1000): beyond it the oldest is dropped and counted, so a receiver's sequence gaps equal the
drops. Retained topics keep only their latest message. When the broker returns, the queue is
delivered in order. ``queue_file=PATH`` keeps the queue across a restart. Credentials come from
a file (``credentials=FILE``, mode 0600: the user name on the first line, the password on the
second) or from TINYSENSE_MQTT_USERNAME / TINYSENSE_MQTT_PASSWORD, never from the URL.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import ssl
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from . import DeviceError
from .protocol import JsonlCodec
from .specs import one_of, positive_int

SCHEMES = {"mqtt": 1883, "mqtts": 8883}
QUEUE_MESSAGES = 1000
WINDOW = 512  # messages handed to paho and not yet acknowledged
OFFLINE = json.dumps({"type": "status", "state": "offline"})
ENV_USER, ENV_PASSWORD = "TINYSENSE_MQTT_USERNAME", "TINYSENSE_MQTT_PASSWORD"
USAGE = "mqtt://HOST[:PORT]/PREFIX?device=ID&qos=1 (or mqtts:// with ca=FILE)"


def _topic_part(text: str) -> str:
    if not text or any(c in text for c in "+#/\x00") or len(text) > 128:
        raise ValueError("a name without / + # (1 to 128 characters)")
    return text


OPTIONS = {"device": _topic_part, "qos": lambda v: int(one_of("0", "1", "2")(v)), "queue": positive_int,
           "queue_file": Path, "ca": Path, "credentials": Path, "keepalive": positive_int}
MONITOR_OPTIONS = {"ca": Path, "credentials": Path, "keepalive": positive_int}


@dataclass(frozen=True)
class Broker:
    """Where and how to connect: parsed once from the URL, strictly."""

    host: str
    port: int
    tls: bool
    path: str  # the topic prefix (device side) or filter (monitor side)
    options: dict

    @property
    def where(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse(url: str, options=None, what: str = "port") -> Broker:
    """A broker URL, refused with one line when anything is off (credentials in it above all)."""
    options = OPTIONS if options is None else options
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise DeviceError(f"{what} {url!r}: use {USAGE}")
    if "@" in parts.netloc:
        raise DeviceError(f"{what}: no user name or password in the URL (command lines show in ps and in logs): "
                          f"use credentials=FILE (mode 0600) or {ENV_USER}/{ENV_PASSWORD}")
    try:
        port = parts.port or SCHEMES[parts.scheme]
    except ValueError:
        raise DeviceError(f"{what} {url!r}: the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise DeviceError(f"{what} {url!r} has no broker host: {USAGE}")
    path = parts.path.strip("/")
    if not path or "#" in url or "//" in path:
        raise DeviceError(f"{what} {url!r} needs a topic prefix after the host, without '#': {USAGE}")
    found = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        convert = options.get(key)
        if convert is None:
            raise DeviceError(f"{what} {parts.scheme} has no option {key!r} (its options: {', '.join(options)})")
        try:
            found[key] = convert(value)
        except ValueError as e:
            raise DeviceError(f"{what} {parts.scheme}: {key}={value!r} must be {e}") from None
    if parts.scheme == "mqtt" and "ca" in found:
        raise DeviceError(f"{what}: ca= is for TLS: use mqtts://")
    return Broker(parts.hostname, port, parts.scheme == "mqtts", path, found)


def credentials(broker: Broker) -> tuple[str, str] | None:
    """(user, password) from credentials=FILE or the environment; None for an anonymous login."""
    path = broker.options.get("credentials")
    if path is None:
        user = os.environ.get(ENV_USER)
        return (user, os.environ.get(ENV_PASSWORD, "")) if user else None
    try:
        mode = path.stat().st_mode
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DeviceError(f"cannot read the MQTT credentials file {path} ({e.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DeviceError(f"the MQTT credentials file {path} can be read by others: chmod 600 {path}")
    if not lines or not lines[0].strip():
        raise DeviceError(f"the MQTT credentials file {path} is empty: the user name on the first line, "
                          "the password on the second")
    return lines[0].strip(), (lines[1] if len(lines) > 1 else "")


def client_for(broker: Broker, client_id: str, clean_session: bool = True):
    """A paho client with TLS and the login set up; nothing connected yet."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv311, clean_session=clean_session)
    login = credentials(broker)
    if login:
        client.username_pw_set(*login)
    if broker.tls:
        ca = broker.options.get("ca")
        if ca is not None and not ca.is_file():
            raise DeviceError(f"the CA file {ca} does not exist: give the broker's CA certificate (PEM)")
        try:
            client.tls_set(ca_certs=str(ca) if ca else None)
        except (ssl.SSLError, OSError, ValueError) as e:
            raise DeviceError(f"cannot use the CA file {ca} ({e}): give a PEM certificate") from None
    client.reconnect_delay_set(1, 30)
    return client


def start(client, broker: Broker, unreachable) -> None:
    """One connection attempt now, then paho's network thread, which retries with backoff (1 to 30 s).

    A TLS failure is a setting to fix and ends the run; anything else (no route, refused, no
    such host yet at boot) is said through ``unreachable`` and retried.
    """
    client.connect_async(broker.host, broker.port, broker.options.get("keepalive", 30))
    try:
        client.reconnect()
    except ssl.SSLError as e:
        raise DeviceError(f"TLS with the MQTT broker {broker.where} failed ({e.reason or e}): check ca= and the "
                          "broker's certificate") from None
    except OSError as e:
        unreachable(e)
    client.loop_start()


def refused(reason) -> str | None:
    """The broker's words when it refused the connection (a CONNACK failure code), None otherwise."""
    return str(reason) if getattr(reason, "is_failure", False) else None


class MqttSink:
    """A device's records to an MQTT broker; the classification loop never waits on the network.

    ``send(data, record)`` takes the record (the bytes are the serial form, unused here).
    A pump thread hands queued messages to paho, at most WINDOW unacknowledged at a time; paho
    resends those after a reconnect. A broker that refuses the login ends the run (``check``).
    """

    def __init__(self, url: str, hello=None, log=lambda *a: None, client=None):
        self.broker = parse(url)
        opts = self.broker.options
        self.device = opts.get("device") or _topic_part_or_host()
        self.qos = opts.get("qos", 1)
        self.limit = opts.get("queue", QUEUE_MESSAGES)
        self.queue_file: Path | None = opts.get("queue_file")
        self.base = f"{self.broker.path}/{self.device}"
        self.log = log
        self.codec = JsonlCodec(())
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
                # the jsonl stream's bytes are this very message: encoded once
                payload = data.rstrip(b"\n") if data[:1] == b"{" else self._payload(record)
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
            lines = self.queue_file.read_bytes().splitlines()
        except OSError as e:
            raise DeviceError(f"cannot read the MQTT queue file {self.queue_file} ({e.strerror})") from None
        for line in lines[-self.limit:]:
            if line.strip():
                self._pending.append((f"{self.base}/prediction", line))
        self.queue_file.unlink()

    def _save_queue(self) -> None:
        if self.queue_file is None:
            return
        with self._lock:
            left = [payload for _, payload in self._pending]
        if not left:
            return
        tmp = self.queue_file.with_name(self.queue_file.name + ".tmp")
        try:
            tmp.write_bytes(b"\n".join(left) + b"\n")
            os.replace(tmp, self.queue_file)
        except OSError as e:
            self.log(f"mqtt: could not keep {len(left)} queued messages in {self.queue_file} ({e.strerror})")


def _topic_part_or_host() -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    return name[:128] or "device"


KINDS = ("hello", "prediction", "status", "thumbnail")


class Subscriber:
    """The monitor's side: every device under a topic filter (``PREFIX/+`` or ``PREFIX/ID``) into ``on_message(device,
    kind, payload)``; a topic or payload that is not ours is the caller's to count.

    ``session`` names a durable subscription (clean_session off): the broker keeps QoS 1
    messages for it while the monitor is away. Without it nothing is left behind on the broker.
    """

    def __init__(self, url: str, on_message, session: str | None = None, log=lambda *a: None):
        self.broker = parse(url, MONITOR_OPTIONS, what="source")
        self.filter = self.broker.path
        self.failure: str | None = None
        self.connected = False
        self.reconnects = 0
        self._ever = False
        self._said = False
        self.log = log
        self._deliver = on_message
        self._subscribed = threading.Event()  # set by the broker's SUBACK, cleared while disconnected
        self.client = client_for(self.broker, session or f"tinysense-monitor-{os.getpid()}",
                                 clean_session=session is None)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_connect_fail = lambda *a: self._unreachable(None)
        start(self.client, self.broker, self._unreachable)

    def _unreachable(self, error) -> None:
        if not self._said:
            self._said = True
            self.log(f"monitor: the broker {self.broker.where} is not reachable{f' ({error})' if error else ''}; "
                     "retrying")

    def _on_connect(self, client, userdata, flags, reason, properties=None):
        why = refused(reason)
        if why:
            self.failure = (f"the MQTT broker {self.broker.where} refused the connection ({why}): check the "
                            "user name and password (credentials=FILE or the environment)")
            return
        self.reconnects += int(self._ever)
        self._ever = self.connected = True
        self._said = False
        client.subscribe(f"{self.filter}/+", qos=1)

    def _on_disconnect(self, *args) -> None:
        self.connected = False
        self._subscribed.clear()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None):
        failed = [str(r) for r in reason_codes if getattr(r, "is_failure", False)]
        if failed:
            self.failure = (f"the MQTT broker {self.broker.where} refused the subscription to {self.filter}/+ "
                            f"({', '.join(failed)}): check the broker's ACL for this user")
            return
        self._subscribed.set()

    def wait_subscribed(self, timeout: float) -> bool:
        """Whether the broker has acknowledged the subscription within ``timeout`` seconds.

        Only from then on does the broker deliver messages that are not retained: a message
        published before it is gone for this subscriber (MQTT keeps no history for a new one).
        """
        return self._subscribed.wait(timeout)

    def _on_message(self, client, userdata, message):
        parts = message.topic.split("/")
        device, kind = (parts[-2], parts[-1]) if len(parts) >= 2 else ("?", "?")
        self._deliver(device, kind, bytes(message.payload))

    def check(self) -> None:
        if self.failure:
            raise DeviceError(self.failure)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
