"""C sources for TensorFlow Lite Micro: pure functions from values to file texts, over templates."""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from importlib import resources
from string import Template

import numpy as np

from . import ExportError
from .resolver import resolver_method

C_KEYWORDS = set("""alignas alignof and asm auto bool break case catch char class const constexpr continue
decltype default delete do double else enum explicit export extern false float for friend goto if inline int
long mutable namespace new noexcept not nullptr operator or private protected public register return short
signed sizeof static struct switch template this throw true try typedef typeid typename union unsigned using
virtual void volatile while main""".split())
# Names a generated identifier must not take: <stdint.h>/<stddef.h> types, std, common macros
# and the C library's well-known globals (a namespace or array named so breaks the build).
RESERVED = set("""std int8_t uint8_t int16_t uint16_t int32_t uint32_t int64_t uint64_t intptr_t uintptr_t size_t
ssize_t ptrdiff_t wchar_t char16_t char32_t null eof true false min max assert errno stdin stdout stderr
offsetof tflite""".split())
MAX_NAME = 63  # C guarantees 63 significant characters; file names stay well under 255 bytes
CTYPES = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "int32": "int32_t", "float32": "float"}


def sanitise(name: str) -> str:
    """A C identifier from a file or folder name: other characters become ``_``; refuses what cannot be one."""
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name.strip()).strip("_").lower()
    shown = _comment(name)[:40] + ("..." if len(name) > 40 else "")
    if len(ident) > MAX_NAME:
        raise ExportError(f"name {shown!r} makes a {len(ident)}-character identifier, more than {MAX_NAME}: "
                          "pass a shorter --name")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ident or "0") or keyword.iskeyword(ident):
        raise ExportError(f"name {shown!r} does not make a C identifier ({ident or 'empty'!s}): pass --name, "
                          "starting with a letter")
    if ident in C_KEYWORDS or ident in RESERVED or ident.startswith("__") or re.fullmatch(r"_[a-z0-9_]*", ident):
        raise ExportError(f"name {shown!r} gives {ident!r}, which C, C++ or TFLM already use, so it cannot be "
                          "the C identifier here: pass another --name")
    return ident


def _comment(text: str) -> str:
    """Text for a ``//`` comment: one line of printable ASCII (a newline in a folder name would end the
    comment and put the rest into the code)."""
    return "".join(c if " " <= c <= "~" else "?" for c in str(text))[:200]


def _template(name: str) -> Template:
    return Template(resources.files("firmware_export").joinpath("templates", name).read_text())


def _c_array(values, per_line: int, fmt=str, indent: str = "  ") -> str:
    items = [fmt(v) for v in values]
    return "\n".join(indent + ", ".join(items[i:i + per_line]) + "," for i in range(0, len(items), per_line))


def _c_float(v: float) -> str:
    """A C float literal: ``1`` must be written ``1.0f``, since ``1f`` does not compile."""
    if not np.isfinite(v):
        return "0.0f"
    text = f"{float(v):.9g}"
    return (text if any(c in text for c in ".e") else text + ".0") + "f"


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@dataclass(frozen=True)
class Config:
    """What model_config.h states: measured arena, tensor facts, labels, preprocessing."""

    arena_bytes: int
    arena_recorded: int
    margin_percent: float
    input_shape: tuple[int, ...]
    input_dtype: str
    input_scale: float
    input_zero_point: int
    output_shape: tuple[int, ...]
    output_dtype: str
    output_scale: float
    output_zero_point: int
    labels: tuple[str, ...]
    is_classifier: bool = True  # outputs are class scores; otherwise values
    arena_bytes_64: int | None = None  # a 64-bit host's figure, when it differs from the 32-bit one
    arena_how: str = ""  # how the arena was measured, for the header's comment
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


def model_data(name: str, model: bytes, source: str, sha256: str) -> dict[str, str]:
    guard = name.upper()
    data = _c_array(model, 12, lambda b: f"0x{b:02x}")
    values = dict(name=name, guard=guard, source=_comment(source), sha256=sha256, bytes=data, length=len(model))
    return {f"{name}_model_data.h": _template("model_data.h.tmpl").substitute(values),
            f"{name}_model_data.cc": _template("model_data.cc.tmpl").substitute(values)}


def model_ops(name: str, ops: list[str], source: str) -> dict[str, str]:
    adds = "\n".join(f"  if (resolver.{resolver_method(op)}() != kTfLiteOk) return kTfLiteError;" for op in ops)
    text = _template("model_ops.h.tmpl").substitute(name=name, guard=name.upper(), source=_comment(source),
                                                    op_list=", ".join(ops), op_count=len(ops), adds=adds)
    return {f"{name}_model_ops.h": text}


def _size(shape) -> int:
    return int(np.prod(shape))


def _arena_comment(cfg: Config) -> str:
    how = cfg.arena_how or (f"Measured in the TFLM interpreter on a 64-bit host: {cfg.arena_recorded} bytes "
                            f"recorded, plus {cfg.margin_percent:g}% margin, rounded up to 16. Not measured on a "
                            "32-bit MCU, which usually needs less but not always: export with --tflm-tree and "
                            "--build cortex-m4 to measure it there.")
    words, lines = how.split(), [""]
    for w in words:  # wrapped to 100 columns, each line a comment of printable ASCII
        if len(lines[-1]) + len(w) + 1 > 96:
            lines.append("")
        lines[-1] = f"{lines[-1]} {w}".strip()
    return "\n".join(f"// {_comment(ln)}" for ln in lines)


def model_config(name: str, cfg: Config, source: str) -> dict[str, str]:
    for dtype in (cfg.input_dtype, cfg.output_dtype):
        if dtype not in CTYPES:
            raise ExportError(f"tensor type {dtype} has no C type here")
    text = _template("model_config.h.tmpl").substitute(
        name=name, guard=name.upper(), source=_comment(source), arena_bytes=cfg.arena_bytes,
        arena_bytes_64=cfg.arena_bytes_64 or cfg.arena_bytes, arena_how=_arena_comment(cfg),
        input_ctype=CTYPES[cfg.input_dtype],
        input_dims=len(cfg.input_shape), input_shape=", ".join(map(str, cfg.input_shape)),
        input_size=_size(cfg.input_shape), input_scale=_c_float(cfg.input_scale),
        input_zero_point=cfg.input_zero_point, output_ctype=CTYPES[cfg.output_dtype],
        output_size=_size(cfg.output_shape), output_scale=_c_float(cfg.output_scale),
        output_zero_point=cfg.output_zero_point, label_count=len(cfg.labels),
        is_classifier="true" if cfg.is_classifier else "false",
        labels=", ".join(_c_string(s) for s in cfg.labels), pre_count=len(cfg.mean),
        mean=", ".join(_c_float(v) for v in cfg.mean), std=", ".join(_c_float(v) for v in cfg.std))
    return {f"{name}_model_config.h": text}


def golden(name: str, inputs: np.ndarray, outputs: np.ndarray, truth: list[int], source: str) -> dict[str, str]:
    """``inputs`` (n, ...) and ``outputs`` (n, ...) already in the model's integer types."""
    def rows(arr):
        return "\n".join("  {" + ", ".join(str(int(v)) for v in row.reshape(-1)) + "}," for row in arr)
    text = _template("golden.h.tmpl").substitute(
        name=name, guard=name.upper(), source=_comment(source), count=len(inputs), inputs=rows(inputs),
        outputs=rows(outputs),
        truth=", ".join(str(t) for t in truth))
    return {f"{name}_golden.h": text}


def entry_points(name: str) -> dict[str, str]:
    return {"main.cc": _template("main.cc.tmpl").substitute(name=name),
            f"{name}.ino": _template("sketch.ino.tmpl").substitute(name=name)}
