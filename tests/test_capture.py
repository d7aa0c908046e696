"""--capture-dir: what the model doubts, kept in a bounded folder, in a format build_model reads."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from contract.protocol import Prediction
from device.capture import Capture


def pred(seq: int, label: str, score: float) -> Prediction:
    return Prediction(seq, 1_700_000_000.0 + seq, label, score, [[label, score]], {"invoke": 1.0})


def test_doubtful_pictures_become_an_image_folder_dataset(tmp_path):
    from build_model import datasets

    cap = Capture(tmp_path / "cap", below=0.6, every=5, max_bytes=10_000_000)
    rng = np.random.default_rng(0)
    for i in range(40):
        frame = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        cap.offer(frame, pred(i, ["cat", "dog"][i % 2], 0.3 if i % 4 == 0 else 0.9))
    cap.close()
    assert cap.captured == 10 + 6 and cap.lost == 0  # 10 below 0.6; every 5th frame, 6 more that were not
    pngs = sorted((tmp_path / "cap").glob("*/*.png"))
    notes = [json.loads(p.with_suffix(".json").read_text()) for p in pngs]
    assert len(pngs) == 16 and {n["captured"] for n in notes} == {"below", "every"}
    assert all(p.parent.name == n["label"] for p, n in zip(pngs, notes))  # filed under the model's guess
    ds = datasets.load(f"images:{tmp_path / 'cap'}", image_size=16)  # train on it once relabelled
    assert ds.labels == ("cat", "dog")


def test_the_folder_stays_within_its_bound(tmp_path):
    cap = Capture(tmp_path / "cap", below=1.1, every=0, max_bytes=60_000)
    rng = np.random.default_rng(1)
    for i in range(200):
        cap.offer(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), pred(i, "a", 0.5))
        time.sleep(0.002)  # a frame rate the writer keeps up with (faster, the queue drops: capture_lost)
    cap.close()
    size = sum(f.stat().st_size for f in (tmp_path / "cap").rglob("*") if f.is_file())
    assert size <= 60_000 and cap.dropped > 0 and cap.captured + cap.lost == 200
    left = sorted(p.stem for p in (tmp_path / "cap" / "a").glob("*.png"))
    assert left and left[-1].endswith("000000199")  # the newest are kept


def test_sensor_windows_become_csv_rows_with_their_predictions_aligned(tmp_path):
    from build_model import datasets

    cap = Capture(tmp_path / "cap", below=1.1, every=0, max_bytes=40_000)
    rng = np.random.default_rng(2)
    for i in range(300):
        cap.offer(rng.normal(size=(20, 3)).astype(np.float32), pred(i, ["walk", "run"][i % 2], 0.4))
        time.sleep(0.002)
    cap.close()
    rows = (tmp_path / "cap" / "captured.csv").read_text().splitlines()
    notes = [json.loads(n) for n in (tmp_path / "cap" / "captured.jsonl").read_text().splitlines()]
    assert cap.captured + cap.lost == 300 and cap.dropped > 0
    assert len(rows) == len(notes) == cap.captured - cap.dropped  # trimmed, oldest first, in step
    seqs = [n["seq"] for n in notes]
    assert seqs == sorted(seqs) and all(r.split(",", 1)[0] == n["label"] for r, n in zip(rows, notes))
    ds = datasets.load(f"csv:{tmp_path / 'cap' / 'captured.csv'}", channels=3)
    assert ds.sample_shape == (20, 3)


def test_the_device_captures_and_says_so_in_its_summary(digits_bundle, tmp_path):
    r = subprocess.run([sys.executable, "-m", "device", "--model", str(digits_bundle), "--source",
                        f"replay:{digits_bundle / 'testset.npz'}", "--port", "null", "--period", "0",
                        "--max-frames", "30", "--capture-dir", str(tmp_path / "cap"), "--capture-below", "1.01"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    summary = json.loads([ln for ln in r.stderr.splitlines() if ln.startswith('{"summary"')][-1])["summary"]
    assert r.returncode == 0 and summary["captured"] == 30 and summary["capture_lost"] == 0
    assert len((tmp_path / "cap" / "captured.csv").read_text().splitlines()) == 30  # 8x8 floats: rows


@pytest.mark.parametrize("args, words", [
    (["--capture-every", "5"], "are for --capture-dir DIR"),
    (["--capture-dir", "x", "--capture-max-mb", "0"], "--capture-max-mb must be"),
    (["--capture-dir", "x", "--capture-every", "-1"], "--capture-every must be 0"),
])
def test_bad_capture_flags_are_one_line(digits_bundle, args, words):
    r = subprocess.run([sys.executable, "-m", "device", "--model", str(digits_bundle), "--source", "synthetic",
                        "--port", "null", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1 and words in r.stderr and "\n" not in r.stderr.strip()
