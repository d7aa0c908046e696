"""Write a minimal model.json for an int8 .tflite that tinysense did not build.

``python -m device.thirdparty MODEL.tflite --out DIR --labels a,b,c --kind image
[--mean M] [--std S] [--color rgb]``: reads shapes, dtypes, scale and zero point
from the model itself; the caller supplies what only they know (labels, preprocessing).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from contract import atomic
from contract.bundle import ModelSpec, Preprocess, TensorSpec, sha256
from contract.cli import run_cli
from contract.runtime import Model

from . import DeviceError


def spec_for(model: bytes, labels: list[str], kind: str, mean=0.0, std=1.0, color: str | None = None) -> ModelSpec:
    m = Model(model, num_threads=1)
    if kind == "image":
        gray = m.input.shape[-1] == 1
        pre = Preprocess(mean=mean, std=std, layout="NHWC", color=color or ("gray" if gray else "rgb"),
                         size=tuple(m.input.shape[1:3]))
    else:
        pre = Preprocess(mean=mean, std=std, layout="NWC", size=(m.input.shape[1],))

    def io(t, p=None) -> TensorSpec:
        return TensorSpec(t.shape, t.dtype.name, t.scale, t.zero_point, p)
    return ModelSpec(labels=tuple(labels), kind=kind, input=io(m.input, pre), output=io(m.output),
                     tflite_sha256=sha256(model))


def write(model_path: Path, out: Path, labels: list[str], kind: str, force: bool = False, **pre) -> Path:
    model = Path(model_path).read_bytes()
    spec = spec_for(model, labels, kind, **pre)
    ModelSpec.from_dict(spec.to_dict())  # the same checks the device will run
    with atomic.staged_dir(out, force) as stage:
        shutil.copyfile(model_path, stage / "model.tflite")
        (stage / "model.json").write_text(spec.to_json())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device.thirdparty", description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labels", required=True, help="comma-separated class names, in output order")
    p.add_argument("--kind", choices=("image", "sensor"), default="image")
    p.add_argument("--mean", type=float, default=0.0)
    p.add_argument("--std", type=float, default=1.0)
    p.add_argument("--color", choices=("gray", "rgb", "bgr"))
    p.add_argument("--force", action="store_true")
    return run_cli("thirdparty", p, write_from, argv)


def write_from(a) -> int:
    if not a.model.is_file():
        raise DeviceError(f"{a.model} does not exist")
    write(a.model, a.out, a.labels.split(","), a.kind, a.force, mean=a.mean, std=a.std, color=a.color)
    print(f"wrote {a.out / 'model.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
