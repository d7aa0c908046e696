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

Integrity: a binary frame ends in a CRC-32; a jsonl line ends in ``"crc":"xxxxxxxx"``, the
CRC-32 of the line's object without that field (the bytes before ``,"crc":`` and a closing
brace). A stream decoder requires it, so a damaged line is counted as an error in both formats;
over MQTT (TCP carries its own checksum) it is checked when present.

One gate for what arrives: every decoded message passes ``record`` before anything reads it:
each field's type, finite numbers within stated ranges, strings and lists within stated sizes
(the MAX_* bounds below). What fails is a ProtocolError whose ``kind`` says why (size, frame,
crc, json, type, field); the Decoder counts it by kind and drops it.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import ClassVar, Iterable

FORMATS = ("jsonl", "binary")
STAGES = ("capture", "preprocess", "invoke", "postprocess")
UNKNOWN = "unknown"
STATES = ("online", "offline")  # a status over MQTT may be availability alone: {"type": "status", "state": ...}

# Bounds of what a receiver accepts, and of what a device may send (its bundle is checked against
# them before a run starts). A hello with MAX_LABELS labels of MAX_LABEL_BYTES each, escaped as
# JSON, fits in MAX_MESSAGE.
MAX_MESSAGE = 256 * 1024  # bytes of one message, either format, any transport
MAX_FRAME = MAX_MESSAGE  # a longer run without a delimiter is garbage and is dropped
MAX_LABELS = 1024  # per hello; label indices are 16-bit on the wire, 0xFFFF meaning unknown
MAX_LABEL_BYTES = 64  # UTF-8 bytes per label, printable characters only
MAX_TOPK = 255  # top-k entries per prediction (``topk_capped`` says when the sender cut the list)
MAX_TEXT = 256  # UTF-8 bytes of any other string (a skip's reason, a dtype)
MAX_ENTRIES = 32  # entries of a timing table (ms, latency_ms, stages_ms) and extra status counters
MAX_NAME_BYTES = 32  # a stage, percentile or counter name
MAX_PERIOD_S = 86400.0  # a frame period longer than a day is not a period
MAX_MS = 3.6e6  # a stage timing longer than an hour is not a timing
MAX_SCORE = 1e6  # probabilities, or a model's raw scores; anything beyond is damage
MAX_TIME = 1e11  # seconds since the epoch (the year 5138)
MAX_COUNT = 2 ** 63 - 1  # any counter
MAX_SEQ = 2 ** 64 - 1
MAX_TRUTH = 2 ** 31 - 1
MAX_DIMS = 8  # of an input shape

_PRED = struct.Struct("<QdHfiB")  # seq, t, label index (0xFFFF unknown), score, truth (-1 none), k
_TOPK = struct.Struct("<Hf")
_MS = struct.Struct("<" + "f" * len(STAGES))
_SKIP = struct.Struct("<Qd")
_TYPES = {"prediction": 1, "skip": 2, "hello": 3, "status": 4}
_NAMES = {v: k for k, v in _TYPES.items()}


class ProtocolError(ValueError):
    """A frame or line that cannot be decoded, or a message the gate refuses; ``kind`` says which:
    size, frame, crc, json, type or field."""

    def __init__(self, message: str, kind: str = "field"):
        super().__init__(message)
        self.kind = kind


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
            raise ProtocolError("bad COBS code", "frame")
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
        labels = d.get("labels")
        if not isinstance(labels, list) or len(labels) > MAX_LABELS:
            raise ProtocolError(f"hello.labels must be a list of at most {MAX_LABELS} labels")
        fmt = d.get("format", "")
        if fmt not in ("", *FORMATS):
            raise ProtocolError(f"hello.format {fmt!r:.40} is not one of {', '.join(FORMATS)}")
        sha = d.get("model_sha256", "")
        if not isinstance(sha, str) or not (sha == "" or _SHA256.fullmatch(sha)):
            raise ProtocolError("hello.model_sha256 must be 64 hexadecimal digits")
        return cls(tuple(_label(v, "hello.labels") for v in labels), _float(d, "period", 0.0, MAX_PERIOD_S, 0.0),
                   fmt, sha, _input(d["input"]) if d.get("input") is not None else None)


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
        topk = d.get("topk")
        if not isinstance(topk, list) or len(topk) > MAX_TOPK:
            raise ProtocolError(f"prediction.topk must be a list of at most {MAX_TOPK} [label, score] pairs")
        if not all(isinstance(e, list) and len(e) == 2 for e in topk):
            raise ProtocolError("prediction.topk must be [label, score] pairs")
        return cls(_int(d, "seq", 0, MAX_SEQ), _float(d, "t", 0.0, MAX_TIME, 0.0),
                   _label(d.get("label"), "prediction.label"), _float(d, "score", -MAX_SCORE, MAX_SCORE),
                   [[_label(name, "prediction.topk"), _number(score, "prediction.topk", -MAX_SCORE, MAX_SCORE)]
                    for name, score in topk],
                   _table(d.get("ms", {}), "prediction.ms", MAX_MS), _int(d, "truth", 0, MAX_TRUTH, None),
                   d.get("topk_capped") is True)


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
        return cls(_int(d, "seq", 0, MAX_SEQ), _float(d, "t", 0.0, MAX_TIME, 0.0),
                   _text(d.get("reason", ""), "skip.reason", MAX_TEXT))


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
        state = d.get("state")
        if state not in (None, *STATES) or (state is None and "frames" not in d):
            raise ProtocolError("a status has counters (frames, ...) or a state, online or offline")
        values = {key: _int(d, key, 0, MAX_COUNT, 0) for key in _STATUS_COUNTS}
        counters = {key: _int(d, key, 0, MAX_COUNT) for key, v in d.items() if key not in _STATUS_FIELDS
                    and key != "type" and isinstance(v, int) and not isinstance(v, bool)}
        if len(counters) > MAX_ENTRIES:
            raise ProtocolError(f"status: more than {MAX_ENTRIES} counters")
        for key in counters:
            _text(key, "status counter name", MAX_NAME_BYTES, printable=True)
        return cls(frames=_int(d, "frames", 0, MAX_COUNT, None), **values,
                   period=_float(d, "period", 0.0, MAX_PERIOD_S, 0.0), uptime=_float(d, "uptime", 0.0, MAX_TIME, 0.0),
                   latency_ms=_table(d.get("latency_ms", {}), "status.latency_ms", MAX_MS),
                   stages_ms=_table(d.get("stages_ms", {}), "status.stages_ms", MAX_MS),
                   accuracy=_float(d, "accuracy", 0.0, 1.0, None), counters=counters, state=state)


_STATUS_COUNTS = ("predictions", "bad_frames", "misses", "drops", "reconnects")
_STATUS_FIELDS = ("frames", *_STATUS_COUNTS, "period", "uptime", "latency_ms", "stages_ms", "accuracy", "state")
RECORDS = {r.type: r for r in (Hello, Prediction, Skip, Status)}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NEED = object()  # a field without a default


def _number(value, what: str, lo: float, hi: float) -> float:
    """A finite JSON number in [lo, hi] as a float; ProtocolError otherwise (NaN fails every comparison)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ProtocolError(f"{what} must be a number in [{lo:g}, {hi:g}]")
    return float(value)


def _float(d: dict, key: str, lo: float, hi: float, default=_NEED):
    if key not in d and default is not _NEED:
        return default
    return _number(d.get(key), f"{d.get('type')}.{key}", lo, hi)


def _int(d: dict, key: str, lo: int, hi: int, default=_NEED):
    if key not in d and default is not _NEED:
        return default
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(f"{d.get('type')}.{key} must be an integer in [{lo}, {hi}]")
    return value


def _text(value, what: str, max_bytes: int, printable: bool = False) -> str:
    """A string of at most ``max_bytes`` UTF-8 bytes (and printable characters only, when asked)."""
    try:
        ok = isinstance(value, str) and len(value.encode()) <= max_bytes and (value.isprintable() or not printable)
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape
        ok = False
    if not ok:
        kind = "printable string" if printable else "string"
        raise ProtocolError(f"{what} must be a {kind} of at most {max_bytes} UTF-8 bytes")
    return value


def _label(value, what: str) -> str:
    if value == "":
        raise ProtocolError(f"{what}: a label is not empty")
    return _text(value, what, MAX_LABEL_BYTES, printable=True)


def _table(value, what: str, hi: float) -> dict:
    """A timing table: at most MAX_ENTRIES names -> numbers in [0, hi]."""
    if not isinstance(value, dict) or len(value) > MAX_ENTRIES:
        raise ProtocolError(f"{what} must be an object of at most {MAX_ENTRIES} names -> numbers")
    return {_text(k, what, MAX_NAME_BYTES, printable=True): _number(v, f"{what}.{k:.20}", 0.0, hi)
            for k, v in value.items()}


def _input(value) -> dict:
    """What a hello says the model takes: shape (at most MAX_DIMS sizes), dtype, layout; nothing else."""
    if not isinstance(value, dict):
        raise ProtocolError("hello.input must be an object")
    out = {}
    if "shape" in value:
        shape = value["shape"]
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(
                isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_TRUTH for n in shape):
            raise ProtocolError(f"hello.input.shape must be at most {MAX_DIMS} sizes")
        out["shape"] = shape
    for key in ("dtype", "layout"):
        if key in value:
            out[key] = _text(value[key], f"hello.input.{key}", MAX_NAME_BYTES, printable=True)
    return out


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
        self.labels = [_label(v, "label") for v in labels]  # what a receiver would refuse is refused here
        if len(self.labels) > MAX_LABELS:
            raise ValueError(f"{len(self.labels)} labels: a receiver takes at most {MAX_LABELS}")
        self._index = {name: i for i, name in enumerate(self.labels)}

    def encode(self, msg) -> bytes:  # a record, or its dict form
        raise NotImplementedError

    def decode(self, chunk: bytes, labels: list[str]) -> dict:  # one frame, without its separator
        raise NotImplementedError


class JsonlCodec(_Codec):
    """One JSON object per line, readable in any terminal program, sealed with a CRC-32 as its last field.

    ``require_crc`` (a stream's decoder) refuses a line without one; without it (MQTT) a line's
    CRC is checked when it has one.
    """

    format, separator = "jsonl", b"\n"

    def __init__(self, labels: Iterable[str] = (), require_crc: bool = False):
        super().__init__(labels)
        self.require_crc = require_crc

    def encode(self, msg) -> bytes:
        return seal(json.dumps(_as_dict(msg), separators=(",", ":")).encode()) + b"\n"

    def decode(self, chunk: bytes, labels: list[str]) -> dict:
        line = chunk.strip()
        sealed = _SEAL.search(line)
        if sealed:
            line = line[:sealed.start()] + b"}"
            if zlib.crc32(line) != int(sealed.group(1), 16):
                raise ProtocolError("CRC mismatch", "crc")
        elif self.require_crc:
            raise ProtocolError('a line without its "crc" field', "crc")
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise ProtocolError(f"not JSON ({type(e).__name__})", "json") from None
        if not isinstance(msg, dict):
            raise ProtocolError("not a JSON object", "json")
        return msg


_SEAL = re.compile(rb',"crc":"([0-9a-f]{8})"\}$')


def seal(obj: bytes) -> bytes:
    """A compact JSON object's bytes with its CRC-32 as the last field: ``{...,"crc":"xxxxxxxx"}``."""
    return obj[:-1] + b',"crc":"%08x"}' % zlib.crc32(obj)


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
            body = _SKIP.pack(d["seq"], d["t"]) + _cut(d.get("reason", ""), 200)
        else:
            body = json.dumps(d, separators=(",", ":")).encode()
        packet = bytes([_TYPES[kind]]) + body
        return cobs_encode(packet + struct.pack("<I", zlib.crc32(packet))) + b"\x00"

    def decode(self, chunk: bytes, labels: list[str]) -> dict:
        raw = cobs_decode(chunk)
        if len(raw) < 5:
            raise ProtocolError("short frame", "frame")
        packet, crc = raw[:-4], struct.unpack("<I", raw[-4:])[0]
        if zlib.crc32(packet) != crc:
            raise ProtocolError("CRC mismatch", "crc")
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
                raise ProtocolError("prediction length", "frame")
            msg = {"type": "prediction", "seq": seq, "t": t, "label": name(idx), "score": score, "topk": topk,
                   "ms": ms}
            if truth >= 0:
                msg["truth"] = truth
            return msg
        if kind == "skip":
            seq, t = _SKIP.unpack_from(body)
            return {"type": "skip", "seq": seq, "t": t, "reason": body[_SKIP.size:].decode()}
        if kind in ("hello", "status"):
            try:
                msg = json.loads(body)
            except (ValueError, RecursionError) as e:
                raise ProtocolError(f"not JSON ({type(e).__name__})", "json") from None
            if not isinstance(msg, dict) or msg.get("type") != kind:
                raise ProtocolError(f"a {kind} frame whose body is not a {kind}", "type")
            return msg
        raise ProtocolError("unknown type", "type")


CODECS = {c.format: c for c in (JsonlCodec, BinaryCodec)}


def codec_for(fmt: str, labels: Iterable[str] = ()) -> _Codec:
    if fmt not in CODECS:
        raise ValueError(f"unknown format {fmt!r}: use jsonl or binary")
    return CODECS[fmt](labels)


Encoder = codec_for  # the name callers know: Encoder(fmt, labels).encode(msg) -> bytes


# --- decoding ---------------------------------------------------------------

class Decoder:
    """Feed it bytes as they arrive; it returns whole records, each through the gate, and counts by kind
    (``refused``) what it had to drop."""

    def __init__(self, fmt: str, labels: Iterable[str] = (), require_crc: bool = True):
        self._codec = codec_for(fmt)
        if isinstance(self._codec, JsonlCodec):
            self._codec.require_crc = require_crc
        self.format = fmt
        self.labels = list(labels)
        self.refused: dict[str, int] = {}  # kind (size, frame, crc, json, type, field) -> messages dropped
        self.other_format = 0  # chunks that look like the other format's framing
        self._buf = bytearray()
        self._sep = self._codec.separator

    @property
    def errors(self) -> int:
        """Messages dropped: damaged, broken, oversized, or refused by the gate."""
        return sum(self.refused.values())

    def count(self, kind: str) -> None:
        self.refused[kind] = self.refused.get(kind, 0) + 1

    def feed(self, data: bytes) -> list:
        """The whole records (Hello, Prediction, Skip, Status) in ``data`` and what came before it."""
        self._buf += data
        *chunks, rest = self._buf.split(self._sep)
        self._buf = bytearray(rest)
        if len(self._buf) > MAX_MESSAGE:  # no delimiter for too long: resynchronise
            self._buf.clear()
            self.count("size")
        out = []
        for chunk in chunks:
            if not chunk.strip():
                continue
            try:
                msg = self.decode(bytes(chunk))
            except ProtocolError as e:
                self.count(e.kind)
                if self._looks_other(bytes(chunk)):
                    self.other_format += 1
                continue
            if msg.type == "hello":
                self.labels = list(msg.labels)
            out.append(msg)
        return out

    def decode(self, chunk: bytes):
        """One message (without its separator) through the gate: its record, or ProtocolError."""
        if len(chunk) > MAX_MESSAGE:
            raise ProtocolError(f"a message of more than {MAX_MESSAGE} bytes", "size")
        try:
            return record(self._codec.decode(chunk, self.labels))
        except ProtocolError:
            raise
        except (ValueError, struct.error, IndexError, RecursionError) as e:  # a frame too short or out of shape
            raise ProtocolError(f"broken frame ({type(e).__name__})", "frame") from None

    def _looks_other(self, chunk: bytes) -> bool:
        """A jsonl line full of NUL-free binary, or a binary frame that is a JSON line."""
        if self.format == "binary":
            return b'{"type"' in chunk
        return b"\x00" in chunk or not chunk.strip().startswith(b"{")


def record(msg: dict):
    """The typed record of a decoded message (the types encoding takes), through the gate: every field
    its kind has is checked for type, range and size; ProtocolError otherwise."""
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in RECORDS:
        raise ProtocolError(f"unknown message type {kind!r:.40}", "type")
    return RECORDS[kind].from_dict(msg)


def _cut(text: str, limit: int) -> bytes:
    """At most ``limit`` bytes of ``text`` in UTF-8, never half a character."""
    return text.encode()[:limit].decode(errors="ignore").encode()


THUMBNAIL_MAX_BYTES = 256 * 1024  # what a receiver accepts as a thumbnail (PREFIX/ID/thumbnail over MQTT)


def looks_like_jpeg(data: bytes) -> bool:
    """Whether a thumbnail payload is a whole JPEG (start and end markers) within the size bound."""
    return 4 < len(data) <= THUMBNAIL_MAX_BYTES and data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
