"""Keras models: a named architecture (archs.py) or the user's own file, made fit for every variant.

A user's model is taken as it is except where a variant cannot: Conv1D and the 1-D
pooling layers are rewritten as the equivalent k x 1 2-D layers between two reshapes
(the same numbers, and a form tensorflow-model-optimization can quantize-aware-train).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import BuildError, archs
from .datasets import Dataset
from .tf import keras


def load_user_model(path: str | Path) -> "keras.Model":
    """A .keras, legacy .h5 or SavedModel folder, loaded with Keras 2 (tf_keras).

    tf_keras reads old layer configs (DepthwiseConv2D's ``groups``) that Keras 3
    rejects, and it is the Keras tensorflow-model-optimization needs.
    """
    path = Path(path)
    if not path.exists():
        raise BuildError(f"model file {path} does not exist")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - h5py, zipfile, protobuf and Keras each raise their own kind
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise BuildError(f"cannot load Keras model {path} ({first}): give a .keras, .h5 or SavedModel folder") from None
    if not isinstance(model, keras.Model):
        raise BuildError(f"{path} is a bare SavedModel, not a Keras model: save it with model.save('model.keras')")
    return model


def check_fits(model: "keras.Model", ds: Dataset) -> None:
    """Raise when the model's input or output cannot take this dataset."""
    want = tuple(model.input_shape[1:])
    have = ds.sample_shape
    if len(want) != len(have) or any(w is not None and w != h for w, h in zip(want, have)):
        raise BuildError(f"the model takes inputs of shape {want} but {ds.name} samples are {have}: "
                         "choose a matching --dataset or --image-size")
    classes = model.output_shape[-1]
    if classes != len(ds.labels):
        raise BuildError(f"the model has {classes} outputs but {ds.name} has {len(ds.labels)} classes")


def make(ds: Dataset, arch: str | None = None, width: float | None = None):
    """The named arch (or the default for this kind of data), built for the data set's shape and classes."""
    a = archs.get(arch, ds.kind)
    return a.build(ds.sample_shape, len(ds.labels), **({"width": width} if width else {}))


def has_recurrent(model) -> bool:
    """Whether any layer (nested models included) is an RNN: those convert only with a static batch."""
    return any(isinstance(layer, keras.layers.RNN) or (isinstance(layer, keras.Model) and has_recurrent(layer))
               for layer in model.layers)


def backbone(model):
    """The nested Model inside a user's model (a MobileNet or EfficientNet base), or None."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return nested[0] if len(nested) == 1 else None


def _one_d(layer) -> bool:
    L = keras.layers
    return isinstance(layer, (L.Conv1D, L.MaxPooling1D, L.AveragePooling1D, L.GlobalAveragePooling1D,
                              L.GlobalMaxPooling1D))


def conv1d_as_conv2d(model):
    """The same model with every Conv1D and 1-D pooling as Reshape -> its k x 1 2-D twin -> Reshape.

    Weights are carried over; models without such layers come back unchanged. Works on
    Sequential and single-input functional models whose layers each have one inbound node.
    """
    if not any(_one_d(layer) for layer in model.layers):
        return model
    if len(model.inputs) != 1:
        raise BuildError("a Conv1D model with several inputs cannot be rewritten for QAT: give a single-input model")
    inp = keras.Input(model.input_shape[1:], name=model.inputs[0].name.split(":")[0])
    made: dict[int, object] = {id(model.inputs[0]): inp}
    layers = model.layers if isinstance(model, keras.Sequential) else [
        layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    x = inp
    for layer in layers:
        if isinstance(model, keras.Sequential):
            args = x
        else:
            nodes = layer._inbound_nodes
            if len(nodes) != 1:
                raise BuildError(f"layer {layer.name} is used more than once: the Conv1D rewrite needs each layer once")
            ins = nodes[0].input_tensors
            args = [made[id(t)] for t in ins] if isinstance(ins, (list, tuple)) else made[id(ins)]
        out = _as_2d(layer, args) if _one_d(layer) else _copy(layer)(args)
        if not isinstance(model, keras.Sequential):
            made[id(layer.output)] = out
        x = out
    outputs = x if isinstance(model, keras.Sequential) else [made[id(t)] for t in model.outputs]
    if isinstance(outputs, list) and len(outputs) == 1:
        outputs = outputs[0]
    return keras.Model(inp, outputs, name=model.name)


def _copy(layer):
    clone = layer.__class__.from_config(layer.get_config())
    clone.build(layer.input_shape)
    clone.set_weights(layer.get_weights())
    return clone


def _as_2d(layer, x):
    """One 1-D layer as Reshape (steps, 1, channels) -> the 2-D layer with k x 1 windows -> Reshape back."""
    L = keras.layers
    if isinstance(layer, L.Conv1D):
        return _conv2d_from_conv1d(layer, x)
    c = layer.get_config()
    if c.get("data_format", "channels_last") != "channels_last":
        raise BuildError(f"layer {layer.name} is channels_first: the rewrite needs channels_last")
    steps, channels = layer.input_shape[1:]
    y = L.Reshape((steps, 1, channels), name=f"{layer.name}_to_2d")(x)
    if isinstance(layer, (L.GlobalAveragePooling1D, L.GlobalMaxPooling1D)):
        cls = L.GlobalAveragePooling2D if isinstance(layer, L.GlobalAveragePooling1D) else L.GlobalMaxPooling2D
        return cls(keepdims=c.get("keepdims", False), name=layer.name)(y) if not c.get("keepdims") else \
            L.Reshape((1, channels))(cls(keepdims=True, name=layer.name)(y))
    cls = L.MaxPooling2D if isinstance(layer, L.MaxPooling1D) else L.AveragePooling2D
    pool = cls((c["pool_size"][0], 1), strides=(c["strides"][0], 1), padding=c["padding"], name=layer.name)
    y = pool(y)
    return L.Reshape((pool.output_shape[1], channels), name=f"{layer.name}_to_1d")(y)


def _conv2d_from_conv1d(layer, x):
    c = layer.get_config()
    if c.get("padding") == "causal":
        raise BuildError(f"Conv1D {layer.name} uses causal padding, which has no Conv2D twin: use 'same' or 'valid'")
    if c.get("groups", 1) != 1:
        raise BuildError(f"Conv1D {layer.name} is grouped, which the rewrite does not handle")
    steps, channels = layer.input_shape[1:]
    conv = keras.layers.Conv2D(c["filters"], (c["kernel_size"][0], 1), strides=(c["strides"][0], 1),
                               padding=c["padding"], dilation_rate=(c["dilation_rate"][0], 1),
                               activation=c["activation"], use_bias=c["use_bias"], name=layer.name)
    y = keras.layers.Reshape((steps, 1, channels), name=f"{layer.name}_to_2d")(x)
    y = conv(y)
    weights = layer.get_weights()
    conv.set_weights([weights[0][:, None, :, :], *weights[1:]])  # (k, in, out) -> (k, 1, in, out)
    return keras.layers.Reshape((conv.output_shape[1], c["filters"]), name=f"{layer.name}_to_1d")(y)


def unrolled(model):
    """A copy with every Keras RNN unrolled (``unroll=True``), weights kept: plain FULLY_CONNECTED,
    LOGISTIC and TANH ops, for converters that cannot quantize the fused sequence op (int16x8)."""
    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.RNN):
            config["unroll"] = True
        return layer.__class__.from_config(config)
    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def image_size_for(model) -> tuple[int, int, int] | None:
    """(height, width, channels) a user's image model takes, when fixed."""
    shape = tuple(model.input_shape[1:])
    return shape if len(shape) == 3 and all(isinstance(s, int) for s in shape) else None


def count_macs(model) -> int:
    """Multiply-accumulates of one inference: conv, depthwise and dense layers (the rest is small)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            out = layer.output_shape
            total += int(np.prod(out[1:])) * int(np.prod(layer.kernel_size))
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv1D)):
            out = layer.output_shape
            total += int(np.prod(out[1:])) * int(np.prod(layer.kernel_size)) * int(layer.input_shape[-1])
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.LSTM):
            units, steps, feats = layer.units, layer.input_shape[1], layer.input_shape[-1]
            total += 4 * units * (feats + units) * steps
    return total
