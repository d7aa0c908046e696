"""Build the generated sources with real TensorFlow Lite Micro into a program, run it, read its self-test.

The TFLM library comes from a standalone source tree, as TFLM's create_tflm_tree.py writes it
(``--tflm-tree DIR`` or ``TFLM_TREE``). Its reference kernels are compiled once per tree, target
and flags into a static library cached under ~/.cache/tinysense-tflm; the linker then takes only
what the model's resolver registers. Target ``host`` (the machine's g++) is built here; the
Cortex-M targets under QEMU are still to come.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import ExportError

TARGETS = ("host",)
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinysense-tflm"
FLAGS = ["-std=c++17", "-O2", "-fno-rtti", "-fno-exceptions", "-DTF_LITE_STATIC_MEMORY"]
SKIP = re.compile(r"_test\.cc$|/examples/|/cmsis_nn/|/tools/|/testing/|benchmarks|test_helper|mock_micro_graph|"
                  r"fake_micro_context")


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


def _includes(tree: Path) -> list[str]:
    return [f"-I{tree}", f"-I{tree / 'third_party' / 'flatbuffers' / 'include'}",
            f"-I{tree / 'third_party' / 'gemmlowp'}", f"-I{tree / 'third_party' / 'ruy'}",
            f"-I{tree / 'third_party' / 'kissfft'}"]


def _sources(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*.cc") if not SKIP.search(p.relative_to(tree).as_posix()))


def library(tree: Path, compiler: str = "g++", jobs: int | None = None, log=lambda *a: None) -> Path:
    """libtflm.a for this tree and these flags, compiled once (minutes) and cached."""
    sources = _sources(tree)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    # the tree's own files by relative path and size, not where it sits: CI's copy hits the same cache
    key = hashlib.sha256("\n".join([*version, *FLAGS, *(f"{p.relative_to(tree)}:{p.stat().st_size}"
                                                         for p in sources)]).encode()).hexdigest()[:16]
    out = CACHE / f"host-{key}"
    lib = out / "libtflm.a"
    if lib.is_file():
        return lib
    log(f"compiling TFLM ({len(sources)} sources) into {out}; this takes a few minutes once")
    objs = out / "obj"
    cmd = [compiler, *FLAGS, *_includes(tree), "-c"]

    def one(src: Path) -> Path:
        obj = objs / src.relative_to(tree).with_suffix(".o")
        obj.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([*cmd, str(src), "-o", str(obj)], capture_output=True, text=True)
        if r.returncode:
            raise ExportError(f"compiling TFLM's {src.relative_to(tree)} failed: {_first_error(r.stderr)}")
        return obj
    with ThreadPoolExecutor(jobs or os.cpu_count() or 2) as pool:
        built = list(pool.map(one, sources))
    tmp = out / "libtflm.a.tmp"
    subprocess.run(["ar", "rcs", str(tmp), *map(str, built)], check=True)
    os.replace(tmp, lib)
    return lib


def _first_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln] or text.strip().splitlines() or ["?"]
    return lines[0][:200]


def build_host(src_dir: Path, name: str, tree: Path, log=lambda *a: None) -> dict:
    """Compile main.cc and the model array against TFLM with g++, run the program, check its self-test."""
    gxx = shutil.which("g++")
    if not gxx:
        raise ExportError("g++ is not installed: sudo apt-get install g++")
    lib = library(tree, gxx, log=log)
    exe = src_dir / f"{name}_host"
    t0 = time.monotonic()
    r = subprocess.run([gxx, *FLAGS, f"-I{src_dir}", *_includes(tree), str(src_dir / "main.cc"),
                        str(src_dir / f"{name}_model_data.cc"), str(lib), "-o", str(exe)],
                       capture_output=True, text=True)
    if r.returncode:
        raise ExportError(f"g++ could not build the generated main.cc against TFLM: {_first_error(r.stderr)}")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    found = re.search(r"self-test: (\d+) of (\d+) golden inputs match", run.stdout)
    if run.returncode != 0 or not found or found.group(1) != found.group(2):
        shown = (run.stdout + run.stderr).strip().splitlines()[:3]
        raise ExportError(f"the host program built with TFLM failed its self-test (exit {run.returncode}): "
                          f"{' / '.join(shown) or 'no output'}")
    return {"target": "host", "program": exe.name, "self_test": f"{found.group(1)} of {found.group(2)}",
            "link_and_run_seconds": round(time.monotonic() - t0, 2), "output": run.stdout.splitlines()[:12]}
