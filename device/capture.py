"""Keep what the model doubts (``--capture-dir``): frames whose top score is below a threshold, and every
Nth frame for an unbiased sample, in a folder of bounded size, in a format build_model reads.

- Camera and image frames of 8-bit pixels: ``DIR/<predicted label>/<time>-<seq>.png`` with the
  model's prediction beside it in ``<time>-<seq>.json``: ``--dataset images:DIR`` trains on them
  once a person has moved each file to the folder of its true class.
- Anything else (sensor windows): one row per frame in ``DIR/captured.csv`` (``label,values...``,
  time-major, the label the model's guess) and its prediction on the same line number of
  ``DIR/captured.jsonl``: ``--dataset csv:DIR/captured.csv --channels C``.

The loop only copies the frame into a bounded queue (a full queue drops it, counted as
``capture_lost``); a thread of its own encodes and writes. When the folder grows past
``max_bytes`` the oldest captures go (``capture_dropped``). A picture is written whole (a
temporary name, then a rename); a csv row that a full disk cuts short is taken back
(``capture_failed``).
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import numpy as np

from contract import atomic

from . import DeviceError

QUEUE = 64  # frames waiting for the writer
KEEP = 0.75  # of max_bytes, once the folder has grown past it (so trimming is not per frame)


def _folder_name(label: str) -> str:
    """A label as one folder name: no separator, nothing hidden."""
    name = label.replace("/", "_").replace("\\", "_")
    return f"_{name}" if name.startswith(".") else name  # a hidden folder is one the images: loader skips


def _is_picture(frame: np.ndarray) -> bool:
    return frame.dtype == np.uint8 and (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[-1] in (1, 3, 4)))


class Capture:
    """``offer(frame, prediction)`` from the loop; ``close()`` writes what is queued and stops the writer."""

    def __init__(self, folder: Path, below: float, every: int, max_bytes: int):
        self.folder = Path(folder)
        self.below, self.every, self.max_bytes = below, every, max_bytes
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DeviceError(f"cannot use --capture-dir {folder} ({e.strerror}): give a folder you can write") \
                from None
        self.captured = self.dropped = self.lost = self.failed = 0
        self._n = 0
        self._queue: queue.Queue = queue.Queue(QUEUE)
        self._size = sum(f.stat().st_size for f in self.folder.rglob("*") if f.is_file())
        self._thread = threading.Thread(target=self._write_all, name="capture", daemon=True)
        self._thread.start()

    def offer(self, frame: np.ndarray, prediction) -> None:
        """Queue the frame when its top score is below the threshold or it is the Nth; O(1) for the loop."""
        self._n += 1
        why = "below" if prediction.score < self.below else ("every" if self.every and self._n % self.every == 0
                                                              else None)
        if why is None:
            return
        try:
            self._queue.put_nowait((np.array(frame), prediction, why))
        except queue.Full:
            self.lost += 1

    def counters(self) -> dict:
        return {"captured": self.captured, "capture_dropped": self.dropped, "capture_lost": self.lost,
                "capture_failed": self.failed}

    def close(self) -> None:
        try:
            self._queue.put(None, timeout=10)  # the writer never dies (below), so there is room soon
        except queue.Full:
            pass
        self._thread.join(timeout=10)

    # --- the writer thread -------------------------------------------------------------------

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._size += self._write(*item)
                self.captured += 1
                if self._size > self.max_bytes:
                    self._trim()
            except Exception:  # noqa: BLE001 - a full disk, a frame Pillow cannot take: counted; the writer goes on
                self.failed += 1

    def _write(self, frame: np.ndarray, pred, why: str) -> int:
        note = {**pred.to_dict(), "captured": why}
        stem = f"{pred.t:.3f}-{pred.seq:09d}"
        if _is_picture(frame):
            import io

            from PIL import Image

            folder = self.folder / _folder_name(pred.label)
            folder.mkdir(exist_ok=True)
            png = io.BytesIO()
            Image.fromarray(frame[..., 0] if frame.ndim == 3 and frame.shape[-1] == 1 else frame).save(png, "PNG")
            side = (json.dumps(note) + "\n").encode()
            atomic.write_bytes(folder / f"{stem}.png", png.getvalue(), mode=0o644)
            atomic.write_bytes(folder / f"{stem}.json", side, mode=0o644)
            return len(png.getvalue()) + len(side)
        row = (",".join([pred.label, *(f"{v:.6g}" for v in np.asarray(frame, np.float64).reshape(-1))]) + "\n").encode()
        side = (json.dumps(note) + "\n").encode()
        files = [(self.folder / "captured.csv", row), (self.folder / "captured.jsonl", side)]
        sizes = [f.stat().st_size if f.exists() else 0 for f, _ in files]
        try:
            for f, data in files:
                with open(f, "ab") as out:
                    out.write(data)
        except OSError:  # a row half written (a full disk) is taken back, so the csv stays whole
            for (f, _), size in zip(files, sizes):
                if f.exists():
                    with open(f, "r+b") as out:
                        out.truncate(size)
            raise
        return len(row) + len(side)

    def _trim(self) -> None:
        """Down to KEEP of max_bytes, oldest first: picture pairs by name (time first), csv rows from the top."""
        target = int(self.max_bytes * KEEP)
        pictures = sorted((f for f in self.folder.glob("*/*.png")), key=lambda f: f.name)
        for png in pictures:
            if self._size <= target:
                break
            for f in (png, png.with_suffix(".json")):
                if f.exists():
                    self._size -= f.stat().st_size
                    f.unlink()
            self.dropped += 1
        rows = self.folder / "captured.csv"
        if self._size > target and rows.exists():
            lines = rows.read_bytes().splitlines(keepends=True)
            notes = (self.folder / "captured.jsonl").read_bytes().splitlines(keepends=True)
            cut, freed = 0, 0
            while cut < len(lines) and self._size - freed > target:
                freed += len(lines[cut]) + (len(notes[cut]) if cut < len(notes) else 0)
                cut += 1
            atomic.write_bytes(rows, b"".join(lines[cut:]), mode=0o644)
            atomic.write_bytes(self.folder / "captured.jsonl", b"".join(notes[cut:]), mode=0o644)
            self._size -= freed
            self.dropped += cut
