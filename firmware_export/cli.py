"""``python -m firmware_export``: a full-int8 model -> verified C sources for TensorFlow Lite Micro."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from device.runner import run_cli


def parser() -> argparse.ArgumentParser:
    from .export import ARENA_MARGIN_PERCENT, TARGETS

    p = argparse.ArgumentParser(prog="python -m firmware_export",
                                description="Export a full-int8 model as C sources for TensorFlow Lite Micro, "
                                            "measured and verified in the real TFLM interpreter and compilers.")
    p.add_argument("model", type=Path, help="a bundle folder (model.tflite + model.json) or a .tflite file")
    p.add_argument("--out", type=Path, required=True, help="folder for the sources")
    p.add_argument("--name", help="C name prefix (default: from the bundle folder or file name)")
    p.add_argument("--target", help=f"board preset: {', '.join(f'{k} ({v.ram_kb} KiB RAM, {v.flash_kb} KiB flash)' for k, v in TARGETS.items())}")
    p.add_argument("--flash-kb", type=int, help="flash budget in KiB (overrides the preset)")
    p.add_argument("--ram-kb", type=int, help="RAM budget for the tensor arena in KiB (overrides the preset)")
    p.add_argument("--margin", type=float, default=ARENA_MARGIN_PERCENT,
                   help=f"arena margin over the recorded figure, percent (default {ARENA_MARGIN_PERCENT:g})")
    p.add_argument("--inputs", type=Path,
                   help="an .npz with x (and y): samples for parity and golden vectors when exporting a bare .tflite")
    p.add_argument("--no-compile", action="store_true", help="skip the g++ and arm-none-eabi-g++ checks")
    p.add_argument("--build", choices=["host"], action="append", default=[],
                   help="build main.cc with real TFLM into a program and run its golden self-test "
                        "(host: this machine's g++; needs --tflm-tree)")
    p.add_argument("--tflm-tree", type=Path,
                   help="a standalone TFLM source tree from create_tflm_tree.py (default: $TFLM_TREE)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli("firmware_export", parser(), export_from, argv)


def export_from(args) -> int:
    from .export import export

    result = export(args.model, args.out, name=args.name, target=args.target, flash_kb=args.flash_kb,
                    ram_kb=args.ram_kb, force=args.force, compile_check=not args.no_compile,
                    margin_percent=args.margin, inputs=args.inputs, build=tuple(args.build),
                    tflm_tree=args.tflm_tree, log=lambda *a: print(*a, file=sys.stderr))
    r = result.report
    par = r["parity"]
    print(f"exported {r['name']} to {result.out}: ops {', '.join(r['ops'])}")
    flash = f"flash {r['flash_bytes']} B (.rodata, not RAM)" if r["flash_bytes"] is not None else \
        "flash not measured (--no-compile)"
    print(f"  model {r['model_bytes']} B, {flash}, "
          f"arena {r['arena_bytes']} B (smallest that runs in TFLM here {r['arena_smallest_host_bytes']} B "
          f"+ {r['arena_margin_percent']:g}%; the recording allocator reported {r['arena_recorded_bytes']} B)")
    for key, label in (("tflm_vs_litert_reference", "LiteRT reference"), ("tflm_vs_litert_default", "LiteRT default")):
        c = par[key]
        print(f"  parity TFLM vs {label} on {par['samples']} inputs: top-1 agreement "
              f"{c['top1_agreement'] * 100:.1f}%, max difference {c['max_step_diff']} step(s)")
    for target, b in r.get("build", {}).items():
        print(f"  built {b['program']} with TFLM for {target}: self-test {b['self_test']} golden inputs match")
    for d in par["diverging_ops"]:
        print(f"  TFLM and LiteRT reference kernels differ at op {d['index']} {d['op']} by up to "
              f"{d['max_step_diff']} step(s)")
    return 0


def run() -> None:
    sys.exit(main())
