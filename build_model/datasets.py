"""Datasets, each with a deterministic, seeded, stratified train / validation / test split.

A dataset is chosen by a spec: a registered name (``digits``, ``basicmotions``,
``mnist``, ``fashion_mnist``, ``cifar10``) or ``images:FOLDER``, ``csv:FILE``,
``npz:FILE``. Samples stay in their native units (``raw``); ``Dataset.normalise``
applies the preprocessing that model.json will carry to the device.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from device.bundle import Preprocess

from . import BuildError, UsageError

VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class Split:
    name: str  # "train", "val" or "test"
    x: np.ndarray  # raw values, float32, (n, *sample_shape)
    y: np.ndarray  # class ids, int64


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str  # "image" or "sensor"
    labels: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    preprocess: Preprocess

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """``(raw - mean) / std`` as float32, exactly what the device does."""
        mean = np.asarray(self.preprocess.mean, dtype=np.float32)
        std = np.asarray(self.preprocess.std, dtype=np.float32)
        return ((np.asarray(raw, dtype=np.float32) - mean) / std).astype(np.float32)


def _stratified_indices(y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Split indices per class so that each part keeps the class proportions."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        cuts = [int(round(f * len(idx))) for f in fractions]
        start = 0
        for i, n in enumerate(cuts):
            parts[i].extend(idx[start:start + n])
            start += n
        parts[-1].extend(idx[start:])
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _check_classes(y: np.ndarray, where: str) -> None:
    if len(y) == 0:
        raise BuildError(f"{where} holds no samples: add data, one subfolder or label per class")
    if len(np.unique(y)) < 2:
        raise BuildError(f"{where} holds a single class: a classifier needs at least two")


def _preprocess_for(kind: str, train_x: np.ndarray, color: str | None = None) -> Preprocess:
    """Mean and std from the training split: one number for gray, one per channel otherwise."""
    per_channel = kind == "sensor" or color == "rgb"
    axes = tuple(range(train_x.ndim - 1)) if per_channel else None
    mean = np.mean(train_x, axis=axes)
    std = np.std(train_x, axis=axes)
    std = np.where(std < 1e-6, 1.0, std)
    as_value = (lambda a: tuple(round(float(v), 6) for v in a)) if per_channel else (lambda a: round(float(a), 6))
    if kind == "image":
        return Preprocess(mean=as_value(mean), std=as_value(std), layout="NHWC", color=color,
                          size=tuple(int(s) for s in train_x.shape[1:3]))
    return Preprocess(mean=as_value(mean), std=as_value(std), layout="NWC", size=(int(train_x.shape[1]),))


def _from_arrays(name, kind, labels, x, y, seed, color=None) -> Dataset:
    """One pool of samples -> a seeded stratified 70 / 15 / 15 split."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    _check_classes(y, name)
    val_i, test_i, train_i = _stratified_indices(y, (VAL_FRACTION, TEST_FRACTION), seed)
    train = Split("train", x[train_i], y[train_i])
    return Dataset(name, kind, tuple(labels), train, Split("val", x[val_i], y[val_i]),
                   Split("test", x[test_i], y[test_i]), _preprocess_for(kind, train.x, color))


def load_digits(seed: int, **_) -> Dataset:
    """scikit-learn's 8x8 handwritten digits: pixel values 0..16, ships with the package."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return _from_arrays("digits", "image", [str(i) for i in range(10)], d.images[..., None], d.target, seed,
                        color="gray")


def _windows(x: np.ndarray, y: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut (n, steps, channels) recordings into sliding windows of ``length`` steps."""
    if length > x.shape[1]:
        raise BuildError(f"--window {length} is longer than the recordings ({x.shape[1]} steps): use a smaller one")
    starts = range(0, x.shape[1] - length + 1, stride)
    xs = np.stack([x[:, s:s + length] for s in starts], axis=1)  # (n, windows, length, channels)
    return xs.reshape(-1, length, x.shape[2]), np.repeat(y, len(starts))


def _sensor_from_recordings(name, labels, x, y, seed, window, stride) -> Dataset:
    """Split whole recordings first so no window of a test recording is seen in training."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    _check_classes(y, name)
    window = window or x.shape[1]
    parts = _stratified_indices(y, (VAL_FRACTION, TEST_FRACTION), seed)
    val, test, train = (Split(n, *_windows(x[i], y[i], window, stride)) for n, i in zip(("val", "test", "train"), parts))
    return Dataset(name, "sensor", tuple(labels), train, val, test, _preprocess_for("sensor", train.x))


def load_basicmotions(seed: int, window: int | None = 50, stride: int = 10, **_) -> Dataset:
    """aeon's BasicMotions: 80 recordings of 100 steps, 3-axis accelerometer + gyroscope, 4 activities."""
    from aeon.datasets import load_basic_motions

    xs, ys = zip(*(load_basic_motions(split=s) for s in ("train", "test")))
    x = np.concatenate(xs).transpose(0, 2, 1)  # aeon gives (n, channels, steps)
    names = np.concatenate(ys)
    labels = sorted(set(names.tolist()))
    y = np.array([labels.index(n) for n in names])
    return _sensor_from_recordings("basicmotions", labels, x, y, seed, window, stride)


_KERAS = {
    "mnist": ("mnist.npz", [str(i) for i in range(10)], "gray"),
    "fashion_mnist": ("fashion-mnist (4 files: train-images-idx3-ubyte.gz, ...)",
                      ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                       "ankle-boot"], "gray"),
    "cifar10": ("cifar-10-batches-py.tar.gz",
                ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"], "rgb"),
}


def load_keras(name: str, seed: int, **_) -> Dataset:
    """A keras.datasets set: downloads on first use into ~/.keras/datasets."""
    from .tf import keras

    filename, labels, color = _KERAS[name]
    try:
        (xtr, ytr), (xte, yte) = getattr(keras.datasets, name).load_data()
    except Exception as e:  # offline: urllib, socket or http errors, all wrapped differently
        raise BuildError(
            f"cannot download {name} ({type(e).__name__}); place {filename} in ~/.keras/datasets/ and run again"
        ) from None
    if xtr.ndim == 3:
        xtr, xte = xtr[..., None], xte[..., None]
    ytr, yte = ytr.reshape(-1), yte.reshape(-1)
    val_i, train_i = _stratified_indices(ytr, (VAL_FRACTION,), seed)
    train = Split("train", xtr[train_i].astype(np.float32), ytr[train_i].astype(np.int64))
    return Dataset(name, "image", tuple(labels), train,
                   Split("val", xtr[val_i].astype(np.float32), ytr[val_i].astype(np.int64)),
                   Split("test", xte.astype(np.float32), yte.astype(np.int64)),
                   _preprocess_for("image", train.x, color))


def load_image_folder(path: str, seed: int, image_size: int = 32, **_) -> Dataset:
    """FOLDER/<class>/<image>: RGB, resized to image_size x image_size; class names sorted."""
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.is_dir():
        raise BuildError(f"image folder {root} does not exist: give a folder with one subfolder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise BuildError(f"image folder {root} has {len(classes)} class subfolder(s): a classifier needs at least two")
    xs, ys = [], []
    for cid, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    xs.append(np.asarray(im.convert("RGB").resize((image_size, image_size)), dtype=np.float32))
            except (UnidentifiedImageError, OSError) as e:
                raise BuildError(f"cannot read image {f} ({e}): remove or replace it") from None
            ys.append(cid)
    if not xs:
        raise BuildError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return _from_arrays(root.name, "image", classes, np.stack(xs), ys, seed, color="rgb")


def load_csv(path: str, seed: int, channels: int = 1, window: int | None = None, stride: int = 10, **_) -> Dataset:
    """One recording per row: ``label,v...``, time-major (every channel at t0, then t1, ...)."""
    f = Path(path)
    if not f.is_file():
        raise BuildError(f"CSV file {f} does not exist")
    names, rows = [], []
    with f.open(newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or (lineno == 1 and not _is_number(row[-1])):
                continue  # blank line or header
            if rows and len(row) - 1 != len(rows[0]):
                raise BuildError(f"{f}:{lineno}: {len(row) - 1} values where earlier rows have {len(rows[0])}; "
                                 "every row needs the same window length")
            try:
                rows.append([float(v) for v in row[1:]])
            except ValueError:
                raise BuildError(f"{f}:{lineno}: a value is not a number") from None
            names.append(row[0].strip())
    if not rows:
        raise BuildError(f"{f} holds no rows: write one 'label,values...' line per recording")
    if len(rows[0]) % channels:
        raise BuildError(f"{f}: {len(rows[0])} values per row do not divide into {channels} channels")
    labels = sorted(set(names))
    x = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1, channels)
    return _sensor_from_recordings(f.stem, labels, x, [labels.index(n) for n in names], seed, window, stride)


def load_npz(path: str, seed: int, window: int | None = None, stride: int = 10, **_) -> Dataset:
    """``x`` (n, steps, channels) or (n, steps), ``y`` class ids or names, optional ``labels``."""
    f = Path(path)
    try:
        data = np.load(f, allow_pickle=False)
        x, y = data["x"], data["y"]
    except FileNotFoundError:
        raise BuildError(f"NPZ file {f} does not exist") from None
    except (KeyError, ValueError, OSError) as e:
        raise BuildError(f"{f} is not an NPZ with arrays x and y ({e})") from None
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or len(x) != len(y):
        raise BuildError(f"{f}: x must be (n, steps, channels) with one y per row; got x {x.shape}, y {y.shape}")
    if y.dtype.kind in "US":
        labels = sorted(set(y.tolist()))
        y = np.array([labels.index(v) for v in y.tolist()])
    else:
        labels = [str(v) for v in data["labels"]] if "labels" in data else [str(i) for i in range(int(y.max()) + 1)]
    return _sensor_from_recordings(f.stem, labels, x, y, seed, window, stride)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


REGISTRY: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "basicmotions": load_basicmotions,
    **{name: (lambda seed, _n=name, **kw: load_keras(_n, seed, **kw)) for name in _KERAS},
}
PATH_SCHEMES: dict[str, Callable[..., Dataset]] = {"images": load_image_folder, "csv": load_csv, "npz": load_npz}


def load(spec: str, seed: int = 0, **options) -> Dataset:
    """Load a dataset by name or ``scheme:PATH`` (see the module docstring)."""
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in PATH_SCHEMES:
        return PATH_SCHEMES[scheme](rest, seed, **options)
    if spec in REGISTRY:
        return REGISTRY[spec](seed=seed, **options)
    known = ", ".join([*REGISTRY, *(f"{s}:PATH" for s in PATH_SCHEMES)])
    raise UsageError(f"unknown dataset {spec!r}: use one of {known}")
