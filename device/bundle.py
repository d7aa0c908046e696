"""The bundle contract: model.json, read and checked against the .tflite it describes.

model.json is the one thing the build side and the device side agree on. It is
parsed into frozen dataclasses that reject unknown keys, so a typo is an error
rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import DeviceError

FORMAT = "tinysense-bundle/1"
INTEGER_DTYPES = ("int8", "uint8", "int16")


def _from_dict(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise DeviceError(f"model.json: {where} must be an object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DeviceError(f"model.json: unknown key(s) {', '.join(unknown)} in {where}; remove them")
    required = {
        f.name for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(data))
    if missing:
        raise DeviceError(f"model.json: {where} lacks {', '.join(missing)}")
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

    @classmethod
    def from_dict(cls, data: Any, where: str = "input.preprocess") -> "Preprocess":
        d = dict(_from_dict(cls, data, where))
        for key in ("mean", "std"):
            if isinstance(d.get(key), list):
                d[key] = tuple(float(v) for v in d[key])
        if d.get("size") is not None:
            d["size"] = tuple(int(v) for v in d["size"])
        pre = cls(**d)
        stds = pre.std if isinstance(pre.std, tuple) else (pre.std,)
        if any(s == 0 for s in stds):
            raise DeviceError("model.json: input.preprocess.std must not be 0")
        if pre.length not in (None, "resample", "pad"):
            raise DeviceError(f"model.json: input.preprocess.length {pre.length!r} is not resample or pad")
        if pre.color not in (None, "gray", "rgb", "bgr"):
            raise DeviceError(f"model.json: input.preprocess.color {pre.color!r} is not gray, rgb or bgr")
        return pre


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int
    preprocess: Preprocess | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "TensorSpec":
        d = dict(_from_dict(cls, data, where))
        d["shape"] = tuple(int(v) for v in d["shape"])
        d["scale"] = float(d["scale"])
        d["zero_point"] = int(d["zero_point"])
        if d.get("preprocess") is not None:
            d["preprocess"] = Preprocess.from_dict(d["preprocess"], f"{where}.preprocess")
        return cls(**d)


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

    @classmethod
    def from_dict(cls, data: Any) -> "ModelSpec":
        d = dict(_from_dict(cls, data, "the top level"))
        d["labels"] = tuple(str(v) for v in d["labels"])
        d["input"] = TensorSpec.from_dict(d["input"], "input")
        d["output"] = TensorSpec.from_dict(d["output"], "output")
        spec = cls(**d)
        if spec.kind not in ("image", "sensor"):
            raise DeviceError(f"model.json: kind {spec.kind!r} is neither image nor sensor")
        if spec.input.preprocess is None:
            raise DeviceError("model.json: input.preprocess is missing (mean, std, layout)")
        if spec.output.shape[-1] != len(spec.labels):
            raise DeviceError(
                f"model.json: {len(spec.labels)} labels but the output has {spec.output.shape[-1]} classes"
            )
        return spec

    def to_dict(self) -> dict:
        def clean(v):
            if dataclasses.is_dataclass(v):
                v = dataclasses.asdict(v)
            if isinstance(v, dict):  # None and empty objects are left out, as a hand-written file would
                return {k: clean(x) for k, x in v.items() if x is not None and x != {}}
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
        raise DeviceError(f"bundle folder {path} does not exist: build one with 'python -m build_model --out {path}'")
    for name in ("model.json", "model.tflite"):
        if not (path / name).is_file():
            raise DeviceError(f"bundle {path} is incomplete: {name} is missing; rebuild it with python -m build_model")
    try:
        raw = json.loads((path / "model.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DeviceError(f"{path / 'model.json'} is not valid JSON ({e}); rebuild the bundle") from None
    try:
        spec = ModelSpec.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise DeviceError(f"{path / 'model.json'}: {e}") from None
    model = (path / "model.tflite").read_bytes()
    if sha256(model) != spec.tflite_sha256:
        raise DeviceError(
            f"{path / 'model.tflite'} does not match model.json (sha256 differs): copy the bundle again as a whole"
        )
    if spec.input.dtype not in INTEGER_DTYPES or spec.output.dtype not in INTEGER_DTYPES:
        raise DeviceError(
            f"bundle {path} holds a {spec.input.dtype} model; the device runs full-integer models: "
            "rebuild with the int8 variant"
        )
    return Bundle(path=path, spec=spec, model=model)
