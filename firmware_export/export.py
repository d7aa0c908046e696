"""One export: preflight -> TFLM measurements (arena, golden, parity) -> sources -> compile -> budgets."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import atomic, tflite
from contract import bundle as bundle_mod
from contract.bundle import sha256
from contract.preprocess import Preprocessor
from contract.quant import quantize
from contract.runtime import Model, TensorInfo, open_bundle

from . import ExportError, compile as cc, generate, hardware, plan as arena_plan, tflm

ARENA_MARGIN_PERCENT = 5.0
MEASURED_MARGIN_PERCENT = 1.0  # over the smallest arena measured on the target itself
GOLDEN_COUNT = 5
PARITY_MAX = 300


@dataclass(frozen=True)
class Source:
    """What is exported: the model bytes, and the bundle around it when there is one."""

    model: bytes
    path: Path
    bundle: bundle_mod.Bundle | None

    @property
    def default_name(self) -> str:
        return self.path.name if self.bundle else self.path.stem


def read_source(path: Path) -> Source:
    path = Path(path)
    if path.is_dir():
        b = open_bundle(path, num_threads=1).bundle  # the same gate as the device
        return Source(b.model, path, b)
    if not path.is_file():
        raise ExportError(f"{path} does not exist: give a bundle folder or a .tflite file")
    data = path.read_bytes()
    if not data:
        raise ExportError(f"{path} is empty: give a .tflite written by the converter")
    return Source(data, path, None)


def preflight(model: bytes) -> tflite.ModelInfo:
    """Refuse what TFLM int8 firmware cannot take, naming what was found and what to do."""
    info = tflite.read(model)
    rebuild = "rebuild with the int8 variant (python -m build_model --variants int8)"
    if info.custom_ops:
        flex = [o for o in info.custom_ops if o.startswith("Flex")]
        kind = "select-TF" if flex else "custom"
        raise ExportError(f"the model uses {kind} operators {', '.join(info.custom_ops)} that TFLM cannot run: "
                          f"{rebuild}")
    if "FLOAT16" in {t for op in info.ops for t in op.input_types}:
        raise ExportError(f"this is a float16 model (float16 weights, float compute): {rebuild}")
    if info.float_ops:
        io = set(info.input_types + info.output_types)
        what = "a dynamic-range model (int8 weights, float activations)" if any(
            "INT8" in op.input_types for op in info.ops if op.is_float) else "a float model"
        if io & tflite.FLOAT_TYPES and not (io - tflite.FLOAT_TYPES) and what == "a float model":
            what = "a float model (float input and output)"
        raise ExportError(f"this is {what}: float operators {', '.join(info.float_ops)}; {rebuild}")
    return info


def _inputs(src: Source, m_in: TensorInfo, count: int,
            inputs: Path | None = None) -> tuple[np.ndarray, list[int]]:
    """Quantized inputs: ``inputs`` when given, else the bundle's test set, else seeded random values.

    An ``inputs`` file holds ``x`` (and optionally ``y``): integers in the model's input type are
    used as they are; floats are what the float model would take, and are quantized here.
    """
    shape, dtype = m_in.shape, m_in.dtype
    if inputs is not None:
        try:
            data = np.load(inputs, allow_pickle=False)
            x = data["x"][:count]
        except (OSError, ValueError, KeyError) as e:
            raise ExportError(f"cannot read --inputs {inputs} ({e}): give an .npz with an array x") from None
        if x.shape[1:] != shape[1:] and x.shape[1:] != shape:
            raise ExportError(f"--inputs samples have shape {x.shape[1:]}, the model takes {shape[1:]}")
        if x.dtype.kind == "f":
            x = quantize(x, m_in.scale, m_in.zero_point, dtype)
        elif x.dtype != dtype:
            raise ExportError(f"--inputs holds {x.dtype}, the model takes {dtype} (or floats to quantize)")
        truth = [int(v) for v in data["y"][:count]] if "y" in data else [-1] * len(x)
        return x.reshape(len(x), *shape), truth
    if src.bundle and src.bundle.testset_path.is_file():
        data = np.load(src.bundle.testset_path)
        pre = Preprocessor(src.bundle.spec)
        n = min(count, len(data["x"]))
        xs = np.stack([pre(x).copy() for x in data["x"][:n]])
        truth = [int(v) for v in data["y"][:n]] if "y" in data else [-1] * n
        return xs, truth
    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    return rng.integers(info.min, info.max + 1, (count, *shape)).astype(dtype), [-1] * count


def _golden_pick(truth: list[int], k: int) -> list[int]:
    """One input per class first, so the self-test covers different outputs."""
    picked, seen = [], set()
    for i, t in enumerate(truth):
        if t not in seen or t < 0:
            picked.append(i)
            seen.add(t)
        if len(picked) == k:
            break
    return picked or list(range(min(k, len(truth))))


def parity(model: bytes, micro_outputs: np.ndarray, xs: np.ndarray) -> dict:
    """TFLM's outputs against LiteRT's reference kernels and its default (XNNPACK) path, on the same bytes."""
    ref = Model(model, num_threads=1, resolver="reference")
    fast = Model(model, num_threads=1)
    m_out = micro_outputs.astype(np.int32)
    r_out = np.stack([ref.run(x) for x in xs]).astype(np.int32)
    f_out = np.stack([fast.run(x) for x in xs]).astype(np.int32)

    def compare(a, b):
        def flat(o):
            return o.reshape(len(o), -1)
        return {"top1_agreement": round(float(np.mean(flat(a).argmax(1) == flat(b).argmax(1))), 6),
                "max_step_diff": int(np.abs(a - b).max())}
    return {"samples": int(len(xs)), "tflm_vs_litert_reference": compare(m_out, r_out),
            "tflm_vs_litert_default": compare(m_out, f_out)}


def arena_size(recorded: int, margin_percent: float) -> int:
    """The recorded figure plus the margin, rounded up to 16 bytes."""
    return int(math.ceil(recorded * (1 + margin_percent / 100) / 16) * 16)


@dataclass
class ExportResult:
    out: Path
    report: dict


def export(path: Path, out: Path | atomic.OutputDir, name: str | None = None, target: str | None = None,
           flash_kb: int | None = None, ram_kb: int | None = None, force: bool = False, compile_check: bool = True,
           build: tuple = (), tflm_tree=None, kernels: str | None = None, log=lambda *a: None,
           margin_percent: float = ARENA_MARGIN_PERCENT, inputs: Path | None = None,
           tflm_oracle: str = "auto", size: bool = False, size_opt: str | None = None,
           plan: str = "auto", plan_lost: dict | None = None) -> ExportResult:
    board = hardware.preset(target) if target is not None else None
    if plan not in PLANS:
        raise ExportError(f"unknown arena plan {plan!r}: choose from {', '.join(PLANS)}")
    output = out if isinstance(out, atomic.OutputDir) else atomic.OutputDir(out, force)  # the one check
    src = read_source(path)
    ident = generate.sanitise(name or src.default_name)
    info = preflight(src.model)
    lite = Model(src.model, num_threads=1)  # the I/O tensors, as LiteRT reads them
    m_in, m_out = lite.input, lite.output
    xs, truth = _inputs(src, m_in, PARITY_MAX, inputs)
    with tempfile.TemporaryDirectory(prefix="tinysense-tflm-") as work:
        # the package in a child process, or TFLM built here when the package crashes on the model;
        # raises with TFLM's own reason when it cannot run the model
        measured = _measure(src.model, info, tflm_tree, Path(work) / "greedy", m_out, log, tflm_oracle, xs,
                            margin_percent)
        model, planned = _plan(src.model, info, tflm_tree, Path(work) / "planned", m_out, log, tflm_oracle, xs,
                               margin_percent, measured, plan, plan_lost)
        oracle, recorded, smallest, arena, outputs = planned[1] if planned[1] else measured
        checks = parity(model, outputs, xs)
        # per operator against LiteRT: the kernels' doing, not the plan's (and TFLM keeps every tensor
        # only with a plan of its own), so with TFLM's plan
        diverging = measured[0].diverging(xs)
    checks["diverging_ops"] = diverging or []
    checks["tflm"] = oracle.what
    if diverging is None:
        checks["diverging_ops_not_checked"] = "the TFLM built here keeps no intermediate tensors to compare"
    pick = _golden_pick(truth, GOLDEN_COUNT)
    g_in = xs[pick]
    g_out = outputs[pick]

    spec = src.bundle.spec if src.bundle else None
    labels = spec.labels if spec else tuple(str(i) for i in range(int(np.prod(m_out.shape))))
    # a bundle says it is a classifier; a bare .tflite is one when it ends in SOFTMAX
    is_classifier = spec is not None or (bool(info.ops) and info.ops[-1].name == "SOFTMAX")
    pre = spec.input.preprocess if spec else None

    def as_tuple(v) -> tuple:
        return tuple(v) if isinstance(v, tuple) else (v,)
    cfg = generate.Config(
        arena_bytes=arena, arena_recorded=recorded, margin_percent=margin_percent,
        input_shape=m_in.shape, input_dtype=m_in.dtype.name, input_scale=m_in.scale,
        input_zero_point=m_in.zero_point, output_shape=m_out.shape, output_dtype=m_out.dtype.name,
        output_scale=m_out.scale, output_zero_point=m_out.zero_point,
        labels=labels, is_classifier=is_classifier, mean=as_tuple(pre.mean) if pre else (0.0,),
        std=as_tuple(pre.std) if pre else (1.0,))
    digest = sha256(model)
    source_name = src.path.name if not src.bundle else f"{src.path.name}/model.tflite"
    if model is not src.model:
        source_name += " with our arena plan as its OfflineMemoryAllocation metadata"
    files = {
        **generate.model_data(ident, model, source_name, digest),
        **generate.model_ops(ident, info.op_names, source_name),
        **generate.model_config(ident, cfg, source_name),
        **generate.golden(ident, g_in, g_out, [truth[i] for i in pick], source_name),
        **generate.entry_points(ident),
    }
    report = {"name": ident, "source": str(src.path), "model_bytes": len(model), "sha256": digest,
              "source_sha256": sha256(src.model), "arena_plan": planned[0],
              "ops": info.op_names, "arena_bytes": arena, "arena_recorded_bytes": recorded,
              "arena_smallest_host_bytes": smallest,
              "arena_margin_percent": margin_percent, "target": target, "parity": checks,
              "golden": {"count": len(pick), "tolerance_steps": 1}, "files": sorted(files)}
    try:
        with output.staged() as stage:
            _write(stage, files, report, ident, model, compile_check, board, build, cfg, source_name, kernels,
                   tflm_tree, log, info, size, size_opt, target, flash_kb, ram_kb,
                   src.model if model is not src.model else None)
    except PlanLost as e:  # on a core, TFLM needs more with our plan than with its own: export it without
        log(f"arena plan: ours was not used: {e}; TFLM plans the arena itself")
        return export(path, output, name, target, flash_kb, ram_kb, force, compile_check, build, tflm_tree, kernels,
                      log, margin_percent, inputs, tflm_oracle, size, size_opt, "greedy",
                      {**report["arena_plan"], "used": False, "why": str(e)})
    return ExportResult(output.path, report)


class PlanLost(ExportError):
    """Our arena plan needs more arena than TFLM's own on a Cortex-M core (its kernels' scratch)."""


def _write(stage: Path, files: dict, report: dict, ident: str, model: bytes, compile_check: bool, board, build,
           cfg, source_name: str, kernels, tflm_tree, log, info, size: bool, size_opt, target, flash_kb, ram_kb,
           original: bytes | None) -> None:
    """The export's files into the staged folder: sources, the compile check, the builds, export.json.
    ``original``: the model as it came, when ``model`` carries our arena plan."""
    for fname, text in files.items():
        (stage / fname).write_text(text)
    if compile_check:
        cc.host_roundtrip(stage, ident, model)
        sections = cc.arm_sections(stage, ident, board.cpu if board else "cortex-m4")
        report["sections"] = sections
        report["flash_bytes"] = cc.flash_bytes(sections)
        if sections["data"] >= len(model):
            raise ExportError("the model landed in .data (RAM), not flash: the array lost its const")
    else:
        report["flash_bytes"] = None
    if build:
        _build(stage, ident, cfg, source_name, report, build, kernels, tflm_tree, log,
               board, info, size, size_opt, original)
    elif size:
        raise ExportError("--size builds the smallest firmware: give it with --build cortex-m4 (or another core)")
    _check_budget(report, target, flash_kb, ram_kb)
    (stage / "export.json").write_text(json.dumps(report, indent=2) + "\n")


PLANS = ("auto", "greedy")  # --arena-plan: ours where it beats TFLM's greedy plan and TFLM accepts it, or TFLM's


def _measure(model: bytes, info, tree, work: Path, m_out: TensorInfo, log, choice: str, xs: np.ndarray,
             margin_percent: float) -> tuple:
    """TFLM's oracle for these bytes, its recorded and smallest arena (bytes), the arena to emit and
    TFLM's outputs at exactly that arena."""
    work.mkdir()
    oracle = tflm.oracle(model, info, tree, work, m_out, log, choice)
    recorded = oracle.recorded_arena(xs[0])
    # the recorded total can miss the planner's scratch memory (tiny activations): use what works
    smallest = oracle.smallest_arena(xs[0], recorded)
    arena = arena_size(max(recorded, smallest), margin_percent)
    return oracle, recorded, smallest, arena, oracle.outputs(xs, arena)  # the emitted figure must be enough


def _plan(model: bytes, info, tree, work: Path, m_out: TensorInfo, log, choice: str, xs: np.ndarray,
          margin_percent: float, greedy: tuple, wanted: str,
          lost: dict | None = None) -> tuple[bytes, tuple[dict, tuple | None]]:
    """Our arena plan, where it needs less than TFLM's greedy one and TFLM accepts it: the model then
    carries it as OfflineMemoryAllocation metadata. Accepted means TFLM here allocates the planned
    model in a smaller arena than the greedy one and gives the very same outputs on every input (and,
    with a Cortex-M --build, needs no more arena on any core: _build). Anything else keeps TFLM's own
    plan; the report says why, and a plan that beat greedy and was refused gets a line of its own."""
    if wanted == "greedy":
        return model, (lost or {"used": False, "why": "--arena-plan greedy"}, None)
    try:
        ours = arena_plan.best_plan(model)
    except ExportError as e:
        return model, ({"used": False, "why": str(e)}, None)
    report = {"used": False, **ours.summary(), "greedy_arena_bytes": greedy[3]}
    if not ours.beats_greedy:
        report["why"] = ("TFLM's greedy plan is at the lower bound already" if ours.greedy_bytes == ours.lower_bound
                         else "ours is no smaller than TFLM's greedy plan")
        return model, (report, None)
    try:
        candidate = arena_plan.with_plan(model, ours)
    except ExportError as e:
        return model, ({**report, "why": str(e)}, None)
    try:
        planned = _measure(candidate, info, tree, work, m_out, log, choice, xs, margin_percent)
    except ExportError as e:
        why = f"TFLM refused it ({e})"
    else:
        if not np.array_equal(planned[4], greedy[4]):
            why = "TFLM's outputs with it differ from those with its own plan"
        elif planned[3] >= greedy[3]:
            why = f"TFLM needs {planned[3]} B with it, against {greedy[3]} B with its own plan"
        else:
            report.update(used=True, arena_bytes=planned[3])
            return candidate, (report, planned)
    report["why"] = why
    log(f"arena plan: ours was not used: {why}; TFLM plans the arena itself")
    return model, (report, None)


def measured_arena(min_bytes: int) -> int:
    """The arena emitted from a measured minimum: plus 1 %, rounded up to 16 (at most 2 % + 16 B above)."""
    return int(math.ceil(min_bytes * (1 + MEASURED_MARGIN_PERCENT / 100) / 16) * 16)


def _build(stage: Path, ident: str, cfg: generate.Config, source_name: str, report: dict, targets: tuple,
           kernels: str | None, tflm_tree, log, target_board: hardware.Board | None = None,
           info: tflite.ModelInfo | None = None, size: bool = False, size_opt: str | None = None,
           original: bytes | None = None) -> None:
    """Probe every Cortex-M target for its smallest arena and its per-operator cost, emit the 32-bit
    arena from that, then build and run the firmware on each target with the emitted figure. With
    ``original`` (the model carries our arena plan), the original is probed on each core too, and
    PlanLost is raised where it needs less arena there than the planned one."""
    from . import build as builder, profile

    tree = builder.find_tree(tflm_tree)
    targets = tuple(dict.fromkeys(targets))
    mcu = {t: hardware.core(t).is_mcu for t in targets}
    for t in targets:  # every tool present before minutes of compiling
        builder.toolchain(t, kernels if mcu[t] else None)
    probes = {t: builder.probe(stage, ident, tree, t, cfg.arena_bytes, kernels, log=log)
              for t in targets if mcu[t]}
    if original is not None and probes:
        theirs = _greedy_on_target(stage, ident, original, tree, tuple(probes), cfg.arena_bytes, kernels, log)
        report["arena_plan"]["on_target"] = {t: {"arena_min_bytes": p["arena_min_bytes"],
                                                 "greedy_arena_min_bytes": theirs[t]} for t, p in probes.items()}
        for t, p in probes.items():
            if p["arena_min_bytes"] > theirs[t]:
                raise PlanLost(f"on {t} TFLM needs {p['arena_min_bytes']} B with it, against {theirs[t]} B with its "
                               "own plan (its kernels' scratch buffers, placed around ours)")
    if probes:
        worst = max(probes.values(), key=lambda p: p["arena_min_bytes"])
        arena = measured_arena(worst["arena_min_bytes"])
        how = (f"Measured on {worst['target']} ({worst['kernels']} kernels) under QEMU: "
               f"{worst['arena_min_bytes']} bytes is the smallest arena that allocates and passes the golden "
               f"self-test there; this is that plus {MEASURED_MARGIN_PERCENT:g}%, rounded up to 16. "
               f"The 64-bit figure: {cfg.arena_recorded} bytes recorded on the host plus "
               f"{cfg.margin_percent:g}%.")
        cfg = dataclasses.replace(cfg, arena_bytes=arena, arena_bytes_64=cfg.arena_bytes, arena_how=how)
        (stage / f"{ident}_model_config.h").write_text(generate.model_config(ident, cfg, source_name)[
            f"{ident}_model_config.h"])
        report["arena_bytes_64bit"] = cfg.arena_bytes_64
        report["arena_bytes"] = arena
        report["arena_measured"] = {t: {"kernels": p["kernels"], "min_bytes": p["arena_min_bytes"]}
                                    for t, p in probes.items()}
    profiles = {}
    for t, p in probes.items():
        counted = p.pop("operators", None)
        if counted and info is not None:
            rows = profile.rows(info, counted["ops"], p["kernels"], profile.cmsis_nn_ops(tree), counted["helium"])
            ops_sum = sum(r["instructions"] for r in rows)
            profiles[t] = {"whole_instructions": counted["whole_instructions"], "operators_instructions": ops_sum,
                           "coverage": round(ops_sum / counted["whole_instructions"], 4),
                           "matches_graph": len(rows) == len(info.ops), "rows": rows}
    if profiles:
        profile.chart(profiles, stage / "profile.png", ident)
        report["files"] = sorted([*report["files"], "profile.png"])
    report["build"] = {}
    for t in targets:
        result = builder.build(stage, ident, tree, t, kernels if mcu[t] else None, log=log)
        if t in probes:
            result["probe"] = probes[t]
            if t in profiles:
                result["profile"] = profiles[t]
            if size:
                result["size"] = _size_build(stage, ident, tree, t, kernels, cfg.arena_bytes, result, log,
                                             size_opt or builder.SIZE_OPT)
            insns = probes[t]["instructions_per_inference"]
            # the --target board's own clock when its core is this one, else a common board with this core
            own = target_board is not None and target_board.cpu == t and not target_board.stands_in
            at = target_board if own else hardware.reference_board(hardware.core(t))
            if insns:
                result["latency_estimate"] = builder.latency_estimate(insns, at)
        report["build"][t] = result


def _greedy_on_target(stage: Path, ident: str, original: bytes, tree, targets: tuple, arena: int,
                      kernels: str | None, log) -> dict[str, int]:
    """The smallest arena (bytes) the model as it came, TFLM planning it, allocates in on each core."""
    from . import build as builder

    with tempfile.TemporaryDirectory(prefix="tinysense-greedy-") as tmp:
        work = Path(tmp)
        for f in stage.iterdir():
            if f.suffix in (".h", ".cc"):
                shutil.copy(f, work / f.name)
        for fname, text in generate.model_data(ident, original, "the model as it came", sha256(original)).items():
            (work / fname).write_text(text)
        log("probing the model with TFLM's own arena plan too, on each core")
        return {t: builder.probe(work, ident, tree, t, arena, kernels)["arena_min_bytes"] for t in targets}


def _size_build(stage: Path, ident: str, tree, target: str, kernels: str | None, arena: int, full: dict, log,
                opt: str) -> dict:
    """--size: the same firmware with TFLM and main.cc compiled for size without TFLM's error strings
    (its own library, cached), its stack sized from its own run; it must pass its self-test, and its
    probe counts its instructions. Figures beside the full build's."""
    from . import build as builder

    log(f"building the smallest firmware for {target} (the runtime {opt.replace('-all', '')}, "
        f"{' '.join(builder.SIZE_DEFINES)})")
    p = builder.probe(stage, ident, tree, target, arena, kernels, log=log, size=True, opt=opt)
    b = builder.build(stage, ident, tree, target, kernels, log=log, size=True, opt=opt)
    mem, was = b["memory"], full["memory"]
    insns, before = p["instructions_per_inference"], full["probe"]["instructions_per_inference"]
    runtime_opt, kernels_opt = ("-Os", "-Os") if opt == "-Os-all" else (opt, "-O2")
    return {"flags": [f"{runtime_opt} (TFLM's runtime, main.cc)", f"{kernels_opt} (kernels)", *builder.SIZE_DEFINES],
            "program": b["program"], "binary": b["binary"],
            "self_test": b["self_test"], "memory": mem, "arena_min_bytes": p["arena_min_bytes"],
            "instructions_per_inference": insns,
            "versus_full": {"flash": round(mem["flash_bytes"] / was["flash_bytes"], 4),
                            "ram": round(mem["ram_bytes"] / was["ram_bytes"], 4),
                            "instructions": round(insns / before, 4) if insns and before else None}}


def _whole_firmware(report: dict, target: str | None) -> tuple[str, dict] | None:
    """The Cortex-M build whose link map the budget uses: the board's own core when it was built."""
    built = {t: b for t, b in report.get("build", {}).items() if "memory" in b}
    if not built:
        return None
    cpu = hardware.preset(target).cpu if target else None
    name = cpu if cpu in built else next(iter(built))
    return name, built[name]["memory"]


def _check_budget(report: dict, target: str | None, flash_kb: int | None, ram_kb: int | None) -> None:
    """Flash and RAM against the board: the whole firmware when it was built (TFLM, model, arena, C
    library, stack), else the model array and the arena alone."""
    t = hardware.preset(target) if target else None
    flash_kb = flash_kb or (t.flash_kb if t else None)
    ram_kb = ram_kb or (t.ram_kb if t else None)
    whole = _whole_firmware(report, target)
    if whole:
        core, mem = whole
        flash, ram = mem["flash_bytes"], mem["ram_bytes"]
        what_flash = what_ram = f"the whole firmware (as built for {core})"
    else:
        flash, ram = report["flash_bytes"] or report["model_bytes"], report["arena_bytes"]
        what_flash, what_ram = "the model", "the tensor arena"
    report["budget"] = {"flash_kb": flash_kb, "ram_kb": ram_kb, "flash_bytes": flash, "ram_bytes": ram,
                        "counts": "whole firmware" if whole else "model array and arena only"}
    where = f" on {target}" if target else ""
    if flash_kb is not None and flash > flash_kb * 1024:
        raise ExportError(f"{what_flash} needs {flash} bytes of flash{where}, the budget is {flash_kb * 1024} "
                          f"({flash_kb} KiB): use a smaller model or a bigger board")
    if ram_kb is not None and ram > ram_kb * 1024:
        raise ExportError(f"{what_ram} needs {ram} bytes of RAM{where}, the budget is "
                          f"{ram_kb * 1024} ({ram_kb} KiB): use a smaller model or a bigger board")
