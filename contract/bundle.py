"""The bundle contract: model.json, read and checked against the .tflite it describes.

model.json is the one thing the build side and the device side agree on. It is
parsed into frozen dataclasses that reject unknown keys, so a typo is an error
rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import ContractError
from .protocol import codec_for

FORMAT = "tinysense-bundle/1"
INTEGER_DTYPES = ("int8", "uint8", "int16")
DTYPES = (*INTEGER_DTYPES, "float32", "float16", "int32")
DTYPE_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
LAYOUTS = ("NHWC", "NWC")
KINDS = ("image", "sensor")
MAX_JSON_BYTES = 1 << 20  # a model.json with 100,000 labels is about 1 MB
MAX_JSON_DEPTH = 16


def _number(value, where: str, positive: bool = False) -> float:
    """A finite JSON number (not a string, not a bool); positive when asked."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractError(f"model.json: {where} must be a number, not {json.dumps(value)[:40]}")
    if not math.isfinite(value) or (positive and value <= 0):
        raise ContractError(f"model.json: {where} must be a finite{' positive' if positive else ''} number, "
                          f"not {value}")
    return float(value)


def _integer(value, where: str, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(f"model.json: {where} must be a whole number, not {json.dumps(value)[:40]}")
    if low is not None and value < low:
        raise ContractError(f"model.json: {where} must be at least {low}, not {value}")
    return value


def _numbers(value, where: str, positive: bool = False) -> float | tuple[float, ...]:
    if isinstance(value, list):
        if not value:
            raise ContractError(f"model.json: {where} is an empty list")
        return tuple(_number(v, f"{where}[{i}]", positive) for i, v in enumerate(value))
    return _number(value, where, positive)


def _ints(value, where: str, low: int = 1) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ContractError(f"model.json: {where} must be a non-empty list of whole numbers")
    return tuple(_integer(v, f"{where}[{i}]", low) for i, v in enumerate(value))


def _choice(value, where: str, choices) -> None:
    if value not in choices:
        raise ContractError(f"model.json: {where} {value!r} is not one of {', '.join(map(str, choices))}")


def _depth(value, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth, without recursion (a hostile file can nest thousands deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            break
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def parse_json(text: str, where: str) -> Any:
    """JSON within the size and depth bounds, as one ContractError otherwise."""
    size = len(text.encode(errors="surrogatepass"))  # bytes, not characters
    if size > MAX_JSON_BYTES:
        raise ContractError(f"{where} is {size:,} bytes, more than the {MAX_JSON_BYTES:,} a model.json may be")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ContractError(f"{where} is not valid JSON ({str(e)[:80]}); rebuild the bundle") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise ContractError(f"{where} nests deeper than {MAX_JSON_DEPTH} levels: it is not a model.json")
    return data


def _from_dict(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ContractError(f"model.json: {where} must be an object")
    names = {f.name for f in dataclasses.fields(cls) if f.compare}  # "where" is ours, not the file's
    unknown = sorted(set(data) - names)
    if unknown:
        raise ContractError(f"model.json: unknown key(s) {', '.join(unknown)} in {where}; remove them")
    required = {
        f.name for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(data))
    if missing:
        raise ContractError(f"model.json: {where} lacks {', '.join(missing)}")
    return data


@dataclass(frozen=True)
class Preprocess:
    """``float_input = (raw - mean) / std``; mean and std are a number or one per channel."""

    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0
    layout: str = "NHWC"  # NHWC for images, NWC (batch, steps, channels) for sensor windows
    color: str | None = None  # "gray" or "rgb" for images
    size: tuple[int, ...] | None = None  # (height, width) or (steps,)
    # sensor recordings of another length: "resample" (linear) or "pad" (last sample repeated); None: refuse
    length: str | None = None

    def __post_init__(self):
        where = "input.preprocess"
        for key, positive in (("mean", False), ("std", True)):
            v = getattr(self, key)
            object.__setattr__(self, key, _numbers(list(v) if isinstance(v, tuple) else v, f"{where}.{key}",
                                                   positive))
        _choice(self.layout, f"{where}.layout", LAYOUTS)
        _choice(self.color, f"{where}.color", (None, "gray", "rgb", "bgr"))
        _choice(self.length, f"{where}.length", (None, "resample", "pad"))
        if self.size is not None:
            object.__setattr__(self, "size", _ints(list(self.size), f"{where}.size"))

    @classmethod
    def from_dict(cls, data: Any, where: str = "input.preprocess") -> "Preprocess":
        return cls(**_from_dict(cls, data, where))


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int
    preprocess: Preprocess | None = None

    where: str = field(default="tensor", repr=False, compare=False)

    def __post_init__(self):
        w = self.where
        object.__setattr__(self, "shape", _ints(list(self.shape), f"{w}.shape"))
        _choice(self.dtype, f"{w}.dtype", DTYPES)
        integer = self.dtype in INTEGER_DTYPES
        object.__setattr__(self, "scale", _number(self.scale, f"{w}.scale", positive=integer))
        zp = _integer(self.zero_point, f"{w}.zero_point")
        low, high = DTYPE_RANGE.get(self.dtype, (zp, zp))
        if not low <= zp <= high:
            raise ContractError(f"model.json: {w}.zero_point {zp} is outside {self.dtype} ({low}..{high})")

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "TensorSpec":
        d = dict(_from_dict(cls, data, where))
        if d.get("preprocess") is not None:
            d["preprocess"] = Preprocess.from_dict(d["preprocess"], f"{where}.preprocess")
        return cls(**d, where=where)


@dataclass(frozen=True)
class ModelSpec:
    """What model.json promises about the model beside it."""

    labels: tuple[str, ...]
    kind: str
    input: TensorSpec
    output: TensorSpec
    tflite_sha256: str
    format: str = FORMAT
    variant: str | None = None
    dataset: str | None = None
    seed: int | None = None
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.format != FORMAT:
            raise ContractError(f"model.json: format {self.format!r:.60} is not {FORMAT!r}: a bundle of another "
                                "tinysense; rebuild it with this one's python -m build_model")
        labels = self.labels
        if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(v, str) for v in labels):
            raise ContractError("model.json: labels must be a non-empty list of strings")
        try:  # what a receiver would refuse in the device's hello is refused here, before any run
            codec_for("jsonl", labels)
        except ValueError as e:
            raise ContractError(f"model.json: {e}") from None
        object.__setattr__(self, "labels", tuple(labels))
        for key in ("variant", "dataset"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise ContractError(f"model.json: {key} must be a string")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ContractError(f"model.json: seed must be a whole number, not {self.seed!r:.40}")
        _choice(self.kind, "kind", KINDS)
        if not isinstance(self.tflite_sha256, str):  # load() compares it with the file itself
            raise ContractError("model.json: tflite_sha256 must be a string")
        pre = self.input.preprocess
        if pre is None:
            raise ContractError("model.json: input.preprocess is missing (mean, std, layout)")
        if self.output.shape[-1] != len(labels):
            raise ContractError(f"model.json: {len(labels)} labels but the output has {self.output.shape[-1]} classes")
        want_layout = "NHWC" if self.kind == "image" else "NWC"
        rank = 4 if self.kind == "image" else 3
        if pre.layout != want_layout or len(self.input.shape) != rank:
            raise ContractError(f"model.json: a {self.kind} model takes {want_layout} input of rank {rank}, "
                              f"not {pre.layout} {list(self.input.shape)}")
        channels = self.input.shape[-1]
        for key in ("mean", "std"):
            v = getattr(pre, key)
            if isinstance(v, tuple) and len(v) not in (1, channels):
                raise ContractError(f"model.json: input.preprocess.{key} has {len(v)} values for {channels} channels")

    @classmethod
    def from_dict(cls, data: Any) -> "ModelSpec":
        d = dict(_from_dict(cls, data, "the top level"))
        d["input"] = TensorSpec.from_dict(d["input"], "input")
        d["output"] = TensorSpec.from_dict(d["output"], "output")
        for key in ("metrics", "provenance"):
            if not isinstance(d.get(key, {}), dict):
                raise ContractError(f"model.json: {key} must be an object")
        return cls(**d)

    def to_dict(self) -> dict:
        def clean(v):
            if dataclasses.is_dataclass(v):
                v = dataclasses.asdict(v)
            if isinstance(v, dict):  # None and empty objects are left out, as a hand-written file would
                return {k: clean(x) for k, x in v.items() if x is not None and x != {} and k != "where"}
            if isinstance(v, (tuple, list)):
                return [clean(x) for x in v]
            return v
        return clean(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def tensor_matches(spec: TensorSpec, shape: Sequence[int], dtype: str, scale: float, zero_point: int) -> list[str]:
    """Differences between what model.json says and what the .tflite tensor is."""
    problems = []
    if tuple(int(s) for s in shape) != spec.shape:
        problems.append(f"shape {list(spec.shape)} vs {list(shape)}")
    if dtype != spec.dtype:
        problems.append(f"dtype {spec.dtype} vs {dtype}")
    if abs(scale - spec.scale) > 1e-6 * max(abs(scale), 1e-12):
        problems.append(f"scale {spec.scale} vs {scale}")
    if int(zero_point) != spec.zero_point:
        problems.append(f"zero point {spec.zero_point} vs {zero_point}")
    return problems


@dataclass(frozen=True)
class Bundle:
    """A bundle folder once read: its spec, the model bytes and where it came from."""

    path: Path
    spec: ModelSpec
    model: bytes

    @property
    def testset_path(self) -> Path:
        return self.path / "testset.npz"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load(path: str | Path) -> Bundle:
    """Read BUNDLE_DIR (or a model.json path), check the sha256, and return the bundle."""
    path = Path(path)
    if path.is_file() and path.name == "model.json":
        path = path.parent
    if not path.is_dir():
        raise ContractError(f"bundle folder {path} does not exist: build one with 'python -m build_model --out {path}'")
    for name in ("model.json", "model.tflite"):
        if not (path / name).is_file():
            raise ContractError(f"bundle {path} is incomplete: {name} is missing; "
                                "rebuild it with python -m build_model")
    raw = (path / "model.json").read_bytes()
    if len(raw) > MAX_JSON_BYTES:  # before decoding: the bound is in bytes
        raise ContractError(f"{path / 'model.json'} is {len(raw):,} bytes, more than the {MAX_JSON_BYTES:,} a "
                            "model.json may be")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ContractError(f"{path / 'model.json'} is not UTF-8 text; rebuild the bundle") from None
    try:
        spec = ModelSpec.from_dict(parse_json(text, str(path / "model.json")))
    except (TypeError, ValueError) as e:
        raise ContractError(f"{path / 'model.json'}: {e}") from None
    model = (path / "model.tflite").read_bytes()
    if sha256(model) != spec.tflite_sha256:
        raise ContractError(
            f"{path / 'model.tflite'} does not match model.json (sha256 differs): copy the bundle again as a whole"
        )
    if spec.input.dtype not in INTEGER_DTYPES or spec.output.dtype not in INTEGER_DTYPES:
        raise ContractError(
            f"bundle {path} holds a {spec.input.dtype} model; the device runs full-integer models: "
            "rebuild with the int8 variant"
        )
    return Bundle(path=path, spec=spec, model=model)
