"""Datasets, each with a deterministic, seeded, stratified train / validation / test split.

A dataset is chosen by a spec: a registered name (``digits``, ``basicmotions``,
``mnist``, ``fashion_mnist``, ``cifar10``), ``ucr:NAME`` (any UCR/UEA classification
set through aeon, on its official train/test split), or ``images:FOLDER``,
``csv:FILE``, ``npz:FILE``. Where the data has its own train/test split (UCR/UEA,
an npz with ``x_train``.., a csv with a ``split`` column) it is kept and the
validation split is carved from train only; otherwise one pool is split 70/15/15.
Samples stay in their native units (``raw``); ``Dataset.normalise`` applies the
preprocessing that model.json will carry to the device.
"""

from __future__ import annotations

import csv
import functools
import inspect
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from contract.bundle import Preprocess

from . import BuildError, UsageError

VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
VAL_OF_TRAIN = 0.2  # validation carved from an official training split
MIN_VALIDATION = 10  # recordings; a smaller carve is no validation split at all (the training loss selects)
LENGTH_MODES = ("resample", "pad")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class Split:
    name: str  # "train", "val" or "test"
    x: np.ndarray  # raw values, float32, (n, *sample_shape)
    y: np.ndarray  # class ids, int64
    source: np.ndarray | None = None  # per sample, the recording it came from (ids unique across splits)


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str  # "image" or "sensor"
    labels: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    preprocess: Preprocess
    official_split: bool = False  # test is the dataset's own test split
    no_validation: str | None = None  # why there is no validation split (then the training loss selects)

    def validation_data(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(normalised x, y) of the validation split, or None when there is none."""
        return (self.normalise(self.val.x), self.val.y) if len(self.val.y) else None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """``(raw - mean) / std`` as float32, exactly what the device does."""
        mean = np.asarray(self.preprocess.mean, dtype=np.float32)
        std = np.asarray(self.preprocess.std, dtype=np.float32)
        return ((np.asarray(raw, dtype=np.float32) - mean) / std).astype(np.float32)


def resize_images(ds: Dataset, height: int, width: int, channels: int) -> Dataset:
    """The same data set at another image size (and gray repeated to RGB), as the device resizes frames."""
    from contract.preprocess import nearest_maps

    have = ds.sample_shape
    if have[2] not in (channels, 1):
        raise BuildError(f"the model takes {channels}-channel images but {ds.name} has {have[2]} channels")
    rows, cols = nearest_maps(have[:2], (height, width))

    def fit(split: Split) -> Split:
        x = split.x[:, rows, cols]
        if x.shape[-1] != channels:
            x = np.repeat(x, channels, axis=-1)
        return replace(split, x=np.ascontiguousarray(x))

    train = fit(ds.train)
    color = ds.preprocess.color if channels == have[2] else "rgb"
    return replace(ds, train=train, val=fit(ds.val), test=fit(ds.test),
                   preprocess=_preprocess_for("image", train.x, "gray" if channels == 1 else color))


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
    train = Split("train", x[train_i], y[train_i], train_i)
    return Dataset(name, kind, tuple(labels), train, Split("val", x[val_i], y[val_i], val_i),
                   Split("test", x[test_i], y[test_i], test_i), _preprocess_for(kind, train.x, color))


def load_digits(seed: int) -> Dataset:
    """scikit-learn's 8x8 handwritten digits: pixel values 0..16, ships with the package."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return _from_arrays("digits", "image", [str(i) for i in range(10)], d.images[..., None], d.target, seed,
                        color="gray")


def _windows(name: str, x: np.ndarray, y: np.ndarray, ids: np.ndarray, length: int, stride: int) -> Split:
    """Cut (n, steps, channels) recordings into sliding windows of ``length`` steps; each keeps its recording id."""
    if length > x.shape[1]:
        raise BuildError(f"--window {length} is longer than the recordings ({x.shape[1]} steps): use a smaller one")
    if stride <= 0:
        raise UsageError("--stride must be a positive number of steps")
    starts = range(0, x.shape[1] - length + 1, stride)
    xs = np.stack([x[:, s:s + length] for s in starts], axis=1)  # (n, windows, length, channels)
    return Split(name, xs.reshape(-1, length, x.shape[2]), np.repeat(y, len(starts)), np.repeat(ids, len(starts)))


def _sensor_from_recordings(name, labels, x, y, seed, window, stride, length_mode=None) -> Dataset:
    """Split whole recordings first so no window of a test recording is seen in training."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    _check_classes(y, name)
    window = window or x.shape[1]
    parts = _stratified_indices(y, (VAL_FRACTION, TEST_FRACTION), seed)
    val, test, train = (_windows(n, x[i], y[i], i, window, stride) for n, i in zip(("val", "test", "train"), parts))
    return Dataset(name, "sensor", tuple(labels), train, val, test, _sensor_preprocess(train.x, length_mode))


def _sensor_preprocess(train_x: np.ndarray, length_mode: str | None) -> Preprocess:
    pre = _preprocess_for("sensor", train_x)
    return replace(pre, length=length_mode) if length_mode else pre


def _sensor_official(name, labels, x_train, y_train, x_test, y_test, seed, window=None, stride=10,
                     length_mode=None) -> Dataset:
    """The dataset's own train/test split; validation is carved from train (stratified, seeded).

    Recording ids: train recordings are 0..n_train-1, test recordings follow, so
    ``source`` tells where every window came from.
    """
    x_train, x_test = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
    y_train, y_test = np.asarray(y_train, np.int64), np.asarray(y_test, np.int64)
    _check_classes(y_train, f"{name} (train split)")
    if len(y_test) == 0:
        raise BuildError(f"{name}: the test split holds no samples")
    val_i, train_i = _stratified_indices(y_train, (VAL_OF_TRAIN,), seed)
    no_validation = None
    if len(val_i) < MIN_VALIDATION:  # a handful of recordings cannot judge an epoch, and training needs them all
        no_validation = (f"{len(y_train)} training recordings, too few to spare a validation split of at least "
                         f"{MIN_VALIDATION}: the training loss chose the epoch and the learning rate, as the published "
                         "FCN/ResNet protocol does (Ismail Fawaz et al., 2019)")
        val_i, train_i = val_i[:0], np.arange(len(y_train))
    window = window or x_train.shape[1]
    test_ids = np.arange(len(y_test)) + len(y_train)
    train = _windows("train", x_train[train_i], y_train[train_i], train_i, window, stride)
    val = _windows("val", x_train[val_i], y_train[val_i], val_i, window, stride)
    test = _windows("test", x_test, y_test, test_ids, window, stride)
    return Dataset(name, "sensor", tuple(labels), train, val, test, _sensor_preprocess(train.x, length_mode),
                   official_split=True, no_validation=no_validation)


def fix_length(recordings, steps: int, mode: str) -> np.ndarray:
    """Variable-length (channels, steps_i) recordings -> (n, steps, channels) by ``mode``.

    ``resample``: linear interpolation onto ``steps`` evenly spaced points (as Ismail Fawaz
    et al. do for the multivariate archive); ``pad``: the last sample repeated (longer ones cut).
    The device applies the same rule (device.preprocess.fit_length), since model.json records it.
    """
    from contract.preprocess import fit_length

    if mode not in LENGTH_MODES:
        raise UsageError(f"--length {mode!r}: choose {' or '.join(LENGTH_MODES)}")
    return np.stack([fit_length(np.asarray(r, np.float32).T, steps, mode) for r in recordings])


def _labels_and_ids(*names_per_split):
    labels = sorted({str(v) for names in names_per_split for v in names}, key=_natural)
    index = {v: i for i, v in enumerate(labels)}
    return labels, [np.array([index[str(v)] for v in names], np.int64) for names in names_per_split]


def _natural(s: str):
    """'2' < '10', and numbers before words."""
    return (0, float(s), s) if _is_number(s) else (1, 0.0, s)


def load_ucr(name: str, seed: int, *, window: int | None = None, stride: int = 10,
             length: str = "resample") -> Dataset:
    """A UCR/UEA classification set through aeon's ``load_classification``, on its official split.

    The sets aeon ships (ItalyPowerDemand, ACSF1, BasicMotions, JapaneseVowels, ...) load
    offline; others are downloaded by aeon into its data folder on first use.
    """
    if not name:
        raise UsageError("ucr: needs a set name, for example ucr:ItalyPowerDemand")
    try:
        from aeon.datasets import load_classification
    except ImportError:
        raise BuildError("aeon is not installed: pip install 'tinysense[build]'") from None
    try:
        (xtr, ytr), (xte, yte) = (load_classification(name, split=s) for s in ("train", "test"))
    except (ValueError, OSError, KeyError) as e:
        text = str(e)
        if "download" in text.lower() or "urlopen" in text or "resolve" in text.lower():
            raise BuildError(f"UCR/UEA set {name} is not on this machine and cannot be downloaded offline: "
                             "connect once, or use a set aeon ships (ItalyPowerDemand, ACSF1, BasicMotions, "
                             "JapaneseVowels, GunPoint, ArrowHead, OSULeaf)") from None
        raise BuildError(f"cannot load UCR/UEA set {name} ({text.splitlines()[0][:160]})") from None
    labels, (ytr_i, yte_i) = _labels_and_ids(ytr, yte)
    mode = None
    if isinstance(xtr, list) or isinstance(xte, list) or getattr(getattr(xtr, "dtype", None), "kind", "") == "O":
        mode = length
        steps = max(np.asarray(r).shape[-1] for r in (*xtr, *xte))
        xtr, xte = fix_length(xtr, steps, mode), fix_length(xte, steps, mode)
    else:
        xtr, xte = np.asarray(xtr).transpose(0, 2, 1), np.asarray(xte).transpose(0, 2, 1)  # aeon: (n, ch, steps)
    if np.isnan(xtr).any() or np.isnan(xte).any():
        raise BuildError(f"UCR/UEA set {name} has missing values (NaN): fill or drop them first")
    return _sensor_official(name, labels, xtr, ytr_i, xte, yte_i, seed, window, stride, mode)


def load_basicmotions(seed: int, *, window: int | None = 50, stride: int = 10) -> Dataset:
    """aeon's BasicMotions: 80 recordings of 100 steps, 3-axis accelerometer + gyroscope, 4 activities."""
    from aeon.datasets import load_basic_motions

    xs, ys = zip(*(load_basic_motions(split=s) for s in ("train", "test")))
    x = np.concatenate(xs).transpose(0, 2, 1)  # aeon gives (n, channels, steps)
    names = np.concatenate(ys)
    labels = sorted(set(names.tolist()))
    y = np.array([labels.index(n) for n in names])
    return _sensor_from_recordings("basicmotions", labels, x, y, seed, window or 50, stride)


_KERAS = {
    "mnist": ("mnist.npz", [str(i) for i in range(10)], "gray"),
    "fashion_mnist": ("fashion-mnist (4 files: train-images-idx3-ubyte.gz, ...)",
                      ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                       "ankle-boot"], "gray"),
    "cifar10": ("cifar-10-batches-py.tar.gz",
                ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"], "rgb"),
}


def load_keras(name: str, seed: int) -> Dataset:
    """A keras.datasets set: downloads on first use into ~/.keras/datasets."""
    from .tf import keras

    filename, labels, color = _KERAS[name]
    # keras falls back to /tmp/.keras when ~/.keras does not exist yet, and would look there after
    # the user placed the file where this message says
    try:
        (Path.home() / ".keras").mkdir(exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create ~/.keras ({e.strerror}): make your home folder writable") from None
    try:
        (xtr, ytr), (xte, yte) = getattr(keras.datasets, name).load_data()
    except Exception as e:  # noqa: BLE001 - offline: urllib, socket or http errors, all wrapped differently
        raise BuildError(
            f"cannot download {name} ({type(e).__name__}); place {filename} in ~/.keras/datasets/ and run again"
        ) from None
    if xtr.ndim == 3:
        xtr, xte = xtr[..., None], xte[..., None]
    ytr, yte = ytr.reshape(-1), yte.reshape(-1)
    val_i, train_i = _stratified_indices(ytr, (VAL_FRACTION,), seed)
    train = Split("train", xtr[train_i].astype(np.float32), ytr[train_i].astype(np.int64), train_i)
    return Dataset(name, "image", tuple(labels), train,
                   Split("val", xtr[val_i].astype(np.float32), ytr[val_i].astype(np.int64), val_i),
                   Split("test", xte.astype(np.float32), yte.astype(np.int64), np.arange(len(yte)) + len(ytr)),
                   _preprocess_for("image", train.x, color), official_split=True)


def load_image_folder(path: str, seed: int, *, image_size: int = 32) -> Dataset:
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


def load_csv(path: str, seed: int, *, channels: int = 1, window: int | None = None, stride: int = 10) -> Dataset:
    """One recording per row: ``label,v...``, time-major (every channel at t0, then t1, ...).

    A header ``label,split,...`` makes the second column the split (``train`` or ``test``):
    the file's own split is kept and validation is carved from its train rows.
    """
    f = Path(path)
    if not f.is_file():
        raise BuildError(f"CSV file {f} does not exist")
    names, rows, splits = [], [], []
    has_split = False
    with f.open(newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row:
                continue
            if lineno == 1 and not _is_number(row[-1]):  # a header
                has_split = len(row) > 1 and row[1].strip().lower() == "split"
                continue
            first = 2 if has_split else 1
            if rows and len(row) - first != len(rows[0]):
                raise BuildError(f"{f}:{lineno}: {len(row) - first} values where earlier rows have {len(rows[0])}; "
                                 "every row needs the same window length")
            try:
                rows.append([float(v) for v in row[first:]])
            except ValueError:
                raise BuildError(f"{f}:{lineno}: a value is not a number") from None
            names.append(row[0].strip())
            if has_split:
                split = row[1].strip().lower()
                if split not in ("train", "test"):
                    raise BuildError(f"{f}:{lineno}: split {row[1]!r} is neither train nor test")
                splits.append(split)
    if not rows:
        raise BuildError(f"{f} holds no rows: write one 'label,values...' line per recording")
    if len(rows[0]) % channels:
        raise BuildError(f"{f}: {len(rows[0])} values per row do not divide into {channels} channels")
    labels, (y,) = _labels_and_ids(names)
    x = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1, channels)
    if not has_split:
        return _sensor_from_recordings(f.stem, labels, x, y, seed, window, stride)
    is_test = np.array([s == "test" for s in splits])
    return _sensor_official(f.stem, labels, x[~is_test], y[~is_test], x[is_test], y[is_test], seed, window, stride)


NPZ_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str, seed: int, *, window: int | None = None, stride: int = 10) -> Dataset:
    """``x`` (n, steps, channels) or (n, steps) with ``y``, or the four arrays ``x_train, y_train,
    x_test, y_test`` (the file's own split). ``y``: class ids or names; optional ``labels``."""
    f = Path(path)
    try:
        data = np.load(f, allow_pickle=False)
        split = all(k in data for k in NPZ_SPLIT_KEYS)
        arrays = [data[k] for k in NPZ_SPLIT_KEYS] if split else [data["x"], data["y"]]
        names = [str(v) for v in data["labels"]] if "labels" in data else None
    except FileNotFoundError:
        raise BuildError(f"NPZ file {f} does not exist") from None
    except (KeyError, ValueError, OSError, EOFError) as e:
        raise BuildError(f"{f} is not an NPZ with arrays x and y, or x_train, y_train, x_test, y_test ({e})") from None
    xs, ys = arrays[0::2], arrays[1::2]
    xs = [x[..., None] if x.ndim == 2 else x for x in xs]
    for x, y in zip(xs, ys):
        if x.ndim != 3 or len(x) != len(y):
            raise BuildError(f"{f}: x must be (n, steps, channels) with one y per row; got x {x.shape}, y {y.shape}")
    if xs[0].ndim == 3 and len(xs) == 2 and xs[0].shape[1:] != xs[1].shape[1:]:
        raise BuildError(f"{f}: x_train samples are {xs[0].shape[1:]} but x_test samples are {xs[1].shape[1:]}")
    if ys[0].dtype.kind in "US":
        labels, ys = _labels_and_ids(*ys)
    else:
        ys = [np.asarray(y, np.int64) for y in ys]
        top = max(int(y.max()) for y in ys if len(y))
        labels = names if names else [str(i) for i in range(top + 1)]
        if top >= len(labels) or min(int(y.min()) for y in ys if len(y)) < 0:
            raise BuildError(f"{f}: class ids must be 0..{len(labels) - 1} to match labels")
    if not split:
        return _sensor_from_recordings(f.stem, labels, xs[0], ys[0], seed, window, stride)
    return _sensor_official(f.stem, labels, xs[0], ys[0], xs[1], ys[1], seed, window, stride)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


REGISTRY: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "basicmotions": load_basicmotions,
    **{name: functools.partial(load_keras, name) for name in _KERAS},
}
PATH_SCHEMES: dict[str, Callable[..., Dataset]] = {"images": load_image_folder, "csv": load_csv, "npz": load_npz,
                                                   "ucr": load_ucr}


def options_of(loader: Callable[..., Dataset]) -> tuple[str, ...]:
    """The options a loader takes: its keyword-only parameters (window, stride, channels, ...)."""
    return tuple(n for n, p in inspect.signature(loader).parameters.items() if p.kind is p.KEYWORD_ONLY)


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _loader(spec: str, seed: int) -> tuple[Callable[..., Dataset], tuple]:
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in PATH_SCHEMES:
        return PATH_SCHEMES[scheme], (rest, seed)
    if spec in REGISTRY:
        return REGISTRY[spec], (seed,)
    known = ", ".join([*REGISTRY, *(f"{s}:{'NAME' if s == 'ucr' else 'PATH'}" for s in PATH_SCHEMES)])
    raise UsageError(f"unknown dataset {spec!r}: use one of {known}")


def check_options(spec: str, options: dict) -> None:
    """UsageError for an unknown dataset, or an option it does not use (a silently dropped --window
    would train on something else than the user asked for), naming the options it takes."""
    takes = options_of(_loader(spec, 0)[0])
    unused = [o for o in options if o not in takes]
    if unused:
        what = f"it takes {', '.join(map(_flag, takes))}" if takes else "it takes no options"
        raise UsageError(f"--dataset {spec} does not use {', '.join(map(_flag, unused))} ({what}): "
                         "leave it out, or choose a dataset that uses it")


def load(spec: str, seed: int = 0, **options) -> Dataset:
    """Load a dataset by name or ``scheme:PATH`` (see the module docstring) with the options the
    user gave; one it does not use is refused, as source specs refuse an unknown option."""
    check_options(spec, options)
    loader, args = _loader(spec, seed)
    return loader(*args, **options)
