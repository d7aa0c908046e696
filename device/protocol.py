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
from typing import Iterable

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


# --- encoding ---------------------------------------------------------------

def _index(labels: dict[str, int], label: str) -> int:
    return labels.get(label, 0xFFFF)


class Encoder:
    """Turns message dicts into bytes for one format; knows the labels for the binary form."""

    def __init__(self, fmt: str, labels: Iterable[str]):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}: use jsonl or binary")
        self.format = fmt
        self.labels = list(labels)
        if len(self.labels) >= MAX_LABELS:
            raise ValueError(f"{len(self.labels)} labels: the wire format carries at most {MAX_LABELS - 1}")
        self._index = {name: i for i, name in enumerate(self.labels)}

    def encode(self, msg: dict) -> bytes:
        if msg.get("type") == "prediction" and len(msg.get("topk", ())) > MAX_TOPK:
            msg = {**msg, "topk": msg["topk"][:MAX_TOPK], "topk_capped": True}
        if self.format == "jsonl":
            return json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        kind = msg["type"]
        if kind == "prediction":
            topk = msg.get("topk", [])
            body = _PRED.pack(msg["seq"] % (1 << 64), msg["t"], _index(self._index, msg["label"]), msg["score"],
                              int(msg.get("truth", -1)), len(topk))
            body += b"".join(_TOPK.pack(_index(self._index, name), score) for name, score in topk)
            ms = msg.get("ms", {})
            body += _MS.pack(*(ms.get(s, 0.0) for s in STAGES))
        elif kind == "skip":
            body = _SKIP.pack(msg["seq"], msg["t"]) + msg.get("reason", "").encode()[:200]
        else:
            body = json.dumps(msg, separators=(",", ":")).encode()
        packet = bytes([_TYPES[kind]]) + body
        return cobs_encode(packet + struct.pack("<I", zlib.crc32(packet))) + b"\x00"


# --- decoding ---------------------------------------------------------------

class Decoder:
    """Feed it bytes as they arrive; it returns whole messages and counts what it had to drop."""

    def __init__(self, fmt: str, labels: Iterable[str] = ()):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}: use jsonl or binary")
        self.format = fmt
        self.labels = list(labels)
        self.errors = 0  # CRC failures, broken frames, lines that are not JSON messages
        self.other_format = 0  # chunks that look like the other format's framing
        self._buf = bytearray()
        self._sep = b"\n" if fmt == "jsonl" else b"\x00"

    def feed(self, data: bytes) -> list[dict]:
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
                msg = check(self._decode(bytes(chunk)))
            except (ProtocolError, ValueError, KeyError, IndexError, TypeError, struct.error, UnicodeDecodeError,
                    RecursionError):
                self.errors += 1
                if self._looks_other(bytes(chunk)):
                    self.other_format += 1
                continue
            if msg["type"] == "hello":
                self.labels = list(msg["labels"])
            out.append(msg)
        return out

    def _looks_other(self, chunk: bytes) -> bool:
        """A jsonl line full of NUL-free binary, or a binary frame that is a JSON line."""
        if self.format == "binary":
            return b'{"type"' in chunk
        return b"\x00" in chunk or not chunk.strip().startswith(b"{")

    def _decode(self, chunk: bytes) -> dict:
        if self.format == "jsonl":
            msg = json.loads(chunk.strip())
            if not isinstance(msg, dict) or msg.get("type") not in _TYPES:
                raise ProtocolError("not a message")
            return msg
        raw = cobs_decode(chunk)
        if len(raw) < 5:
            raise ProtocolError("short frame")
        packet, crc = raw[:-4], struct.unpack("<I", raw[-4:])[0]
        if zlib.crc32(packet) != crc:
            raise ProtocolError("CRC mismatch")
        kind, body = _NAMES.get(packet[0]), packet[1:]
        if kind == "prediction":
            seq, t, idx, score, truth, k = _PRED.unpack_from(body)
            off = _PRED.size
            topk = []
            for _ in range(k):
                i, s = _TOPK.unpack_from(body, off)
                topk.append([self._name(i), s])
                off += _TOPK.size
            ms = dict(zip(STAGES, _MS.unpack_from(body, off)))
            if off + _MS.size != len(body):
                raise ProtocolError("prediction length")
            msg = {"type": "prediction", "seq": seq, "t": t, "label": self._name(idx), "score": score,
                   "topk": topk, "ms": ms}
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

    def _name(self, index: int) -> str:
        if index == 0xFFFF:
            return UNKNOWN
        return self.labels[index] if index < len(self.labels) else str(index)


_FIELDS = {  # per kind: field -> the JSON types it may have
    "prediction": {"seq": int, "label": str, "score": (int, float), "topk": list},
    "skip": {"seq": int},
    "hello": {"labels": list},
    "status": {"frames": int},
}


def check(msg: dict) -> dict:
    """The message when every field its kind needs is there with the right type; ProtocolError otherwise."""
    kind = msg.get("type")
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
