"""One build: dataset -> model -> variants -> evaluation -> report -> bundle, staged then renamed."""

from __future__ import annotations

import datetime
import platform
import sys
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np

from device import atomic
from device.bundle import ModelSpec, Preprocess, TensorSpec, sha256
from device.runtime import Model

from . import calibration, datasets, models, quantize, report
from .evaluate import Evaluation, evaluate

TESTSET_MAX = 1000


@dataclass(frozen=True)
class BuildConfig:
    dataset: str = "digits"
    out: Path = Path("out/digits")
    variants: tuple[str, ...] = tuple(quantize.VARIANTS)
    model_path: str | None = None
    epochs: int = 15
    fine_tune_epochs: int = 3
    seed: int = 0
    calibration_count: int = calibration.DEFAULT_COUNT
    raw_input: bool = False  # a user model that takes raw values: mean 0, std 1
    window: int | None = 50
    stride: int = 10
    channels: int = 1
    image_size: int = 32
    force: bool = False
    quiet: bool = False


@dataclass
class BuildResult:
    out: Path
    chosen: str
    results: dict[str, Evaluation]
    table: str


def _progress(quiet: bool):
    from tqdm import tqdm

    def wrap(it, desc=""):
        return tqdm(it, desc=desc, disable=quiet, leave=False, file=sys.stderr, dynamic_ncols=True)
    return wrap


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("tinysense", "tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert",
                 "tflite-micro", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _tensor_spec(info, preprocess: Preprocess | None = None) -> TensorSpec:
    return TensorSpec(shape=info.shape, dtype=info.dtype.name, scale=info.scale, zero_point=info.zero_point,
                      preprocess=preprocess)


def make_spec(cfg: BuildConfig, ds: datasets.Dataset, data: bytes, chosen: str, result: Evaluation,
              calibration_count: int) -> ModelSpec:
    """model.json, with I/O read from the .tflite's own tensors rather than from what we meant."""
    m = Model(data, num_threads=1)
    return ModelSpec(
        labels=ds.labels, kind=ds.kind, input=_tensor_spec(m.input, ds.preprocess), output=_tensor_spec(m.output),
        tflite_sha256=sha256(data), variant=chosen, dataset=ds.name, seed=cfg.seed,
        metrics=result.to_dict(),
        provenance={
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": cfg.model_path or ("small_cnn" if ds.kind == "image" else "sensor_cnn"),
            "epochs": cfg.epochs,
            "calibration": {"split": "train", "samples": calibration_count, "stratified": True},
            "split": {"train": len(ds.train.y), "val": len(ds.val.y), "test": len(ds.test.y)},
            "tools": _versions(),
        },
    )


def build(cfg: BuildConfig, log=print) -> BuildResult:
    """Run the whole build; everything lands in ``cfg.out`` at once or not at all."""
    atomic.check_output_dir(cfg.out, cfg.force)  # fail before minutes of training
    progress = _progress(cfg.quiet)
    ds = datasets.load(cfg.dataset, seed=cfg.seed, window=cfg.window, stride=cfg.stride, channels=cfg.channels,
                       image_size=cfg.image_size)
    if cfg.raw_input:
        ds = replace(ds, preprocess=replace(ds.preprocess, mean=0.0, std=1.0))
    log(f"{ds.name}: {ds.kind}, {len(ds.labels)} classes, samples {ds.sample_shape}, "
        f"train/val/test {len(ds.train.y)}/{len(ds.val.y)}/{len(ds.test.y)}")

    models.seed_everything(cfg.seed)
    model = models.make(ds, cfg.model_path)
    models.fit(model, ds, cfg.epochs, cfg.quiet)
    calib = calibration.draw(ds, ds.train, cfg.calibration_count, cfg.seed)
    ctx = quantize.Context(ds, calib, cfg.fine_tune_epochs, cfg.quiet, progress)

    tflites: dict[str, bytes] = {}
    results: dict[str, Evaluation] = {}
    for name in cfg.variants:
        log(f"variant {name}: converting")
        models.seed_everything(cfg.seed)
        tflites[name] = quantize.convert(name, model, ctx)
        results[name] = evaluate(tflites[name], ds, progress, desc=f"evaluating {name}")

    candidates = [v for v in quantize.BUNDLE_CANDIDATES if v in results]
    chosen = max(candidates, key=lambda v: (results[v].accuracy, v == "int8"))
    spec = make_spec(cfg, ds, tflites[chosen], chosen, results[chosen], len(calib))

    with atomic.staged_dir(cfg.out, cfg.force) as stage:
        (stage / "variants").mkdir()
        for name, data in tflites.items():
            (stage / "variants" / f"{name}.tflite").write_bytes(data)
        (stage / "model.tflite").write_bytes(tflites[chosen])
        (stage / "model.json").write_text(spec.to_json())
        n = min(len(ds.test.y), TESTSET_MAX)
        np.savez_compressed(stage / "testset.npz", x=ds.test.x[:n], y=ds.test.y[:n],
                            labels=np.array(ds.labels))
        (stage / "report.json").write_text(report.to_json(results, ds, chosen))
        (stage / "report.md").write_text(report.markdown(results, ds, chosen))
        report.plot_variants(results, stage / "variants.png")
        matrix = report.confusion(ds.test.y, results[chosen].predictions, len(ds.labels))
        report.plot_confusion(matrix, ds.labels, f"{ds.name} {chosen}: {results[chosen].accuracy * 100:.1f}% top-1",
                              stage / "confusion.png")
    return BuildResult(Path(cfg.out), chosen, results, report.table(results))
