"""Named architectures (``--arch``): each converts to full int8, takes QAT and runs in TFLM.

Sensor nets take (steps, channels) and are written with 2-D layers and k x 1 kernels:
tensorflow-model-optimization cannot quantize-aware-train Conv1D, and the converter
lowers Conv1D to CONV_2D anyway, so this is the same network in a form every
variant accepts. Figures for each (parameters, MACs, int8 bytes, arena) come from
``bench/arch_bench.py``; the README table is its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import UsageError

# Keras' 0.99 needs hundreds of steps to settle; a set of 30 recordings gives a few per epoch,
# and validation scores made with unsettled statistics mislead early stopping.
BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class Arch:
    name: str
    kind: str  # "sensor" or "image"
    summary: str
    build: Callable  # (input_shape, classes, width) -> keras.Model


def _keras():
    from .tf import keras
    return keras


def _sensor_input(L, input_shape):
    steps, channels = input_shape
    inp = L.Input(input_shape)
    return inp, L.Reshape((steps, 1, channels))(inp)


def _conv_bn_relu(L, x, filters: int, k: int, strides: int = 1):
    x = L.Conv2D(filters, (k, 1), strides=(strides, 1), padding="same", use_bias=False)(x)
    x = L.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return L.ReLU()(x)


def _first_stride(steps: int) -> int:
    """Long recordings (ACSF1: 1,460 steps) are strided in the first layer to keep MACs and arena small."""
    return 4 if steps >= 1024 else 2 if steps >= 384 else 1


def _fcn(input_shape, classes: int, width: float, separable: bool, name: str):
    keras = _keras()
    L = keras.layers
    inp, x = _sensor_input(L, input_shape)
    f = [max(4, int(round(n * width))) for n in (32, 64, 32)]
    x = _conv_bn_relu(L, x, f[0], 8, _first_stride(input_shape[0]))
    for filters, k in ((f[1], 5), (f[2], 3)):
        if separable:  # depthwise k x 1, then pointwise 1 x 1
            x = L.DepthwiseConv2D((k, 1), padding="same", use_bias=False)(x)
            x = L.ReLU()(L.BatchNormalization(momentum=BN_MOMENTUM)(x))
            k = 1
        x = _conv_bn_relu(L, x, filters, k)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(classes, activation="softmax")(x), name=name)


def fcn(input_shape: tuple[int, ...], classes: int, width: float = 1.0):
    """Three conv + batch norm + ReLU blocks (kernels 8, 5, 3), global average pooling, softmax.

    The FCN of Wang et al. (2017) with 32-64-32 filters instead of 128-256-128
    (about a sixteenth of its parameters).
    """
    return _fcn(input_shape, classes, width, False, "fcn")


def ds_fcn(input_shape: tuple[int, ...], classes: int, width: float = 1.0):
    """FCN with depthwise-separable blocks after the first: for the smallest MCUs."""
    return _fcn(input_shape, classes, width, True, "ds_fcn")


def sensor_cnn(input_shape: tuple[int, ...], classes: int, width: float = 1.0):
    """The first version's 1-D CNN: conv 16 (k5), max pool, conv 32 (k5), global average pooling."""
    keras = _keras()
    L = keras.layers
    inp, x = _sensor_input(L, input_shape)
    x = L.Conv2D(max(4, int(16 * width)), (5, 1), padding="same", activation="relu")(x)
    x = L.MaxPooling2D((2, 1))(x)
    x = L.Conv2D(max(4, int(32 * width)), (5, 1), padding="same", activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(classes, activation="softmax")(x), name="sensor_cnn")


def small_cnn(input_shape: tuple[int, ...], classes: int, width: float = 1.0):
    """Conv-Pool-Conv-Pool-Dense, the shape of the Fashion-MNIST walk-throughs."""
    keras = _keras()
    L = keras.layers
    return keras.Sequential([
        L.Input(input_shape),
        L.Conv2D(max(4, int(16 * width)), 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.Conv2D(max(4, int(32 * width)), 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.Flatten(),
        L.Dense(classes, activation="softmax"),
    ], name="small_cnn")


def mobilenet(input_shape: tuple[int, ...], classes: int, width: float = 0.25):
    """A MobileNet (v1) style net: a strided 3 x 3 conv, then depthwise-separable blocks
    (depthwise 3 x 3 + BN + ReLU6, pointwise 1 x 1 + BN + ReLU6), filters scaled by ``width``.

    Written here rather than taken from keras.applications: the tflite-micro interpreter
    package aborts (SIGABRT) on keras.applications MobileNet and MobileNetV2 graphs, and on
    this net once a layer has 128 channels (width 0.5 and up), measured here; width 0.25
    (64 channels at most) runs. Wider ones still build and run in LiteRT; the TFLM column
    then says no, with the reason. keras.applications nets come in through ``--model``.
    """
    keras = _keras()
    L = keras.layers

    def f(n: int) -> int:
        return max(8, int(round(n * width / 8)) * 8)  # multiples of 8, as MobileNet rounds
    h, w, _ = input_shape
    inp = L.Input(input_shape)
    x = L.Conv2D(f(32), 3, strides=2 if min(h, w) >= 32 else 1, padding="same", use_bias=False)(inp)
    x = L.ReLU(6.0)(L.BatchNormalization(momentum=BN_MOMENTUM)(x))
    for filters, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1)):
        x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = L.ReLU(6.0)(L.BatchNormalization(momentum=BN_MOMENTUM)(x))
        x = L.Conv2D(f(filters), 1, use_bias=False)(x)
        x = L.ReLU(6.0)(L.BatchNormalization(momentum=BN_MOMENTUM)(x))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(classes, activation="softmax")(x), name="mobilenet")


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("fcn", "sensor", "conv+BN+ReLU x3 (32-64-32), global average pooling", fcn),
    Arch("ds_fcn", "sensor", "FCN with depthwise-separable blocks, for the smallest MCUs", ds_fcn),
    Arch("sensor_cnn", "sensor", "the first version's conv-pool-conv net (for comparison)", sensor_cnn),
    Arch("small_cnn", "image", "conv-pool-conv-pool-dense", small_cnn),
    Arch("mobilenet", "image", "MobileNet-style depthwise-separable net, --width multiplier (default 0.25)", mobilenet),
)}
# Picked by bench/build_bench.py --archs on the UCR/UEA sets and on digits (README, "Architectures").
DEFAULT = {"sensor": "fcn", "image": "small_cnn"}


def get(name: str | None, kind: str) -> Arch:
    """The arch named ``name`` (or the default for ``kind``); refuse one made for the other kind of data."""
    arch = ARCHS.get(name or DEFAULT[kind])
    if arch is None:
        raise UsageError(f"unknown --arch {name!r}: choose from {', '.join(ARCHS)}")
    if arch.kind != kind:
        others = ", ".join(a for a, v in ARCHS.items() if v.kind == kind)
        raise UsageError(f"--arch {name} is for {arch.kind} data, this dataset is {kind}: choose from {others}")
    return arch
