"""The real TensorFlow Lite Micro interpreter (the tflite-micro package), run on the host.

Used to decide whether TFLM can run a model, to measure the tensor arena and to
produce golden outputs. The recording allocator prints its report on the C-level
stderr, so that file descriptor is captured around the call.
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

from contract.runtime import TensorInfo

from . import ExportError
from contract.capture import captured

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


def _in_child(model_path: str, arena: int | None = None, sample_path: str | None = None) -> tuple[bool, str]:
    """One TFLM allocate-and-invoke in a fresh process: a crash there is an answer, not our death."""
    cmd = [sys.executable, "-m", "firmware_export.tflm", model_path]
    if arena is not None:
        cmd += [str(arena), sample_path or ""]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode < 0:
        return False, f"the TensorFlow Lite Micro interpreter crashed on this model (signal {-r.returncode})"
    try:
        ok, reason = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return False, (r.stderr.strip().splitlines() or [f"the TFLM check failed (exit {r.returncode})"])[-1][:200]
    return bool(ok), str(reason)


def _can_run_here(model: bytes, arena: int = PROBE_ARENA_BYTES, sample: np.ndarray | None = None):
    try:
        m = load(model, arena_bytes=arena)
    except ExportError as e:
        return False, str(e)
    x = sample if sample is not None else np.zeros(m.input_shape, m.input_dtype)
    _, failure = _attempt(lambda: m.run(x))
    return failure is None, failure or ""


if __name__ == "__main__":  # the child: python -m firmware_export.tflm MODEL.tflite [ARENA SAMPLE.npy]
    from pathlib import Path

    arena_arg = int(sys.argv[2]) if len(sys.argv) > 2 else PROBE_ARENA_BYTES
    sample_arg = np.load(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] else None
    print(json.dumps(_can_run_here(Path(sys.argv[1]).read_bytes(), arena_arg, sample_arg)))


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
