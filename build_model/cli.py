"""``python -m build_model``: build, compare and bundle every quantized variant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from device import DeviceError
from firmware_export import ExportError

from . import BuildError, UsageError


def parser() -> argparse.ArgumentParser:
    from .quantize import VARIANTS  # for the --variants help; this imports TensorFlow (a few seconds)

    p = argparse.ArgumentParser(
        prog="python -m build_model",
        description="Train (or load) a Keras classifier, build every quantized variant, measure each through "
                    "the real interpreter, and write a bundle: model.tflite (full int8) + model.json.")
    p.add_argument("--dataset", default="digits",
                   help="digits (default, offline), basicmotions, mnist, fashion_mnist, cifar10, "
                        "images:FOLDER, csv:FILE or npz:FILE")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--variants", help=f"comma-separated subset of: {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--model", dest="model_path", help="your own Keras model (.keras, .h5, SavedModel folder)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (0: use --model as is; default 15)")
    p.add_argument("--fine-tune-epochs", type=int, default=3, help="epochs for QAT, pruning, clustering (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration-count", type=int, default=300,
                   help="calibration samples from the training split (default 300, or all when fewer)")
    p.add_argument("--raw-input", action="store_true", help="the model takes raw values: mean 0, std 1")
    p.add_argument("--window", type=int, default=50, help="sensor window length in steps (default 50)")
    p.add_argument("--stride", type=int, default=10, help="sensor window stride in steps (default 10)")
    p.add_argument("--channels", type=int, default=1, help="channels per step in a csv: dataset (default 1)")
    p.add_argument("--image-size", type=int, default=32, help="side of images: from a folder (default 32)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or step lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    try:
        from .pipeline import BuildConfig, build
        from .quantize import parse_variants

        cfg = BuildConfig(dataset=args.dataset, out=args.out, variants=tuple(parse_variants(args.variants)),
                          model_path=args.model_path, epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs,
                          seed=args.seed, calibration_count=args.calibration_count, raw_input=args.raw_input,
                          window=args.window, stride=args.stride, channels=args.channels,
                          image_size=args.image_size, force=args.force, quiet=args.quiet)
        result = build(cfg, log=log)
    except UsageError as e:
        if args.debug:
            raise
        print(f"build_model: error: {e}", file=sys.stderr)
        return 2
    except (BuildError, DeviceError, ExportError, OSError) as e:
        if args.debug:
            raise
        print(f"build_model: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("build_model: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(result.table)
    print(f"\nbundle: {result.out} (model.tflite = {result.chosen}); report: {result.out / 'report.md'}")
    return 0


def run() -> None:
    sys.exit(main())
