"""TFLM's MicroMutableOpResolver method for each TFLite operator, for the generated op resolver."""

from __future__ import annotations

import re

# Where TFLM's MicroMutableOpResolver breaks its own CamelCase rule (read from
# micro_mutable_op_resolver.h; tests/test_resolver_names.py checks the rule against the header).
IRREGULAR_METHODS = {
    "BATCH_MATMUL": "AddBatchMatMul",
    "CUMSUM": "AddCumSum",
    "PADV2": "AddPadV2",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
}


def resolver_method(op_name: str) -> str:
    """TFLM's MicroMutableOpResolver method for an operator: CONV_2D -> AddConv2D."""
    if op_name in IRREGULAR_METHODS:
        return IRREGULAR_METHODS[op_name]
    word = op_name.replace("TFLite", "")
    parts = [p for p in re.split(r"[_-]", word) if p]
    out = "".join(p[0].upper() + p[1:].lower() if p[0].isalpha() and len(p) > 1 else p.upper() for p in parts)
    return "Add" + out
