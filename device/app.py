"""The classification loop: capture -> preprocess -> invoke -> postprocess -> send, on a fixed period.

Scheduling uses ``time.monotonic``. A frame that takes longer than the period is a
deadline miss; after a stall the schedule jumps to the next future tick instead of
bursting to catch up. Timing histories are bounded so memory stays flat for months.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from contract.preprocess import FrameError, Preprocessor
from contract.protocol import STAGES, UNKNOWN, Prediction, Skip, Status
from contract.quant import dequantize
from contract.runtime import Model

from .frames import CaptureError

HISTORY = 2048  # frames of timing kept for percentiles


@dataclass(frozen=True)
class RunConfig:
    period: float = 1.0  # seconds between frame starts; 0 runs as fast as possible
    max_frames: int | None = None
    duration: float | None = None  # seconds
    topk: int = 3
    smoothing: int = 1  # average the scores of the last N predictions
    threshold: float = 0.0  # below this score the label is "unknown"
    status_every: float = 10.0  # seconds between status messages
    thumbnail_every: float = 0.0  # seconds between frames handed to on_frame (0: never)


def _pct(values, q: float) -> float:
    return round(float(np.percentile(values, q)), 4) if len(values) else 0.0


@dataclass
class Stats:
    frames: int = 0  # frames taken (each gets a seq)
    predictions: int = 0
    bad_frames: int = 0  # wrong shape, capture hiccups: counted and skipped
    misses: int = 0  # frames that took longer than the period
    correct: int = 0  # predictions that matched a replayed label
    labelled: int = 0
    started: float = field(default_factory=time.monotonic)
    stage_ms: dict = field(default_factory=lambda: {s: collections.deque(maxlen=HISTORY) for s in (*STAGES, "send")})
    total_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=HISTORY))

    def status(self, sink, period: float) -> dict:
        msg = {"type": "status", "frames": self.frames, "predictions": self.predictions,
               "bad_frames": self.bad_frames, "misses": self.misses, "drops": sink.drops,
               "reconnects": sink.reconnects, "period": period,
               "uptime": round(time.monotonic() - self.started, 3),
               "latency_ms": {"p50": _pct(self.total_ms, 50), "p99": _pct(self.total_ms, 99)},
               "stages_ms": {s: _pct(v, 50) for s, v in self.stage_ms.items()}}
        if self.labelled:
            msg["accuracy"] = round(self.correct / self.labelled, 6)
        return msg


class Classifier:
    """Scores from the model's raw output, smoothed and thresholded."""

    def __init__(self, model: Model, labels, cfg: RunConfig):
        self.labels = list(labels)
        self.scale, self.zero_point = model.output.scale, model.output.zero_point
        self.k = max(1, min(cfg.topk, len(self.labels)))
        self.threshold = cfg.threshold
        self.recent: collections.deque = collections.deque(maxlen=max(cfg.smoothing, 1))

    def __call__(self, raw: np.ndarray) -> tuple[str, float, list, int]:
        scores = dequantize(raw.reshape(-1), self.scale, self.zero_point)
        if self.recent.maxlen > 1:
            self.recent.append(scores)
            scores = np.mean(self.recent, axis=0)
        top = np.argpartition(-scores, self.k - 1)[:self.k]
        top = top[np.argsort(-scores[top])]
        best = int(top[0])
        score = float(scores[best])
        label = self.labels[best] if score >= self.threshold else UNKNOWN
        return label, score, [[self.labels[i], round(float(scores[i]), 4)] for i in top], best


def run(model: Model, pre: Preprocessor, source, sink, encoder, cfg: RunConfig,
        stop: threading.Event | None = None, hello: bytes = b"", on_status=None, watchdog=None,
        on_frame=None, capture=None) -> Stats:
    """Classify frames from ``source`` until it ends, ``stop`` is set, or a limit is reached.

    ``hello`` goes out before every status message, so a receiver that joined late
    (or whose port open flushed the reconnect hello) still learns the labels. ``on_frame``
    gets a raw frame every ``cfg.thumbnail_every`` seconds (the dashboard's thumbnail).
    ``capture`` (device/capture.py) is offered every frame with its prediction, after the frame's
    stages, so its cost is in none of the latency figures; its counters go out with every status.
    """
    stop = stop or threading.Event()
    classify = Classifier(model, encoder.labels, cfg)
    stats = Stats()
    clock = time.monotonic
    period = cfg.period
    next_tick = clock()
    next_status = next_tick + cfg.status_every
    next_frame_tap = next_tick if on_frame and cfg.thumbnail_every > 0 else float("inf")
    end = next_tick + cfg.duration if cfg.duration else None
    frames = iter(source)
    counters = getattr(source, "counters", None)  # a source's own faults (bad lines, reopens)

    def status() -> Status:
        msg = stats.status(sink, period)
        if counters:
            msg.update(counters())
        if capture:
            msg.update(capture.counters())
        if on_status:
            on_status(msg)
        return Status.from_dict(msg)

    ping = watchdog.ping if watchdog else (lambda: None)
    slice_s = watchdog.interval if watchdog and watchdog.interval else None

    while not stop.is_set():
        ping()  # a loop that hangs stops pinging, and systemd restarts the service
        sink.check()  # a dead writer ends the run (DeviceError), never a blind loop
        if cfg.max_frames is not None and stats.frames >= cfg.max_frames:
            break
        now = clock()
        if now >= next_status:  # here, not after a prediction: a device whose sensor is gone still reports
            if hello:
                sink.send(hello)
            msg = status()
            sink.send(encoder.encode(msg), msg)
            next_status = now + cfg.status_every
        if end is not None and now >= end:
            break
        if period > 0 and now < next_tick:
            # long periods wait in slices so the watchdog keeps being pinged
            if stop.wait(min(next_tick - now, slice_s) if slice_s else next_tick - now):
                break
            if clock() < next_tick:
                continue
        t0 = clock()
        seq = stats.frames
        try:
            frame = next(frames)
        except StopIteration:
            break
        except CaptureError as e:
            stats.frames += 1
            stats.bad_frames += 1
            skip = Skip(seq, time.time(), str(e))
            sink.send(encoder.encode(skip), skip)
            next_tick = _advance(next_tick, period, clock())
            continue
        stats.frames += 1
        t1 = clock()
        try:
            x = pre(frame.data)
        except FrameError as e:
            stats.bad_frames += 1
            skip = Skip(seq, time.time(), str(e))
            sink.send(encoder.encode(skip), skip)
            next_tick = _advance(next_tick, period, clock())
            continue
        t2 = clock()
        raw = model.run(x)
        t3 = clock()
        label, score, topk, best = classify(raw)
        t4 = clock()
        ms = {"capture": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3, "invoke": (t3 - t2) * 1e3,
              "postprocess": (t4 - t3) * 1e3}
        if frame.truth is not None:
            stats.labelled += 1
            stats.correct += int(best == frame.truth and label != UNKNOWN)  # as the monitor counts it
        pred = Prediction(seq, time.time(), label, round(score, 4), topk, {k: round(v, 4) for k, v in ms.items()},
                          frame.truth)
        sink.send(encoder.encode(pred), pred)
        t5 = clock()
        stats.predictions += 1
        for stage, value in ms.items():
            stats.stage_ms[stage].append(value)
        stats.stage_ms["send"].append((t5 - t4) * 1e3)
        stats.total_ms.append((t5 - t0) * 1e3)
        if period > 0 and t5 - t0 > period:
            stats.misses += 1
        if capture:  # after the frame's own stages, as the thumbnail below
            capture.offer(frame.data, pred)
        if t5 >= next_frame_tap:  # after the frame's own stages, so it is in none of them
            on_frame(frame.data)
            next_frame_tap = clock() + cfg.thumbnail_every
        next_tick = _advance(next_tick, period, clock())
    msg = status()
    sink.send(encoder.encode(msg), msg)
    sink.check()
    return stats


def _advance(tick: float, period: float, now: float) -> float:
    """The next tick after ``tick``; when already past it, the first tick in the future (no bursts)."""
    if period <= 0:
        return now
    tick += period
    if now > tick:
        tick += np.ceil((now - tick) / period) * period
    return tick
