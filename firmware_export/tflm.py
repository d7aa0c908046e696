"""The real TensorFlow Lite Micro interpreter on the host: the oracle an export is measured by.

The tflite-micro package decides whether TFLM can run a model, measures the tensor arena and
produces the golden outputs. Every use of it in an export runs in a child process: the package
aborts the whole process on some graphs (keras.applications MobileNetV2, measured), and that must
be an answer, not the end of the export. When it crashes, the TFLM we build ourselves from the
same source tree (host/oracle.cc.tmpl, reference kernels) does the same measurements instead
(``oracle``). The recording allocator prints its report on the C-level stderr, so that file
descriptor is captured around the call.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.capture import captured
from contract.runtime import TensorInfo

from . import ExportError

# Generous first try; the recorded figure, not this, is what gets reported.
PROBE_ARENA_BYTES = 8 * 1024 * 1024


def _runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise ExportError("the tflite-micro package is not installed: pip install 'tinysense[build]'") from None
    return runtime


@dataclass
class MicroModel:
    """A model loaded in TFLM with a given arena; ``run`` takes and returns raw tensors."""

    interpreter: object
    arena_bytes: int

    def run(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_input(x, 0)
        self.interpreter.invoke()
        return np.array(self.interpreter.get_output(0))

    def tensor(self, index: int) -> np.ndarray:
        """An intermediate tensor after ``run`` (only with ``keep_tensors``)."""
        return np.asarray(self.interpreter.GetTensor(index, 0)["tensor_data"])

    def _info(self, details: dict) -> TensorInfo:
        q = details["quantization_parameters"]
        scale = float(q["scales"][0]) if len(q["scales"]) else 0.0
        zero_point = int(q["zero_points"][0]) if len(q["zero_points"]) else 0
        return TensorInfo(0, tuple(int(s) for s in details["shape"]), np.dtype(details["dtype"]), scale, zero_point)

    @property
    def input(self) -> TensorInfo:
        return self._info(self.interpreter.get_input_details(0))

    @property
    def output(self) -> TensorInfo:
        return self._info(self.interpreter.get_output_details(0))

    @property
    def input_dtype(self) -> np.dtype:
        return self.input.dtype

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.input.shape


def load(model: bytes, arena_bytes: int = PROBE_ARENA_BYTES, keep_tensors: bool = False) -> MicroModel:
    """Create the TFLM interpreter; raise ExportError with TFLM's own reason when it cannot.

    ``keep_tensors`` preserves every intermediate tensor (for ``tensor``), at the cost of a bigger arena.
    """
    runtime = _runtime()
    config = runtime.InterpreterConfig.kPreserveAllTensors if keep_tensors else \
        runtime.InterpreterConfig.kAllocationRecording
    it, failure = _attempt(lambda: runtime.Interpreter.from_bytes(model, arena_size=arena_bytes,
                                                                  intrepreter_config=config))
    if failure:
        raise ExportError(f"TensorFlow Lite Micro cannot run this model: {failure}")
    return MicroModel(it, arena_bytes)


def _attempt(call):
    """``(result, None)``, or ``(None, reason)`` with TFLM's own words from its C-level stderr."""
    with captured() as err:
        try:
            result = call()
        except (RuntimeError, ValueError) as e:
            failure = str(e)
        else:
            failure = None
    return (result, None) if failure is None else (None, _reason(err[0], failure))


def _reason(log: str, fallback: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and "RecordingMicroAllocator" not in ln]
    found = [ln for ln in lines if "Didn't find op" in ln or "not supported" in ln.lower() or "type" in ln.lower()]
    return (found or lines or [fallback.strip() or "unknown error"])[0][:200]


def can_run(model: bytes) -> tuple[bool, str]:
    """Whether TFLM can allocate and invoke the model once on a zero input, and why not.

    Runs in a child process: the tflite-micro package can crash the interpreter process
    outright on some graphs (keras.applications MobileNets, measured), and a crash must
    be a "no" with a reason, not the end of a build.
    """
    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(model)
        f.flush()
        return _in_child(f.name)


class Crashed(ExportError):
    """The tflite-micro package took its process down (a signal): the model is not refused by it."""


def _in_child(model_path: str, arena: int | None = None, sample_path: str | None = None) -> tuple[bool, str]:
    """One TFLM allocate-and-invoke in a fresh process: a crash there is an answer, not our death."""
    try:
        return _child({"do": "check", "model": model_path, "arena": arena, "sample": sample_path})
    except Crashed as e:
        return False, str(e)


def _child(job: dict):
    """Run one job of the tflite-micro package in a fresh process and return its answer; raise
    Crashed when the package took that process down."""
    r = subprocess.run([sys.executable, "-m", "firmware_export.tflm", json.dumps(job)], capture_output=True,
                       text=True)
    if r.returncode < 0:
        raise Crashed(f"the tflite-micro package's TFLM interpreter crashed on this model (signal {-r.returncode}, "
                      f"{_signal_name(-r.returncode)})")
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        said = (r.stderr.strip().splitlines() or [f"the TFLM child failed (exit {r.returncode})"])[-1][:200]
        raise ExportError(f"TensorFlow Lite Micro (the tflite-micro package) failed: {said}") from None


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _can_run_here(model: bytes, arena: int = PROBE_ARENA_BYTES, sample: np.ndarray | None = None):
    try:
        m = load(model, arena_bytes=arena)
    except ExportError as e:
        return False, str(e)
    x = sample if sample is not None else np.zeros(m.input_shape, m.input_dtype)
    _, failure = _attempt(lambda: m.run(x))
    return failure is None, failure or ""


def _job(job: dict):
    """The child's side of ``_child``."""
    model = Path(job["model"]).read_bytes()
    if job["do"] == "check":
        sample = np.load(job["sample"]) if job.get("sample") else None
        return _can_run_here(model, job.get("arena") or PROBE_ARENA_BYTES, sample)
    xs = np.load(job["inputs"])
    if job["do"] == "recorded":
        return recorded_arena_bytes(load(model), xs[0])
    if job["do"] == "outputs":
        m = load(model, arena_bytes=job["arena"])
        _, failure = _attempt(lambda: np.save(job["out"], np.stack([m.run(x) for x in xs])))
        if failure:
            raise ExportError(f"TensorFlow Lite Micro cannot run this model in {job['arena']} bytes: {failure}")
        return True
    if job["do"] == "diverging":
        from contract import tflite

        return per_op_divergence(model, tflite.read(model), xs)
    raise ExportError(f"unknown TFLM job {job['do']!r}")


def per_op_divergence(model: bytes, info, xs: np.ndarray) -> list[dict]:
    """Where TFLM and LiteRT's reference kernels part: each operator whose output differs, and by how much.

    Both interpreters keep every intermediate tensor, so a difference at the output can
    be traced to the first operator that introduced it.
    """
    from contract.runtime import Model

    micro = load(model, keep_tensors=True)
    ref = Model(model, num_threads=1, resolver="reference", keep_tensors=True)
    worst = np.zeros(len(info.ops), dtype=np.int64)
    for x in xs:
        micro.run(x)
        ref.run(x)
        for i, op in enumerate(info.ops):
            if op.outputs and not op.is_float:
                a = micro.tensor(op.outputs[0]).astype(np.int64).reshape(-1)
                b = ref.interpreter.get_tensor(op.outputs[0]).astype(np.int64).reshape(-1)
                worst[i] = max(worst[i], int(np.abs(a - b).max()))
    return [{"index": i, "op": info.ops[i].name, "max_step_diff": int(d)} for i, d in enumerate(worst) if d]


def smallest_arena(model: bytes, sample: np.ndarray, start: int, limit: int = PROBE_ARENA_BYTES) -> int:
    """The smallest arena (bytes, a multiple of 16) in which TFLM allocates and invokes ``model``.

    Starts from ``start`` (the recording allocator's total), which for models with tiny
    activations leaves out the planner's scratch memory: grows until it works, then bisects.
    Measured here on the 64-bit host under the recording allocator, so it errs high for a 32-bit MCU.
    """
    tmp = tempfile.TemporaryDirectory()
    (Path(tmp.name) / "m.tflite").write_bytes(model)
    np.save(Path(tmp.name) / "x.npy", sample)

    def works(size: int) -> bool:  # each probe in a child: too small an arena can crash the package
        return _in_child(str(Path(tmp.name) / "m.tflite"), size, str(Path(tmp.name) / "x.npy"))[0]

    def step(n: int) -> int:  # up to a multiple of 16
        return -(-n // 16) * 16
    hi = step(max(start, 16))
    lo = 0
    while not works(hi):
        lo = hi
        if hi >= limit:
            raise ExportError(f"TensorFlow Lite Micro cannot run this model in {limit:,} bytes of arena")
        hi = min(step(hi * 2), limit)
    if lo == 0 and hi > 16:  # the recorded figure worked: look below it too, a little
        lo = step(hi * 3 // 4)
        if works(lo):
            hi, lo = lo, 0
    while hi - lo > 16:
        mid = step((lo + hi) // 2)
        if mid in (lo, hi):
            break
        if works(mid):
            hi = mid
        else:
            lo = mid
    tmp.cleanup()
    return hi


def recorded_arena_bytes(m: MicroModel, sample: np.ndarray) -> int:
    """Bytes of arena TFLM's recording allocator used after one invoke on ``sample``."""
    m.run(sample)
    with captured() as err:
        m.interpreter.print_allocations()
    found = re.search(r"Arena allocation total (\d+) bytes", err[0])
    if not found:
        raise ExportError("TFLM did not report its arena use; is tflite-micro too old?")
    return int(found.group(1))


# --- the oracle an export is measured by -----------------------------------------------------------

class PackageOracle:
    """The tflite-micro package, every call in a child process."""

    what = "the tflite-micro package"

    def __init__(self, model: bytes, work: Path):
        self.model, self.work = model, work
        self.path = work / "model.tflite"
        self.path.write_bytes(model)

    def _inputs(self, xs: np.ndarray) -> str:
        path = self.work / "inputs.npy"
        np.save(path, xs)
        return str(path)

    def recorded_arena(self, x: np.ndarray) -> int:
        return int(_child({"do": "recorded", "model": str(self.path), "inputs": self._inputs(x[None])}))

    def smallest_arena(self, x: np.ndarray, start: int) -> int:
        return smallest_arena(self.model, x, start)

    def outputs(self, xs: np.ndarray, arena: int) -> np.ndarray:
        out = self.work / "outputs.npy"
        _child({"do": "outputs", "model": str(self.path), "inputs": self._inputs(xs), "arena": arena,
                "out": str(out)})
        return np.load(out)

    def diverging(self, xs: np.ndarray) -> list[dict] | None:
        return _child({"do": "diverging", "model": str(self.path), "inputs": self._inputs(xs)})


class HostOracle:
    """The TFLM built here from the source tree (host, reference kernels), for models the package
    crashes on: the arena, the outputs; no per-operator comparison (it keeps no tensors)."""

    what = "TFLM built here from the source tree (host, reference kernels)"

    def __init__(self, model: bytes, info, tree: Path, work: Path, output: TensorInfo, log=lambda *a: None):
        from string import Template

        from . import build, generate

        self.output = output
        self.work, self.path = work, work / "model.tflite"
        self.path.write_bytes(model)
        for name, text in generate.model_ops("oracle", info.op_names, "the model being exported").items():
            (work / name).write_text(text)
        source = work / "oracle.cc"
        source.write_text(Template((Path(__file__).parent / "host" / "oracle.cc.tmpl").read_text()).substitute(
            name="oracle"))
        tc = build.toolchain("host")
        lib = build.library(tree, tc, build.resolver_ops(work / "oracle_model_ops.h"), log=log)
        self.exe = work / "oracle"
        build._compile_link(tc, [str(source)], work, tree, lib, self.exe, ["-rdynamic"], log)
        self.model, self.info = model, info

    def _run(self, xs: np.ndarray, *args: str) -> str:
        inputs = self.work / "inputs.bin"
        inputs.write_bytes(np.ascontiguousarray(xs).tobytes())
        r = subprocess.run([str(self.exe), str(self.path), str(inputs), str(len(xs)), *args], capture_output=True,
                           text=True, timeout=600)
        if r.returncode:
            said = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
            frames = [ln.split(": ", 1)[1] for ln in said if ln.startswith("oracle-abort-in: ")]
            named = [ln for ln in said if "Didn't find op" in ln or "failed to" in ln or "not supported" in ln.lower()]
            why = why_aborted(self.model, self.info, frames) if frames else \
                (named or said or [f"exit {r.returncode}"])[0][:200]
            raise ExportError(f"TensorFlow Lite Micro (built here from the tree) cannot run this model either: {why}")
        return r.stdout.strip().splitlines()[-1]

    def recorded_arena(self, x: np.ndarray) -> int:
        return int(self._run(x[None], "recorded").split()[-1])

    def smallest_arena(self, x: np.ndarray, start: int) -> int:
        return int(self._run(x[None], "smallest", str(max(1024, start // 4)), str(max(start * 2, 4096))).split()[-1])

    def outputs(self, xs: np.ndarray, arena: int) -> np.ndarray:
        out = self.work / "outputs.bin"
        self._run(xs, "run", str(arena), str(out))
        return np.frombuffer(out.read_bytes(), dtype=self.output.dtype).reshape(len(xs), *self.output.shape)

    def diverging(self, xs: np.ndarray) -> list[dict] | None:
        return None


KERNEL = re.compile(r"tflite::(?:\w+::)*(?:\(anonymous namespace\)::)?(\w+?)(Prepare|Eval|Init)\w*\(")
SOFTMAX_INTEGER_BITS = 5  # kScaledDiffIntegerBits in TFLM's softmax_common.cc


def why_aborted(model: bytes, info, frames: list[str]) -> str:
    """Which operator TFLM aborted on, and why, from the functions it aborted in (innermost first)."""
    kernel = next((m for m in map(KERNEL.search, frames) if m), None)
    inner = frames[0].split("(")[0].replace(" [clone .cold]", "") if frames else "?"
    if kernel is None:
        return f"TFLM aborted in {inner}"
    camel, stage = kernel.group(1), kernel.group(2).lower()
    op_name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", camel).upper()
    where = [i for i, op in enumerate(info.ops) if op.name == op_name or op.name.startswith(op_name + "_")]
    if op_name == "SOFTMAX":
        for i in where:
            scale = _input_scale(model, i)
            if scale and scale * (1 << (31 - SOFTMAX_INTEGER_BITS)) <= 1.0:
                return (f"op {i} SOFTMAX: its input scale {scale:.3g} is below what TFLM's int8 softmax takes (input "
                        f"scale x beta x 2^26 must exceed 1; it is {scale * (1 << 26):.2g}), so TFLM aborts in "
                        f"{inner} while preparing it: the logits hardly vary over the calibration data (an untrained "
                        "model, or calibration samples unlike real inputs); calibrate on real samples")
    ops = ", ".join(f"op {i} {info.ops[i].name}" for i in where) or op_name
    doing = {"prepare": "preparing", "eval": "invoking", "init": "initialising"}[stage]
    return f"TFLM aborts in {inner} while {doing} {ops}"


def _input_scale(model: bytes, op_index: int) -> float | None:
    from contract.runtime import interpreter_module

    it = interpreter_module().Interpreter(model_content=model)
    op = it._get_ops_details()[op_index]
    q = it.get_tensor_details()[int(op["inputs"][0])]["quantization"]
    return float(q[0]) if q else None


ORACLES = ("auto", "package", "host")


def oracle(model: bytes, info, tree, work: Path, output: TensorInfo, log=lambda *a: None, choice: str = "auto"):
    """Which TFLM measures and checks the model (``--tflm``): the tflite-micro package (``package``),
    the TFLM built here from ``tree`` or $TFLM_TREE (``host``), or the package and, when it crashes
    on the model or is not installed, the one built here (``auto``). ExportError, naming TFLM's
    reason, when real TFLM cannot run it. ``output``: the model's output tensor (the host build
    writes raw bytes)."""
    import importlib.util
    import os

    from .build import find_tree

    tree = tree or os.environ.get("TFLM_TREE")
    if choice == "host":
        return HostOracle(model, info, find_tree(tree), work, output, log)
    path = work / "model.tflite"
    path.write_bytes(model)
    try:
        if importlib.util.find_spec("tflite_micro") is None:
            raise Crashed("the tflite-micro package is not installed (pip install 'tinysense[build]')")
        ok, reason = _child({"do": "check", "model": str(path)})
    except Crashed as e:
        if choice == "package" or not tree:
            more = "" if choice == "package" else ": give --tflm-tree DIR (a TFLM source tree, see the README) and " \
                                                   "the TFLM built here from it measures and checks the model instead"
            raise ExportError(f"{e}{more}") from None
        log(f"{e}: the TFLM built here from {tree} measures the arena, the parity and the golden outputs instead")
        return HostOracle(model, info, find_tree(tree), work, output, log)
    if not ok:
        raise ExportError(f"TensorFlow Lite Micro cannot run this model: {reason}")
    return PackageOracle(model, work)


if __name__ == "__main__":  # the child: python -m firmware_export.tflm JOB (JSON)
    try:
        print(json.dumps(_job(json.loads(sys.argv[1]))))
    except ExportError as e:
        print(str(e), file=sys.stderr)
        sys.exit(1)
