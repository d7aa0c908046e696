"""``python -m build_model``: build, compare and bundle every quantized variant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.cli import run_cli

from . import UsageError


def parser() -> argparse.ArgumentParser:
    from .archs import ARCHS, DEFAULT  # names only: nothing here imports TensorFlow
    from .variants import NAMES

    p = argparse.ArgumentParser(
        prog="python -m build_model",
        description="Train (or load) a Keras classifier, build every quantized variant, measure each through "
                    "the real interpreter, and write a bundle: model.tflite (full int8) + model.json.")
    p.add_argument("--dataset", default="digits",
                   help="digits (default, offline), basicmotions, ucr:NAME (a UCR/UEA set on its official split, "
                        "e.g. ucr:ItalyPowerDemand), mnist, fashion_mnist, cifar10, images:FOLDER, csv:FILE or "
                        "npz:FILE")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--variants", help=f"comma-separated subset of: {', '.join(NAMES)} (default: all)")
    p.add_argument("--arch", choices=list(ARCHS),
                   help=f"architecture (default: {DEFAULT['sensor']} for sensors, {DEFAULT['image']} for images)")
    p.add_argument("--width", type=float, help="the arch's width multiplier (default 1; mobilenet 0.25)")
    p.add_argument("--model", dest="model_path", help="your own Keras model (.keras, .h5, SavedModel folder)")
    p.add_argument("--epochs", type=int,
                   help="maximum training epochs; early stopping on the validation loss ends sooner and restores "
                        "the best epoch (0: use --model as is; default 300, or 1000 for a set too small to spare a "
                        "validation split, where the best training loss is kept)")
    p.add_argument("--patience", type=int, default=50,
                   help="epochs without a better validation loss before stopping (default 50)")
    p.add_argument("--fine-tune-epochs", type=int, default=30,
                   help="maximum epochs for QAT, pruning, clustering and a --model backbone (default 30)")
    p.add_argument("--batch-size", type=int, help="default: a tenth of the training split, between 4 and 32")
    p.add_argument("--augment", action="store_true",
                   help="augment training batches (sensor: jitter, scaling, time shift; image: flip, shift)")
    p.add_argument("--class-weight", action="store_true", help="weight classes by inverse frequency (imbalanced data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration-count", type=int, default=300,
                   help="calibration samples from the training split (default 300, or all when fewer)")
    p.add_argument("--raw-input", action="store_true", help="the model takes raw values: mean 0, std 1")
    p.add_argument("--window", type=int, help="cut sensor recordings into windows of N steps "
                                              "(default: whole recordings; basicmotions: 50)")
    # dataset options: left unset unless given, so a dataset refuses one it does not use
    p.add_argument("--stride", type=int, help="sensor window stride in steps (default 10)")
    p.add_argument("--length", choices=("resample", "pad"),
                   help="variable-length recordings: resample to the longest (default) or pad with the last sample")
    p.add_argument("--channels", type=int, help="channels per step in a csv: dataset (default 1)")
    p.add_argument("--image-size", type=int, help="side of images: from a folder (default 32)")
    p.add_argument("--no-layer-debug", action="store_true", help="skip the per-layer int8 error analysis")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or step lines")
    return p


def build_from(args) -> int:
    from .pipeline import BuildConfig, build
    from .variants import parse

    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    cfg = BuildConfig(dataset=args.dataset, out=args.out, variants=tuple(parse(args.variants)),
                      model_path=args.model_path, arch=args.arch, width=args.width, epochs=args.epochs,
                      fine_tune_epochs=args.fine_tune_epochs, patience=args.patience, batch_size=args.batch_size,
                      augment=args.augment, class_weight=args.class_weight, seed=args.seed,
                      calibration_count=args.calibration_count, raw_input=args.raw_input, window=args.window,
                      stride=args.stride, channels=args.channels, image_size=args.image_size, length=args.length,
                      layer_debug=not args.no_layer_debug, force=args.force, quiet=args.quiet)
    if cfg.model_path and cfg.arch:
        raise UsageError("--arch and --model exclude each other: --model brings its own architecture")
    result = build(cfg, log=log)
    print(result.table)
    print(f"\nbundle: {result.out} (model.tflite = {result.chosen}); report: {result.out / 'report.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit 0, 1 for an error (nothing is written), 2 for a bad command line, 130 when interrupted."""
    return run_cli("build_model", parser(), build_from, argv)


def run() -> None:
    sys.exit(main())
