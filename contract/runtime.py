"""The LiteRT interpreter, found once and created once.

Import order: ai_edge_litert (current), tflite_runtime (32-bit Pi OS, numpy<2),
then tensorflow.lite (a laptop with TensorFlow). Nothing here imports TensorFlow
unless both lighter packages are missing.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import numpy as np

from .errors import ContractError
from .bundle import ModelSpec, tensor_matches
from .capture import captured

_CANDIDATES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite.python.interpreter", "tensorflow"),
)
RESOLVERS = ("default", "reference")


def interpreter_module():
    """The first interpreter module that imports, or a ContractError saying what to install."""
    for module, _ in _CANDIDATES:
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    raise ContractError(
        "no TFLite interpreter is installed: pip install ai-edge-litert "
        "(on 32-bit Raspberry Pi OS: pip install tflite-runtime 'numpy<2')"
    )


@dataclass(frozen=True)
class TensorInfo:
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int


def _info(detail: dict) -> TensorInfo:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        index=detail["index"],
        shape=tuple(int(s) for s in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


class Model:
    """One interpreter, allocated once; ``run`` takes and returns the raw tensors."""

    def __init__(self, model: bytes, num_threads: int | None = None, resolver: str = "default",
                 keep_tensors: bool = False):
        mod = interpreter_module()
        kwargs = {"model_content": model, "num_threads": num_threads or os.cpu_count() or 1}
        if keep_tensors:  # intermediate tensors stay readable after invoke (debugging, parity)
            kwargs["experimental_preserve_all_tensors"] = True
        if resolver == "reference":
            kwargs["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_REF
        elif resolver != "default":
            raise ContractError(f"unknown resolver {resolver!r}: use one of {', '.join(RESOLVERS)}")
        try:
            with captured((2,)):  # LiteRT prints "INFO: Created ... XNNPACK delegate" on the C-level stderr
                self.interpreter = mod.Interpreter(**kwargs)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ContractError(f"the interpreter cannot load this model ({str(e).splitlines()[0]})") from None
        self.input = _info(self.interpreter.get_input_details()[0])
        self.output = _info(self.interpreter.get_output_details()[0])
        self._set = self.interpreter.set_tensor
        self._get = self.interpreter.get_tensor
        self._invoke = self.interpreter.invoke

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one input already in the model's dtype and shape; return a copy of the output."""
        self._set(self.input.index, x)
        self._invoke()
        return self._get(self.output.index)

    def check(self, spec: ModelSpec) -> None:
        """Raise when model.json's input or output does not describe this model's tensors."""
        for name, want, have in (("input", spec.input, self.input), ("output", spec.output, self.output)):
            problems = tensor_matches(want, have.shape, have.dtype.name, have.scale, have.zero_point)
            if problems:
                raise ContractError(
                    f"model.json {name} does not match the .tflite ({'; '.join(problems)}): rebuild the bundle"
                )


@dataclass(frozen=True)
class CheckedBundle:
    """A bundle that passed the gate: its spec and bytes, and the interpreter that runs them."""

    bundle: object  # bundle.Bundle
    model: Model

    @property
    def spec(self) -> ModelSpec:
        return self.bundle.spec


def open_bundle(path, num_threads: int | None = None) -> CheckedBundle:
    """The one gate every side uses: model.json checked field by field (bundle.load), the sha256
    against the .tflite, then the interpreter's own tensors against model.json. ContractError otherwise."""
    from .bundle import load

    b = load(path)
    model = Model(b.model, num_threads=num_threads)
    model.check(b.spec)
    return CheckedBundle(b, model)
