"""MQTT as tinysense speaks it, for the device and the monitor alike: broker URLs parsed strictly,
the topics, credentials, and a paho client with TLS.

``mqtt://HOST[:PORT]/PREFIX?device=ID&qos=1`` (``mqtts://`` for TLS, port 8883 by default). A
device publishes, one JSON message each (the jsonl form of the records in protocol.py):

- ``PREFIX/ID/prediction`` and skips: not retained, QoS 1 by default;
- ``PREFIX/ID/hello``: retained (labels, model sha256, period), on every connect;
- ``PREFIX/ID/status``: retained, the latest status with ``"state": "online"``; the broker's last
  will (and a clean shutdown) leaves ``{"type": "status", "state": "offline"}`` there;
- ``PREFIX/ID/thumbnail``: retained, a small JPEG of the latest frame (``--thumbnail-every``).

Credentials come from a file (``credentials=FILE``, mode 0600: the user name on the first line,
the password on the second) or from TINYSENSE_MQTT_USERNAME / TINYSENSE_MQTT_PASSWORD, never
from the URL.
"""

from __future__ import annotations

import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from .errors import ContractError
from .specs import one_of, positive_int

SCHEMES = {"mqtt": 1883, "mqtts": 8883}
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
        raise ContractError(f"{what} {url!r}: use {USAGE}")
    if "@" in parts.netloc:
        raise ContractError(f"{what}: no user name or password in the URL (command lines show in ps and in logs): "
                          f"use credentials=FILE (mode 0600) or {ENV_USER}/{ENV_PASSWORD}")
    try:
        port = parts.port or SCHEMES[parts.scheme]
    except ValueError:
        raise ContractError(f"{what} {url!r}: the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise ContractError(f"{what} {url!r} has no broker host: {USAGE}")
    path = parts.path.strip("/")
    if not path or "#" in url or "//" in path:
        raise ContractError(f"{what} {url!r} needs a topic prefix after the host, without '#': {USAGE}")
    found = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        convert = options.get(key)
        if convert is None:
            raise ContractError(f"{what} {parts.scheme} has no option {key!r} (its options: {', '.join(options)})")
        try:
            found[key] = convert(value)
        except ValueError as e:
            raise ContractError(f"{what} {parts.scheme}: {key}={value!r} must be {e}") from None
    if parts.scheme == "mqtt" and "ca" in found:
        raise ContractError(f"{what}: ca= is for TLS: use mqtts://")
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
        raise ContractError(f"cannot read the MQTT credentials file {path} ({e.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ContractError(f"the MQTT credentials file {path} can be read by others: chmod 600 {path}")
    if not lines or not lines[0].strip():
        raise ContractError(f"the MQTT credentials file {path} is empty: the user name on the first line, "
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
            raise ContractError(f"the CA file {ca} does not exist: give the broker's CA certificate (PEM)")
        try:
            client.tls_set(ca_certs=str(ca) if ca else None)
        except (ssl.SSLError, OSError, ValueError) as e:
            raise ContractError(f"cannot use the CA file {ca} ({e}): give a PEM certificate") from None
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
        raise ContractError(f"TLS with the MQTT broker {broker.where} failed ({e.reason or e}): check ca= and the "
                          "broker's certificate") from None
    except OSError as e:
        unreachable(e)
    client.loop_start()


def refused(reason) -> str | None:
    """The broker's words when it refused the connection (a CONNACK failure code), None otherwise."""
    return str(reason) if getattr(reason, "is_failure", False) else None
