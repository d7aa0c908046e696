"""The comparison report: a terminal table, report.md, report.json and two pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .datasets import Dataset
from .evaluate import Evaluation

COLUMNS = ("variant", "accuracy", "vs float32", "size", "vs float32", "p50 ms", "p99 ms", "TFLM")


def rows(results: dict[str, Evaluation]) -> list[tuple[str, ...]]:
    base = results.get("float32")
    out = []
    for name, r in results.items():
        acc_delta = f"{(r.accuracy - base.accuracy) * 100:+.2f} pt" if base else "-"
        size_ratio = f"{r.size_bytes / base.size_bytes:.2f}x" if base else "-"
        out.append((name, f"{r.accuracy * 100:.2f}%", acc_delta, f"{r.size_bytes:,} B", size_ratio,
                    f"{r.latency_ms['p50']:.3f}", f"{r.latency_ms['p99']:.3f}", "yes" if r.tflm_compatible else "no"))
    return out


def table(results: dict[str, Evaluation]) -> str:
    body = rows(results)
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *(line(r) for r in body)])


def markdown(results: dict[str, Evaluation], ds: Dataset, chosen: str) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "|".join("---" for _ in COLUMNS) + "|\n"
    body = "".join("| " + " | ".join(r) + " |\n" for r in rows(results))
    return (f"# tinysense build report: {ds.name}\n\n"
            f"Test split: {len(ds.test.y)} samples, measured through the LiteRT interpreter (one thread; "
            f"latency is one inference, median and 99th percentile over repeated runs after warm-up).\n"
            f"The bundle carries `{chosen}`.\n\n{head}{body}\n"
            "![variants](variants.png)\n\n![confusion matrix](confusion.png)\n")


def to_json(results: dict[str, Evaluation], ds: Dataset, chosen: str) -> str:
    return json.dumps({
        "dataset": ds.name, "test_samples": int(len(ds.test.y)), "bundle_variant": chosen,
        "variants": {n: r.to_dict() for n, r in results.items()},
    }, indent=2) + "\n"


def confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def plot_variants(results: dict[str, Evaluation], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
