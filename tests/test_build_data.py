"""Datasets and calibration: seeded stratified splits, and calibration that refuses bad data."""

import subprocess
import sys

import numpy as np
import pytest

from build_model import BuildError, UsageError, calibration, datasets
from conftest import ROOT


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits", seed=0)


def test_digits_split_is_seeded_stratified_and_complete(digits):
    again = datasets.load("digits", seed=0)
    other = datasets.load("digits", seed=1)
    assert np.array_equal(digits.test.x, again.test.x)
    assert not np.array_equal(digits.test.x, other.test.x)
    total = len(digits.train.y) + len(digits.val.y) + len(digits.test.y)
    assert total == 1797
    for split in (digits.train, digits.val, digits.test):
        share = np.bincount(split.y, minlength=10) / len(split.y)
        assert np.all(np.abs(share - 0.1) < 0.02), split.name
    assert digits.sample_shape == (8, 8, 1)
    assert float(digits.train.x.max()) == 16.0  # raw pixels, native units


def test_basicmotions_windows_never_cross_splits():
    ds = datasets.load("basicmotions", seed=0, window=50, stride=10)
    assert ds.kind == "sensor" and ds.sample_shape == (50, 6) and len(ds.labels) == 4
    train = {w.tobytes() for w in ds.train.x}
    assert not any(w.tobytes() in train for w in ds.test.x)
    assert len(ds.train.y) >= calibration.MIN_DISTINCT
    assert isinstance(ds.preprocess.mean, tuple) and len(ds.preprocess.mean) == 6


def test_calibration_is_stratified_float32_from_train(digits):
    samples = calibration.draw(digits, digits.train, 300, seed=0)
    assert samples.dtype == np.float32 and samples.shape == (300, 8, 8, 1)
    assert abs(float(samples.mean())) < 0.2  # normalised like training, not raw 0..16


def test_calibration_takes_whole_split_when_smaller(digits):
    assert len(calibration.draw(digits, digits.train, 10_000)) == len(digits.train.y)


@pytest.mark.parametrize("split", ["test", "val"])
def test_calibration_refuses_other_splits(digits, split):
    with pytest.raises(BuildError, match="training split"):
        calibration.draw(digits, getattr(digits, split))


def test_calibration_refuses_duplicates_dtype_shape_and_empty():
    same = np.repeat(np.ones((1, 8, 8, 1), np.float32), 300, axis=0)
    with pytest.raises(BuildError, match="1 distinct"):
        calibration.validate(same, (8, 8, 1))
    varied = np.random.default_rng(0).random((200, 8, 8, 1))
    with pytest.raises(BuildError, match="float32"):
        calibration.validate(varied, (8, 8, 1))
    with pytest.raises(BuildError, match="shape"):
        calibration.validate(varied.astype(np.float32), (8, 8, 3))
    with pytest.raises(BuildError, match="empty"):
        calibration.validate(np.zeros((0, 8, 8, 1), np.float32), (8, 8, 1))
    calibration.validate(varied.astype(np.float32), (8, 8, 1))  # and a good one passes


def test_calibration_generator_yields_batch_one(digits):
    gen = calibration.generator(calibration.draw(digits, digits.train, 120))
    first = next(iter(gen()))
    assert len(first) == 1 and first[0].shape == (1, 8, 8, 1) and first[0].dtype == np.float32


def test_unknown_dataset_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown dataset"):
        datasets.load("imagenet")


def test_csv_ragged_rows_name_the_line(tmp_path):
    f = tmp_path / "w.csv"
    f.write_text("label,a,b,c,d\nwalk,1,2,3,4\nrun,1,2,3\n")
    with pytest.raises(BuildError, match=r"w.csv:3: 3 values"):
        datasets.load(f"csv:{f}")


def test_csv_loads_time_major_windows(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "w.csv"
    lines = [f"{'ab'[i % 2]}," + ",".join(f"{v:.3f}" for v in rng.random(40)) for i in range(60)]
    f.write_text("\n".join(lines) + "\n")
    ds = datasets.load(f"csv:{f}", channels=2, window=10, stride=5)
    assert ds.sample_shape == (10, 2) and ds.labels == ("a", "b")


def test_image_folder_needs_two_classes_with_images(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(BuildError, match="1 class subfolder"):
        datasets.load(f"images:{tmp_path}")
    (tmp_path / "dogs").mkdir()
    with pytest.raises(BuildError, match="holds no images"):
        datasets.load(f"images:{tmp_path}")


def test_image_folder_loads_rgb(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("red", "blue"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = datasets.load(f"images:{tmp_path}", image_size=16)
    assert ds.sample_shape == (16, 16, 3) and ds.labels == ("blue", "red")
    assert len(ds.preprocess.mean) == 3


def test_offline_keras_dataset_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / ".keras"))
    import socket

    def no_network(*a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(BuildError, match=r"place mnist.npz in ~/.keras/datasets/"):
        datasets.load("mnist")
    assert (tmp_path / ".keras").is_dir()  # where the message says; keras alone would fall back to /tmp/.keras


@pytest.mark.parametrize("args, words", [
    (["--dataset", "digits", "--window", "5"], "--dataset digits does not use --window (it takes no options)"),
    (["--dataset", "ucr:ItalyPowerDemand", "--image-size", "8"],
     "does not use --image-size (it takes --window, --stride, --length)"),
    (["--dataset", "basicmotions", "--channels", "3", "--length", "pad"], "does not use --channels, --length"),
])
def test_a_dataset_refuses_options_it_does_not_use(tmp_path, args, words):
    """Once silently dropped (--window on digits trained on whole images): one line, exit 2, nothing written."""
    out = tmp_path / "parent" / "bundle"
    r = subprocess.run([sys.executable, "-m", "build_model", *args, "--out", str(out)], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and words in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert not (tmp_path / "parent").exists()


def test_the_options_a_dataset_takes_are_its_own_defaults_when_absent():
    windowed = datasets.load("basicmotions", seed=0)  # its own default window of 50, stride 10
    assert windowed.train.x.shape[1] == 50
    assert datasets.options_of(datasets.REGISTRY["digits"]) == ()
