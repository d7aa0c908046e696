"""The wire formats: round trips, and a decoder that survives garbage and corruption."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from contract.protocol import Decoder, Encoder, Hello, Prediction, Skip, Status, cobs_decode, cobs_encode

LABELS = ["walk", "run", "sit"]


def prediction(seq, label="run", truth=None):
    msg = {"type": "prediction", "seq": seq, "t": 1700000000.25, "label": label, "score": 0.75,
           "topk": [["run", 0.75], ["walk", 0.25]],
           "ms": {"capture": 0.01, "preprocess": 0.02, "invoke": 0.5, "postprocess": 0.01}}
    if truth is not None:
        msg["truth"] = truth
    return msg


@given(st.binary(max_size=1200))
def test_cobs_round_trip_has_no_zero(data):
    enc = cobs_encode(data)
    assert b"\x00" not in enc
    assert cobs_decode(enc) == data


@pytest.mark.parametrize("fmt", ["jsonl", "binary"])
def test_round_trip_every_kind(fmt):
    enc = Encoder(fmt, LABELS)
    msgs = [{"type": "hello", "labels": LABELS, "period": 1.0}, prediction(0, truth=1), prediction(1, "unknown"),
            {"type": "skip", "seq": 2, "t": 5.0, "reason": "frame of shape (3,)"},
            {"type": "status", "frames": 3, "misses": 0, "latency_ms": {"p50": 0.5, "p99": 0.9}}]
    dec = Decoder(fmt)
    out = dec.feed(b"".join(enc.encode(m) for m in msgs))
    assert [type(m) for m in out] == [Hello, Prediction, Prediction, Skip, Status]  # the types encoding takes
    assert out[1].label == "run" and out[1].truth == 1 and out[1].seq == 0
    assert out[1].topk[0][0] == "run" and abs(out[1].topk[0][1] - 0.75) < 1e-6
    assert abs(out[1].ms["invoke"] - 0.5) < 1e-6
    assert out[2].label == "unknown"
    assert out[3].reason.startswith("frame of shape") and out[3].seq == 2
    assert out[4].frames == 3 and out[4].latency_ms == {"p50": 0.5, "p99": 0.9} and out[4].state is None
    again = Decoder(fmt).feed(b"".join(enc.encode(m) for m in out))  # records encode to what they came from
    assert again == out
    assert dec.errors == 0


def test_binary_is_compact_and_crc_checked():
    enc = Encoder("binary", LABELS)
    frame = enc.encode(prediction(7))
    assert len(frame) < len(Encoder("jsonl", LABELS).encode(prediction(7))) / 2
    damaged = bytearray(frame)
    damaged[5] ^= 0x40
    dec = Decoder("binary", LABELS)
    assert dec.feed(bytes(damaged)) == [] and dec.errors == 1
    assert dec.feed(frame)[0].seq == 7  # the next good frame decodes


@pytest.mark.parametrize("fmt", ["jsonl", "binary"])
@settings(max_examples=60, deadline=None)
@given(garbage=st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_decoder_resynchronises_after_garbage_and_truncation(fmt, garbage, seed):
    enc = Encoder(fmt, LABELS)
    good = [enc.encode(prediction(i)) for i in range(6)]
    rng = random.Random(seed)
    cut = good[2][: rng.randrange(1, len(good[2]))]  # a truncated frame, as when a cable is pulled
    sep = b"\n" if fmt == "jsonl" else b"\x00"
    stream = good[0] + good[1] + cut + sep + b"".join(g + sep for g in garbage) + good[3] + good[4] + good[5]
    dec = Decoder(fmt, LABELS)
    got = []
    i = 0
    while i < len(stream):  # arbitrary chunking, as a serial read returns
        n = rng.randrange(1, 40)
        got += dec.feed(stream[i:i + n])
        i += n
    seqs = [m.seq for m in got if m.type == "prediction"]
    assert seqs[:2] == [0, 1] and seqs[-3:] == [3, 4, 5]
    assert set(seqs) <= {0, 1, 2, 3, 4, 5}


def test_overlong_garbage_without_delimiter_is_dropped():
    dec = Decoder("binary", LABELS)
    from contract.protocol import MAX_FRAME

    dec.feed(b"\x07" * (MAX_FRAME + 1000))
    assert dec.errors == 1
    assert dec.feed(Encoder("binary", LABELS).encode(prediction(1)))[0].seq == 1
