"""What a receiver knows of its devices: one Monitor per stream (counts, gaps, duplicates, accuracy,
latency per stage) and the Fleet of them, fed with decoded messages from any thread.

Shared by the host's monitor and by the dashboard the device serves itself.
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

from contract.protocol import Decoder, Hello, Prediction, Skip, Status, looks_like_jpeg

RECENT = 24  # predictions kept for the dashboard's strip
STAGE_WINDOW = 2000  # per-stage latencies kept for p50/p99
SEEN = 4096  # recent seqs remembered, so a QoS 1 duplicate is not taken for a restart


class Monitor:
    """State built from decoded messages; feed it bytes in any chunking."""

    def __init__(self, fmt: str, labels=()):
        self.decoder = Decoder(fmt, labels)
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
        self.latency: list[float] = []
        self.stage_ms: dict[str, collections.deque] = {}
        self.recent: collections.deque = collections.deque(maxlen=RECENT)
        self.duplicates = 0  # a message delivered twice (QoS 1 after a reconnect)
        self.hello: Hello | None = None
        self.online: bool | None = None  # from an MQTT status topic
        self.last_seen: float | None = None
        self._next_seq: int | None = None
        self._seen: collections.deque = collections.deque(maxlen=SEEN)
        self._seen_t: dict[int, object] = {}  # seq -> its t: a resend carries the same t, a restart a later one

    @property
    def errors(self) -> int:
        return self.decoder.errors

    def feed(self, data: bytes) -> list:
        """The records decoded from ``data`` (in any chunking), each taken into the state."""
        msgs = self.decoder.feed(data)
        kept = []
        for m in msgs:
            try:
                self._take(m)
                kept.append(m)
            except (TypeError, ValueError, OverflowError):  # a well-framed record with odd values
                self.decoder.errors += 1
        return kept

    def _take(self, m) -> None:
        """One typed record into the state; odd values raise before anything changes."""
        self.last_seen = time.time()
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
                return
            self._sequence(m.seq)
            self.skips += 1
        elif isinstance(m, Prediction):
            latency = sum(m.ms.values())
            if self._duplicate(m.seq, m.t):
                return
            self._sequence(m.seq)
            for stage, v in m.ms.items():
                self.stage_ms.setdefault(stage, collections.deque(maxlen=STAGE_WINDOW)).append(v)
            self.recent.append({"seq": m.seq, "label": m.label, "score": m.score})
            self.last = m
            self.predictions += 1
            self.counts[m.label] = self.counts.get(m.label, 0) + 1
            if len(self.latency) < 100_000:
                self.latency.append(latency)
            if m.truth is not None:
                self.labelled += 1
                labels = self.decoder.labels
                truth = labels[m.truth] if 0 <= m.truth < len(labels) else str(m.truth)
                self.correct += int(m.label == truth)  # an "unknown" counts as wrong, as on the device

    def _duplicate(self, seq: int, t) -> bool:
        """The same message again (a QoS 1 resend: same seq, same t): counted, and not taken twice."""
        if seq in self._seen_t and self._seen_t[seq] == t:
            self.duplicates += 1
            return True
        if len(self._seen) == self._seen.maxlen:
            self._seen_t.pop(self._seen[0], None)
        self._seen.append(seq)
        self._seen_t[seq] = t
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

    def summary(self) -> dict:
        lat = np.asarray(self.latency) if self.latency else np.zeros(1)
        out = {"predictions": self.predictions, "skips": self.skips, "gaps": self.gaps, "errors": self.errors,
               "restarts": self.restarts, "duplicates": self.duplicates,
               "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 4),
                              "p99": round(float(np.percentile(lat, 99)), 4)}}
        if self.labelled:
            out["accuracy"] = round(self.correct / self.labelled, 6)
        if self.status:
            out["device"] = {k: getattr(self.status, k) for k in ("frames", "misses", "drops", "reconnects",
                                                                   "bad_frames")}
        if self.online is not None:
            out["online"] = self.online
        return out

    def state(self) -> dict:
        """Everything the dashboard shows for this device, JSON-ready."""
        stages = {k: {"p50": round(float(np.percentile(v, 50)), 4), "p99": round(float(np.percentile(v, 99)), 4)}
                  for k, v in self.stage_ms.items() if v}
        last = self.last
        return {**self.summary(), "label": last and last.label, "score": last and last.score,
                "seq": last and last.seq, "topk": last.topk if last else [], "labels": self.decoder.labels,
                "recent": list(self.recent), "stages_ms": stages, "period": self.period, "labelled": self.labelled,
                "last_seen": self.last_seen, "model_sha256": self.hello.model_sha256 if self.hello else None}


class Fleet:
    """One Monitor per device, fed from any thread; the dashboard reads snapshots under the same lock."""

    def __init__(self, fmt: str = "jsonl", labels=()):
        self.fmt, self.labels = fmt, list(labels)
        self.devices: dict[str, Monitor] = {}
        self.foreign = 0  # messages on our topics that are not ours (another kind, another program)
        self.thumbnails: dict[str, bytes] = {}  # device -> its latest frame as a JPEG
        self.thumbnail_count: dict[str, int] = {}
        self.lock = threading.RLock()

    def monitor(self, device: str) -> Monitor:
        with self.lock:
            if device not in self.devices:
                self.devices[device] = Monitor(self.fmt, self.labels)
            return self.devices[device]

    def feed(self, device: str, data: bytes) -> None:
        with self.lock:
            self.monitor(device).feed(data)

    def thumbnail(self, device: str, jpeg: bytes) -> None:
        """The device's latest frame as a JPEG; anything that is not one is not ours."""
        with self.lock:
            if not looks_like_jpeg(jpeg):
                self.foreign += 1
                return
            self.monitor(device)
            self.thumbnails[device] = jpeg
            self.thumbnail_count[device] = self.thumbnail_count.get(device, 0) + 1

    def message(self, device: str, kind: str, payload: bytes) -> None:
        """One MQTT message: a JSON record on PREFIX/DEVICE/KIND, or a JPEG on PREFIX/DEVICE/thumbnail."""
        if kind == "thumbnail":
            self.thumbnail(device, payload)
            return
        with self.lock:
            if kind not in ("hello", "prediction", "status") or b"\n" in payload.rstrip(b"\n"):
                self.foreign += 1
                return
            m = self.monitor(device)
            before = m.errors
            kept = m.feed(payload + b"\n")
            if m.errors > before or any(msg.type not in (kind, "skip") for msg in kept):
                self.foreign += 1

    def count(self) -> int:
        with self.lock:
            return sum(m.predictions + m.skips for m in self.devices.values())

    def snapshot(self) -> dict:
        with self.lock:
            return {"t": time.time(), "foreign": self.foreign,
                    "devices": {name: {**m.state(), "thumbnail": self.thumbnail_count.get(name, 0)}
                                for name, m in sorted(self.devices.items())}}

    def summary(self) -> dict:
        with self.lock:
            return {"devices": {name: m.summary() for name, m in sorted(self.devices.items())}, "foreign": self.foreign}
