"""Where int8 loses accuracy: TensorFlow's own QuantizationDebugger, per layer, float against int8.

The debugger runs the float and the quantized model side by side on the given inputs
and reports, per quantized tensor, its error statistics. We keep what it computes
and rank layers by RMSE in units of the tensor's quantization step (``rmse/scale``,
the measure TensorFlow's debugger guide uses): 0.29 is the error of perfect rounding.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from contract.capture import captured

from .calibration import generator
from .quantize import converter
from .tf import tf

DEBUG_SAMPLES = 64
ROUNDING_RMSE = 1 / np.sqrt(12)  # the RMSE of rounding alone, in steps


@dataclass(frozen=True)
class LayerError:
    op: str
    tensor: str
    scale: float
    rmse_per_step: float  # sqrt(mean_squared_error) / scale
    max_abs_error: float
    mean_error: float

    def to_dict(self) -> dict:
        return {"op": self.op, "tensor": self.tensor, "scale": self.scale,
                "rmse_per_step": round(self.rmse_per_step, 4),
                "max_abs_error": round(self.max_abs_error, 6), "mean_error": round(self.mean_error, 6)}


def layer_errors(model, calibration: np.ndarray, inputs: np.ndarray) -> list[LayerError]:
    """Per-layer float-vs-int8 error of ``model`` calibrated on ``calibration``, measured on ``inputs``."""
    c = converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = generator(calibration)
    with captured((2,)):
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=c, debug_dataset=generator(inputs[:DEBUG_SAMPLES]))
        debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    out = []
    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(row.get("scale") or 0)
        mse = float(row.get("mean_squared_error") or 0)
        if scale <= 0:
            continue
        out.append(LayerError(row.get("op_name", "?"), row.get("tensor_name", "?"), scale, float(np.sqrt(mse)) / scale,
                              float(row.get("max_abs_error") or 0), float(row.get("mean_error") or 0)))
    return out


def worst(errors: list[LayerError], n: int = 3) -> list[LayerError]:
    return sorted(errors, key=lambda e: -e.rmse_per_step)[:n]
