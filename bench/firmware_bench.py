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
   the run's high-water mark); the per-operator table of each model and core (CMSIS-NN); the
   smallest build (--size) beside the full one: flash, RAM and instructions, and their ratios.
   ``--quick`` builds cortex-m4 only; ``--models=a,b`` builds only those (digits, resnet8,
   autoencoder, kws_ds_cnn, mobilenet_96, mobilenet_v2); ``--size-opt`` adds digits' smallest build
   with every optimisation choice (the runtime at -Os and the kernels at -O2, the default; all -O2;
   all -Os).
   Where our arena plan is used, the same model is built again with TFLM's greedy plan
   (--arena-plan greedy), and the arena each needs on each core is printed side by side.
   The models: digits, the MLPerf Tiny ResNet-8 (../shared), our autoencoder, a DS-CNN of the
   MLPerf KWS shape, build_model's MobileNet-style net at 96x96x3 (a visual wake words size) and
   keras.applications MobileNetV2 (alpha 0.35, 96x96; untrained, so its logits: an untrained
   SOFTMAX's input scale is below what TFLM's int8 softmax takes, and TFLM refuses it).
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

from firmware_export import ExportError, build as builder, hardware, profile
from firmware_export.export import export

MLPERF = ROOT.parent / "shared" / "models" / "mlperf-tiny-ic" / "pretrainedResnet_quant.tflite"
TREE = ROOT.parent / "shared" / "third_party" / "tflm"


def macs(model: Path) -> int:
    """Multiply-accumulates of one inference (firmware_export.profile's count, summed over the graph)."""
    from contract import tflite
    from firmware_export.profile import macs as op_macs

    return sum(op_macs(op) for op in tflite.read(model.read_bytes()).ops)


def target_figures(label: str, model: Path, tmp: Path, tree: Path, targets: tuple[str, ...],
                   inputs: Path | None = None, size_opts: tuple[str, ...] = (builder.SIZE_OPT,)) -> None:
    """Built and run on each Cortex-M target with CMSIS-NN and reference kernels, side by side."""
    mac = macs(model if model.suffix == ".tflite" else model / "model.tflite")
    print(f"{label}: {mac:,} MACs per inference")
    print(f"  {'target':11s} {'kernels':9s} {'flash B':>8s} {'(TFLM':>7s} {'model)':>7s} {'RAM B':>7s} "
          f"{'16K-stack RAM':>13s} {'x':>5s} {'arena':>6s} {'min':>6s} {'+%':>5s} {'stack':>6s} {'instructions':>13s} "
          f"{'per MAC':>8s}")
    tables, smallest, plans = [], [], []
    for t in targets:
        counts = {}
        for kernels in ("cmsis-nn", "reference"):
            try:
                for opt in size_opts if kernels == "cmsis-nn" else (None,):
                    r = export(model, tmp / f"{label}_{t}_{kernels}", name=label, inputs=inputs, build=(t,),
                               kernels=kernels, tflm_tree=tree, force=True, size=opt is not None, size_opt=opt).report
                    if opt:
                        smallest.append((t, opt, r["build"][t]))
            except ExportError as e:  # a model too big for the core's board, say
                print(f"  {t:11s} {kernels:9s} not built: {e}")
                break
            if kernels == "cmsis-nn" and r["arena_plan"].get("used"):
                g = export(model, tmp / f"{label}_{t}_greedy", name=label, inputs=inputs, build=(t,),
                           kernels=kernels, tflm_tree=tree, force=True, plan="greedy").report
                plans.append((t, r["arena_plan"], r["build"][t]["probe"]["arena_min_bytes"],
                              g["build"][t]["probe"]["arena_min_bytes"]))
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
        if len(counts) < 2:
            continue
        print(f"  {t}: reference kernels run {counts['reference'] / counts['cmsis-nn']:.1f}x the instructions "
              "of CMSIS-NN")
        e = builder.latency_estimate(counts["cmsis-nn"], hardware.reference_board(hardware.core(t)))
        print(f"  {t} CMSIS-NN on {e['board']} at {e['clock_mhz']:g} MHz: {e['ms_low']:.2f}-{e['ms_high']:.2f} ms "
              "estimated (1-2 cycles per instruction assumed)")
    print("  the smallest build (--size: no error strings, the stack sized from the run) against the full one:")
    print(f"  {'target':11s} {'runtime/kernels':15s} {'flash B':>8s} {'x':>5s} {'RAM B':>7s} {'x':>5s} "
          f"{'vs 16K-stack':>12s} {'instructions':>13s} {'+%':>6s}")
    for t, opt, b in smallest:
        small, m = b["size"], b["memory"]
        before = m["ram_bytes"] - m["ram"]["stack_reserved"] - m["ram"].get("heap", 0) + builder.STACK_BYTES
        how = {"-Os": "-Os/-O2", "-O2": "-O2/-O2", "-Os-all": "-Os/-Os"}.get(opt, opt)
        v = small["versus_full"]
        print(f"  {t:11s} {how:15s} {small['memory']['flash_bytes']:8d} {v['flash']:5.3f} "
              f"{small['memory']['ram_bytes']:7d} {v['ram']:5.3f} {small['memory']['ram_bytes'] / before:12.3f} "
              f"{small['instructions_per_inference']:13,d} {(v['instructions'] - 1) * 100:+6.2f}")
    if plans:
        print("  our arena plan (OfflineMemoryAllocation) against TFLM's greedy plan, the smallest arena TFLM "
              "allocates in on the core:")
        print(f"  {'target':11s} {'activations':>11s} {'greedy':>7s} {'bound':>7s} {'x':>5s}   {'arena':>7s} "
              f"{'greedy':>7s} {'x':>5s}")
        for t, ap, mine, theirs in plans:
            print(f"  {t:11s} {ap['bytes']:11d} {ap['greedy_bytes']:7d} {ap['lower_bound_bytes']:7d} "
                  f"{ap['versus_greedy']:5.3f}   {mine:7d} {theirs:7d} {mine / theirs:5.3f}")
    else:
        print("  arena plan: TFLM's own on every core (ours is no better: "
              f"{r['arena_plan'].get('why', 'not planned')})")
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


def mobilenet_v2(path: Path) -> Path:
    """keras.applications MobileNetV2, alpha 0.35, 96x96x3, untrained, full int8, ending in its logits."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import full_int8

    from build_model.tf import keras

    keras.utils.set_random_seed(0)
    net = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=2,
                                         classifier_activation=None)
    return full_int8(net, path, 10)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    bundle = Path(args[0]) if args else ROOT / "out" / "digits"
    targets = ("cortex-m4",) if "--quick" in sys.argv else tuple(n for n, c in hardware.CORES.items() if c.is_mcu)
    tree = Path(os.environ.get("TFLM_TREE", TREE))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if (tree / "tensorflow").is_dir():
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import int8_autoencoder, int8_ds_cnn, int8_mobilenet

            opts = ("-Os", "-O2", "-Os-all") if "--size-opt" in sys.argv else (builder.SIZE_OPT,)
            only = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--models=")), None)
            models = {"digits": lambda: bundle, "resnet8": lambda: MLPERF if MLPERF.is_file() else None,
                      "autoencoder": lambda: int8_autoencoder(tmp / "ae.tflite"),
                      "kws_ds_cnn": lambda: int8_ds_cnn(tmp / "kws.tflite"),
                      "mobilenet_96": lambda: int8_mobilenet(tmp / "mobilenet.tflite", 96),
                      "mobilenet_v2": lambda: mobilenet_v2(tmp / "mobilenet_v2.tflite")}
            for label, make in models.items():
                model = make() if only is None or label in only else None
                if model is not None:
                    target_figures(label, model, tmp, tree, targets, size_opts=opts if label == "digits" else
                                   (builder.SIZE_OPT,))
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
