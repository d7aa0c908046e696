"""The monitor's MQTT side: every device under a topic filter, delivered to a callback."""

from __future__ import annotations

import os
import threading

from contract.mqtt import MONITOR_OPTIONS, client_for, parse, refused, start

from . import MonitorError


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
        self._started = False
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
        self._started = True

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
        try:
            self._deliver(device, kind, bytes(message.payload))
        except Exception as e:  # noqa: BLE001 - paho's thread ends on an exception: the monitor would go blind
            self.failure = f"a message on {message.topic[:80]!r} broke the monitor ({type(e).__name__}: {e}): report it"

    def check(self) -> None:
        """Raise MonitorError for what cannot be recovered: a refusal by the broker, a fault in delivery, or
        paho's network thread gone (nothing would arrive any more)."""
        if self.failure:
            raise MonitorError(self.failure)
        thread = getattr(self.client, "_thread", None)
        if self._started and (thread is None or not thread.is_alive()):
            raise MonitorError("the MQTT network thread has stopped: nothing more would arrive; restart the monitor")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
