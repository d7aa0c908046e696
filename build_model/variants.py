"""The variant presets by name, without TensorFlow (so ``--help`` and argument errors answer at once).

Naming: ``<weights/activations>`` for plain conversions (float32, float16, dynamic,
int8, int16x8) and ``<training>_int8`` for the ones that retrain first (qat, pruned,
clustered) and then convert to full int8. Every variant named ``*int8`` or
``int16x8`` is full integer: its input, output and every operator are integers.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import UsageError


@dataclass(frozen=True)
class Preset:
    name: str
    full_integer: bool
    summary: str


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("float32", False, "float32 weights and activations (the reference)"),
    Preset("float16", False, "float16 weights, float32 compute"),
    Preset("dynamic", False, "int8 weights, float activations quantized on the fly"),
    Preset("int8", True, "full integer: int8 weights, activations, input and output"),
    Preset("int16x8", True, "int8 weights, int16 activations, input and output"),
    Preset("qat_int8", True, "quantization-aware training, then full int8"),
    Preset("pruned_int8", True, "50% magnitude pruning, then full int8"),
    Preset("clustered_int8", True, "16-cluster weight sharing, then full int8"),
)}
NAMES = tuple(PRESETS)
BUNDLE_CANDIDATES = ("int8", "qat_int8")


def parse(text: str | None) -> list[str]:
    """A comma-separated subset, in canonical order; None means all."""
    if not text:
        return list(NAMES)
    asked = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in asked if t not in PRESETS]
    if unknown:
        raise UsageError(f"unknown variant {', '.join(unknown)}: choose from {', '.join(NAMES)}")
    if not any(v in asked for v in BUNDLE_CANDIDATES):
        raise UsageError("--variants must include int8 or qat_int8: the bundle carries a full-int8 model")
    return [v for v in NAMES if v in asked]
