"""Each variant measured through the .tflite interpreter on the held-out test split, never Keras."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from contract.quant import quantize
from contract.runtime import Model
from firmware_export.tflm import can_run

from .datasets import Dataset

WARMUP_RUNS = 10
TIMED_RUNS = 200


@dataclass
class Evaluation:
    accuracy: float  # top-1 on the test split, 0..1
    size_bytes: int
    latency_ms: dict  # {"p50": ..., "p99": ...}, one inference, one thread
    tflm_compatible: bool
    tflm_reason: str = ""
    predictions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def to_dict(self) -> dict:
        d = {"accuracy": round(self.accuracy, 6), "size_bytes": self.size_bytes,
             "latency_ms": self.latency_ms, "tflm_compatible": self.tflm_compatible}
        if self.tflm_reason:
            d["tflm_reason"] = self.tflm_reason
        return d


def model_inputs(model: Model, ds: Dataset, raw: np.ndarray) -> np.ndarray:
    """Raw samples -> what the interpreter takes: normalised, then quantized when the input is integer."""
    x = ds.normalise(raw)
    if model.input.dtype.kind in "iu":
        return quantize(x, model.input.scale, model.input.zero_point, model.input.dtype)
    return x.astype(model.input.dtype)


def evaluate(data: bytes, ds: Dataset, progress=lambda it, **kw: it, desc: str = "evaluating") -> Evaluation:
    model = Model(data, num_threads=1)
    xs = model_inputs(model, ds, ds.test.x)
    preds = np.empty(len(xs), dtype=np.int64)
    for i in progress(range(len(xs)), desc=desc):
        preds[i] = int(np.argmax(model.run(xs[i:i + 1])))
    accuracy = float(np.mean(preds == ds.test.y))

    sample = xs[:1]
    for _ in range(WARMUP_RUNS):
        model.run(sample)
    times = np.empty(TIMED_RUNS)
    for i in range(TIMED_RUNS):
        t0 = time.perf_counter()
        model.run(sample)
        times[i] = time.perf_counter() - t0
    latency = {"p50": round(float(np.percentile(times, 50)) * 1e3, 4),
               "p99": round(float(np.percentile(times, 99)) * 1e3, 4)}
    ok, reason = can_run(data)
    return Evaluation(accuracy, len(data), latency, ok, reason, preds)
