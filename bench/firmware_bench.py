"""Firmware-export figures, measured side by side in one run.
Rerun: .venv/bin/python bench/firmware_bench.py [BUNDLE]   (default out/digits)

1. Parity (TFLM vs LiteRT reference and default kernels), arena (emitted vs recorded) and
   flash (vs model size) for the digits bundle and the shared MLPerf ResNet-8 int8 model.
2. Our C array against ``xxd -i`` on the same model, both cross-compiled for a Cortex-M4:
   which section the model lands in (flash or RAM) and its alignment.
3. With a TFLM tree (../shared/third_party/tflm or TFLM_TREE): each model built with real TFLM
   for every Cortex-M target under QEMU, CMSIS-NN and reference kernels: whole-firmware flash and
   RAM from the link map, the emitted arena against the smallest measured there, instructions per
   inference (a QEMU plugin: instructions, not cycles) and per multiply-accumulate; the RAM against
   what the same build needed with the fixed 16 KiB stack of before (the stack is now sized from
   the run's high-water mark); the per-operator table of each model and core (CMSIS-NN).
   ``--quick`` builds cortex-m4 only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firmware_export import build as builder, hardware, profile
from firmware_export.export import export

MLPERF = ROOT.parent / "shared" / "models" / "mlperf-tiny-ic" / "pretrainedResnet_quant.tflite"
TREE = ROOT.parent / "shared" / "third_party" / "tflm"


def macs(model: Path) -> int:
    """Multiply-accumulates of one inference (firmware_export.profile's count, summed over the graph)."""
    from contract import tflite
    from firmware_export.profile import macs as op_macs

    return sum(op_macs(op) for op in tflite.read(model.read_bytes()).ops)


def target_figures(label: str, model: Path, tmp: Path, tree: Path, targets: tuple[str, ...],
                   inputs: Path | None = None) -> None:
    """Built and run on each Cortex-M target with CMSIS-NN and reference kernels, side by side."""
    mac = macs(model if model.suffix == ".tflite" else model / "model.tflite")
    print(f"{label}: {mac:,} MACs per inference")
    print(f"  {'target':11s} {'kernels':9s} {'flash B':>8s} {'(TFLM':>7s} {'model)':>7s} {'RAM B':>7s} "
          f"{'16K-stack RAM':>13s} {'x':>5s} {'arena':>6s} {'min':>6s} {'+%':>5s} {'stack':>6s} {'instructions':>13s} "
          f"{'per MAC':>8s}")
    tables = []
    for t in targets:
        counts = {}
        for kernels in ("cmsis-nn", "reference"):
            r = export(model, tmp / f"{label}_{t}_{kernels}", name=label, inputs=inputs, build=(t,),
                       kernels=kernels, tflm_tree=tree, force=True).report
            b = r["build"][t]
            m, p = b["memory"], b["probe"]
            insns = p["instructions_per_inference"]
            counts[kernels] = insns
            # the RAM with the fixed 16 KiB stack (and no heap counted) every build had before the stack was sized
            before = m["ram_bytes"] - m["ram"]["stack_reserved"] - m["ram"].get("heap", 0) + builder.STACK_BYTES
            if kernels == "cmsis-nn" and "profile" in b:
                tables.append(profile.table(b["profile"], f"{t} ({label})"))
            print(f"  {t:11s} {kernels:9s} {m['flash_bytes']:8d} {m['flash']['tflm']:7d} {m['flash']['model']:7d} "
                  f"{m['ram_bytes']:7d} {before:13d} {m['ram_bytes'] / before:5.2f} {r['arena_bytes']:6d} "
                  f"{p['arena_min_bytes']:6d} "
                  f"{(r['arena_bytes'] / p['arena_min_bytes'] - 1) * 100:5.2f} {m.get('stack_used_bytes', 0):6d} "
                  f"{insns:13,d} {insns / mac:8.2f}")
        print(f"  {t}: reference kernels run {counts['reference'] / counts['cmsis-nn']:.1f}x the instructions "
              "of CMSIS-NN")
        e = builder.latency_estimate(counts["cmsis-nn"], hardware.reference_board(hardware.core(t)))
        print(f"  {t} CMSIS-NN on {e['board']} at {e['clock_mhz']:g} MHz: {e['ms_low']:.2f}-{e['ms_high']:.2f} ms "
              "estimated (1-2 cycles per instruction assumed)")
    for text in tables:
        print("\n".join("  " + line for line in text.splitlines()))


def placement(obj: Path, symbol: str) -> tuple[str, int, int]:
    """(section, section size in bytes, alignment in bytes) of the section that holds ``symbol``."""
    syms = subprocess.run(["arm-none-eabi-readelf", "-sW", str(obj)], capture_output=True, text=True).stdout
    ndx = next(ln.split()[6] for ln in syms.splitlines() if ln.split()[-1:] == [symbol])
    secs = subprocess.run(["arm-none-eabi-readelf", "-SW", str(obj)], capture_output=True, text=True).stdout
    for ln in secs.splitlines():
        m = re.match(r"\s*\[\s*(\d+)\]\s+(\S+)\s+\S+\s+\S+\s+\S+\s+(\S+)\s+.*\s(\d+)$", ln)
        if m and m.group(1) == ndx:
            return m.group(2), int(m.group(3), 16), int(m.group(4))
    raise RuntimeError(f"section {ndx} not found")


def compile_arm(src: Path, obj: Path, include: Path) -> None:
    subprocess.run(["arm-none-eabi-g++", "-mcpu=cortex-m4", "-mthumb", "-Os", "-fdata-sections", "-std=c++17",
                    "-I", str(include), "-c", str(src), "-o", str(obj)], check=True)


def xxd_versus_ours(model_path: Path, tmp: Path) -> None:
    shutil_copy = tmp / "model.tflite"
    shutil_copy.write_bytes(model_path.read_bytes())
    xxd = subprocess.run(["xxd", "-i", "model.tflite"], capture_output=True, text=True, cwd=tmp, check=True).stdout
    (tmp / "xxd_model.cc").write_text(xxd)
    compile_arm(tmp / "xxd_model.cc", tmp / "xxd.o", tmp)
    ours = export(model_path, tmp / "ours", name="model", compile_check=False, force=True).report
    compile_arm(tmp / "ours" / "model_model_data.cc", tmp / "ours.o", tmp / "ours")
    size = len(shutil_copy.read_bytes())
    print(f"  {model_path.name} ({size} B), arm-none-eabi-g++ -mcpu=cortex-m4 -Os -fdata-sections:")
    for label, obj, sym in (("xxd -i", tmp / "xxd.o", "model_tflite"), ("tinysense", tmp / "ours.o",
                                                                        "g_model_model_data")):
        section, nbytes, align = placement(obj, sym)
        where = "RAM (.data: copied from flash at boot, costs both)" if section.startswith(".data") else "flash only"
        print(f"    {label:10s} section {section:28s} {nbytes:7d} B  align {align:2d}  -> {where}")
    print(f"    tinysense ops: {', '.join(ours['ops'])}")


def export_figures(name: str, path: Path, tmp: Path, inputs: Path | None = None) -> None:
    r = export(path, tmp / f"{name}_fw", name=name, inputs=inputs, force=True).report
    ref, fast = r["parity"]["tflm_vs_litert_reference"], r["parity"]["tflm_vs_litert_default"]
    print(f"{name}: {r['parity']['samples']} inputs")
    print(f"  parity TFLM vs LiteRT reference: top-1 {ref['top1_agreement'] * 100:.1f}%, "
          f"max {ref['max_step_diff']} step(s) (target 100%, <= 1)")
    print(f"  parity TFLM vs LiteRT default (XNNPACK, the Pi path): top-1 {fast['top1_agreement'] * 100:.1f}%, "
          f"max {fast['max_step_diff']} step(s)")
    for d in r["parity"]["diverging_ops"]:
        print(f"    kernels part at op {d['index']} {d['op']}: up to {d['max_step_diff']} step(s)")
    print(f"  arena {r['arena_bytes']} B vs TFLM recorded {r['arena_recorded_bytes']} B "
          f"(+{(r['arena_bytes'] / r['arena_recorded_bytes'] - 1) * 100:.1f}%, target <= 10%)")
    print(f"  flash {r['flash_bytes']} B vs model {r['model_bytes']} B "
          f"(+{(r['flash_bytes'] / r['model_bytes'] - 1) * 100:.3f}%, target <= 1%)")


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    bundle = Path(args[0]) if args else ROOT / "out" / "digits"
    targets = ("cortex-m4",) if "--quick" in sys.argv else tuple(n for n, c in hardware.CORES.items() if c.is_mcu)
    tree = Path(os.environ.get("TFLM_TREE", TREE))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if (tree / "tensorflow").is_dir():
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import int8_autoencoder, int8_ds_cnn

            target_figures("digits", bundle, tmp, tree, targets)
            if MLPERF.is_file():
                target_figures("resnet8", MLPERF, tmp, tree, targets)
            target_figures("autoencoder", int8_autoencoder(tmp / "ae.tflite"), tmp, tree, targets)
            target_figures("kws_ds_cnn", int8_ds_cnn(tmp / "kws.tflite"), tmp, tree, targets)
        else:
            print(f"no TFLM tree at {tree}: the Cortex-M figures are left out (set TFLM_TREE)")
        export_figures("digits", bundle, tmp)
        if MLPERF.is_file():
            rng = np.random.default_rng(0)
            coarse = rng.uniform(0, 255, (300, 4, 4, 3))  # smooth synthetic images: CIFAR-10 is not here
            np.savez(tmp / "images.npz", x=np.repeat(np.repeat(coarse, 8, 1), 8, 2).astype(np.float32))
            export_figures("resnet8", MLPERF, tmp, tmp / "images.npz")
        print("where the model lands:")
        (tmp / "a").mkdir()
        xxd_versus_ours(bundle / "model.tflite", tmp / "a")
        if MLPERF.is_file():
            (tmp / "b").mkdir()
            xxd_versus_ours(MLPERF, tmp / "b")


if __name__ == "__main__":
    main()
