"""Every quantized variant of one trained Keras model, each converted by the real TFLiteConverter.

The presets and their naming are in variants.py. Every model is converted from a
concrete function with a static batch of 1: the converter then emits TFLite's fused
sequence operators (UNIDIRECTIONAL_SEQUENCE_LSTM) for Keras RNNs, which a dynamic
batch cannot lower, and every model gets the [1, ...] input the device feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from contract.capture import captured
from contract.tflite import read as read_flatbuffer

from . import BuildError
from .calibration import generator
from .datasets import Dataset
from .tf import keras, tf
from .training import TrainConfig, fit
from .variants import PRESETS


@dataclass(frozen=True)
class Context:
    """What a variant needs besides the float model."""

    ds: Dataset
    calibration: np.ndarray  # normalised float32 training samples
    fine_tune: TrainConfig  # epochs is the maximum for QAT, pruning and clustering
    progress: Callable  # wraps an iterable in a progress bar (or not)
    notes: list = field(default_factory=list)  # what a variant did differently, for the report


def converter(model):
    """A converter for ``model`` traced with a static batch of 1."""
    shape = [1, *model.input_shape[1:]]
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32))
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)


def _full_integer(model, ctx: Context, ops, io_type) -> bytes:
    c = converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = generator(ctx.calibration, lambda it: ctx.progress(it, desc="calibrating"))
    c.target_spec.supported_ops = [ops]
    c.inference_input_type = io_type
    c.inference_output_type = io_type
    return c.convert()


def float32(model, ctx: Context) -> bytes:
    return converter(model).convert()


def float16(model, ctx: Context) -> bytes:
    c = converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.target_spec.supported_types = [tf.float16]
    return c.convert()


def dynamic(model, ctx: Context) -> bytes:
    c = converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    return c.convert()


def int8(model, ctx: Context) -> bytes:
    return _full_integer(model, ctx, tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.int8)


def int16x8(model, ctx: Context) -> bytes:
    from .models import has_recurrent, unrolled

    # the converter has no 16x8 UNIDIRECTIONAL_SEQUENCE_LSTM; unrolled, the same RNN is plain 16x8 ops
    model = unrolled(model) if has_recurrent(model) else model
    return _full_integer(model, ctx, tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                         tf.int16)


def _fine_tune(model, ctx: Context, callbacks=()) -> None:
    """Fine-tune from the trained weights: the same early stopping, at a tenth of the learning rate."""
    ds = ctx.ds
    fit(model, ds.normalise(ds.train.x), ds.train.y, ds.validation_data(), ctx.fine_tune,
        kind=ds.kind, classes=len(ds.labels), callbacks=callbacks)


def _clone(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _qat_wrap(model):
    """tfmot's quantize_model; where it refuses a layer (an LSTM), every layer its default 8-bit
    registry supports is annotated and the rest is left to calibration. Returns (model, left out)."""
    import tensorflow_model_optimization as tfmot

    qk = tfmot.quantization.keras
    try:
        return qk.quantize_model(model), []
    except (ValueError, RuntimeError):
        pass
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry_mod)

    registry = registry_mod.Default8BitQuantizeRegistry()
    left_out = []

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if registry.supports(layer):
            return qk.quantize_annotate_layer(layer)
        left_out.append(layer.name)
        return layer
    try:
        annotated = keras.models.clone_model(model, clone_function=annotate)
        return qk.quantize_apply(annotated), left_out
    except (ValueError, RuntimeError) as e:
        raise BuildError(f"quantization-aware training cannot wrap this model ({str(e).splitlines()[0][:150]}); "
                         "leave qat_int8 out with --variants") from None


def qat_int8(model, ctx: Context) -> bytes:
    q, left_out = _qat_wrap(_clone(model))  # a copy: the annotated layers train in place
    if left_out:
        ctx.notes.append(f"qat_int8: {', '.join(left_out)} not quantization-aware trained (tfmot has no "
                         "quantizer for them); they are calibrated as in int8")
    _fine_tune(q, ctx)
    return int8(q, ctx)


def pruned_int8(model, ctx: Context, sparsity: float = 0.5) -> bytes:
    import tensorflow_model_optimization as tfmot

    sp = tfmot.sparsity.keras
    from .training import batch_size_for

    batch = ctx.fine_tune.batch_size or batch_size_for(len(ctx.ds.train.y))
    steps = max(ctx.fine_tune.epochs, 1) * int(np.ceil(len(ctx.ds.train.y) / batch))
    # reach full sparsity after 60% of the steps so the last ones can recover accuracy
    schedule = sp.PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0,
                                  end_step=max(int(steps * 0.6), 1))
    pruned = sp.prune_low_magnitude(_clone(model), pruning_schedule=schedule)
    # early stopping would end before the schedule reaches its sparsity: run every epoch
    ctx = replace(ctx, fine_tune=replace(ctx.fine_tune, min_epochs=ctx.fine_tune.epochs,
                                                restore_best=False))
    _fine_tune(pruned, ctx, callbacks=[sp.UpdatePruningStep()])
    return int8(sp.strip_pruning(pruned), ctx)


def clustered_int8(model, ctx: Context, clusters: int = 16) -> bytes:
    import tensorflow_model_optimization as tfmot

    cl = tfmot.clustering.keras
    clustered = cl.cluster_weights(_clone(model), number_of_clusters=clusters,
                                   cluster_centroids_init=cl.CentroidInitialization.KMEANS_PLUS_PLUS)
    _fine_tune(clustered, ctx)
    return int8(cl.strip_clustering(clustered), ctx)


CONVERTERS: dict[str, Callable] = {"float32": float32, "float16": float16, "dynamic": dynamic, "int8": int8,
                                   "int16x8": int16x8, "qat_int8": qat_int8, "pruned_int8": pruned_int8,
                                   "clustered_int8": clustered_int8}
VARIANTS = PRESETS


def check_full_integer(name: str, model: bytes) -> None:
    """Fail when a model declared full integer still holds a float operator or float I/O."""
    info = read_flatbuffer(model)
    floats = info.float_ops
    if floats:
        raise BuildError(f"variant {name} is declared full integer but keeps float operators: {', '.join(floats)}; "
                         "the model uses a layer the integer kernels lack, replace it or leave the variant out")


def convert(name: str, model, ctx: Context) -> bytes:
    """Build one variant's .tflite bytes, checked when it is declared full integer."""
    variant = PRESETS[name]
    try:
        with captured((2,)):  # the MLIR converter prints its settings on the C-level stderr
            data = CONVERTERS[name](model, ctx)
    except BuildError:
        raise
    except Exception as e:  # noqa: BLE001 - the converter raises ConverterError, ValueError, RuntimeError...
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise BuildError(f"converting variant {name} failed ({msg})") from None
    if variant.full_integer:
        check_full_integer(name, data)
    return data
