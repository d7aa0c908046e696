"""Build the generated sources with real TensorFlow Lite Micro into a program, run it, read its self-test.

The TFLM library comes from a standalone source tree, as TFLM's create_tflm_tree.py writes it
(``--tflm-tree DIR`` or ``TFLM_TREE``). Its kernels (reference, or CMSIS-NN on a Cortex-M) are
compiled once per tree, target, kernels and flags into a static library cached under
~/.cache/tinysense-tflm; the linker then takes only what the model's resolver registers.

Targets: ``host`` (this machine's g++, run directly) and Cortex-M cores on QEMU's Arm boards
(arm-none-eabi-g++, our own start-up and linker script, semihosting for stdio and the exit code,
run under qemu-system-arm). On a Cortex-M the build also runs a probe program that bisects the
smallest arena that allocates there, checks the golden inputs at that size, and counts the
instructions of one inference with a QEMU plugin; the link map gives whole-firmware flash and RAM.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from . import ExportError, hardware

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinysense-tflm"
FLAGS = ["-std=c++17", "-O2", "-fno-rtti", "-fno-exceptions", "-DTF_LITE_STATIC_MEMORY"]
MCU_FLAGS = ["-ffunction-sections", "-fdata-sections", "-fno-unwind-tables", "-fno-asynchronous-unwind-tables"]
CXX_MCU_FLAGS = ["-fno-threadsafe-statics", "-fno-use-cxa-atexit"]
C_FLAGS = ["-std=c11", "-O2"]
SKIP = re.compile(r"_test\.cc$|/examples/|/cmsis_nn/|/tools/|/testing/|benchmarks|test_helper|mock_micro_graph|"
                  r"fake_micro_context")
KERNELS = ("reference", "cmsis-nn")
STACK_BYTES = 16 * 1024  # the stack the first link reserves at the top of RAM; the run reports its use
STACK_MARGIN = (1.25, 512, 256)  # the firmware's own stack: measured high-water x 1.25 + 512 B, up to 256 B
RUN_TIMEOUT_S = 600
TARGETS = tuple(hardware.CORES)  # --build


CPI = (1.0, 2.0)
CPI_NOTE = ("assumes 1 to 2 cycles per instruction: these are single-issue cores (the M7 dual-issues and can "
            "go below 1) where loads, taken branches and flash wait states cost extra cycles; QEMU counts "
            "instructions, not cycles, so measure on the board for a real figure")


def latency_estimate(instructions: int, board: hardware.Board) -> dict:
    """A latency range (milliseconds) for one inference from its instruction count at a board's clock."""
    low, high = (instructions * c / (board.clock_mhz * 1e6) * 1000 for c in CPI)
    return {"board": board.note, "clock_mhz": board.clock_mhz, "ms_low": round(low, 3), "ms_high": round(high, 3),
            "assumption": CPI_NOTE}


def find_tree(tree: str | os.PathLike | None) -> Path:
    """The TFLM tree from the argument or TFLM_TREE, checked for what a build needs."""
    path = tree or os.environ.get("TFLM_TREE")
    if not path:
        raise ExportError("--build needs a TFLM source tree: pass --tflm-tree DIR or set TFLM_TREE "
                          "(make one with TFLM's create_tflm_tree.py; see the README)")
    root = Path(path)
    if not (root / "tensorflow" / "lite" / "micro" / "micro_interpreter.h").is_file():
        raise ExportError(f"{root} is not a TFLM source tree (no tensorflow/lite/micro/micro_interpreter.h): "
                          "give the folder create_tflm_tree.py wrote")
    return root


def _includes(tree: Path, kernels: str = "reference") -> list[str]:
    dirs = [tree, tree / "third_party" / "flatbuffers" / "include", tree / "third_party" / "gemmlowp",
            tree / "third_party" / "ruy", tree / "third_party" / "kissfft"]
    if kernels == "cmsis-nn":
        dirs += [tree / "third_party" / "cmsis_nn", tree / "third_party" / "cmsis_nn" / "Include",
                 tree / "third_party" / "cmsis" / "CMSIS" / "Core" / "Include"]
    return [f"-I{d}" for d in dirs]


def _sources(tree: Path, kernels: str = "reference") -> list[Path]:
    """The library's sources: every runtime and kernel file; for CMSIS-NN its kernels replace the
    reference ones of the same name, and CMSIS-NN's own C sources come along."""
    sources = [p for p in tree.rglob("*.cc") if not SKIP.search(p.relative_to(tree).as_posix())]
    if kernels == "cmsis-nn":
        kdir = tree / "tensorflow" / "lite" / "micro" / "kernels"
        optimized = {p.name: p for p in (kdir / "cmsis_nn").glob("*.cc")}
        if not optimized:
            raise ExportError(f"{tree} has no CMSIS-NN kernels (tensorflow/lite/micro/kernels/cmsis_nn): make "
                              "the tree with OPTIMIZED_KERNEL_DIR=cmsis_nn, or build with --kernels reference")
        sources = [p for p in sources if not (p.parent == kdir and p.name in optimized)]
        sources += [*optimized.values(), *(tree / "third_party" / "cmsis_nn" / "Source").rglob("*.c")]
    return sorted(sources)


# A library of only the kernels the model's resolver registers: TFLM's runtime, the file that defines
# each Register_* the resolver's Add methods call, and what those files need, followed through their
# includes of TFLM's kernel headers (conv.h -> conv.cc, conv_common.cc) and their calls of CMSIS-NN
# functions (arm_convolve_wrapper_s8 -> the .c file that defines it); the other kernels are never compiled.
KERNEL_PARTS = ("tensorflow/lite/micro/kernels/", "third_party/cmsis_nn/", "signal/")
HOT_PARTS = (*KERNEL_PARTS, "tensorflow/lite/kernels/")  # what runs in every inference: -O2 in --size too
RESOLVER_ADD = re.compile(r"resolver\.(Add\w+)\(")
REGISTER_DEF = re.compile(r"\b(Register_\w+)\(\)\s*\{")
INCLUDE = re.compile(r'^#include "((?:tensorflow/lite/micro/kernels|signal)/[\w/]+)\.h"', re.M)
ARM_CALL = re.compile(r"\b(arm_\w+)\s*\(")
ARM_DEF = re.compile(r"^[A-Za-z_][\w \*]*?\b(arm_\w+)\s*\(", re.M)


def resolver_ops(ops_header: Path) -> list[str]:
    """The MicroMutableOpResolver methods a generated ``*_model_ops.h`` calls (AddConv2D, ...)."""
    return RESOLVER_ADD.findall(ops_header.read_text())


def _needed(tree: Path, sources: list[Path], methods: list[str], also: tuple[str, ...] = ()) -> list[Path]:
    """The sources a program needs whose resolver calls these Add methods: the runtime, and each
    registered kernel with what it includes and calls (see KERNEL_PARTS); ``also``: more sources
    (paths in the tree) to take with theirs."""
    header = (tree / "tensorflow" / "lite" / "micro" / "micro_mutable_op_resolver.h").read_text()
    bodies = dict(zip(*(lambda m: ([x.group(1) for x in m], [header[a.end():b.start() if b else None]
                                                           for a, b in zip(m, [*m[1:], None])]))(
        list(re.finditer(r"TfLiteStatus (Add\w+)\(", header)))))
    unknown = [m for m in methods if m not in bodies]
    if unknown:
        raise ExportError(f"TFLM's MicroMutableOpResolver in {tree} has no {', '.join(unknown)}: "
                          "this tree is older than the operators the model uses")
    text = {p: p.read_text(errors="replace") for p in sources}
    by_rel = {p.relative_to(tree).as_posix(): p for p in sources}
    defines = {name: p for p, t in text.items() if p.suffix == ".cc" for name in REGISTER_DEF.findall(t)}
    arm = {name: p for p, t in text.items() if p.suffix == ".c" for name in ARM_DEF.findall(t)}
    kernel = {p for p in sources if p.relative_to(tree).as_posix().startswith(KERNEL_PARTS)}
    todo = [p for p in sources if p not in kernel]
    todo += [defines[r] for m in methods for r in re.findall(r"\b(Register_\w+)\(", bodies[m]) if r in defines]
    todo += [by_rel[a] for a in also if a in by_rel]
    chosen: set[Path] = set()
    while todo:
        p = todo.pop()
        if p in chosen:
            continue
        chosen.add(p)
        for inc in INCLUDE.findall(text[p]):
            todo += [by_rel[f] for f in (f"{inc}.cc", f"{inc}_common.cc") if f in by_rel]
        todo += [arm[f] for f in ARM_CALL.findall(text[p]) if f in arm]
    return sorted(chosen)


# --size: without TFLM's error strings (MicroPrintf in the kernels compiles to nothing; the self-test
# still prints pass or fail through printf), and the code that runs once (TFLM's runtime: parsing the
# flatbuffer, planning and allocating the arena; main.cc) compiled for size while the kernels and the
# quantization arithmetic they call (HOT_PARTS), where an inference spends its instructions, keep -O2.
# bench/firmware_bench.py --size-opt measures this against all -O2 and all -Os (the README has the figures).
SIZE_DEFINES = ["-DTF_LITE_STRIP_ERROR_STRINGS"]
SIZE_OPT = "-Os"  # the runtime's and main.cc's; "-Os-all" puts the kernels at -Os too


@dataclass(frozen=True)
class Toolchain:
    """The compilers and flags of one target and kernel choice; ``size``: the smallest build's flags."""

    platform: hardware.Core
    kernels: str
    cxx: str
    cc: str
    size: bool = False
    opt: str = SIZE_OPT  # with size

    @property
    def defines(self) -> list[str]:
        return [*(["-DCMSIS_NN"] if self.kernels == "cmsis-nn" else []), *(SIZE_DEFINES if self.size else [])]

    def _optimised(self, flags: list[str], kernel: bool) -> list[str]:
        opt = "-Os" if self.opt == "-Os-all" else "-O2" if kernel else self.opt
        return [opt if f == "-O2" and self.size else f for f in flags]

    def cxx_flags(self, kernel: bool = False) -> list[str]:
        """The C++ flags; ``kernel``: for a kernel's source (the smallest build keeps them fast)."""
        mcu = [*self.platform.cpu_flags, *MCU_FLAGS, *CXX_MCU_FLAGS] if self.platform.is_mcu else []
        return self._optimised([*FLAGS, *mcu, *self.defines], kernel)

    def c_flags(self, kernel: bool = False) -> list[str]:
        mcu = [*self.platform.cpu_flags, *MCU_FLAGS] if self.platform.is_mcu else []
        return self._optimised([*C_FLAGS, *mcu, *self.defines], kernel)


def toolchain(target: str, kernels: str | None = None, size: bool = False, opt: str = SIZE_OPT) -> Toolchain:
    plat = hardware.core(target)
    kernels = kernels or plat.default_kernels
    if kernels not in KERNELS:
        raise ExportError(f"unknown kernels {kernels!r}: choose from {', '.join(KERNELS)}")
    if kernels == "cmsis-nn" and not plat.is_mcu:
        raise ExportError("CMSIS-NN kernels are for Arm Cortex-M: build host with --kernels reference")
    if size and not plat.is_mcu:
        raise ExportError("--size is for Cortex-M targets: the host build is the reference")
    if plat.is_mcu:
        return Toolchain(plat, kernels, _tool("arm-none-eabi-g++", "gcc-arm-none-eabi libnewlib-arm-none-eabi"),
                         _tool("arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi"), size, opt)
    return Toolchain(plat, kernels, _tool("g++", "g++"), _tool("gcc", "gcc"))


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if not path:
        raise ExportError(f"{name} is not installed: sudo apt-get install {package}")
    return path


@dataclass(frozen=True)
class Library:
    """A libtflm.a and how much of the tree went into it: ``sources`` of the ``of`` the full library
    has; ``ops`` and ``also``: what it was chosen for (None: every kernel)."""

    path: Path
    sources: int
    of: int
    ops: tuple[str, ...] | None = None
    also: tuple[str, ...] = ()

    @property
    def whole(self) -> bool:
        return self.sources == self.of


def library(tree: Path, tc: Toolchain | None = None, ops: list[str] | None = None, jobs: int | None = None,
            log=lambda *a: None, also: tuple[str, ...] = ()) -> Library:
    """libtflm.a for this tree, target, kernels and flags: with ``ops`` (resolver Add methods), TFLM's
    runtime and only the kernels they register (see KERNEL_PARTS); without, every kernel. Each object
    is compiled once (the whole tree takes minutes on 2 cores) and cached for every later library."""
    tc = tc or toolchain("host")
    sources = _sources(tree, tc.kernels)
    version = subprocess.run([tc.cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    # the tree's own files by relative path and size, not where it sits: CI's copy hits the same cache
    split = [*HOT_PARTS, *tc.cxx_flags(True), *tc.c_flags(True)] if tc.size else []  # which files get which flags
    key = hashlib.sha256("\n".join([*version, *tc.cxx_flags(), *tc.c_flags(), *split,
                                    *(f"{p.relative_to(tree)}:{p.stat().st_size}" for p in sources)]).encode())
    out = CACHE / f"{tc.platform.name}-{tc.kernels}{'-size' if tc.size else ''}-{key.hexdigest()[:16]}"
    chosen = sources if ops is None else _needed(tree, sources, ops, also)
    part = "all" if len(chosen) == len(sources) else \
        hashlib.sha256("\n".join(p.relative_to(tree).as_posix() for p in chosen).encode()).hexdigest()[:12]
    lib = Library(out / f"lib-{part}" / "libtflm.a", len(chosen), len(sources), None if ops is None else tuple(ops),
                  tuple(also))
    if lib.path.is_file():
        return lib
    objs = out / "obj"
    todo = [p for p in chosen if not (objs / p.relative_to(tree).with_suffix(".o")).is_file()]
    if todo:
        log(f"compiling TFLM for {tc.platform.name} with {tc.kernels} kernels{' for size' if tc.size else ''} "
            f"({len(todo)} of its {len(sources)} sources{'' if ops is None else ', the kernels this model uses'}) "
            f"into {out}; cached after this once")
    includes = _includes(tree, tc.kernels)

    def one(src: Path) -> None:
        obj = objs / src.relative_to(tree).with_suffix(".o")
        obj.parent.mkdir(parents=True, exist_ok=True)
        kernel = src.relative_to(tree).as_posix().startswith(HOT_PARTS)
        cmd = [tc.cc, *tc.c_flags(kernel)] if src.suffix == ".c" else [tc.cxx, *tc.cxx_flags(kernel)]
        tmp = obj.with_suffix(f".{os.getpid()}.tmp")
        r = subprocess.run([*cmd, *includes, "-c", str(src), "-o", str(tmp)], capture_output=True, text=True)
        if r.returncode:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"compiling TFLM's {src.relative_to(tree)} for {tc.platform.name} failed: "
                              f"{_first_error(r.stderr)}")
        os.replace(tmp, obj)  # a cached object is always whole
    with ThreadPoolExecutor(jobs or os.cpu_count() or 2) as pool:
        list(pool.map(one, todo))
    ar = tc.cxx.replace("g++", "ar") if tc.platform.is_mcu else "ar"
    lib.path.parent.mkdir(exist_ok=True)
    tmp = lib.path.with_suffix(f".{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    subprocess.run([ar, "rcs", str(tmp), *(str(objs / p.relative_to(tree).with_suffix(".o")) for p in chosen)],
                   check=True)
    os.replace(tmp, lib.path)
    return lib


def _naming(tree: Path, kernels: str, symbols: list[str]) -> list[str]:
    """The kernel sources (paths in the tree) that name any of these functions the linker missed."""
    names = {re.sub(r"[<(].*", "", s).split("::")[-1] for s in symbols}  # tflite::Register_X() -> Register_X
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(names))) + r")\s*\(")
    kernel = [p for p in _sources(tree, kernels) if p.relative_to(tree).as_posix().startswith(KERNEL_PARTS)]
    return [p.relative_to(tree).as_posix() for p in kernel if pattern.search(p.read_text(errors="replace"))]


def _first_error(text: str) -> str:
    """The compiler's or linker's first line that says what went wrong (not collect2's summary)."""
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln and not ln.startswith("collect2")] or \
        text.strip().splitlines() or ["?"]
    return lines[0][:200]


def _self_test(stdout: str) -> tuple[int, int] | None:
    found = re.search(r"self-test: (\d+) of (\d+) golden inputs match", stdout)
    return (int(found.group(1)), int(found.group(2))) if found else None


def build(src_dir: Path, name: str, tree: Path, target: str = "host", kernels: str | None = None,
          log=lambda *a: None, size: bool = False, opt: str = SIZE_OPT) -> dict:
    """Build main.cc and the model for a target against TFLM, run it, check its golden self-test.

    On a Cortex-M the result also holds whole-firmware flash and RAM from the link map, and what
    the probe measured: the smallest arena there, and instructions per inference. ``size``: the
    smallest build (TFLM and main.cc for size, without error strings), in a folder of its own.
    """
    tc = toolchain(target, kernels, size, opt)
    lib = library(tree, tc, resolver_ops(src_dir / f"{name}_model_ops.h"), log=log)
    if not tc.platform.is_mcu:
        return _build_host(src_dir, name, tree, tc, lib, log)
    return _build_mcu(src_dir, name, tree, tc, lib, log)


def _build_host(src_dir: Path, name: str, tree: Path, tc: Toolchain, lib: Library, log) -> dict:
    exe = src_dir / f"{name}_host"
    t0 = time.monotonic()
    lib = _compile_link(tc, [str(src_dir / "main.cc"), str(src_dir / f"{name}_model_data.cc")], src_dir, tree, lib,
                        exe, log=log)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    _check_self_test(run.returncode, run.stdout, run.stderr, "the host program")
    passed = _self_test(run.stdout)
    return {"target": "host", "kernels": tc.kernels, "tflm_sources": f"{lib.sources} of {lib.of}", "program": exe.name,
            "self_test": f"{passed[0]} of {passed[1]}",
            "link_and_run_seconds": round(time.monotonic() - t0, 2), "output": run.stdout.splitlines()[:12]}


def _compile_link(tc: Toolchain, sources: list[str], src_dir: Path, tree: Path, lib: Library, exe: Path,
                  link: list[str] = (), log=lambda *a: None) -> Library:
    """Each source to its own object in a build folder (so the link map names them), then one link.
    Should a kernels-only library miss a TFLM function after all, the kernel sources that name it are
    added and the link done again (said in one line), then against the whole library; the library
    the program was linked against is returned."""
    work = src_dir / f"build-{tc.platform.name}{'-size' if tc.size else ''}"
    work.mkdir(exist_ok=True)
    objects = []
    for source in map(Path, sources):
        obj = work / source.with_suffix(".o").name
        r = subprocess.run([tc.cxx, *tc.cxx_flags(), f"-I{src_dir}", *_includes(tree, tc.kernels), "-c", str(source),
                            "-o", str(obj)], capture_output=True, text=True)
        if r.returncode:
            raise ExportError(f"{Path(tc.cxx).name} could not compile {source.name} against TFLM for "
                              f"{tc.platform.name}: {_first_error(r.stderr)}")
        objects.append(str(obj))
    r = subprocess.run([tc.cxx, *tc.cxx_flags(), *objects, str(lib.path), *link, "-o", str(exe)],
                       capture_output=True, text=True)
    for _ in range(2):  # the kernel sources that name what is missing, then the whole library
        missed = sorted(set(re.findall(r"undefined reference to [`']([^']+)'", r.stderr))) if r.returncode else []
        naming = _naming(tree, tc.kernels, missed) if missed and not lib.whole else []
        if not naming:  # our own code's, or nothing a kernel source names: the link error stands
            break
        more = tuple(sorted(set(lib.also) | set(naming)))
        grown = library(tree, tc, lib.ops, log=log, also=more) if more != lib.also else library(tree, tc, None, log=log)
        log(f"the kernels-only TFLM library misses {', '.join(missed)}: linking again with "
            + ("the whole library" if grown.whole else ", ".join(Path(n).name for n in naming)))
        lib = grown
        r = subprocess.run([tc.cxx, *tc.cxx_flags(), *objects, str(lib.path), *link, "-o", str(exe)],
                           capture_output=True, text=True)
    over = re.findall(r"region [`']?(\w+)'? overflowed by (\d+) bytes", r.stderr) if r.returncode else []
    if over:
        plat = tc.platform
        raise ExportError(f"the firmware does not fit {plat.name}'s memory ({plat.note}: {plat.flash[1] // 1024} KiB "
                          f"flash, {plat.ram[1] // 1024} KiB RAM): "
                          + ", ".join(f"{region} overflowed by {int(n):,} B" for region, n in over)
                          + "; build it for a core with more, or make the model smaller")
    if r.returncode:
        raise ExportError(f"{Path(tc.cxx).name} could not link {exe.name} against TFLM for {tc.platform.name}: "
                          f"{_first_error(r.stderr)}")
    return lib


def _check_self_test(rc: int, stdout: str, stderr: str, what: str) -> None:
    passed = _self_test(stdout)
    if rc != 0 or not passed or passed[0] != passed[1]:
        shown = [ln for ln in (stdout + stderr).strip().splitlines() if ln.strip()][:3]
        raise ExportError(f"{what} built with TFLM failed its self-test (exit {rc}): "
                          f"{' / '.join(shown) or 'no output'}")


# --- Cortex-M under QEMU ---------------------------------------------------------------------------------

def _support(name: str) -> str:
    return resources.files("firmware_export").joinpath("baremetal", name).read_text()


def sized_stack(used: int) -> int:
    """The stack a firmware is linked with once its run measured ``used`` bytes (the painted high-water
    mark): STACK_MARGIN over it, never more than the first link's STACK_BYTES."""
    factor, extra, step = STACK_MARGIN
    return min(STACK_BYTES, -(-int(used * factor + extra) // step) * step)


def _mcu_link_flags(tc: Toolchain, work: Path, map_file: Path, stack_bytes: int = STACK_BYTES) -> list[str]:
    plat = tc.platform
    script = work / f"{plat.name}.ld"
    script.write_text(Template(_support("link.ld.tmpl")).substitute(
        board=plat.note, flash_origin=hex(plat.flash[0]), flash_length=hex(plat.flash[1]),
        ram_origin=hex(plat.ram[0]), ram_length=hex(plat.ram[1]), stack_bytes=stack_bytes))
    startup = work / "startup.o"
    if not startup.is_file():
        (work / "startup.c").write_text(_support("startup.c"))
        r = subprocess.run([tc.cc, *tc.c_flags(), "-c", str(work / "startup.c"), "-o", str(startup)],
                           capture_output=True, text=True)
        if r.returncode:
            raise ExportError(f"the start-up code did not compile for {plat.name}: {_first_error(r.stderr)}")
    return [str(startup), f"-T{script}", "-nostartfiles", "--specs=nano.specs", "--specs=rdimon.specs",
            "-Wl,--gc-sections", f"-Wl,-Map={map_file}"]


def qemu_command(plat: hardware.Core, elf: Path, plugin: list[str] = ()) -> list[str]:
    qemu = _tool("qemu-system-arm", "qemu-system-arm")
    return [qemu, "-M", plat.machine, "-display", "none", "-monitor", "none", "-serial", "null",
            "-semihosting-config", "enable=on,target=native", *plugin, "-kernel", str(elf)]


def run_qemu(plat: hardware.Core, elf: Path, plugin: list[str] = ()) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(qemu_command(plat, elf, plugin), capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExportError(f"{elf.name} did not finish within {RUN_TIMEOUT_S} s under qemu-system-arm "
                          f"-M {plat.machine}: it hangs or faults in a loop") from None


def _build_mcu(src_dir: Path, name: str, tree: Path, tc: Toolchain, lib: Library, log) -> dict:
    plat = tc.platform
    t0 = time.monotonic()
    tag = f"{plat.name}-size" if tc.size else plat.name
    work = src_dir / f"build-{tag}"
    work.mkdir(exist_ok=True)
    elf = src_dir / f"{name}_{tag}.elf"
    map_file = work / f"{name}.map"
    sources = [str(src_dir / "main.cc"), str(src_dir / f"{name}_model_data.cc")]
    lib = _compile_link(tc, sources, src_dir, tree, lib, elf, _mcu_link_flags(tc, work, map_file), log)
    log(f"running {elf.name} under qemu-system-arm -M {plat.machine}")
    run = run_qemu(plat, elf)
    _check_self_test(run.returncode, run.stdout, run.stderr, f"the {plat.name} firmware")
    measured = _memory_used(run.stdout)
    # link again with the stack it was measured to use (plus a margin) and run again: the firmware's
    # RAM is then what it needs, not a 16 KiB guess; a stack that would not hold is never shipped
    stack = sized_stack(measured[0]) if measured else STACK_BYTES
    if stack < STACK_BYTES:
        lib = _compile_link(tc, sources, src_dir, tree, lib, elf, _mcu_link_flags(tc, work, map_file, stack), log)
        run = run_qemu(plat, elf)
        _check_self_test(run.returncode, run.stdout, run.stderr, f"the {plat.name} firmware with a {stack} B stack")
        again = _memory_used(run.stdout)
        if not again or again[0] > stack - 64:  # the paint below the high-water mark must be left
            raise ExportError(f"the {plat.name} firmware used {again[0] if again else '?'} B of its {stack} B stack "
                              "on the second run: the stack measurement does not hold")
        measured = again
    binary = elf.with_suffix(".bin")
    subprocess.run([tc.cxx.replace("g++", "objcopy"), "-O", "binary", str(elf), str(binary)], check=True)
    passed = _self_test(run.stdout)
    memory = firmware_memory(map_file.read_text(), _symbol_sizes(tc, elf), name, stack)
    if measured:
        memory["stack_used_bytes"], memory["heap_used_bytes"] = measured
        memory["ram"]["heap"] = measured[1]
        memory["ram_bytes"] = sum(memory["ram"].values())
    memory["stack_sizing"] = {"first_link_bytes": STACK_BYTES, "margin": "the run's high-water mark x 1.25 + 512 B, "
                              "rounded up to 256 B", "bytes": stack}
    lines = [ln for ln in run.stdout.splitlines() if not ln.startswith("tinysense-startup:")]
    result = {"target": plat.name, "board": plat.note, "kernels": tc.kernels,
              "tflm_sources": f"{lib.sources} of {lib.of}", "program": elf.name,
              "binary": binary.name, "self_test": f"{passed[0]} of {passed[1]}", "memory": memory,
              "output": lines[:12]}
    result["link_and_run_seconds"] = round(time.monotonic() - t0, 2)
    return result


def _memory_used(stdout: str) -> tuple[int, int] | None:
    """(stack, heap) bytes the run reports having used (the start-up code's painted high-water mark)."""
    used = re.search(r"tinysense-startup: stack (\d+) B, heap (\d+) B", stdout)
    return (int(used.group(1)), int(used.group(2))) if used else None


def _symbol_sizes(tc: Toolchain, elf: Path) -> dict[str, int]:
    nm = tc.cxx.replace("g++", "nm")
    out = subprocess.run([nm, "-S", "-C", str(elf)], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 4:
            sizes[parts[3]] = int(parts[1], 16)
    return sizes


MAP_LINE = re.compile(r"^ (\.\S+)?\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S.*)$")
FLASH_ONLY = (".text", ".ARM.extab", ".ARM.exidx", ".preinit_array", ".init_array", ".fini_array")


def firmware_memory(map_text: str, symbols: dict[str, int], name: str, stack_bytes: int = STACK_BYTES) -> dict:
    """Whole-firmware flash and RAM from a GNU ld map, split into the TFLM runtime, the model array,
    the tensor arena, the C library and the rest (main.cc, start-up)."""
    body = map_text.split("Linker script and memory map", 1)[-1]
    parts = {"tflm": [0, 0], "model": [0, 0], "arena": [0, 0], "libc": [0, 0], "rest": [0, 0]}  # flash, ram
    output, pending = None, None
    for line in body.splitlines():
        head = re.match(r"^(\.[\w.]+)", line)
        if head:
            output = head.group(1)
            continue
        m = MAP_LINE.match(line)
        if not m:
            only_name = re.match(r"^ (\.\S+)$", line)
            pending = only_name.group(1) if only_name else None
            continue
        section, size, origin = m.group(1) or pending, int(m.group(3), 16), m.group(4)
        pending = None
        if not size or not section or origin.startswith(("*fill*", "LOAD ")) or output is None:
            continue
        where = (1, 0) if output in FLASH_ONLY else (1, 1) if output == ".data" else (0, 1) if output == ".bss" \
            else (0, 0)
        if where == (0, 0):
            continue
        kind = ("tflm" if "libtflm.a(" in origin else "model" if origin.endswith(f"/{name}_model_data.o")
                else "libc" if re.search(r"lib(c|c_nano|g|g_nano|gcc|rdimon|m|nosys|stdc\+\+|supc\+\+)[_\w]*\.a",
                                         origin) else "rest")
        parts[kind][0] += size * where[0]
        parts[kind][1] += size * where[1]
    arena = next((v for k, v in symbols.items() if k.endswith("g_arena")), 0)
    parts["rest"][1] -= arena
    parts["arena"][1] = arena
    flash = {k: v[0] for k, v in parts.items()}
    ram = {k: v[1] for k, v in parts.items()}
    ram["stack_reserved"] = stack_bytes
    return {"flash_bytes": sum(flash.values()), "ram_bytes": sum(ram.values()), "flash": flash, "ram": ram}


def _plugin() -> Path:
    """The instruction-counting QEMU plugin, compiled once with the host's gcc."""
    text = _support("insn_count.c")
    out = CACHE / f"insn_count-{hashlib.sha256(text.encode()).hexdigest()[:12]}.so"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        src = out.with_suffix(".c")
        src.write_text(text)
        r = subprocess.run([_tool("gcc", "gcc"), "-O2", "-shared", "-fPIC", str(src), "-o", str(out) + ".tmp"],
                           capture_output=True, text=True)
        if r.returncode:
            raise ExportError(f"the QEMU instruction-count plugin did not compile: {_first_error(r.stderr)}")
        os.replace(str(out) + ".tmp", out)
    return out


def probe(src_dir: Path, name: str, tree: Path, target: str, emitted: int, kernels: str | None = None,
          log=lambda *a: None, size: bool = False, opt: str = SIZE_OPT) -> dict:
    """The smallest arena that allocates on this Cortex-M target (bisected in one run, around the
    ``emitted`` host figure in bytes), the golden inputs at exactly that size, and the instructions
    of one inference and of each operator (a QEMU plugin; not cycles). An attempt at which TFLM
    aborts counts as too small; one that faults the core ends the run, which starts again above it."""
    tc = toolchain(target, kernels, size, opt)
    plat = tc.platform
    if not plat.is_mcu:
        raise ExportError(f"the arena probe runs on a Cortex-M target, not {target}")
    lib = library(tree, tc, resolver_ops(src_dir / f"{name}_model_ops.h"), log=log)
    work = src_dir / f"build-{plat.name}{'-size' if size else ''}"
    work.mkdir(exist_ok=True)
    arena_max = min(max(4 * emitted, emitted + 64 * 1024), plat.ram[1] // 2)
    low, low_fails = max(1024, emitted // 4), False
    log(f"probing the smallest arena and counting instructions on {plat.name}")
    for _ in range(PROBE_RERUNS):
        elf, run, log_file, lib = _probe_run(src_dir, name, tree, tc, lib, work, arena_max, low, low_fails, log)
        if re.search(r"^probe-arena: ", run.stdout, re.M) or run.returncode not in FAULT_EXITS:
            break
        tried = re.findall(r"^probe-try: (\d+)$", run.stdout, re.M)
        if not tried or int(tried[-1]) <= low and low_fails:
            break
        # the core faulted trying that size: start again from it, as a size that fails
        log(f"the probe faulted on {plat.name} trying an arena of {tried[-1]} B (exit {run.returncode}); "
            "probing again above it")
        low, low_fails = int(tried[-1]), True
    return _probe_result(plat, tc, run, log_file)


PROBE_RERUNS = 8
FAULT_EXITS = (1, 90)  # newlib's abort outside an attempt, and our start-up's fault handler


def _probe_run(src_dir: Path, name: str, tree: Path, tc: Toolchain, lib: Library, work: Path, arena_max: int,
               low: int, low_fails: bool, log=lambda *a: None):
    """Build the probe for one starting point and run it under QEMU with the counting plugin."""
    source = work / "probe.cc"
    source.write_text(Template(_support("probe.cc.tmpl")).substitute(
        name=name, arena_max=arena_max, arena_low=low, low_fails="true" if low_fails else "false"))
    elf = work / "probe.elf"
    lib = _compile_link(tc, [str(source), str(src_dir / f"{name}_model_data.cc")], src_dir, tree, lib, elf,
                        _mcu_link_flags(tc, work, work / "probe.map"), log)
    nm = subprocess.run([tc.cxx.replace("g++", "nm"), "-S", str(elf)], capture_output=True, text=True,
                        check=True).stdout
    marks = re.finditer(r"^([0-9a-f]+) (?:[0-9a-f]+ )?T (tinysense_(?:insn|op)_\w+)$", nm, re.M)
    addr = {m.group(2): int(m.group(1), 16) & ~1 for m in marks}
    ranges = work / "cmsis-nn.ranges"  # CMSIS-NN's functions: where an operator's kernel ran
    ranges.write_text("".join(f"{lo:x} {lo + size:x}\n" for lo, size in sorted(_functions(nm, "arm_"))))
    log_file = work / "probe-plugin.log"
    plugin = ["-plugin", f"{_plugin()},begin={addr['tinysense_insn_begin']:#x},end={addr['tinysense_insn_end']:#x},"
              f"op_begin={addr['tinysense_op_begin']:#x},op_end={addr['tinysense_op_end']:#x},ranges={ranges}",
              "-d", "plugin", "-D", str(log_file)]
    log_file.unlink(missing_ok=True)
    return elf, run_qemu(tc.platform, elf, plugin), log_file, lib


def _probe_result(plat: hardware.Core, tc: Toolchain, run: subprocess.CompletedProcess, log_file: Path) -> dict:
    arena = re.search(r"probe-arena: (\d+)", run.stdout)
    golden = re.search(r"probe-self-test: (\d+) of (\d+)", run.stdout)
    if run.returncode != 0 or not arena or not golden:
        shown = [ln for ln in run.stdout.splitlines() if ln.startswith("probe") and not ln.startswith("probe-try")]
        tried = re.findall(r"^probe-try: (\d+)$", run.stdout, re.M)
        said = [ln.strip() for ln in run.stderr.splitlines() if ln.strip()]
        what = shown[-1:] or ([f"it faulted trying an arena of {tried[-1]} B"] if tried else [])
        raise ExportError(f"the arena probe failed on {plat.name} (exit {run.returncode}): "
                          f"{' / '.join(what + said[-1:]) or 'no output'}")
    counts = log_file.read_text() if log_file.is_file() else ""
    pairs = {int(i): int(n) for i, n in re.findall(r"^insn-pair: (\d+) (\d+)$", counts, re.M)}
    ops = [(int(n), int(k)) for pair, n, k in re.findall(r"^insn-op: (\d+) (\d+) (\d+)$", counts, re.M)
           if pair == "1"]  # the second pair: the profiled inference
    result = {"target": plat.name, "kernels": tc.kernels, "arena_min_bytes": int(arena.group(1)),
              "self_test_at_min": f"{golden.group(1)} of {golden.group(2)}",
              "instructions_per_inference": pairs.get(0),
              "attempts_aborted": len(re.findall(r"^probe-aborted: ", run.stdout, re.M))}
    if "probe-profile: ok" in run.stdout and 1 in pairs and ops:
        result["operators"] = {"whole_instructions": pairs[1], "ops": ops, "helium": _helium(tc)}
    return result


def _functions(nm: str, prefix: str) -> list[tuple[int, int]]:
    """(address, size) of the text symbols whose names start with ``prefix``, from ``nm -S``."""
    found = re.finditer(rf"^([0-9a-f]+) ([0-9a-f]+) [Tt] ({prefix}\w*)$", nm, re.M)
    return [(int(m.group(1), 16) & ~1, int(m.group(2), 16)) for m in found]


def _helium(tc: Toolchain) -> bool:
    """Whether this target's flags compile CMSIS-NN's Helium (MVE) code: the compiler's own macro."""
    r = subprocess.run([tc.cc, *tc.platform.cpu_flags, "-dM", "-E", "-x", "c", "/dev/null"], capture_output=True,
                       text=True)
    return "__ARM_FEATURE_MVE" in r.stdout
