"""Messages on the wire, apart from the transport that carries them.

Two formats:
- ``jsonl``: one JSON object per line, readable in any terminal program.
- ``binary``: COBS-framed packets ending in 0x00, each ``type byte + body + CRC-32``.
  Predictions and skips are packed structs; hello and status are JSON bodies
  (rare, so compactness does not matter there). A reader resynchronises on the
  next 0x00 after any corruption.

Message kinds (the ``type`` field): ``hello`` (labels, period; sent on every
(re)connect), ``prediction`` (seq, t, label, score, topk, ms, optional truth),
``skip`` (seq and reason of a frame that could not be classified) and ``status``.
``seq`` counts frames in the order they were taken, so a gap at the receiver is a
message lost on the way, never a frame skipped on purpose.

Bounds: ``seq`` is 64-bit in the binary form (it cannot wrap in the life of a device),
``truth`` 32-bit, at most MAX_TOPK top-k entries (``topk_capped`` says when the list
was cut), at most MAX_LABELS labels; a hello or status may be of any size up to
MAX_FRAME. The decoder checks every field's type, so a damaged message is counted
as an error and never reaches its reader.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import ClassVar, Iterable

FORMATS = ("jsonl", "binary")
STAGES = ("capture", "preprocess", "invoke", "postprocess")
UNKNOWN = "unknown"
MAX_FRAME = 1 << 20  # bytes; a longer run without a delimiter is garbage and is dropped
MAX_TOPK = 255
MAX_LABELS = 0xFFFF  # label indices are 16-bit; 0xFFFF means unknown

_PRED = struct.Struct("<QdHfiB")  # seq, t, label index (0xFFFF unknown), score, truth (-1 none), k
_TOPK = struct.Struct("<Hf")
_MS = struct.Struct("<" + "f" * len(STAGES))
_SKIP = struct.Struct("<Qd")
_TYPES = {"prediction": 1, "skip": 2, "hello": 3, "status": 4}
_NAMES = {v: k for k, v in _TYPES.items()}


class ProtocolError(ValueError):
    """A frame or line that cannot be decoded."""


# --- COBS -------------------------------------------------------------------

def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result holds no 0x00 byte."""
    out = bytearray()
    for block in data.split(b"\x00"):
        while len(block) >= 254:
            out.append(0xFF)
            out += block[:254]
            block = block[254:]
        out.append(len(block) + 1)
        out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0 or i + code > n:
            raise ProtocolError("bad COBS code")
        out += data[i + 1:i + code]
        i += code
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


# --- messages ----------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    labels: tuple
    period: float = 0.0
    format: str = ""
    model_sha256: str = ""
    input: dict | None = None  # shape, dtype, layout: what the model takes
    type: ClassVar[str] = "hello"

    def to_dict(self) -> dict:
        d = {"type": "hello", "labels": list(self.labels), "period": self.period, "format": self.format,
             "model_sha256": self.model_sha256}
        if self.input:
            d["input"] = self.input
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Hello":
        return cls(tuple(d["labels"]), _number(d.get("period", 0.0)), str(d.get("format", "")),
                   str(d.get("model_sha256", "")), d["input"] if isinstance(d.get("input"), dict) else None)


@dataclass(frozen=True)
class Prediction:
    seq: int
    t: float  # wall-clock seconds (time.time), for the receiver's log
    label: str
    score: float
    topk: list  # [[label, score], ...], best first
    ms: dict  # per stage, milliseconds
    truth: int | None = None  # the known class of a replayed frame
    topk_capped: bool = False  # the sender cut topk to MAX_TOPK entries
    type: ClassVar[str] = "prediction"

    def to_dict(self) -> dict:
        d = {"type": "prediction", "seq": self.seq, "t": self.t, "label": self.label, "score": self.score,
             "topk": self.topk, "ms": self.ms}
        if self.truth is not None:
            d["truth"] = self.truth
        if self.topk_capped:
            d["topk_capped"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Prediction":
        ms = d.get("ms", {})
        if not isinstance(ms, dict):
            raise ProtocolError("prediction.ms must be an object of stage -> milliseconds")
        return cls(d["seq"], _number(d.get("t", 0.0)), d["label"], _number(d["score"]),
                   [[name, _number(score)] for name, score in d["topk"]],
                   {str(k): _number(v) for k, v in ms.items()}, d.get("truth"), d.get("topk_capped") is True)


@dataclass(frozen=True)
class Skip:
    seq: int
    t: float
    reason: str
    type: ClassVar[str] = "skip"

    def to_dict(self) -> dict:
        return {"type": "skip", "seq": self.seq, "t": self.t, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict) -> "Skip":
        return cls(d["seq"], _number(d.get("t", 0.0)), str(d.get("reason", "")))


@dataclass(frozen=True)
class Status:
    """A device's counters since it started; over MQTT also its availability (``state``).

    An availability-only status (``{"type": "status", "state": "offline"}``, the last will) has
    ``frames`` None. ``counters`` holds what a source adds (bad_lines, source_reconnects).
    """

    frames: int | None = None
    predictions: int = 0
    bad_frames: int = 0
    misses: int = 0
    drops: int = 0
    reconnects: int = 0
    period: float = 0.0
    uptime: float = 0.0
    latency_ms: dict = field(default_factory=dict)  # p50, p99 of the whole frame
    stages_ms: dict = field(default_factory=dict)  # p50 per stage
    accuracy: float | None = None  # on labelled (replayed) frames
    counters: dict = field(default_factory=dict)
    state: str | None = None  # "online" or "offline", over MQTT
    type: ClassVar[str] = "status"

    def to_dict(self) -> dict:
        d: dict = {"type": "status"}
        if self.frames is not None:
            d.update(frames=self.frames, predictions=self.predictions, bad_frames=self.bad_frames,
                     misses=self.misses, drops=self.drops, reconnects=self.reconnects, period=self.period,
                     uptime=self.uptime, latency_ms=self.latency_ms, stages_ms=self.stages_ms)
            if self.accuracy is not None:
                d["accuracy"] = self.accuracy
            d.update(self.counters)
        if self.state is not None:
            d["state"] = self.state
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Status":
        known = {f for f in _STATUS_FIELDS if f in d}
        values = {f: d[f] for f in known}
        counters = {k: v for k, v in d.items() if k not in known and k != "type"
                    and isinstance(v, int) and not isinstance(v, bool)}
        for key in ("latency_ms", "stages_ms"):
            if not isinstance(values.get(key, {}), dict):
                raise ProtocolError(f"status.{key} must be an object")
        for key in ("period", "uptime"):
            if key in values:
                values[key] = _number(values[key])
        if values.get("state") not in (None, *STATES):
            raise ProtocolError("status.state must be online or offline")
        return cls(**values, counters=counters)


_STATUS_FIELDS = ("frames", "predictions", "bad_frames", "misses", "drops", "reconnects", "period", "uptime",
                  "latency_ms", "stages_ms", "accuracy", "state")
RECORDS = {r.type: r for r in (Hello, Prediction, Skip, Status)}


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{value!r:.40} is not a number")
    return float(value)


def _as_dict(msg) -> dict:
    d = msg if isinstance(msg, dict) else msg.to_dict()
    if d.get("type") == "prediction" and len(d.get("topk", ())) > MAX_TOPK:
        d = {**d, "topk": d["topk"][:MAX_TOPK], "topk_capped": True}
    return d


# --- codecs: one per format, chosen once ------------------------------------

class _Codec:
    format = ""
    separator = b""

    def __init__(self, labels: Iterable[str]):
        self.labels = list(labels)
        if len(self.labels) >= MAX_LABELS:
            raise ValueError(f"{len(self.labels)} labels: the wire format carries at most {MAX_LABELS - 1}")
        self._index = {name: i for i, name in enumerate(self.labels)}

    def encode(self, msg) -> bytes:  # a record, or its dict form
        raise NotImplementedError

    def decode(self, chunk: bytes, labels: list[str]) -> dict:  # one frame, without its separator
        raise NotImplementedError


class JsonlCodec(_Codec):
    """One JSON object per line, readable in any terminal program."""

    format, separator = "jsonl", b"\n"

    def encode(self, msg) -> bytes:
        return json.dumps(_as_dict(msg), separators=(",", ":")).encode() + b"\n"

    def decode(self, chunk: bytes, labels: list[str]) -> dict:
        msg = json.loads(chunk.strip())
        if not isinstance(msg, dict) or msg.get("type") not in _TYPES:
            raise ProtocolError("not a message")
        return msg


class BinaryCodec(_Codec):
    """COBS frames ending in 0x00: type byte + body + CRC-32; predictions and skips packed."""

    format, separator = "binary", b"\x00"

    def encode(self, msg) -> bytes:
        d = _as_dict(msg)
        kind = d["type"]
        if kind == "prediction":
            topk = d.get("topk", [])
            index = self._index
            body = _PRED.pack(d["seq"] % (1 << 64), d["t"], index.get(d["label"], 0xFFFF), d["score"],
                              int(d.get("truth", -1)), len(topk))
            body += b"".join(_TOPK.pack(index.get(name, 0xFFFF), score) for name, score in topk)
            ms = d.get("ms", {})
            body += _MS.pack(*(ms.get(s, 0.0) for s in STAGES))
        elif kind == "skip":
            body = _SKIP.pack(d["seq"], d["t"]) + d.get("reason", "").encode()[:200]
        else:
            body = json.dumps(d, separators=(",", ":")).encode()
        packet = bytes([_TYPES[kind]]) + body
        return cobs_encode(packet + struct.pack("<I", zlib.crc32(packet))) + b"\x00"

    def decode(self, chunk: bytes, labels: list[str]) -> dict:
        raw = cobs_decode(chunk)
        if len(raw) < 5:
            raise ProtocolError("short frame")
        packet, crc = raw[:-4], struct.unpack("<I", raw[-4:])[0]
        if zlib.crc32(packet) != crc:
            raise ProtocolError("CRC mismatch")
        kind, body = _NAMES.get(packet[0]), packet[1:]

        def name(i: int) -> str:
            return UNKNOWN if i == 0xFFFF else (labels[i] if i < len(labels) else str(i))
        if kind == "prediction":
            seq, t, idx, score, truth, k = _PRED.unpack_from(body)
            off = _PRED.size
            topk = []
            for _ in range(k):
                i, sc = _TOPK.unpack_from(body, off)
                topk.append([name(i), sc])
                off += _TOPK.size
            ms = dict(zip(STAGES, _MS.unpack_from(body, off)))
            if off + _MS.size != len(body):
                raise ProtocolError("prediction length")
            msg = {"type": "prediction", "seq": seq, "t": t, "label": name(idx), "score": score, "topk": topk,
                   "ms": ms}
            if truth >= 0:
                msg["truth"] = truth
            return msg
        if kind == "skip":
            seq, t = _SKIP.unpack_from(body)
            return {"type": "skip", "seq": seq, "t": t, "reason": body[_SKIP.size:].decode()}
        if kind in ("hello", "status"):
            msg = json.loads(body)
            if not isinstance(msg, dict):
                raise ProtocolError("not a message")
            return msg
        raise ProtocolError("unknown type")


CODECS = {c.format: c for c in (JsonlCodec, BinaryCodec)}


def codec_for(fmt: str, labels: Iterable[str] = ()) -> _Codec:
    if fmt not in CODECS:
        raise ValueError(f"unknown format {fmt!r}: use jsonl or binary")
    return CODECS[fmt](labels)


Encoder = codec_for  # the name callers know: Encoder(fmt, labels).encode(msg) -> bytes


# --- decoding ---------------------------------------------------------------

class Decoder:
    """Feed it bytes as they arrive; it returns whole messages and counts what it had to drop."""

    def __init__(self, fmt: str, labels: Iterable[str] = ()):
        self._codec = codec_for(fmt)
        self.format = fmt
        self.labels = list(labels)
        self.errors = 0  # CRC failures, broken frames, lines that are not JSON messages
        self.other_format = 0  # chunks that look like the other format's framing
        self._buf = bytearray()
        self._sep = self._codec.separator

    def feed(self, data: bytes) -> list:
        """The whole records (Hello, Prediction, Skip, Status) in ``data`` and what came before it."""
        self._buf += data
        *chunks, rest = self._buf.split(self._sep)
        self._buf = bytearray(rest)
        if len(self._buf) > MAX_FRAME:  # no delimiter for too long: resynchronise
            self._buf.clear()
            self.errors += 1
        out = []
        for chunk in chunks:
            if not chunk.strip():
                continue
            try:
                msg = record(self._codec.decode(bytes(chunk), self.labels))
            except (ProtocolError, ValueError, KeyError, IndexError, TypeError, struct.error, UnicodeDecodeError,
                    RecursionError, OverflowError):
                self.errors += 1
                if self._looks_other(bytes(chunk)):
                    self.other_format += 1
                continue
            if msg.type == "hello":
                self.labels = list(msg.labels)
            out.append(msg)
        return out

    def _looks_other(self, chunk: bytes) -> bool:
        """A jsonl line full of NUL-free binary, or a binary frame that is a JSON line."""
        if self.format == "binary":
            return b'{"type"' in chunk
        return b"\x00" in chunk or not chunk.strip().startswith(b"{")


_FIELDS = {  # per kind: field -> the JSON types it may have
    "prediction": {"seq": int, "label": str, "score": (int, float), "topk": list},
    "skip": {"seq": int},
    "hello": {"labels": list},
    "status": {"frames": int},
}
STATES = ("online", "offline")  # a status over MQTT may be availability alone: {"type": "status", "state": ...}


def record(msg: dict):
    """The typed record of a decoded message (the types encoding takes); ProtocolError when a field
    its kind needs is missing or of the wrong type."""
    return RECORDS[check(msg)["type"]].from_dict(msg)


def check(msg: dict) -> dict:
    """The message when every field its kind needs is there with the right type; ProtocolError otherwise."""
    kind = msg.get("type")
    if kind == "status" and "frames" not in msg and msg.get("state") in STATES:
        return msg
    for key, kinds in _FIELDS.get(kind, {}).items():
        value = msg.get(key)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ProtocolError(f"{kind}.{key} missing or of the wrong type")
    if kind in ("prediction", "skip") and msg["seq"] < 0:
        raise ProtocolError("negative seq")
    if kind == "hello" and not all(isinstance(v, str) for v in msg["labels"]):
        raise ProtocolError("hello.labels must be strings")
    if kind == "prediction":
        if "truth" in msg and (isinstance(msg["truth"], bool) or not isinstance(msg["truth"], int)):
            raise ProtocolError("prediction.truth must be an integer")
        if not all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) for e in msg["topk"]):
            raise ProtocolError("prediction.topk must be [label, score] pairs")
    return msg


THUMBNAIL_MAX_BYTES = 256 * 1024  # what a receiver accepts as a thumbnail (PREFIX/ID/thumbnail over MQTT)


def looks_like_jpeg(data: bytes) -> bool:
    """Whether a thumbnail payload is a whole JPEG (start and end markers) within the size bound."""
    return 4 < len(data) <= THUMBNAIL_MAX_BYTES and data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
