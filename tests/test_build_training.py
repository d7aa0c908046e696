"""Training that converges, official splits that never leak, honest reports, every arch through int8."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from build_model import BuildError, UsageError, archs, datasets
from build_model.cli import main
from contract.preprocess import fit_length


def _ids(split):
    return set(split.source.tolist())


@pytest.mark.parametrize("spec", ["ucr:ItalyPowerDemand", "ucr:BasicMotions", "ucr:JapaneseVowels", "digits"])
def test_splits_never_share_a_recording(spec):
    ds = datasets.load(spec, seed=0)
    train, val, test = _ids(ds.train), _ids(ds.val), _ids(ds.test)
    assert train and test and (val or ds.no_validation)  # BasicMotions' 40 recordings spare no validation
    assert not (train & val) and not (train & test) and not (val & test)
    if spec.startswith("ucr:"):
        from aeon.datasets import load_classification

        n_train = len(load_classification(spec[4:], split="train")[1])
        assert ds.official_split
        assert max(train | val) < n_train <= min(test)  # validation is carved from train only
        assert len(train) + len(val) == n_train


def test_windows_keep_their_recording():
    ds = datasets.load("basicmotions", seed=0, window=50, stride=10)
    assert len(ds.train.source) == len(ds.train.y) and len(set(ds.train.source.tolist())) < len(ds.train.y)
    assert not (_ids(ds.train) & _ids(ds.test))


def test_variable_length_is_resampled_and_recorded():
    ds = datasets.load("ucr:JapaneseVowels", seed=0)
    assert ds.sample_shape == (29, 12) and ds.preprocess.length == "resample"
    padded = datasets.load("ucr:JapaneseVowels", seed=0, length="pad")
    assert padded.preprocess.length == "pad"


def test_fit_length_resamples_and_pads():
    r = np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0]], np.float32)
    res = fit_length(r, 5, "resample")
    assert res.shape == (5, 2) and np.allclose(res[:, 0], [0, 0.5, 1, 1.5, 2]) and np.allclose(res[-1], [2, 30])
    pad = fit_length(r, 5, "pad")
    assert np.array_equal(pad[3:], [[2, 30], [2, 30]])
    assert fit_length(r, 2, "pad").shape == (2, 2)


def test_npz_and_csv_keep_their_own_split(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "own.npz"
    np.savez(f, x_train=rng.normal(size=(40, 16, 2)), y_train=np.arange(40) % 2,
             x_test=rng.normal(size=(12, 16, 2)), y_test=np.arange(12) % 2)
    ds = datasets.load(f"npz:{f}")
    assert ds.official_split and len(ds.test.y) == 12 and len(ds.train.y) + len(ds.val.y) == 40
    c = tmp_path / "own.csv"
    rows = [f"{'ab'[i % 2]},{'test' if i >= 30 else 'train'}," + ",".join(f"{v:.3f}" for v in rng.random(8))
            for i in range(40)]
    c.write_text("label,split,v0,v1,v2,v3,v4,v5,v6,v7\n" + "\n".join(rows) + "\n")
    ds = datasets.load(f"csv:{c}")
    assert ds.official_split and len(ds.test.y) == 10 and min(_ids(ds.test)) >= 30
    c.write_text("label,split,v0\na,later,1\n")
    with pytest.raises(BuildError, match="neither train nor test"):
        datasets.load(f"csv:{c}")


def test_offline_ucr_set_is_one_line():
    with pytest.raises(BuildError, match="cannot be downloaded offline"):
        datasets.load("ucr:Adiac")


def test_early_stopping_restores_the_best_epoch():
    from build_model.tf import keras
    from build_model.training import TrainConfig, fit, seed_everything

    seed_everything(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.integers(0, 2, 64)  # random labels: validation loss rises once it starts memorising
    val = (rng.normal(size=(32, 8)).astype(np.float32), rng.integers(0, 2, 32))
    model = keras.Sequential([keras.layers.Input((8,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    h = fit(model, x, y, val, TrainConfig(epochs=200, patience=10, min_epochs=0, learning_rate=1e-2, quiet=True),
            classes=2)
    assert h.stopped_early and h.best_epoch < h.epochs_run - 1
    assert h.best_epoch == int(np.argmin(h.val_loss))
    loss = keras.losses.SparseCategoricalCrossentropy()(val[1], model(val[0], training=False)).numpy()
    assert loss == pytest.approx(h.val_loss[h.best_epoch], rel=1e-4)  # the weights are the best epoch's
    assert loss < h.val_loss[-1]


def test_training_is_deterministic_under_a_seed():
    from build_model.training import TrainConfig, fit, seed_everything

    ds = datasets.load("ucr:ItalyPowerDemand", seed=0)
    weights = []
    for _ in range(2):
        seed_everything(3)
        m = archs.ARCHS["sensor_cnn"].build(ds.sample_shape, 2)
        fit(m, ds.normalise(ds.train.x), ds.train.y, (ds.normalise(ds.val.x), ds.val.y),
            TrainConfig(epochs=3, min_epochs=0, quiet=True), classes=2)
        weights.append(m.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights))


def test_augmentation_keeps_shapes_and_changes_values():
    from build_model.training import augment_image, augment_sensor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 30, 3)).astype(np.float32)
    a = augment_sensor(x.copy(), rng)
    assert a.shape == x.shape and a.dtype == np.float32 and not np.allclose(a, x)
    img = rng.random((3, 8, 8, 1)).astype(np.float32)
    b = augment_image(img, rng)
    assert b.shape == img.shape and not np.allclose(b, img)


def test_class_weights_are_inverse_frequency():
    from build_model.training import class_weights

    w = class_weights(np.array([0, 0, 0, 1]), 2)
    assert w[1] == pytest.approx(3 * w[0]) and w[0] * 3 + w[1] == pytest.approx(4)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(archs.ARCHS))
def test_every_arch_is_full_int8_qat_able_and_runs_in_tflm(name):
    """Tiny seeded inputs: each arch converts to full int8 (plain and QAT) and runs in LiteRT and TFLM."""
    from build_model import calibration, quantize
    from build_model.training import TrainConfig, seed_everything
    from contract.runtime import Model
    from contract.tflite import read
    from firmware_export.tflm import can_run

    arch = archs.ARCHS[name]
    seed_everything(0)
    rng = np.random.default_rng(0)
    shape = (24, 3) if arch.kind == "sensor" else (16, 16, 3)
    x = rng.normal(size=(160, *shape)).astype(np.float32)
    y = np.arange(160) % 3
    ds = datasets._from_arrays("tiny", arch.kind, ["a", "b", "c"], x, y, 0, color="rgb") if arch.kind == "image" \
        else datasets._sensor_from_recordings("tiny", ["a", "b", "c"], x, y, 0, None, 10)
    model = arch.build(ds.sample_shape, 3)
    ctx = quantize.Context(ds, calibration.draw(ds, ds.train, 120), TrainConfig(epochs=1, min_epochs=0, quiet=True),
                           lambda it, **k: it)
    for variant in ("int8", "qat_int8"):
        data = quantize.convert(variant, model, ctx)
        assert read(data).float_ops == [], (name, variant)
        m = Model(data, num_threads=1)
        assert m.input.dtype == np.int8 and m.run(np.zeros(m.input.shape, np.int8)).shape == (1, 3)
        ok, reason = can_run(data)
        assert ok, (name, variant, reason)


def _save(model, path):
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 20, 3)).astype(np.float32)
    y = (x[:, :, 0].mean(1) > 0).astype(int)
    f = tmp_path_factory.mktemp("seq") / "seq.npz"
    np.savez(f, x=x, y=y)
    return f


def _model_through_every_variant(tmp_path, dataset: str, model_path: str) -> dict:
    out = tmp_path / "bundle"
    assert main(["--dataset", dataset, "--model", model_path, "--out", str(out), "--epochs", "2",
                 "--fine-tune-epochs", "1", "--no-layer-debug", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    from build_model.variants import NAMES

    assert set(report["variants"]) == set(NAMES)
    assert report["variants"]["int8"]["tflm_compatible"]
    return report


@pytest.mark.slow
def test_lstm_goes_through_every_variant(tmp_path, sequences):
    from build_model.tf import keras
    from contract.tflite import read

    L = keras.layers
    m = keras.Sequential([L.Input((20, 3)), L.LSTM(8), L.Dense(2, activation="softmax")])
    report = _model_through_every_variant(tmp_path, f"npz:{sequences}", _save(m, tmp_path / "lstm.keras"))
    ops = read((tmp_path / "bundle" / "variants" / "int8.tflite").read_bytes()).op_names
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops  # fused, thanks to the static batch
    assert report["variants"]["int16x8"]["tflm_compatible"]
    assert any("lstm not quantization-aware trained" in w for w in report["warnings"])


@pytest.mark.slow
def test_conv1d_model_goes_through_every_variant(tmp_path, sequences):
    from build_model.tf import keras

    L = keras.layers
    m = keras.Sequential([L.Input((20, 3)), L.Conv1D(8, 3, padding="same", activation="relu"), L.MaxPooling1D(2),
                          L.Conv1D(8, 3, activation="relu"), L.GlobalAveragePooling1D(),
                          L.Dense(2, activation="softmax")])
    _model_through_every_variant(tmp_path, f"npz:{sequences}", _save(m, tmp_path / "conv1d.keras"))


def test_conv1d_rewrite_computes_the_same():
    from build_model.models import conv1d_as_conv2d
    from build_model.tf import keras

    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = L.Input((20, 3))
    x = L.Conv1D(6, 5, strides=2, padding="same", activation="relu")(inp)
    x = L.AveragePooling1D(2)(x)
    x = L.Conv1D(4, 3, dilation_rate=2, padding="valid")(x)
    out = L.Dense(2)(L.GlobalMaxPooling1D()(x))
    model = keras.Model(inp, out)
    twin = conv1d_as_conv2d(model)
    assert not any(isinstance(layer, (L.Conv1D, L.AveragePooling1D, L.GlobalMaxPooling1D)) for layer in twin.layers)
    data = np.random.default_rng(0).normal(size=(5, 20, 3)).astype(np.float32)
    assert np.allclose(model(data).numpy(), twin(data).numpy(), atol=1e-5)


@pytest.mark.slow
def test_small_depthwise_image_model_goes_through_every_variant(tmp_path):
    from build_model.tf import keras

    L = keras.layers
    m = keras.Sequential([L.Input((8, 8, 1)), L.Conv2D(8, 3, padding="same", activation="relu"),
                          L.DepthwiseConv2D(3, padding="same", activation="relu"), L.Conv2D(16, 1, activation="relu"),
                          L.GlobalAveragePooling2D(), L.Dense(10, activation="softmax")])
    _model_through_every_variant(tmp_path, "digits", _save(m, tmp_path / "dw.keras"))


@pytest.mark.slow
def test_transfer_learning_at_the_backbone_input_size(tmp_path):
    """A MobileNetV2 backbone given with --model: frozen, then fine-tuned, digits resized to 32 x 32 RGB."""
    from build_model.tf import keras
    from contract import bundle

    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None,
                                          pooling="avg")
    m = keras.Sequential([keras.layers.Input((32, 32, 3)), base, keras.layers.Dense(10, activation="softmax")])
    out = tmp_path / "tl"
    assert main(["--dataset", "digits", "--model", _save(m, tmp_path / "tl.keras"), "--out", str(out),
                 "--epochs", "1", "--fine-tune-epochs", "1", "--variants", "int8", "--no-layer-debug", "-q"]) == 0
    spec = bundle.load(out).spec
    assert spec.input.shape == (1, 32, 32, 3) and spec.input.preprocess.size == (32, 32)
    assert np.load(out / "testset.npz")["x"].shape[1:] == (32, 32, 3)
    training = json.loads((out / "report.json").read_text())["training"]
    assert training["epochs_run"] == 2  # one frozen epoch, one fine-tuning epoch


@pytest.mark.slow
def test_baseline_warning_fires_on_shuffled_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16, 2)).astype(np.float32)
    f = tmp_path / "noise.npz"
    np.savez(f, x=x, y=rng.permutation(np.arange(400) % 2))
    out = tmp_path / "noise"
    assert main(["--dataset", f"npz:{f}", "--out", str(out), "--arch", "sensor_cnn", "--epochs", "20",
                 "--variants", "float32,int8", "--fine-tune-epochs", "1", "--no-layer-debug", "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert any("majority-class baseline" in w for w in report["warnings"])
    assert "majority-class baseline" in (out / "report.md").read_text()


def test_no_baseline_warning_on_digits(digits_bundle):
    report = json.loads((digits_bundle / "report.json").read_text())
    assert report["baseline_accuracy"] < 0.2
    assert not any("baseline" in w for w in report["warnings"])
    assert report["per_class_recall"] and report["training"]["best_epoch"] >= 0
    md = (digits_bundle / "report.md").read_text()
    assert "Majority-class baseline" in md and "Per-class recall" in md
    assert (digits_bundle / "training.png").read_bytes()[:4] == b"\x89PNG"


def test_layer_errors_from_the_quantization_debugger(digits_bundle):
    report = json.loads((digits_bundle / "report.json").read_text())
    layers = report["layer_errors"]
    assert {e["op"] for e in layers} >= {"CONV_2D", "FULLY_CONNECTED"}
    assert all(e["rmse_per_step"] >= 0 and e["scale"] > 0 for e in layers)
    assert "Where int8 loses accuracy" in (digits_bundle / "report.md").read_text()
    assert (digits_bundle / "layers.png").stat().st_size > 1000


def test_epochs_zero_without_a_model_is_refused(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x"), "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model" in err[0]
    assert not (tmp_path / "x").exists()


def test_arch_for_the_wrong_kind_is_refused():
    with pytest.raises(UsageError, match="for image data"):
        archs.get("mobilenet", "sensor")


def test_help_and_argument_errors_do_not_import_tensorflow(tmp_path):
    code = ("import sys\nfrom build_model.cli import main, parser\nparser().format_help()\n"
            f"rc = main(['--out', {str(tmp_path / 'x')!r}, '--epochs', '0'])\n"
            "print(rc, 'tensorflow' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["2", "False"], r.stderr


def test_a_few_recordings_per_class_train_without_a_validation_split(tmp_path):
    """Two recordings per class were once refused ("too small to carve a validation split")."""
    from build_model.cli import main as build

    rng = np.random.default_rng(0)
    rows = ["label,split," + ",".join(f"v{i}" for i in range(40))]
    for split, n in (("train", 2), ("test", 2)):
        for label, f in (("slow", 1.0), ("fast", 5.0)):
            for _ in range(n):
                t = np.arange(20) / 20
                wave = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], 1)
                wave += 0.05 * rng.normal(size=(20, 2))
                rows.append(",".join([label, split, *(f"{v:.4f}" for v in wave.reshape(-1))]))
    (tmp_path / "few.csv").write_text("\n".join(rows) + "\n")
    ds = datasets.load(f"csv:{tmp_path / 'few.csv'}", channels=2)
    assert len(ds.val.y) == 0 and len(ds.train.y) == 4 and "FCN/ResNet protocol" in ds.no_validation
    out = tmp_path / "bundle"
    assert build(["--dataset", f"csv:{tmp_path / 'few.csv'}", "--channels", "2", "--out", str(out), "--epochs", "5",
                  "--variants", "float32,int8", "--no-layer-debug", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["training"]["selected_by"] == "loss" and "no_validation" in report["training"]
    assert "No validation split:" in (out / "report.md").read_text()
