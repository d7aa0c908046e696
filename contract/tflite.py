"""Read what a .tflite holds: operators, their tensor types, and the I/O tensors.

Uses the flatbuffer schema that ships with ai-edge-litert, so no TensorFlow is needed.
build_model and firmware_export both read models through here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ContractError

FLOAT_TYPES = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"}


def _schema():
    from ai_edge_litert import schema_py_generated as schema
    return schema


def _names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True)
class Op:
    name: str  # builtin name such as CONV_2D, or the custom code
    custom: bool
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]
    outputs: tuple[int, ...] = ()  # tensor indices of the main subgraph
    input_shapes: tuple[tuple[int, ...], ...] = ()  # of the main subgraph's operators (-1: optional, absent)
    output_shapes: tuple[tuple[int, ...], ...] = ()

    @property
    def is_float(self) -> bool:
        return bool(FLOAT_TYPES & set(self.input_types + self.output_types))


@dataclass(frozen=True)
class ModelInfo:
    ops: tuple[Op, ...]  # one per operator in the graph, in execution order
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]

    @property
    def op_names(self) -> list[str]:
        """Distinct operator names, sorted."""
        return sorted({op.name for op in self.ops})

    @property
    def float_ops(self) -> list[str]:
        return sorted({op.name for op in self.ops if op.is_float})

    @property
    def custom_ops(self) -> list[str]:
        return sorted({op.name for op in self.ops if op.custom})


def is_tflite(data: bytes) -> bool:
    """True when the bytes carry the TFLite flatbuffer identifier ``TFL3``."""
    return len(data) >= 8 and data[4:8] == b"TFL3"


def read(data: bytes) -> ModelInfo:
    """Parse the flatbuffer; raise ContractError when it is not a readable TFLite model."""
    if not is_tflite(data):
        raise ContractError("not a TFLite model (no TFL3 identifier): give a .tflite file written by the converter")
    schema = _schema()
    op_names, type_names = _names(schema.BuiltinOperator), _names(schema.TensorType)
    try:
        model = schema.Model.GetRootAs(data, 0)
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            if code == schema.BuiltinOperator.CUSTOM:
                codes.append(((oc.CustomCode() or b"?").decode(), True))
            else:
                codes.append((op_names.get(code, f"BUILTIN_{code}"), False))
        if model.SubgraphsLength() < 1:
            raise ContractError("the model has no subgraph: it is empty or truncated")
        ops = []
        inputs = outputs = ()
        for s in range(model.SubgraphsLength()):
            g = model.Subgraphs(s)
            types = [type_names.get(g.Tensors(t).Type(), "?") for t in range(g.TensorsLength())]
            shapes = [tuple(int(d) for d in g.Tensors(t).ShapeAsNumpy()) if g.Tensors(t).ShapeLength() else ()
                      for t in range(g.TensorsLength())] if s == 0 else []

            def tt(indices, types=types):
                return tuple(types[i] for i in indices if i >= 0)

            if s == 0:
                inputs, outputs = tt(g.InputsAsNumpy()), tt(g.OutputsAsNumpy())
            for o in range(g.OperatorsLength()):
                op = g.Operators(o)
                name, custom = codes[op.OpcodeIndex()]
                ins = tuple(int(i) for i in op.InputsAsNumpy())
                outs = tuple(int(i) for i in op.OutputsAsNumpy() if i >= 0)
                main = s == 0
                ops.append(Op(name, custom, tt(ins), tt(outs), outs if main else (),
                              tuple(shapes[i] if i >= 0 else (-1,) for i in ins) if main else (),
                              tuple(shapes[i] for i in outs) if main else ()))
    except ContractError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated buffer fails in struct, numpy or index arithmetic
        raise ContractError(f"the TFLite flatbuffer is damaged or truncated ({e or type(e).__name__}): "
                          "convert or copy it again") from None
    return ModelInfo(tuple(ops), inputs, outputs)
