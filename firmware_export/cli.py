"""``python -m firmware_export``: a full-int8 model -> verified C sources for TensorFlow Lite Micro."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.cli import run_cli


def parser() -> argparse.ArgumentParser:
    from .boards import LAYOUTS
    from .build import KERNELS, TARGETS as BUILD_TARGETS
    from .export import ARENA_MARGIN_PERCENT
    from .hardware import PRESETS, PROJECTS

    p = argparse.ArgumentParser(prog="python -m firmware_export",
                                description="Export a full-int8 model as C sources for TensorFlow Lite Micro, "
                                            "measured and verified in the real TFLM interpreter and compilers.")
    p.add_argument("model", type=Path, help="a bundle folder (model.tflite + model.json) or a .tflite file")
    p.add_argument("--out", type=Path, required=True, help="folder for the sources")
    p.add_argument("--name", help="C name prefix (default: from the bundle folder or file name)")
    presets = ", ".join(f"{k} ({v.ram_kb} KiB RAM, {v.flash_kb} KiB flash)" for k, v in PRESETS.items())
    p.add_argument("--target", help=f"board preset: {presets}")
    p.add_argument("--flash-kb", type=int, help="flash budget in KiB (overrides the preset); the whole firmware "
                                                "once a Cortex-M --build ran, else the model")
    p.add_argument("--ram-kb", type=int, help="RAM budget in KiB (overrides the preset); the whole firmware once a "
                                              "Cortex-M --build ran, else the tensor arena")
    p.add_argument("--margin", type=float, default=ARENA_MARGIN_PERCENT,
                   help=f"arena margin over the recorded figure, percent (default {ARENA_MARGIN_PERCENT:g})")
    p.add_argument("--inputs", type=Path,
                   help="an .npz with x (and y): samples for parity and golden vectors when exporting a bare .tflite")
    p.add_argument("--no-compile", action="store_true", help="skip the g++ and arm-none-eabi-g++ checks")
    p.add_argument("--build", choices=BUILD_TARGETS, action="append", default=[], metavar="TARGET",
                   help="build main.cc with real TFLM into a program and run its golden self-test; "
                        "repeatable. host: this machine's g++; cortex-m4, cortex-m7, cortex-m55: Arm's MPS2/MPS3 "
                        "boards under qemu-system-arm, which also measure the smallest arena there (emitted "
                        "plus 1%%), whole-firmware flash and RAM, and instructions per inference. Needs --tflm-tree")
    p.add_argument("--size", action="store_true",
                   help="with a Cortex-M --build: also build the smallest firmware that still passes its self-test "
                        "(without TFLM's error strings, TFLM's runtime and main.cc at -Os and its kernels at -O2, a "
                        "library of its own compiled once) and print its flash, RAM and instructions beside the full "
                        "build's")
    p.add_argument("--kernels", choices=KERNELS,
                   help="TFLM kernels on a Cortex-M target (default cmsis-nn; the host builds reference)")
    p.add_argument("--tflm", choices=("auto", "package", "host"), default="auto",
                   help="which real TFLM measures the arena and gives the parity and golden outputs: the tflite-micro "
                        "package (in a child process), the TFLM built here from --tflm-tree (host, reference kernels), "
                        "or auto (default): the package, and the one built here when the package crashes on the model "
                        "or is not installed")
    p.add_argument("--arena-plan", choices=("auto", "greedy"), default="auto",
                   help="auto (default): our own arena plan, written into the model as its OfflineMemoryAllocation "
                        "metadata, where it needs less than TFLM's greedy plan and TFLM accepts it (a smaller arena, "
                        "the same outputs); greedy: TFLM plans the arena itself")
    p.add_argument("--tflm-tree", type=Path,
                   help="a standalone TFLM source tree from create_tflm_tree.py (default: $TFLM_TREE)")
    p.add_argument("--layout", choices=LAYOUTS,
                   help="write a board project instead of bare sources: an Arduino sketch folder "
                        "(--out/NAME/NAME.ino) or a PlatformIO project (platformio.ini, src/); needs --board")
    projects = ", ".join(f"{k} ({v.project.note})" for k, v in PROJECTS.items())
    p.add_argument("--board", help=f"the board of --layout: {projects}; sets --target to its preset")
    p.add_argument("--flash", metavar="PORT",
                   help="with --layout: build and upload with arduino-cli or pio (an error when neither is here)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli("firmware_export", parser(), export_from, argv)


def export_from(args) -> int:
    from .export import export

    if args.layout or args.board or args.flash:
        return _board_project(args)
    result = export(args.model, args.out, name=args.name, target=args.target, flash_kb=args.flash_kb,
                    ram_kb=args.ram_kb, force=args.force, compile_check=not args.no_compile,
                    margin_percent=args.margin, inputs=args.inputs, build=tuple(args.build),
                    tflm_tree=args.tflm_tree, kernels=args.kernels, log=lambda *a: print(*a, file=sys.stderr),
                    tflm_oracle=args.tflm, size=args.size, plan=args.arena_plan)
    _summary(result)
    return 0


def _board_project(args) -> int:
    """--layout and --board: the export, laid out for the board's tool, built and flashed when it is here."""
    import tempfile

    from contract import atomic

    from . import ExportError, boards, hardware
    from .export import export

    if not (args.layout and args.board):
        raise ExportError("--layout, --board and --flash go together: pass --layout arduino|platformio and --board "
                          f"{'|'.join(hardware.PROJECTS)}")
    b = hardware.project_board(args.board)
    output = atomic.OutputDir(args.out, args.force)  # checked once, before the export's minutes

    def log(*a) -> None:
        print(*a, file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        result = export(args.model, Path(tmp) / "src", name=args.name, target=args.target or b.name,
                        flash_kb=args.flash_kb, ram_kb=args.ram_kb, compile_check=not args.no_compile,
                        margin_percent=args.margin, inputs=args.inputs, build=tuple(args.build),
                        tflm_tree=args.tflm_tree, kernels=args.kernels, log=log, tflm_oracle=args.tflm,
                        size=args.size, plan=args.arena_plan)
        with output.staged() as stage:
            project = boards.write_project(result.out, stage, result.report["name"], args.layout, b.project)
            relative = project.relative_to(stage)
    project = Path(args.out) / relative
    result.out = project
    _summary(result)
    print(f"  {args.layout} project for {b.project.note} in {project}")
    boards.build_and_flash(args.layout, b.project, project, args.flash, log=log)
    return 0


def _summary(result) -> None:
    r = result.report
    par = r["parity"]
    print(f"exported {r['name']} to {result.out}: ops {', '.join(r['ops'])}")
    flash = f"flash {r['flash_bytes']} B (.rodata, not RAM)" if r["flash_bytes"] is not None else \
        "flash not measured (--no-compile)"
    if "arena_measured" in r:
        where = ", ".join(f"{t} {m['min_bytes']} B" for t, m in r["arena_measured"].items())
        arena = (f"arena {r['arena_bytes']} B on 32-bit targets (smallest measured there: {where}; + 1%), "
                 f"{r['arena_bytes_64bit']} B on a 64-bit host")
    else:
        arena = (f"arena {r['arena_bytes']} B (smallest that runs in TFLM here {r['arena_smallest_host_bytes']} B "
                 f"+ {r['arena_margin_percent']:g}%; the recording allocator reported {r['arena_recorded_bytes']} B)")
    print(f"  model {r['model_bytes']} B, {flash}, {arena}")
    ap = r["arena_plan"]
    if ap.get("used"):
        print(f"  arena plan: ours (OfflineMemoryAllocation metadata): activations {ap['bytes']} B where TFLM's "
              f"greedy plan takes {ap['greedy_bytes']} B ({ap['versus_greedy']:.2f}x; lower bound "
              f"{ap['lower_bound_bytes']} B); arena {ap['arena_bytes']} B here against {ap['greedy_arena_bytes']} B")
    elif ap.get("why"):
        print(f"  arena plan: TFLM's own ({ap['why']})")
    print(f"  measured and checked by {par['tflm']}")
    for key, label in (("tflm_vs_litert_reference", "LiteRT reference"), ("tflm_vs_litert_default", "LiteRT default")):
        c = par[key]
        print(f"  parity TFLM vs {label} on {par['samples']} inputs: top-1 agreement "
              f"{c['top1_agreement'] * 100:.1f}%, max difference {c['max_step_diff']} step(s)")
    for target, b in r.get("build", {}).items():
        print(f"  built {b['program']} with TFLM ({b['kernels']} kernels) for {target}: self-test {b['self_test']} "
              "golden inputs match")
        if "memory" in b:
            m = b["memory"]
            print(f"    whole firmware: flash {m['flash_bytes']} B (TFLM {m['flash']['tflm']}, model "
                  f"{m['flash']['model']}, C library {m['flash']['libc']}, rest {m['flash']['rest']}), RAM "
                  f"{m['ram_bytes']} B (arena {m['ram']['arena']}, stack {m['ram']['stack_reserved']} sized from "
                  f"{m.get('stack_used_bytes', '?')} used, heap {m['ram'].get('heap', '?')}, TFLM {m['ram']['tflm']}, "
                  f"rest {m['ram']['libc'] + m['ram']['rest']})")
        if "probe" in b:
            p = b["probe"]
            insns = p["instructions_per_inference"]
            print(f"    smallest arena there {p['arena_min_bytes']} B (emitted {r['arena_bytes']} B); "
                  f"{insns if insns is not None else 'unknown'} instructions per inference (counted by a QEMU "
                  "plugin: instructions, not cycles)")
        if "profile" in b:
            from .profile import table

            print("\n".join("    " + line for line in table(b["profile"], target).splitlines()))
        if "size" in b:
            z, v = b["size"], b["size"]["versus_full"]
            m = z["memory"]
            insns = f"{z['instructions_per_inference']} instructions ({(v['instructions'] - 1) * 100:+.1f}%)" \
                if v["instructions"] else "instructions unknown"
            print(f"    smallest build ({', '.join(z['flags'])}): self-test {z['self_test']}; flash "
                  f"{m['flash_bytes']} B ({v['flash']:.2f}x; TFLM {m['flash']['tflm']}), RAM {m['ram_bytes']} B "
                  f"({v['ram']:.2f}x), {insns}")
        if "latency_estimate" in b:
            e = b["latency_estimate"]
            print(f"    estimated latency on {e['board']} at {e['clock_mhz']:g} MHz: {e['ms_low']:.2f} to "
                  f"{e['ms_high']:.2f} ms per inference (1 to 2 cycles per instruction assumed)")
    for d in par["diverging_ops"]:
        print(f"  TFLM and LiteRT reference kernels differ at op {d['index']} {d['op']} by up to "
              f"{d['max_step_diff']} step(s)")
    return 0


def run() -> None:
    sys.exit(main())
