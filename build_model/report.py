"""The comparison report: a terminal table, report.md, report.json and pictures, telling the truth.

Every accuracy stands beside the majority-class baseline (always answering the class
most common in training), and the report warns when a model is within 10 points of
it, or when the training curves show it over- or underfitting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datasets import Dataset
from .evaluate import Evaluation

COLUMNS = ("variant", "accuracy", "vs float32", "vs baseline", "size", "vs float32", "p50 ms", "p99 ms", "TFLM")
NEAR_BASELINE = 0.10  # a model this close to always answering the majority class has not learned
OVERFIT_GAP = 0.20  # train accuracy this far above validation accuracy at the best epoch
INT8_GAP = 0.005  # int8 more than half a point below float32 is worth a look at the layers


@dataclass
class Diagnosis:
    baseline: float  # accuracy of always answering the training split's most common class
    majority: str
    recall: dict = field(default_factory=dict)  # per class, of the bundled variant
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"baseline_accuracy": round(self.baseline, 6), "majority_class": self.majority,
                "per_class_recall": {k: round(v, 6) for k, v in self.recall.items()}, "warnings": self.warnings}


def diagnose(ds: Dataset, results: dict[str, Evaluation], chosen: str, history=None,
             worst_layers=(), notes=()) -> Diagnosis:
    """The baseline, the bundled variant's per-class recall, and every warning worth a line."""
    counts = np.bincount(ds.train.y, minlength=len(ds.labels))
    major = int(np.argmax(counts))
    baseline = float(np.mean(ds.test.y == major))
    d = Diagnosis(baseline, ds.labels[major])
    preds = results[chosen].predictions
    for i, name in enumerate(ds.labels):
        mask = ds.test.y == i
        if mask.any():
            d.recall[name] = float(np.mean(preds[mask] == i))
    near = [n for n, r in results.items() if r.accuracy - baseline < NEAR_BASELINE]
    if near:
        best = max(results[n].accuracy for n in near)
        d.warnings.append(f"{', '.join(near)} within {NEAR_BASELINE * 100:.0f} points of the majority-class baseline "
                          f"({baseline * 100:.1f}%; best {best * 100:.1f}%): the model has not learned this data")
    if history is not None and history.best_epoch >= 0:
        b = history.best_epoch
        train_acc, val_acc = history.accuracy[b], history.val_accuracy[b]
        train_major = counts.max() / counts.sum()
        if train_acc - train_major < NEAR_BASELINE:
            d.warnings.append(f"underfitting: {train_acc * 100:.1f}% on its own training data at the best epoch "
                              f"({b + 1}); try another --arch, more --epochs or a higher --patience")
        elif np.isfinite(val_acc) and train_acc - val_acc > OVERFIT_GAP:  # NaN: no validation split
            d.warnings.append(f"overfitting: {train_acc * 100:.1f}% on training but {val_acc * 100:.1f}% on validation "
                              f"at the best epoch ({b + 1}); try --augment, a smaller --width or more data")
        if not history.stopped_early and b >= history.epochs_run - 2:
            d.warnings.append(f"still improving when --epochs {history.epochs_run} ran out: raise --epochs")
    base = results.get("float32")
    for name in ("int8", "qat_int8"):
        r = results.get(name)
        if base and r and base.accuracy - r.accuracy > INT8_GAP:
            where = f"; worst layers: {', '.join(e.op for e in worst_layers)}" if worst_layers else ""
            d.warnings.append(f"{name} loses {(base.accuracy - r.accuracy) * 100:.2f} points against float32{where}")
    d.warnings.extend(notes)
    return d


def rows(results: dict[str, Evaluation], baseline: float | None = None) -> list[tuple[str, ...]]:
    base = results.get("float32")
    out = []
    for name, r in results.items():
        acc_delta = f"{(r.accuracy - base.accuracy) * 100:+.2f} pt" if base else "-"
        size_ratio = f"{r.size_bytes / base.size_bytes:.2f}x" if base else "-"
        vs_base = "-" if baseline is None else f"{(r.accuracy - baseline) * 100:+.1f} pt" + (
            " (!)" if r.accuracy - baseline < NEAR_BASELINE else "")
        out.append((name, f"{r.accuracy * 100:.2f}%", acc_delta, vs_base, f"{r.size_bytes:,} B", size_ratio,
                    f"{r.latency_ms['p50']:.3f}", f"{r.latency_ms['p99']:.3f}", "yes" if r.tflm_compatible else "no"))
    return out


def table(results: dict[str, Evaluation], diagnosis: Diagnosis | None = None) -> str:
    body = rows(results, diagnosis.baseline if diagnosis else None)
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(COLUMNS)]

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [line(COLUMNS), line(["-" * w for w in widths]), *(line(r) for r in body)]
    if diagnosis:
        lines.append(f"majority-class baseline: {diagnosis.baseline * 100:.2f}% (always '{diagnosis.majority}')")
        lines += [f"WARNING: {w}" for w in diagnosis.warnings]
    return "\n".join(lines)


def _md_table(head, body) -> str:
    return ("| " + " | ".join(head) + " |\n|" + "|".join("---" for _ in head) + "|\n"
            + "".join("| " + " | ".join(r) + " |\n" for r in body))


def markdown(results: dict[str, Evaluation], ds: Dataset, chosen: str, diagnosis: Diagnosis,
             layers=(), history=None, arch: str = "") -> str:
    split = "its own test split" if ds.official_split else "a seeded stratified 15% test split"
    text = [f"# tinysense build report: {ds.name}\n",
            f"Test: {len(ds.test.y)} samples ({split}), each variant measured through the LiteRT interpreter "
            "(one thread; latency is one inference, median and 99th percentile over repeated runs after warm-up). "
            f"Model: `{arch}`. The bundle carries `{chosen}`.\n",
            f"**Majority-class baseline: {diagnosis.baseline * 100:.2f}%** (always answering "
            f"'{diagnosis.majority}', the most common class in training).\n"]
    if diagnosis.warnings:
        text.append("## Warnings\n\n" + "".join(f"- **{w}**\n" for w in diagnosis.warnings))
    text.append("## Variants\n\n" + _md_table(COLUMNS, rows(results, diagnosis.baseline)))
    text.append(f"## Per-class recall ({chosen})\n\n" + _md_table(
        ("class", "recall", "test samples"),
        [(k, f"{v * 100:.1f}%", str(int(np.sum(ds.test.y == ds.labels.index(k)))))
         for k, v in diagnosis.recall.items()]))
    if history is not None and history.epochs_run:
        chose = "validation" if len(ds.val.y) else "training"
        why = f"\n\nNo validation split: {ds.no_validation}." if ds.no_validation else ""
        text.append(f"## Training\n\n{history.epochs_run} epochs, best {chose} loss at epoch "
                    f"{history.best_epoch + 1} (its weights are the model's)"
                    f"{', stopped early' if history.stopped_early else ''}.{why}\n\n![training curves](training.png)\n")
    if layers:
        from .debug import ROUNDING_RMSE, worst

        body = [(e.op, e.tensor[:60], f"{e.rmse_per_step:.3f}", f"{e.scale:.3g}") for e in worst(layers, 5)]
        text.append("## Where int8 loses accuracy\n\nTensorFlow's QuantizationDebugger, float against int8 per layer, "
                    f"RMSE in quantization steps (rounding alone gives {ROUNDING_RMSE:.2f}). Worst layers:\n\n"
                    + _md_table(("op", "tensor", "RMSE / step", "scale"), body) + "\n![per-layer error](layers.png)\n")
    text.append("![variants](variants.png)\n\n![confusion matrix](confusion.png)\n")
    return "\n".join(text)


def to_json(results: dict[str, Evaluation], ds: Dataset, chosen: str, diagnosis: Diagnosis | None = None,
            history=None, layers=()) -> str:
    out = {"dataset": ds.name, "test_samples": int(len(ds.test.y)), "official_split": ds.official_split,
           "bundle_variant": chosen, "variants": {n: r.to_dict() for n, r in results.items()}}
    if diagnosis:
        out.update(diagnosis.to_dict())
    if history is not None:
        out["training"] = {**history.to_dict(), "selected_by": "val_loss" if len(ds.val.y) else "loss",
                           **({"no_validation": ds.no_validation} if ds.no_validation else {})}
    if layers:
        out["layer_errors"] = [e.to_dict() for e in layers]
    return json.dumps(out, indent=2) + "\n"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(history, path: Path) -> None:
    """Loss and accuracy per epoch, train and validation, with the restored epoch marked."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    epochs = np.arange(1, history.epochs_run + 1)
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, getattr(history, key), label="train")
        ax.plot(epochs, getattr(history, f"val_{key}"), label="validation")
        if history.best_epoch >= 0:
            ax.axvline(history.best_epoch + 1, color="grey", ls="--", lw=1, label="restored epoch")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_layers(layers, path: Path) -> None:
    """RMSE per quantization step for every quantized layer, in graph order."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 3.8))
    ax.bar(range(len(layers)), [e.rmse_per_step for e in layers], color="#c44e52")
    ax.axhline(1 / np.sqrt(12), color="grey", ls="--", lw=1, label="rounding alone")
    ax.set_xticks(range(len(layers)), [e.op for e in layers], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("RMSE / quantization step")
    ax.set_title("float vs int8 per layer (QuantizationDebugger)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def plot_variants(results: dict[str, Evaluation], path: Path) -> None:
    plt = _pyplot()

    names = list(results)
    colors = ["#4c72b0" if results[n].tflm_compatible else "#b0b0b0" for n in names]
    metrics = [("top-1 accuracy (%)", [results[n].accuracy * 100 for n in names]),
               ("size (KiB)", [results[n].size_bytes / 1024 for n in names]),
               ("latency p50 (ms)", [results[n].latency_ms["p50"] for n in names])]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, (title, values) in zip(axes, metrics):
        bars = ax.bar(names, values, color=colors)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        if title.startswith("top-1"):
            ax.set_ylim(max(0, min(values) - 10), 100)
    fig.suptitle("Variants (blue: runs on TensorFlow Lite Micro, grey: does not)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, labels: tuple[str, ...], title: str, path: Path) -> None:
    plt = _pyplot()

    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
