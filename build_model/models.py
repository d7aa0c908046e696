"""Keras models: a small image CNN, a small 1-D CNN for sensor windows, or the user's own file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from . import BuildError
from .datasets import Dataset
from .tf import keras, tf


def small_cnn(input_shape: tuple[int, ...], classes: int) -> "keras.Model":
    """Conv-Pool-Conv-Pool-Dense, the shape of the Fashion-MNIST walk-throughs."""
    L = keras.layers
    return keras.Sequential([
        L.Input(input_shape),
        L.Conv2D(16, 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.Conv2D(32, 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.Flatten(),
        L.Dense(classes, activation="softmax"),
    ], name="small_cnn")


def sensor_cnn(input_shape: tuple[int, ...], classes: int) -> "keras.Model":
    """A 1-D CNN over (steps, channels), written with 2-D layers and k x 1 kernels.

    tensorflow-model-optimization cannot quantize-aware-train Conv1D, and the
    converter lowers Conv1D to CONV_2D anyway, so this is the same network in a
    form every variant (QAT, pruning, clustering) accepts.
    """
    L = keras.layers
    steps, channels = input_shape
    return keras.Sequential([
        L.Input(input_shape),
        L.Reshape((steps, 1, channels)),
        L.Conv2D(16, (5, 1), padding="same", activation="relu"),
        L.MaxPooling2D((2, 1)),
        L.Conv2D(32, (5, 1), padding="same", activation="relu"),
        L.GlobalAveragePooling2D(),
        L.Dense(classes, activation="softmax"),
    ], name="sensor_cnn")


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
    except Exception as e:  # h5py, zipfile, protobuf and Keras each raise their own kind
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


def make(ds: Dataset, model_path: str | None = None) -> "keras.Model":
    model = load_user_model(model_path) if model_path else (
        small_cnn if ds.kind == "image" else sensor_cnn)(ds.sample_shape, len(ds.labels))
    check_fits(model, ds)
    return model


def compile_for_training(model: "keras.Model", learning_rate: float = 1e-3) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])


def verbosity(quiet: bool) -> int:
    """Keras: a live progress bar on a terminal, one line per epoch in a log, nothing when quiet."""
    return 0 if quiet else (1 if sys.stdout.isatty() else 2)


def fit(model, ds: Dataset, epochs: int, quiet: bool, callbacks=(), learning_rate: float = 1e-3) -> None:
    """Train on the train split, watching the validation split; Keras draws the progress bar."""
    if epochs <= 0:
        return
    compile_for_training(model, learning_rate)
    model.fit(ds.normalise(ds.train.x), ds.train.y, validation_data=(ds.normalise(ds.val.x), ds.val.y),
              epochs=epochs, batch_size=32, verbose=verbosity(quiet), callbacks=list(callbacks), shuffle=True)


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
