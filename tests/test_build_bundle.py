"""The build end to end: the bundle contract, every variant through the real interpreter, bad input."""

import json

import numpy as np
import pytest

from build_model.cli import main
from build_model.quantize import VARIANTS
from contract import bundle
from contract.runtime import Model
from contract.tflite import read


def test_bundle_contract_matches_the_tflite(digits_bundle):
    b = bundle.load(digits_bundle)
    spec = b.spec
    assert spec.kind == "image" and spec.labels == tuple(str(i) for i in range(10))
    assert spec.input.dtype == "int8" and spec.output.dtype == "int8"
    model = Model(b.model)
    model.check(spec)  # raises on any difference in shape, dtype, scale or zero point
    assert spec.input.preprocess.mean > 0 and spec.input.preprocess.std > 0
    assert spec.input.preprocess.size == (8, 8) and spec.input.preprocess.color == "gray"
    assert spec.variant in ("int8", "qat_int8")
    tools = spec.provenance["tools"]
    assert tools["tensorflow"] and tools["ai-edge-litert"]
    assert spec.provenance["calibration"]["split"] == "train"


def test_testset_holds_raw_test_samples(digits_bundle):
    t = np.load(digits_bundle / "testset.npz")
    assert len(t["y"]) >= 200 and t["x"].shape[1:] == (8, 8, 1)
    assert t["x"].max() == 16.0  # raw pixels, the device preprocesses them itself


def test_every_variant_loads_and_report_has_its_numbers(digits_bundle):
    report = json.loads((digits_bundle / "report.json").read_text())
    assert set(report["variants"]) == set(VARIANTS)
    for name, v in report["variants"].items():
        data = (digits_bundle / "variants" / f"{name}.tflite").read_bytes()
        assert v["size_bytes"] == len(data)
        m = Model(data)
        out = m.run(np.zeros(m.input.shape, m.input.dtype))
        assert out.shape == (1, 10)
        assert 0.5 < v["accuracy"] <= 1.0, name
        assert 0 < v["latency_ms"]["p50"] <= v["latency_ms"]["p99"]
        if VARIANTS[name].full_integer:
            assert read(data).float_ops == [], name
    assert not report["variants"]["float16"]["tflm_compatible"]
    assert not report["variants"]["dynamic"]["tflm_compatible"]
    assert report["variants"]["int8"]["tflm_compatible"]
    assert abs(report["variants"]["int8"]["accuracy"] - report["variants"]["float32"]["accuracy"]) < 0.03


def test_report_files_and_pictures(digits_bundle):
    for name in ("report.md", "variants.png", "confusion.png"):
        assert (digits_bundle / name).stat().st_size > 500
    assert (digits_bundle / "variants.png").read_bytes()[:4] == b"\x89PNG"
    assert "| int8 |" in (digits_bundle / "report.md").read_text()


def test_float_model_fails_the_full_integer_check(digits_bundle):
    from build_model import BuildError
    from build_model.quantize import check_full_integer

    with pytest.raises(BuildError, match="FULLY_CONNECTED"):
        check_full_integer("int8", (digits_bundle / "variants" / "float32.tflite").read_bytes())


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def test_existing_output_needs_force(digits_bundle, capsys, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = _run(capsys, "--out", str(out), "--epochs", "1", "--variants", "int8", "-q")
    assert code == 1 and "--force" in err
    assert (out / "keep.txt").read_text() == "mine"
    code, _ = _run(capsys, "--out", str(out), "--epochs", "1", "--variants", "int8", "-q", "--force")
    assert code == 0 and not (out / "keep.txt").exists() and (out / "model.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.parametrize("argv, code, words", [
    (["--dataset", "imagenet"], 2, "unknown dataset"),
    (["--variants", "int4"], 2, "unknown variant int4"),
    (["--variants", "float32"], 2, "must include int8"),
    (["--model", "/nonexistent/m.h5"], 1, "does not exist"),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, argv, code, words):
    out = tmp_path / "o"
    got, err = _run(capsys, "--out", str(out), "--epochs", "1", "-q", *argv)
    assert got == code and words in err and err.startswith("build_model: error:")
    assert not out.exists()


def test_corrupt_and_mismatched_models(capsys, tmp_path):
    from build_model.tf import keras

    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    code, err = _run(capsys, "--out", str(tmp_path / "o"), "--model", str(bad), "-q")
    assert code == 1 and "cannot load Keras model" in err
    # an image model of another size is fine (the images are resized to it); other classes are not
    m = keras.Sequential([keras.layers.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(5)])
    path = tmp_path / "five.keras"
    m.save(path)
    code, err = _run(capsys, "--out", str(tmp_path / "o"), "--model", str(path), "-q")
    assert code == 1 and "5 outputs" in err and "10 classes" in err
    m = keras.Sequential([keras.layers.Input((50, 6)), keras.layers.Flatten(), keras.layers.Dense(10)])
    path = tmp_path / "sensor.keras"
    m.save(path)
    code, err = _run(capsys, "--out", str(tmp_path / "o"), "--model", str(path), "-q")
    assert code == 1 and "(50, 6)" in err and "(8, 8, 1)" in err
    assert not (tmp_path / "o").exists()


def test_unwritable_output_folder(capsys, tmp_path):
    (tmp_path / "a-file").write_text("")
    code, err = _run(capsys, "--out", str(tmp_path / "a-file" / "deeper"), "--epochs", "1", "-q")
    assert code == 1 and "cannot create" in err


def test_legacy_h5_from_mlperf_loads(mlperf_dir):
    from build_model.models import load_user_model

    m = load_user_model(mlperf_dir / "pretrainedResnet.h5")
    assert tuple(m.input_shape[1:]) == (32, 32, 3) and m.output_shape[-1] == 10
    assert m.count_params() == 78666
