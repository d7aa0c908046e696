"""firmware_export: generated sources pinned by golden files, compiled for real, measured in real TFLM."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, require_tool
from firmware_export import ExportError, generate
from firmware_export.export import arena_size, export
from contract.tflite import read
from firmware_export.resolver import resolver_method
from firmware_export import tflm

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("TINYSENSE_REGEN_GOLDEN") == "1"


def check_golden(files: dict[str, str]) -> None:
    for name, text in files.items():
        path = GOLDEN / name
        if REGEN:
            path.write_text(text)
        assert path.read_text() == text, f"{name} differs from tests/golden (TINYSENSE_REGEN_GOLDEN=1 rewrites)"


def test_generated_headers_match_golden_files():
    cfg = generate.Config(arena_bytes=4096, arena_recorded=3888, margin_percent=5, input_shape=(1, 2, 2, 1),
                          input_dtype="int8", input_scale=0.5, input_zero_point=-3, output_shape=(1, 3),
                          output_dtype="int8", output_scale=1 / 256, output_zero_point=-128,
                          labels=("cat", 'say "hi"', "dog"), mean=(1.0,), std=(2.5,))
    files = {
        **generate.model_data("tiny", bytes(range(30)), "tiny.tflite", "ab" * 32),
        **generate.model_ops("tiny", ["CONV_2D", "FULLY_CONNECTED", "SOFTMAX"], "tiny.tflite"),
        **generate.model_config("tiny", cfg, "tiny.tflite"),
        **generate.golden("tiny", np.arange(8, dtype=np.int8).reshape(2, 1, 2, 2, 1),
                          np.array([[1, -2, 3], [4, 5, -128]], np.int8), [0, -1], "tiny.tflite"),
        **generate.entry_points("tiny"),
    }
    check_golden(files)


@pytest.mark.parametrize("op, method", [("CONV_2D", "AddConv2D"), ("FULLY_CONNECTED", "AddFullyConnected"),
                                        ("AVERAGE_POOL_2D", "AddAveragePool2D"), ("ADD", "AddAdd"),
                                        ("DEPTHWISE_CONV_2D", "AddDepthwiseConv2D"), ("MEAN", "AddMean"),
                                        ("TFLite_Detection_PostProcess", "AddDetectionPostprocess")])
def test_resolver_method_names(op, method):
    assert resolver_method(op) == method


@pytest.mark.parametrize("raw, ident", [("model-v2.tflite", "model_v2_tflite"), ("My Model", "my_model")])
def test_sanitise_makes_identifiers(raw, ident):
    assert generate.sanitise(raw) == ident


@pytest.mark.parametrize("raw", ["9lives", "", "---", "int", "class"])
def test_sanitise_refuses_what_cannot_be_an_identifier(raw):
    with pytest.raises(ExportError, match="C identifier"):
        generate.sanitise(raw)


def test_c_float_literals_compile():
    assert generate._c_float(1) == "1.0f" and generate._c_float(0.5) == "0.5f" and generate._c_float(1e-9) == "1e-09f"


@pytest.fixture(scope="module")
def digits_export(digits_bundle, tmp_path_factory):
    require_tool("g++")
    require_tool("arm-none-eabi-g++")
    out = tmp_path_factory.mktemp("fw") / "digits_fw"
    return export(digits_bundle, out, target="nrf52840").report, out


def test_digits_export_is_measured_and_verified(digits_export, digits_bundle):
    report, out = digits_export
    model = (digits_bundle / "model.tflite").read_bytes()
    assert report["model_bytes"] == len(model)
    # arena: the recorded figure plus a small margin, at most 10 % above, rounded to 16
    assert report["arena_recorded_bytes"] <= report["arena_bytes"] <= report["arena_recorded_bytes"] * 1.10 + 16
    assert report["arena_bytes"] % 16 == 0 and report["arena_bytes"] < len(model) * 10
    # flash: the model in .rodata, not .data (RAM), at most 1 % over the model size
    assert report["sections"]["rodata"] >= len(model) and report["sections"]["data"] < 64
    assert report["flash_bytes"] <= len(model) * 1.01
    par = report["parity"]["tflm_vs_litert_reference"]
    assert par["top1_agreement"] == 1.0 and par["max_step_diff"] <= 1
    assert report["ops"] == sorted(set(report["ops"])) and "CONV_2D" in report["ops"]
    assert json.loads((out / "export.json").read_text()) == report


def test_emitted_arena_is_enough_and_a_guess_below_is_not(digits_export, digits_bundle):
    report, _ = digits_export
    model = (digits_bundle / "model.tflite").read_bytes()
    m = tflm.load(model, arena_bytes=report["arena_bytes"])
    assert m.run(np.zeros(m.input_shape, m.input_dtype)).shape == (1, 10)
    with pytest.raises(ExportError):
        tflm.load(model, arena_bytes=report["arena_recorded_bytes"] // 2)


def test_generated_sources_hold_what_the_model_holds(digits_export, digits_bundle):
    report, out = digits_export
    ops_h = (out / "digits_model_ops.h").read_text()
    assert "MicroMutableOpResolver<kOpCount>" in ops_h and f"kOpCount = {len(report['ops'])};" in ops_h
    assert ops_h.count("!= kTfLiteOk) return kTfLiteError;") == len(report["ops"])
    cc = (out / "digits_model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_digits_model_data[]" in cc
    assert "extern const unsigned char g_digits_model_data[];" in (out / "digits_model_data.h").read_text()
    config = (out / "digits_model_config.h").read_text()
    spec = json.loads((digits_bundle / "model.json").read_text())
    assert f"kTensorArenaSize = {report['arena_bytes']};" in config
    assert f"kInputZeroPoint = {spec['input']['zero_point']};" in config and '"9"' in config
    golden_h = (out / "digits_golden.h").read_text()
    assert "kGoldenCount = 5;" in golden_h
    assert (out / "main.cc").is_file() and (out / "digits.ino").is_file()


def test_third_party_mlperf_export(mlperf_dir, tmp_path):
    require_tool("arm-none-eabi-g++")
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (60, 4, 4, 3))
    np.savez(tmp_path / "images.npz", x=np.repeat(np.repeat(coarse, 8, 1), 8, 2).astype(np.float32))
    model = (mlperf_dir / "pretrainedResnet_quant.tflite").read_bytes()
    r = export(mlperf_dir / "pretrainedResnet_quant.tflite", tmp_path / "fw", name="resnet8",
               inputs=tmp_path / "images.npz").report
    assert r["ops"] == ["ADD", "AVERAGE_POOL_2D", "CONV_2D", "FULLY_CONNECTED", "RESHAPE", "SOFTMAX"]
    assert r["parity"]["tflm_vs_litert_reference"]["top1_agreement"] >= 0.98
    assert r["flash_bytes"] <= len(model) * 1.01 and r["sections"]["data"] < 64
    assert r["arena_bytes"] <= r["arena_recorded_bytes"] * 1.10 + 16
    # everything up to the classifier head agrees bit for bit; the kernels part at the head
    assert {d["op"] for d in r["parity"]["diverging_ops"]} <= {"FULLY_CONNECTED", "SOFTMAX"}


def test_budget_failure_names_the_numbers(digits_bundle, tmp_path):
    with pytest.raises(ExportError, match=r"arena needs \d+ bytes of RAM, the budget is 1024"):
        export(digits_bundle, tmp_path / "o", ram_kb=1, compile_check=False)
    with pytest.raises(ExportError, match="flash"):
        export(digits_bundle, tmp_path / "o", flash_kb=4, compile_check=False)
    assert not (tmp_path / "o").exists()


def _cli(*argv):
    r = subprocess.run([sys.executable, "-m", "firmware_export", *map(str, argv)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("INFO:")]
    return r.returncode, lines


def _bad_files(tmp_path, digits_bundle, mlperf=None):
    (tmp_path / "empty.tflite").write_bytes(b"")
    (tmp_path / "random.tflite").write_bytes(np.random.default_rng(0).bytes(2000))
    model = (digits_bundle / "model.tflite").read_bytes()
    (tmp_path / "truncated.tflite").write_bytes(model[: len(model) // 3])
    v = digits_bundle / "variants"
    return [(tmp_path / "missing.tflite", "does not exist"), (tmp_path / "empty.tflite", "is empty"),
            (tmp_path / "random.tflite", "not a TFLite model"), (tmp_path / "truncated.tflite", "truncated"),
            (v / "float32.tflite", "float model"), (v / "float16.tflite", "float16 model"),
            (v / "dynamic.tflite", "dynamic-range model")]


def test_bad_inputs_are_one_line_and_write_nothing(digits_bundle, tmp_path):
    for path, words in _bad_files(tmp_path, digits_bundle):
        code, lines = _cli(path, "--out", tmp_path / "out")
        assert code == 1 and len(lines) == 1 and words in lines[0], (path.name, lines)
        assert not (tmp_path / "out").exists()
    code, lines = _cli(digits_bundle, "--out", tmp_path / "out", "--name", "2fast")
    assert code == 1 and "C identifier" in lines[0]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    code, lines = _cli(digits_bundle, "--out", tmp_path / "out", "--no-compile")
    assert code == 1 and "--force" in lines[0] and (tmp_path / "out" / "keep").exists()
    code, lines = _cli(digits_bundle, "--out", tmp_path / "out", "--target", "arduino-uno")
    assert code == 1 and "unknown target" in lines[0]


def test_flatbuffer_reader_sees_float_and_int_ops(digits_bundle):
    v = digits_bundle / "variants"
    assert read((v / "int8.tflite").read_bytes()).float_ops == []
    info = read((v / "float32.tflite").read_bytes())
    assert "CONV_2D" in info.float_ops and info.input_types == ("FLOAT32",)
    assert arena_size(1000, 5) == 1056


def _with_custom_op(model: bytes, code: str) -> bytes:
    """The same model with its first operator turned into a custom one, re-packed as a real flatbuffer."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    m.operatorCodes[0].builtinCode = schema.BuiltinOperator.CUSTOM
    m.operatorCodes[0].deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    m.operatorCodes[0].customCode = code
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.mark.parametrize("code, words", [("FlexCumprod", "select-TF operators FlexCumprod"),
                                         ("MyFancyOp", "custom operators MyFancyOp")])
def test_custom_and_select_tf_ops_are_refused(digits_bundle, tmp_path, code, words):
    path = tmp_path / "custom.tflite"
    path.write_bytes(_with_custom_op((digits_bundle / "model.tflite").read_bytes(), code))
    assert code in read(path.read_bytes()).custom_ops
    with pytest.raises(ExportError, match=words):
        export(path, tmp_path / "out", compile_check=False)
    assert not (tmp_path / "out").exists()


def test_the_output_folder_is_checked_once_per_export(digits_bundle, tmp_path, monkeypatch):
    """Once a reason for three checks of one --out: export, its staged write and the board layout each checked it."""
    from contract import atomic
    from firmware_export.cli import main

    seen = []
    real = atomic.check_output_dir

    def counted(out, force):
        seen.append(Path(out))
        return real(out, force)
    monkeypatch.setattr(atomic, "check_output_dir", counted)
    assert main([str(digits_bundle), "--out", str(tmp_path / "fw"), "--no-compile"]) == 0
    assert seen == [tmp_path / "fw"]
    seen.clear()
    assert main([str(digits_bundle), "--out", str(tmp_path / "sketch"), "--no-compile", "--layout", "arduino",
                 "--board", "nano33ble"]) == 0
    assert seen.count(tmp_path / "sketch") == 1 and (tmp_path / "sketch").is_dir()


def test_one_hardware_table_for_cores_boards_and_clocks():
    from firmware_export import build as builder, hardware

    for core in hardware.CORES.values():
        if core.is_mcu:  # the latency estimate's board has this very core
            assert hardware.reference_board(core).cpu == core.name
    assert hardware.project_board("nano33ble") is hardware.preset("nrf52840")  # --board sets --target
    assert builder.latency_estimate(64_000_000, hardware.BOARDS["nrf52840"])["ms_low"] == 1000.0  # 1 s at 64 MHz
    assert "alif-e7" not in hardware.PRESETS  # named for its clock only: no budgets to check against
    with pytest.raises(ExportError, match="unknown target 'alif-e7'"):
        hardware.preset("alif-e7")
