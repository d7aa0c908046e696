"""Device-side figures, measured side by side in one run. Rerun: .venv/bin/python bench/device_bench.py BUNDLE

For the given bundle (default out/digits) and the shared MLPerf ResNet-8 int8 model:
1. loop overhead per stage (everything but invoke: replay capture, preprocessing and
   quantization, post-processing, encoding and the write to a real pty);
2. frames per second at period 0 as a ratio to a bare set_tensor/invoke/get_tensor loop;
3. frames per second as a ratio to the published picamera2 example's pattern
   (interpreter and allocate_tensors() re-created for every frame);
with ``--soak SECONDS``: an accelerated soak (period 10 ms) with a monitor on the pty,
reporting deadline misses, RSS growth after warm-up and sequence gaps.
"""

from __future__ import annotations

import argparse
import os
import pty
import sys
import tempfile
import time
import tty
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract import bundle
from device import app, thirdparty
from dashboard.fleet import Monitor
from contract.preprocess import Preprocessor
from contract.protocol import Encoder, Hello
from contract.runtime import Model, interpreter_module
from device.sinks import SerialSink
from device.sources import open_source

MLPERF = ROOT.parent / "shared" / "models" / "mlperf-tiny-ic" / "pretrainedResnet_quant.tflite"
CIFAR = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck".split(",")


def _drain(master: int, fmt: str, stop, result) -> None:
    """In a child process: read the pty master into a Monitor until told to stop."""
    import select

    mon = Monitor(fmt)
    while not stop.is_set():
        if select.select([master], [], [], 0.05)[0]:
            mon.feed(os.read(master, 65536))
    result.put(mon.summary())


class PtyLink:
    """A real pseudo terminal: the app writes the slave; another process reads the master, as a host would."""

    def __init__(self, fmt: str):
        import multiprocessing as mp

        self.master, self.slave = pty.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        ctx = mp.get_context("fork")
        self._stop, self._result = ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(target=_drain, args=(self.master, fmt, self._stop, self._result), daemon=True)
        self._proc.start()

    def close(self) -> dict:
        time.sleep(0.3)
        self._stop.set()
        summary = self._result.get(timeout=10)
        self._proc.join()
        os.close(self.master)
        os.close(self.slave)
        return summary


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_loop(b, source_spec: str, cfg: app.RunConfig, fmt: str = "binary", threads: int = 1):
    link = PtyLink(fmt)
    enc = Encoder(fmt, b.spec.labels)
    hello = enc.encode(Hello(b.spec.labels, cfg.period))
    sink = SerialSink(link.path, hello=hello)
    model = Model(b.model, num_threads=threads)
    src = open_source(source_spec, b.spec)
    t0 = time.perf_counter()
    stats = app.run(model, Preprocessor(b.spec), src, sink, enc, cfg, hello=hello)
    wall = time.perf_counter() - t0
    sink.flush(5)
    sink.close()
    mon = link.close()
    mon["queue_drops"] = sink.drops
    return stats, wall, mon


def bare_fps(b, xs: np.ndarray, frames: int, threads: int = 1) -> float:
    m = Model(b.model, num_threads=threads)
    it = m.interpreter
    i_in, i_out = m.input.index, m.output.index
    t0 = time.perf_counter()
    for k in range(frames):
        it.set_tensor(i_in, xs[k % len(xs)])
        it.invoke()
        it.get_tensor(i_out)
    return frames / (time.perf_counter() - t0)


def recreate_fps(b, xs: np.ndarray, frames: int) -> float:
    """The picamera2 example's pattern: a new interpreter and allocate_tensors() per frame."""
    mod = interpreter_module()
    t0 = time.perf_counter()
    for k in range(frames):
        it = mod.Interpreter(model_content=b.model, num_threads=1)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], xs[k % len(xs)])
        it.invoke()
        it.get_tensor(it.get_output_details()[0]["index"])
    return frames / (time.perf_counter() - t0)


def figures(name: str, b, source_spec: str, frames: int) -> None:
    stats, wall, mon = run_loop(b, source_spec, app.RunConfig(period=0, max_frames=frames, status_every=1e9))
    st = {k: np.asarray(v) for k, v in stats.stage_ms.items()}
    overhead = np.asarray(stats.total_ms) - st["invoke"]
    ours = stats.predictions / wall
    pre = Preprocessor(b.spec)
    xs = np.stack([pre(f.data).copy() for f, _ in zip(open_source(source_spec, b.spec), range(64))])
    bare = bare_fps(b, xs, frames)
    slow = recreate_fps(b, xs, max(frames // 10, 50))
    print(f"{name}: {stats.predictions} frames, period 0, one interpreter thread, binary format to a pty")
    for stage in ("capture", "preprocess", "postprocess", "send"):
        print(f"  {stage:12s} p50 {np.percentile(st[stage], 50) * 1e3:7.1f} us   mean {st[stage].mean() * 1e3:7.1f} us")
    print(f"  {'invoke':12s} p50 {np.percentile(st['invoke'], 50):7.3f} ms")
    print(f"  loop overhead (all but invoke): p50 {np.percentile(overhead, 50):.4f} ms, "
          f"p99 {np.percentile(overhead, 99):.4f} ms, mean {overhead.mean():.4f} ms (target <= 0.25 ms)")
    print(f"  fps: ours {ours:.0f}, bare set/invoke/get {bare:.0f} (ratio {ours / bare:.3f}), "
          f"interpreter per frame {slow:.0f} (ours is {ours / slow:.1f}x)")
    print(f"  at the monitor: {mon['predictions']} predictions, {mon['gaps']} gaps, {mon['errors']} decode errors, "
          f"{mon['queue_drops']} dropped by the bounded queue")


def soak(b, source_spec: str, seconds: float, period: float = 0.01) -> None:
    warm_frames = 500
    _ = run_loop(b, source_spec, app.RunConfig(period=period, max_frames=warm_frames))  # warm-up: caches, pools
    before = rss_kib()
    stats, wall, mon = run_loop(b, source_spec, app.RunConfig(period=period, duration=seconds, status_every=1.0))
    growth = rss_kib() - before
    print(f"soak: {seconds:.0f} s at period {period * 1e3:.0f} ms ({stats.frames} frames, "
          f"{stats.frames * 1.0 / 3600:.1f} h of 1 s frames): deadline misses {stats.misses}, "
          f"RSS growth after warm-up {growth} KiB (target < 1024), gaps at the monitor {mon['gaps']}, "
          f"decode errors {mon['errors']}, predictions at the monitor {mon['predictions']}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("bundle", nargs="?", type=Path, default=ROOT / "out" / "digits")
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--soak", type=float, default=0, help="seconds of accelerated soak (0: none)")
    a = p.parse_args()
    b = bundle.load(a.bundle)
    replay = f"replay:{a.bundle / 'testset.npz'}?loop=1"
    figures(f"digits bundle ({a.bundle})", b, replay, a.frames)
    if MLPERF.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            mb = bundle.load(thirdparty.write(MLPERF, Path(tmp) / "mlperf", CIFAR, "image"))
            rng = np.random.default_rng(0)
            np.savez(Path(tmp) / "images.npz", x=rng.integers(0, 256, (64, 32, 32, 3)).astype(np.uint8))
            figures("MLPerf ResNet-8 int8 (hand-written model.json)", mb, f"replay:{tmp}/images.npz?loop=1",
                    max(a.frames // 3, 300))
    else:
        print("MLPerf ResNet-8: ../shared absent, skipped")
    if a.soak:
        soak(b, replay, a.soak)


if __name__ == "__main__":
    main()
