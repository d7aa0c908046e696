"""What a receiver knows of its devices: one Monitor per stream (counts, gaps, duplicates, accuracy,
latency per stage) and the Fleet of them, fed with decoded messages from any thread.

Shared by the host's monitor and by the dashboard the device serves itself. Every record comes
through the protocol's gate first, and what is kept per device is bounded (fixed-size rings), so
neither a flood nor a stranger's payload grows it: at most MAX_DEVICES cards, a device that only
ever sent what is not ours never becomes one.
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

from contract.protocol import (MAX_LABELS, MAX_MESSAGE, Decoder, Hello, Prediction, ProtocolError, Skip, Status,
                               looks_like_jpeg)

RECENT = 24  # predictions kept for the dashboard's strip
MINUTE = 60  # seconds of per-second means (top score, latency) for the card's plot
LATENCY_WINDOW = 4096  # whole-frame latencies kept for p50/p99: the latest ones
STAGE_WINDOW = 1024  # per-stage latencies kept for p50/p99
MAX_STAGES = 8  # stage names followed per device (the device sends four)
SEEN = 2048  # recent seqs remembered (4 x the device's in-flight window), so a QoS 1 resend is not a restart
SHOWN_TOPK = 10  # top-k entries of the latest prediction in the dashboard's state
MAX_DEVICES = 256  # cards in a fleet; messages from further devices are counted (``overflow``), no card
MAX_DEVICE_BYTES = 64  # of a device id (its MQTT topic level)
STALE_PERIODS, STALE_MIN_S = 10, 5.0  # silent for this many periods (at least this long): stale, not online
STALE_MAX_S = 600.0  # ... and at most this long, whatever period a hello claims (a device's status comes sooner)
KINDS = ("hello", "prediction", "status")  # the JSON topics of a device; PREFIX/ID/thumbnail carries a JPEG


class Ring:
    """The latest ``size`` numbers, in a fixed array (float32): memory does not grow with the stream."""

    def __init__(self, size: int):
        self._data = np.zeros(size, np.float32)
        self._n = 0

    def append(self, value: float) -> None:
        self._data[self._n % len(self._data)] = value
        self._n += 1

    def values(self) -> np.ndarray:
        return self._data[:min(self._n, len(self._data))]

    def __len__(self) -> int:
        return min(self._n, len(self._data))


def _percentiles(ring: Ring) -> dict:
    v = ring.values() if len(ring) else np.zeros(1, np.float32)
    return {"p50": round(float(np.percentile(v, 50)), 4), "p99": round(float(np.percentile(v, 99)), 4)}


class Monitor:
    """State built from decoded messages; feed it bytes in any chunking."""

    def __init__(self, fmt: str, labels=(), require_crc: bool = True):
        self.decoder = Decoder(fmt, labels, require_crc)
        self.last: Prediction | None = None
        self.status: Status | None = None  # the latest with counters
        self.period = 0.0
        self.predictions = 0
        self.skips = 0
        self.gaps = 0  # messages lost on the way: holes in seq
        self.restarts = 0  # seq went backwards: the device restarted
        self.labelled = 0
        self.correct = 0
        self.counts: dict[str, int] = {}
        self.latency = Ring(LATENCY_WINDOW)
        self.stage_ms: dict[str, Ring] = {}
        self.recent: list[dict] = []
        self.minute: collections.deque = collections.deque(maxlen=MINUTE)  # [second, score sum, ms sum, n]
        self.duplicates = 0  # a message delivered twice (QoS 1 after a reconnect)
        self.hello: Hello | None = None
        self.hellos_refused = 0  # a hello changing labels or model while the device is live
        self.online: bool | None = None  # from an MQTT status topic
        self.last_seen: float | None = None  # wall clock, for the page
        self._heard: float | None = None  # monotonic, for staleness
        self._next_seq: int | None = None
        self._seen_seq = np.zeros(SEEN, np.uint64)
        self._seen_t = np.zeros(SEEN, np.float64)  # a resend carries the same t, a restart a later one
        self._seen_n = 0

    @property
    def errors(self) -> int:
        return self.decoder.errors

    def feed(self, data: bytes) -> list:
        """The records decoded from ``data`` (in any chunking), each taken into the state."""
        return [m for m in self.decoder.feed(data) if self.take(m)]

    def stale(self, now: float | None = None) -> bool:
        """Silent for STALE_PERIODS periods (at least STALE_MIN_S, at most STALE_MAX_S seconds) after being heard."""
        if self._heard is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self._heard > min(max(STALE_MIN_S, STALE_PERIODS * self.period), STALE_MAX_S)

    def live(self) -> bool:
        """Heard lately and not said offline: a hello that changes the labels now is not the device's."""
        return self.hello is not None and self.online is not False and not self.stale()

    def take(self, m) -> bool:
        """One record (through the gate already) into the state; False when it is a duplicate."""
        self.last_seen, self._heard = time.time(), time.monotonic()
        if isinstance(m, Hello):
            self.period = m.period
            self.hello = m
        elif isinstance(m, Status):
            if m.state is not None:
                self.online = m.state == "online"
            if m.frames is not None:
                self.status = m
        elif isinstance(m, Skip):
            if self._duplicate(m.seq, m.t):
                return False
            self._sequence(m.seq)
            self.skips += 1
        elif isinstance(m, Prediction):
            if self._duplicate(m.seq, m.t):
                return False
            self._sequence(m.seq)
            for stage, v in m.ms.items():
                ring = self.stage_ms.get(stage)
                if ring is None and len(self.stage_ms) < MAX_STAGES:
                    ring = self.stage_ms[stage] = Ring(STAGE_WINDOW)
                if ring is not None:
                    ring.append(v)
            self.recent = [*self.recent[1 - RECENT:], {"seq": m.seq, "label": m.label, "score": m.score}]
            self.last = m
            self.predictions += 1
            if m.label in self.counts or len(self.counts) < MAX_LABELS + 1:  # the labels and "unknown"
                self.counts[m.label] = self.counts.get(m.label, 0) + 1
            total = sum(m.ms.values())
            self.latency.append(total)
            second = int(self._heard)
            if not self.minute or self.minute[-1][0] != second:
                self.minute.append([second, 0.0, 0.0, 0])
            slot = self.minute[-1]
            slot[1] += m.score
            slot[2] += total
            slot[3] += 1
            if m.truth is not None:
                self.labelled += 1
                labels = self.decoder.labels
                truth = labels[m.truth] if 0 <= m.truth < len(labels) else str(m.truth)
                self.correct += int(m.label == truth)  # an "unknown" counts as wrong, as on the device
        return True

    def _duplicate(self, seq: int, t: float) -> bool:
        """The same message again (a QoS 1 resend: same seq, same t): counted, and not taken twice."""
        n = min(self._seen_n, SEEN)
        same = self._seen_seq[:n] == np.uint64(seq)
        if same.any() and (self._seen_t[:n][same] == t).any():
            self.duplicates += 1
            return True
        self._seen_seq[self._seen_n % SEEN], self._seen_t[self._seen_n % SEEN] = seq, t
        self._seen_n += 1
        return False

    def _sequence(self, seq: int) -> None:
        if self._next_seq is not None:
            if seq > self._next_seq:
                self.gaps += seq - self._next_seq
            elif seq < self._next_seq:
                self.restarts += 1
        self._next_seq = seq + 1

    def hint(self) -> str | None:
        """One line when nothing decoded and the bytes look like the other --format."""
        if self.predictions == 0 and self.decoder.other_format:
            other = "binary" if self.decoder.format == "jsonl" else "jsonl"
            return (f"monitor: {self.errors} decode errors and no predictions: the stream looks like "
                    f"--format {other}")
        return None

    def _minute(self) -> list:
        """[seconds ago, mean top score, mean latency ms] for each second of the last minute with predictions."""
        now = int(time.monotonic())
        return [[now - sec, round(score / n, 4), round(ms / n, 4)] for sec, score, ms, n in self.minute
                if now - sec < MINUTE]

    def summary(self) -> dict:
        out = {"predictions": self.predictions, "skips": self.skips, "gaps": self.gaps, "errors": self.errors,
               "restarts": self.restarts, "duplicates": self.duplicates, "latency_ms": _percentiles(self.latency)}
        if self.decoder.refused:
            out["refused"] = dict(sorted(self.decoder.refused.items()))
        if self.hellos_refused:
            out["hellos_refused"] = self.hellos_refused
        if self.labelled:
            out["accuracy"] = round(self.correct / self.labelled, 6)
        if self.status:
            out["device"] = {k: getattr(self.status, k) for k in ("frames", "misses", "drops", "reconnects",
                                                                   "bad_frames")}
        if self.online is not None:
            out["online"] = self.online
        return out

    def state(self) -> dict:
        """Everything the dashboard shows for this device, JSON-ready and bounded in size."""
        stages = {k: _percentiles(v) for k, v in self.stage_ms.items() if len(v)}
        last = self.last
        return {**self.summary(), "label": last and last.label, "score": last and last.score,
                "seq": last and last.seq, "topk": last.topk[:SHOWN_TOPK] if last else [],
                "recent": list(self.recent), "minute": self._minute(), "stages_ms": stages, "period": self.period,
                "labelled": self.labelled, "last_seen": self.last_seen, "stale": self.stale(),
                "model_sha256": self.hello.model_sha256 if self.hello else None}


class Fleet:
    """One Monitor per device, fed from any thread; the dashboard reads snapshots under the same lock.

    A stream (``feed``: a serial line can flip bits) must seal every jsonl line with its CRC; an MQTT
    message (``message``: TCP carries a checksum of its own) has its CRC checked when it has one.
    ``notice(text)`` hears, once per device, what the fleet refused to
    believe (a hello changing labels or model while the device is live).
    """

    def __init__(self, fmt: str = "jsonl", labels=(), notice=lambda text: None):
        self.fmt, self.labels = fmt, list(labels)
        self.devices: dict[str, Monitor] = {}
        self.foreign = 0  # messages on our topics that are not ours (another kind, another program)
        self.overflow = 0  # messages from devices beyond MAX_DEVICES: counted, no card
        self.evicted = 0  # cards that never classified, gone stale, given to a device that classifies
        self.internal = 0  # faults of ours while taking a message (counted; the stream goes on)
        self.thumbnails: dict[str, bytes] = {}  # device -> its latest frame as a JPEG
        self.thumbnail_count: dict[str, int] = {}
        self.lock = threading.RLock()
        self.notice = notice
        self._gate = Decoder("jsonl", require_crc=False)  # an MQTT message of a device without a card yet

    def _new(self, require_crc: bool = False) -> Monitor:
        return Monitor(self.fmt, self.labels, require_crc)

    def monitor(self, device: str) -> Monitor:
        """The device's Monitor, made when it is new (a serial port's one device, the device's own page)."""
        with self.lock:
            if device not in self.devices:
                self.devices[device] = self._new(require_crc=True)
            return self.devices[device]

    def feed(self, device: str, data: bytes) -> None:
        with self.lock:
            self.monitor(device).feed(data)

    def _card(self, device: str, classifies: bool = False) -> Monitor | None:
        """The device's Monitor if it has a card or may get one now; None (counted) when the fleet is full.

        A device that classifies (a prediction or skip) may take the place of a card that never did and
        has gone stale: a flood of invented hellos cannot keep real devices out for longer than that.
        """
        if device in self.devices:
            return self.devices[device]
        if len(self.devices) >= MAX_DEVICES:
            idle = [(d._heard, name) for name, d in self.devices.items() if d.predictions + d.skips == 0 and d.stale()]
            if not classifies or not idle:
                self.overflow += 1
                return None
            gone = min(idle)[1]
            del self.devices[gone]
            self.thumbnails.pop(gone, None)
            self.thumbnail_count.pop(gone, None)
            self.evicted += 1
        m = self.devices[device] = self._new()
        return m

    def thumbnail(self, device: str, jpeg: bytes) -> None:
        """The device's latest frame as a JPEG; anything that is not one is not ours."""
        with self.lock:
            if not looks_like_jpeg(jpeg) or not _device_id(device):
                self.foreign += 1
                return
            m = self._card(device)
            if m is None:
                return
            m.last_seen, m._heard = time.time(), time.monotonic()  # heard, so it can go stale like any card
            self.thumbnails[device] = jpeg
            self.thumbnail_count[device] = self.thumbnail_count.get(device, 0) + 1

    def message(self, device: str, kind: str, payload: bytes) -> None:
        """One MQTT message: a JSON record on PREFIX/DEVICE/KIND, or a JPEG on PREFIX/DEVICE/thumbnail.

        Never raises: it runs in paho's network thread, which an exception would end.
        """
        try:
            if kind == "thumbnail":
                self.thumbnail(device, payload)
            else:
                with self.lock:
                    self._message(device, kind, payload)
        except Exception:  # noqa: BLE001 - a fault of ours must not blind the monitor; it is counted
            with self.lock:
                self.internal += 1

    def _message(self, device: str, kind: str, payload: bytes) -> None:
        if kind not in KINDS or not _device_id(device) or len(payload) > MAX_MESSAGE \
                or b"\n" in payload.rstrip(b"\n"):
            self.foreign += 1
            return
        m = self.devices.get(device)  # a card (and its state) only once something of ours arrived
        try:
            rec = (m.decoder if m is not None else self._gate).decode(payload.rstrip(b"\n"))
        except ProtocolError as e:
            self.foreign += 1
            if m is not None:
                m.decoder.count(e.kind)
            return
        if rec.type not in (kind, "skip"):
            self.foreign += 1
            return
        if isinstance(rec, Hello) and m is not None and m.live() and \
                (rec.labels, rec.model_sha256) != (m.hello.labels, m.hello.model_sha256):
            m.hellos_refused += 1
            if m.hellos_refused == 1:
                self.notice(f"monitor: {device}: refused a hello that changes its labels or model while the "
                            "device is live; someone else may be publishing under its topic (set up the broker's "
                            "ACL, see the README)")
            return
        if m is None:
            m = self._card(device, classifies=rec.type in ("prediction", "skip"))
            if m is None:
                return
        if rec.type == "hello":
            m.decoder.labels = list(rec.labels)
        m.take(rec)

    def count(self) -> int:
        with self.lock:
            return sum(m.predictions + m.skips for m in self.devices.values())

    def snapshot(self) -> dict:
        with self.lock:
            return {"t": time.time(), "foreign": self.foreign, "overflow": self.overflow, "evicted": self.evicted,
                    "internal": self.internal,
                    "devices": {name: {**m.state(), "thumbnail": self.thumbnail_count.get(name, 0)}
                                for name, m in sorted(self.devices.items())}}

    def summary(self) -> dict:
        with self.lock:
            out = {"devices": {name: m.summary() for name, m in sorted(self.devices.items())},
                   "foreign": self.foreign}
            for key in ("overflow", "evicted", "internal"):
                if getattr(self, key):
                    out[key] = getattr(self, key)
            return out


def _device_id(name: str) -> bool:
    """A device id a card can carry: printable, at most MAX_DEVICE_BYTES bytes of UTF-8."""
    try:
        return 0 < len(name.encode()) <= MAX_DEVICE_BYTES and name.isprintable()
    except UnicodeEncodeError:
        return False
