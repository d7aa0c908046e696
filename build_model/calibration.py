"""The representative dataset for full-integer conversion, made so it cannot be silently wrong.

Drawn from the training split only, stratified by class, float32, batch 1, with
the same preprocessing as training. Anything else is refused with a reason.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from . import BuildError
from .datasets import Dataset, Split

DEFAULT_COUNT = 300
MIN_DISTINCT = 100


def draw(ds: Dataset, split: Split, count: int = DEFAULT_COUNT, seed: int = 0) -> np.ndarray:
    """``count`` normalised samples from ``split``, proportional per class (all when smaller)."""
    if split.name != "train":
        raise BuildError(f"calibration must come from the training split, not {split.name!r}: "
                         "test data in calibration hides quantization error")
    if count <= 0:
        raise BuildError("--calibration-count must be positive")
    rng = np.random.default_rng(seed)
    n = len(split.y)
    if count >= n:
        picked = np.arange(n)
    else:
        picked = []
        classes, sizes = np.unique(split.y, return_counts=True)
        quota = np.floor(sizes * count / n).astype(int)
        # hand the remainder to the largest fractional parts so the total is exactly count
        rest = np.argsort(-(sizes * count / n - quota))[: count - quota.sum()]
        quota[rest] += 1
        for cls, q in zip(classes, quota):
            picked.extend(rng.choice(np.flatnonzero(split.y == cls), size=q, replace=False))
        picked = np.sort(np.asarray(picked))
    samples = ds.normalise(split.x[picked])
    # a training split smaller than MIN_DISTINCT (ItalyPowerDemand: 53 recordings) gives all it has
    need = MIN_DISTINCT if n >= MIN_DISTINCT else len(np.unique(split.x.reshape(n, -1), axis=0))
    validate(samples, ds.sample_shape, need)
    return samples


def validate(samples: np.ndarray, sample_shape: tuple[int, ...], min_distinct: int = MIN_DISTINCT) -> None:
    """Refuse an empty set, the wrong dtype or shape, or fewer than ``min_distinct`` distinct samples."""
    if samples is None or len(samples) == 0:
        raise BuildError("the calibration set is empty: the training split needs samples")
    if samples.dtype != np.float32:
        raise BuildError(f"calibration samples are {samples.dtype}, the converter needs float32")
    if tuple(samples.shape[1:]) != tuple(sample_shape):
        raise BuildError(f"calibration samples have shape {samples.shape[1:]}, the model takes {tuple(sample_shape)}")
    distinct = len(np.unique(samples.reshape(len(samples), -1), axis=0))
    if distinct < min_distinct:
        raise BuildError(f"the calibration set holds {distinct} distinct samples, at least {min_distinct} are needed: "
                         "add training data or raise --calibration-count")


def generator(samples: np.ndarray, progress: Callable[[Iterator], Iterator] = iter) -> Callable[[], Iterator[list]]:
    """The converter's ``representative_dataset``: one float32 sample at a time, batch 1."""
    def representative():
        for s in progress(samples):
            yield [s[None, ...]]
    return representative
