"""Build-side figures, measured side by side in one run. Rerun: .venv/bin/python bench/build_bench.py

1. digits and basicmotions: int8 and qat_int8 accuracy gaps to float32, all on the .tflite files.
2. The blog recipe on the same trained model and data (calibration on the first 100 test
   samples, uint8 input and output, inputs cast rather than quantized) against ours.
3. Sizes: the shared MLPerf ResNet-8 through our variants (calibrated on synthetic 32x32 RGB
   images: only the size matters here), and the small default model's flatbuffer overhead.
4. The wall time of the demo build (every variant on digits).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from build_model import calibration, datasets, models, quantize
from build_model.tf import tf
from build_model.training import TrainConfig, fit, seed_everything
from contract import quant
from contract.runtime import Model
from contract.capture import captured

TUNE = TrainConfig(epochs=3, min_epochs=0, patience=3, learning_rate=1e-4, quiet=True)
MLPERF = ROOT.parent / "shared" / "models" / "mlperf-tiny-ic" / "pretrainedResnet.h5"


def blog_recipe(model, ds) -> bytes:
    """What the walk-throughs do: 100 test samples in order as calibration, uint8 I/O."""
    test = ds.normalise(ds.test.x[:100])

    def representative():
        for s in test:
            yield [s[None]]
    c = tf.lite.TFLiteConverter.from_keras_model(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = representative
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = tf.uint8
    c.inference_output_type = tf.uint8
    return c.convert()


def outputs(data: bytes, ds, cast: bool = False) -> np.ndarray:
    """Class probabilities for the whole test split, dequantized when the output is integer.

    ``cast=True`` feeds inputs the way the posts do, ``astype`` without rounding or clipping.
    """
    m = Model(data, num_threads=1)
    x = ds.normalise(ds.test.x)
    if m.input.dtype.kind in "iu":
        x = (x / m.input.scale + m.input.zero_point).astype(m.input.dtype) if cast else \
            quant.quantize(x, m.input.scale, m.input.zero_point, m.input.dtype)
    out = np.concatenate([m.run(x[i:i + 1]) for i in range(len(x))])
    return quant.dequantize(out, m.output.scale, m.output.zero_point) if out.dtype.kind in "iu" else out


def accuracy_figures(name: str, epochs: int) -> None:
    ds = datasets.load(name, seed=0)
    seed_everything(0)
    model = models.make(ds)
    fit(model, ds.normalise(ds.train.x), ds.train.y, (ds.normalise(ds.val.x), ds.val.y),
        TrainConfig(epochs=epochs, quiet=True), ds.kind, len(ds.labels))
    calib = calibration.draw(ds, ds.train, 300, seed=0)
    ctx = quantize.Context(ds, calib, TUNE, lambda it, **k: it)
    probs = {}
    for variant in ("float32", "int8", "qat_int8"):
        seed_everything(0)
        probs[variant] = outputs(quantize.convert(variant, model, ctx), ds)
    with captured((2,)):
        blog = blog_recipe(model, ds)
    probs["blog uint8 (cast input)"] = outputs(blog, ds, cast=True)
    probs["blog uint8 (round-clip)"] = outputs(blog, ds)
    ref = probs["float32"]
    acc_ref = np.mean(ref.argmax(1) == ds.test.y)
    print(f"{name}, test split {len(ds.test.y)} samples, same trained model:")
    print(f"  {'recipe':26s} {'top-1':>7s} {'gap':>9s} {'agree w/ float':>14s} {'mean |dp|':>10s}")
    for variant, p in probs.items():
        acc = np.mean(p.argmax(1) == ds.test.y)
        agree = np.mean(p.argmax(1) == ref.argmax(1))
        print(f"  {variant:26s} {acc * 100:6.2f}% {(acc - acc_ref) * 100:+7.2f}pt {agree * 100:13.2f}% "
              f"{np.mean(np.abs(p - ref)):10.4f}")
    print("  (blog rows calibrate on the first 100 test samples, so they are also scored on data they saw)")


def size_figures() -> None:
    ds = datasets.load("digits", seed=0)
    model = models.make(ds)
    ctx = quantize.Context(ds, calibration.draw(ds, ds.train, 300), TUNE, lambda it, **k: it)
    f32, i8 = (len(quantize.convert(v, model, ctx)) for v in ("float32", "int8"))
    params = model.count_params()
    print(f"small default model: {params} parameters; float32 {f32} B, int8 {i8} B "
          f"(int8/float32 {i8 / f32:.3f}); flatbuffer overhead beyond one byte per weight: {i8 - params} B")
    if not MLPERF.is_file():
        print("MLPerf ResNet-8: ../shared absent, skipped")
        return
    m = models.load_user_model(MLPERF)
    rng = np.random.default_rng(0)
    # smooth random RGB images, 0..255: blocky noise upsampled, so neighbouring pixels correlate
    coarse = rng.uniform(0, 255, (400, 8, 8, 3)).astype(np.float32)
    x = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
    y = np.arange(400) % 10
    synth = datasets._from_arrays("synthetic32", "image", [str(i) for i in range(10)], x, y, 0, color="rgb")
    ctx = quantize.Context(synth, x[:300].astype(np.float32), TUNE, lambda it, **k: it)
    sizes = {v: len(quantize.convert(v, m, ctx)) for v in ("float32", "float16", "int8")}
    print(f"MLPerf ResNet-8 ({m.count_params()} parameters): " + ", ".join(f"{k} {v} B" for k, v in sizes.items()))
    print(f"  int8/float32 {sizes['int8'] / sizes['float32']:.3f} (target <= 0.32), "
          f"float16/float32 {sizes['float16'] / sizes['float32']:.3f} (target <= 0.55)")


def demo_time() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "build_model", "--dataset", "digits", "--out", f"{tmp}/b", "-q"],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        print(f"demo build (digits, all 8 variants): {time.monotonic() - t0:.1f} s (target < 180 s)")


if __name__ == "__main__":
    accuracy_figures("digits", 300)
    accuracy_figures("basicmotions", 300)
    size_figures()
    demo_time()
