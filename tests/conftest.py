"""Shared fixtures: one real digits bundle per session, the shared MLPerf model, and tool checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = ROOT.parent / "shared" / "models" / "mlperf-tiny-ic"


def require_tool(name: str) -> str:
    """The tool's path; skip when it is missing, except in CI where a missing tool is a failure."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is missing in CI: 'make system-deps' should have installed it")
    pytest.skip(f"{name} is not installed (make system-deps installs it)")


@pytest.fixture(scope="session", autouse=True)
def private_tmp(tmp_path_factory):
    """Every temporary file of the run (ours, TensorFlow's autograph modules, the child processes')
    in a folder of pytest's own, which it rotates; nothing else may appear in the system's.

    TensorFlow removes its autograph files only at a clean interpreter exit, so a process that was
    killed left dozens of them in /tmp on every run.
    """
    system = Path(tempfile.gettempdir())
    before = set(os.listdir(system))
    private = tmp_path_factory.mktemp("tmp")
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(private)  # this process, and every child it starts
    yield private
    tempfile.tempdir = saved[1]
    if saved[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[0]
    def new() -> set[str]:
        return {n for n in set(os.listdir(system)) - before if not n.startswith("pytest-of-")}
    left = new()
    if left:  # what another program has open there for a moment (a compiler's temporaries) goes again
        time.sleep(2)
        left &= new()
    assert not left, f"the tests left these in {system}: {sorted(left)[:10]}"


@pytest.fixture(scope="session")
def mlperf_dir() -> Path:
    if not (SHARED_MODELS / "pretrainedResnet_quant.tflite").is_file():
        pytest.skip("../shared/models/mlperf-tiny-ic is absent")
    return SHARED_MODELS


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory) -> Path:
    """A real bundle: digits, every variant, a few epochs (about 15 s)."""
    from build_model.cli import main

    out = tmp_path_factory.mktemp("bundles") / "digits"
    assert main(["--dataset", "digits", "--out", str(out), "--epochs", "6", "--fine-tune-epochs", "1",
                 "--quiet"]) == 0
    return out


def wait_for(cond, timeout: float = 20.0, what: str = "the condition") -> None:
    """Poll ``cond`` every 50 ms; fail the test, naming ``what``, after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def start_socat(tmp_path, a="app", b="host"):
    socat = require_tool("socat")
    proc = subprocess.Popen([socat, f"pty,raw,echo=0,link={tmp_path / a}",
                             f"pty,raw,echo=0,link={tmp_path / b}"])
    for _ in range(100):
        if (tmp_path / a).exists() and (tmp_path / b).exists():
            return proc
        time.sleep(0.05)
    proc.kill()
    pytest.fail("socat did not create the pty pair")


def full_int8(model, path: Path, samples: int) -> Path:
    """A Keras model converted to full int8 (int8 input and output), calibrated on seeded normal noise."""
    import numpy as np

    from build_model.tf import tf

    rng = np.random.default_rng(0)
    shape = (1, *model.input_shape[1:])
    c = tf.lite.TFLiteConverter.from_keras_model(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([rng.normal(size=shape).astype(np.float32)] for _ in range(samples))
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = c.inference_output_type = tf.int8
    path.write_bytes(c.convert())
    return path


def int8_ds_cnn(path: Path) -> Path:
    """The MLPerf Tiny keyword-spotting reference's shape (mlcommons/tiny, DS-CNN: a 49x10 input, a
    10x4 stride-2 conv and four depthwise-separable blocks of 64 channels), untrained, full int8."""

    from build_model.tf import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = L.Input((49, 10, 1))
    x = L.Conv2D(64, (10, 4), strides=(2, 2), padding="same", use_bias=False)(inp)
    x = L.ReLU()(L.BatchNormalization()(x))
    for _ in range(4):
        x = L.ReLU()(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)))
        x = L.ReLU()(L.BatchNormalization()(L.Conv2D(64, 1, use_bias=False)(x)))
    x = L.Flatten()(L.AveragePooling2D(pool_size=(25, 5))(x))
    m = keras.Model(inp, L.Dense(12, activation="softmax")(x))
    return full_int8(m, path, 50)


def int8_autoencoder(path: Path) -> Path:
    """A small dense int8 autoencoder of our own (640-16-8-16-640): tiny activations, 640 values out."""

    from build_model.tf import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    m = keras.Sequential([L.Input((640,)), L.Dense(16, activation="relu"), L.Dense(8, activation="relu"),
                          L.Dense(16, activation="relu"), L.Dense(640)])
    return full_int8(m, path, 100)


def int8_mobilenet(path: Path, size: int = 32) -> Path:
    """build_model's MobileNet-style net (width 0.25) on size x size x 3, untrained, full int8: a
    straight line of layers where TFLM's greedy arena plan is 1.33x the lower bound."""
    from build_model import archs
    from build_model.tf import keras

    keras.utils.set_random_seed(0)
    return full_int8(archs.mobilenet((size, size, 3), 2, 0.25), path, 20)
