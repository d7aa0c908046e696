"""Every quantized variant of one trained Keras model, each converted by the real TFLiteConverter.

Naming: ``<weights/activations>`` for plain conversions (float32, float16, dynamic,
int8, int16x8) and ``<training>_int8`` for the ones that retrain first (qat, pruned,
clustered) and then convert to full int8. Every variant named ``*int8`` or
``int16x8`` is full integer: its input, output and every operator are integers,
and the build fails naming any float operator that remains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from firmware_export.capture import captured
from firmware_export.flatbuffer import read as read_flatbuffer

from . import BuildError, UsageError
from .calibration import generator
from .datasets import Dataset
from .models import compile_for_training, verbosity
from .tf import keras, tf


@dataclass(frozen=True)
class Context:
    """What a variant needs besides the float model."""

    ds: Dataset
    calibration: np.ndarray  # normalised float32 training samples
    fine_tune_epochs: int
    quiet: bool
    progress: Callable  # wraps an iterable in a progress bar (or not)


def _converter(model):
    return tf.lite.TFLiteConverter.from_keras_model(model)


def _full_integer(model, ctx: Context, ops, io_type) -> bytes:
    c = _converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = generator(ctx.calibration, lambda it: ctx.progress(it, desc="calibrating"))
    c.target_spec.supported_ops = [ops]
    c.inference_input_type = io_type
    c.inference_output_type = io_type
    return c.convert()


def float32(model, ctx: Context) -> bytes:
    return _converter(model).convert()


def float16(model, ctx: Context) -> bytes:
    c = _converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.target_spec.supported_types = [tf.float16]
    return c.convert()


def dynamic(model, ctx: Context) -> bytes:
    c = _converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    return c.convert()


def int8(model, ctx: Context) -> bytes:
    return _full_integer(model, ctx, tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.int8)


def int16x8(model, ctx: Context) -> bytes:
    return _full_integer(model, ctx, tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                         tf.int16)


def _fine_tune(model, ctx: Context, callbacks=()) -> None:
    """A few epochs at a low learning rate, starting from the trained weights."""
    ds = ctx.ds
    compile_for_training(model, learning_rate=1e-4)
    model.fit(ds.normalise(ds.train.x), ds.train.y, validation_data=(ds.normalise(ds.val.x), ds.val.y),
              epochs=max(ctx.fine_tune_epochs, 1), batch_size=32, verbose=verbosity(ctx.quiet),
              callbacks=list(callbacks))


def _clone(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def qat_int8(model, ctx: Context) -> bytes:
    import tensorflow_model_optimization as tfmot

    try:
        q = tfmot.quantization.keras.quantize_model(_clone(model))
    except (ValueError, RuntimeError) as e:
        raise BuildError(f"quantization-aware training cannot wrap this model ({str(e).splitlines()[0][:150]}); "
                         "leave qat_int8 out with --variants") from None
    _fine_tune(q, ctx)
    return int8(q, ctx)


def pruned_int8(model, ctx: Context, sparsity: float = 0.5) -> bytes:
    import tensorflow_model_optimization as tfmot

    sp = tfmot.sparsity.keras
    steps = max(ctx.fine_tune_epochs, 1) * int(np.ceil(len(ctx.ds.train.y) / 32))
    # reach full sparsity after 60% of the steps so the last ones can recover accuracy
    schedule = sp.PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0,
                                  end_step=max(int(steps * 0.6), 1))
    pruned = sp.prune_low_magnitude(_clone(model), pruning_schedule=schedule)
    _fine_tune(pruned, ctx, callbacks=[sp.UpdatePruningStep()])
    return int8(sp.strip_pruning(pruned), ctx)


def clustered_int8(model, ctx: Context, clusters: int = 16) -> bytes:
    import tensorflow_model_optimization as tfmot

    cl = tfmot.clustering.keras
    clustered = cl.cluster_weights(_clone(model), number_of_clusters=clusters,
                                   cluster_centroids_init=cl.CentroidInitialization.KMEANS_PLUS_PLUS)
    _fine_tune(clustered, ctx)
    return int8(cl.strip_clustering(clustered), ctx)


@dataclass(frozen=True)
class Variant:
    name: str
    convert: Callable
    full_integer: bool
    summary: str


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("float32", float32, False, "float32 weights and activations (the reference)"),
    Variant("float16", float16, False, "float16 weights, float32 compute"),
    Variant("dynamic", dynamic, False, "int8 weights, float activations quantized on the fly"),
    Variant("int8", int8, True, "full integer: int8 weights, activations, input and output"),
    Variant("int16x8", int16x8, True, "int8 weights, int16 activations, input and output"),
    Variant("qat_int8", qat_int8, True, "quantization-aware training, then full int8"),
    Variant("pruned_int8", pruned_int8, True, "50% magnitude pruning, then full int8"),
    Variant("clustered_int8", clustered_int8, True, "16-cluster weight sharing, then full int8"),
)}
BUNDLE_CANDIDATES = ("int8", "qat_int8")


def parse_variants(text: str | None) -> list[str]:
    """A comma-separated subset, in canonical order; None means all."""
    if not text:
        return list(VARIANTS)
    asked = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in asked if t not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown variant {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    if not any(v in asked for v in BUNDLE_CANDIDATES):
        raise UsageError("--variants must include int8 or qat_int8: the bundle carries a full-int8 model")
    return [v for v in VARIANTS if v in asked]


def check_full_integer(name: str, model: bytes) -> None:
    """Fail when a model declared full integer still holds a float operator or float I/O."""
    info = read_flatbuffer(model)
    floats = info.float_ops
    if floats:
        raise BuildError(f"variant {name} is declared full integer but keeps float operators: {', '.join(floats)}; "
                         "the model uses a layer the integer kernels lack, replace it or leave the variant out")


def convert(name: str, model, ctx: Context) -> bytes:
    """Build one variant's .tflite bytes, checked when it is declared full integer."""
    variant = VARIANTS[name]
    try:
        with captured((2,)):  # the MLIR converter prints its settings on the C-level stderr
            data = variant.convert(model, ctx)
    except BuildError:
        raise
    except Exception as e:  # the converter raises ConverterError, ValueError, RuntimeError...
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise BuildError(f"converting variant {name} failed ({msg})") from None
    if variant.full_integer:
        check_full_integer(name, data)
    return data
