"""Training that converges by default: a maximum of epochs, early stopping on the validation loss
that restores the best epoch, learning-rate halving on a plateau, a batch size for the set's
size, optional augmentation and class weights; deterministic under a seed.

The same ``fit`` trains the float model and fine-tunes QAT, pruning and clustering.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from .tf import keras, tf

BATCH_MAX = 32
BATCH_MIN = 4


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 300  # a maximum: early stopping usually ends far sooner
    patience: int = 50  # epochs without a better validation loss before stopping
    min_epochs: int = 50  # never stop before this many (batch-norm statistics settle first)
    learning_rate: float = 1e-3
    batch_size: int | None = None  # None: batch_size_for(len(train))
    augment: bool = False
    class_weight: bool = False  # weight classes by inverse frequency (imbalanced sets)
    restore_best: bool = True  # end on the best validation epoch (pruning keeps its last, sparsest one)
    seed: int = 0
    quiet: bool = False


@dataclass
class History:
    """What training did, per epoch, and which epoch's weights the model holds."""

    loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    best_epoch: int = -1  # 0-based index of the restored epoch; -1 when nothing was trained
    stopped_early: bool = False

    @property
    def epochs_run(self) -> int:
        return len(self.loss)

    def to_dict(self) -> dict:
        def r(values) -> list[float]:
            return [round(float(x), 6) for x in values]
        return {"epochs_run": self.epochs_run, "best_epoch": self.best_epoch, "stopped_early": self.stopped_early,
                "loss": r(self.loss), "val_loss": r(self.val_loss), "accuracy": r(self.accuracy),
                "val_accuracy": r(self.val_accuracy)}


def batch_size_for(n: int) -> int:
    """About ten batches per epoch, between 4 and 32 (the FCN paper uses min(n / 10, 16))."""
    return int(min(BATCH_MAX, max(BATCH_MIN, n // 10)))


def seed_everything(seed: int) -> None:
    """Python, numpy and TensorFlow seeds, and deterministic kernels: the same seed gives the same model."""
    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except AttributeError:  # older TensorFlow
        pass


def class_weights(y: np.ndarray, classes: int) -> dict[int, float]:
    """Inverse-frequency weights, mean 1 over the samples (scikit-learn's 'balanced')."""
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    return {c: float(len(y) / (classes * counts[c])) if counts[c] else 0.0 for c in range(classes)}


class BestWeights(keras.callbacks.Callback):
    """Early stopping on ``val_loss`` (or ``loss`` with no validation split) that always ends holding the best
    epoch's weights.

    Keras' own EarlyStopping restores them only when it stops training itself, not
    when the epoch limit comes first; this one restores them in both cases.
    """

    def __init__(self, patience: int, history: History, min_epochs: int = 0, restore: bool = True,
                 monitor: str = "val_loss"):
        super().__init__()
        self.monitor = monitor
        self.restore = restore
        self.patience = patience
        self.min_epochs = min_epochs
        self.history = history
        self.best = np.inf
        self.best_weights = None
        self.wait = 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        h = self.history
        for key, values in (("loss", h.loss), ("val_loss", h.val_loss), ("accuracy", h.accuracy),
                            ("val_accuracy", h.val_accuracy)):
            values.append(float(logs.get(key, np.nan)))
        current = logs.get(self.monitor, np.inf)
        if np.isfinite(current) and current < self.best:
            self.best, self.wait, h.best_epoch = current, 0, epoch
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience and epoch + 1 >= self.min_epochs:
                h.stopped_early = True
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class Augmented(keras.utils.Sequence):
    """Shuffled batches, each augmented afresh with a seeded generator (numpy, on normalised values)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, kind: str, seed: int):
        super().__init__()
        self.x, self.y, self.batch_size, self.kind = x, y, batch_size, kind
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))

    def __len__(self) -> int:
        return int(np.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, i: int):
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        fn = augment_sensor if self.kind == "sensor" else augment_image
        return fn(self.x[idx], self.rng), self.y[idx]

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.x))


def augment_sensor(x: np.ndarray, rng: np.random.Generator, jitter: float = 0.03, scale: float = 0.1,
                   shift: float = 0.1) -> np.ndarray:
    """Jitter (Gaussian noise), per-channel scaling and a time shift of up to ``shift`` of the window.

    ``x`` is (batch, steps, channels); the shift repeats the edge sample rather than wrapping around.
    """
    n, steps, channels = x.shape
    out = x * rng.normal(1.0, scale, (n, 1, channels)) + rng.normal(0.0, jitter, x.shape)
    limit = int(steps * shift)
    if limit:
        for i, s in enumerate(rng.integers(-limit, limit + 1, n)):
            if s > 0:
                out[i] = np.concatenate([np.repeat(out[i, :1], s, 0), out[i, :-s]])
            elif s < 0:
                out[i] = np.concatenate([out[i, -s:], np.repeat(out[i, -1:], -s, 0)])
    return out.astype(np.float32)


def augment_image(x: np.ndarray, rng: np.random.Generator, shift: float = 0.1, flip: bool = True) -> np.ndarray:
    """Random horizontal flip and a random crop of the image padded by ``shift`` of its side (a shift)."""
    n, h, w, _ = x.shape
    ph, pw = max(1, int(h * shift)), max(1, int(w * shift))
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="edge")
    out = np.empty_like(x)
    for i in range(n):
        dy, dx = rng.integers(0, 2 * ph + 1), rng.integers(0, 2 * pw + 1)
        img = padded[i, dy:dy + h, dx:dx + w]
        out[i] = img[:, ::-1] if flip and rng.random() < 0.5 else img
    return out


class EpochLog(keras.callbacks.Callback):
    """One line on stderr every ``every`` epochs (Keras' own lines would be hundreds)."""

    def __init__(self, every: int = 25):
        super().__init__()
        self.every = every

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            logs = logs or {}
            shown = ("loss", "accuracy", "val_loss", "val_accuracy")  # val_*: only with a validation split
            print(f"  epoch {epoch + 1}: " + " ".join(f"{k} {logs[k]:.4f}" for k in shown if k in logs),
                  file=sys.stderr, flush=True)


def compile_for_training(model, learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])


def fit(model, x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None, cfg: TrainConfig,
        kind: str = "sensor", classes: int | None = None, callbacks=()) -> History:
    """Train ``model`` on normalised ``x``; ``val`` is (x, y), or None: then the training loss chooses the epoch
    and drives the learning rate (the FCN/ResNet protocol). Returns the history; the model holds the best epoch."""
    history = History()
    if cfg.epochs <= 0:
        return history
    compile_for_training(model, cfg.learning_rate)
    batch = cfg.batch_size or batch_size_for(len(y))
    classes = classes or int(max(y.max(), val[1].max() if val else 0)) + 1
    data = Augmented(x, y, batch, kind, cfg.seed) if cfg.augment else x
    if val is not None:
        watch, patience = "val_loss", cfg.patience
        plateau = keras.callbacks.ReduceLROnPlateau(monitor=watch, factor=0.5, patience=max(cfg.patience // 2, 3),
                                                    min_lr=cfg.learning_rate / 64, verbose=0)
    else:  # the published FCN/ResNet protocol: the training loss drives the rate; nothing can stop early
        watch, patience = "loss", cfg.epochs
        plateau = keras.callbacks.ReduceLROnPlateau(monitor=watch, factor=0.5, patience=50, min_lr=1e-4, verbose=0)
    model.fit(data, y if not cfg.augment else None, validation_data=val, epochs=cfg.epochs,
              batch_size=None if cfg.augment else batch, shuffle=True, verbose=0,
              class_weight=class_weights(y, classes) if cfg.class_weight else None,
              callbacks=[BestWeights(patience, history, cfg.min_epochs, cfg.restore_best, watch), plateau,
                         *([] if cfg.quiet else [EpochLog()]), *callbacks])
    return history
