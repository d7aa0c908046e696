"""The generated firmware built by real TFLM (the standalone tree in ../shared) and run: 'make firmware-test'.

Each model is built for the host and for a Cortex-M4 (CMSIS-NN kernels) under qemu-system-arm.
The first run compiles TFLM per target (about 4 minutes each on 2 cores); later runs reuse the
cached libraries in ~/.cache/tinysense-tflm.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from conftest import ROOT, SHARED_MODELS, int8_autoencoder
from firmware_export import build, generate
from firmware_export.export import export
from contract.tflite import _names, _schema
from firmware_export.resolver import resolver_method

TREE = ROOT.parent / "shared" / "third_party" / "tflm"
pytestmark = [
    pytest.mark.timeout(2400),  # a cold cache compiles TFLM for up to two targets inside one test
    pytest.mark.skipif(not os.environ.get("TINYSENSE_FIRMWARE_TEST"),
                       reason="compiling TFLM takes minutes: 'make firmware-test' runs this"),
    pytest.mark.skipif(not TREE.is_dir(), reason="../shared/third_party/tflm is absent"),
]


def _built(model, tmp_path, name, targets=("host",)):
    out = tmp_path / name
    export(model, out, build=targets, tflm_tree=TREE)
    report = json.loads((out / "export.json").read_text())
    for t in targets:
        b = report["build"][t]
        assert re.fullmatch(r"(\d+) of \1", b["self_test"]), b  # every golden input matched
        assert (out / b["program"]).is_file()
    return report, out


def _check_cortex_m4(report, out, model_bytes):
    b = report["build"]["cortex-m4"]
    assert b["kernels"] == "cmsis-nn"
    assert (out / b["binary"]).stat().st_size > model_bytes  # the model is in the flash image
    mem = b["memory"]
    assert mem["flash"]["model"] >= model_bytes and mem["flash"]["tflm"] > 20_000
    assert mem["ram"]["arena"] == report["arena_bytes"]
    assert mem["flash_bytes"] == sum(mem["flash"].values()) and mem["ram_bytes"] == sum(mem["ram"].values())
    assert 0 < mem["stack_used_bytes"] < mem["ram"]["stack_reserved"]
    probe = b["probe"]
    assert probe["self_test_at_min"] == f"{report['golden']['count']} of {report['golden']['count']}"
    smallest = probe["arena_min_bytes"]
    # emitted from the 32-bit measurement: at most 2 % + 16 B above the smallest that works there
    assert smallest <= report["arena_bytes"] <= smallest * 1.02 + 16
    assert probe["instructions_per_inference"] > 1000
    config = (out / f"{report['name']}_model_config.h").read_text()
    assert f"kTensorArenaSize = {report['arena_bytes']};" in config
    assert f"kTensorArenaSize = {report['arena_bytes_64bit']};" in config


def test_digits_builds_with_tflm_and_passes_its_self_test(digits_bundle, tmp_path):
    report, out = _built(digits_bundle, tmp_path, "digits", ("host", "cortex-m4"))
    for target in ("host", "cortex-m4"):
        lines = report["build"][target]["output"]
        assert lines[0] == "self-test: 5 of 5 golden inputs match"
        assert all(re.fullmatch(r"\d \d\.\d{3}", ln) for ln in lines[1:])  # "label score" lines from main.cc
    # the same predictions on both
    assert report["build"]["host"]["output"] == report["build"]["cortex-m4"]["output"]
    _check_cortex_m4(report, out, report["model_bytes"])


def test_mlperf_resnet8_builds_with_tflm(tmp_path):
    model = SHARED_MODELS / "pretrainedResnet_quant.tflite"
    if not model.is_file():
        pytest.skip("../shared/models/mlperf-tiny-ic is absent")
    report, out = _built(model, tmp_path, "resnet", ("host", "cortex-m4"))
    assert report["build"]["host"]["self_test"] == "5 of 5"
    _check_cortex_m4(report, out, report["model_bytes"])


def test_a_tiny_activation_autoencoder_builds_and_prints_values(tmp_path):
    model = int8_autoencoder(tmp_path / "ae.tflite")
    report, out = _built(model, tmp_path, "ae", ("host", "cortex-m4"))
    for target in ("host", "cortex-m4"):
        assert any(ln.startswith("output[0] ") for ln in report["build"][target]["output"])
    _check_cortex_m4(report, out, model.stat().st_size)


def test_a_resolver_of_every_builtin_tflm_offers_compiles(tmp_path):
    header = (TREE / "tensorflow" / "lite" / "micro" / "micro_mutable_op_resolver.h").read_text()
    methods = set(re.findall(r"TfLiteStatus (Add\w+)\(", header))
    # CUSTOM maps to AddCustom(name, registration): not a builtin (preflight refuses custom ops)
    ops = sorted(n for n in _names(_schema().BuiltinOperator).values()
                 if resolver_method(n) in methods and n != "CUSTOM")
    assert len(ops) >= 100  # every builtin TFLM offers (AddCustom aside)
    for name, text in generate.model_ops("every", ops, "every builtin").items():
        (tmp_path / name).write_text(text)
    (tmp_path / "every.cc").write_text('#include "every_model_ops.h"\n'
                                       "TfLiteStatus RegisterAll() { static every::OpResolver r;"
                                       " return every::RegisterOps(r); }\n")
    r = subprocess.run(["g++", *build.FLAGS, f"-I{tmp_path}", *build._includes(TREE), "-c", str(tmp_path / "every.cc"),
                        "-o", str(tmp_path / "every.o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_budgets_count_the_whole_firmware_once_it_is_built(digits_bundle, tmp_path):
    from firmware_export import ExportError

    # the model (11 KB) and the arena (3 KB) fit in 16 KiB of RAM and 64 KiB of flash; the firmware does not
    with pytest.raises(ExportError, match=r"the whole firmware \(as built for cortex-m4\) needs \d+ bytes of RAM"):
        export(digits_bundle, tmp_path / "ram", build=("cortex-m4",), tflm_tree=TREE, ram_kb=16)
    with pytest.raises(ExportError, match=r"the whole firmware \(as built for cortex-m4\) needs \d+ bytes of flash"):
        export(digits_bundle, tmp_path / "flash", build=("cortex-m4",), tflm_tree=TREE, flash_kb=64)
    assert not (tmp_path / "ram").exists() and not (tmp_path / "flash").exists()  # nothing half written
    r = export(digits_bundle, tmp_path / "ok", build=("cortex-m4",), tflm_tree=TREE, target="nrf52840").report
    assert r["budget"]["counts"] == "whole firmware" and r["budget"]["flash_bytes"] > r["model_bytes"] * 5
    est = r["build"]["cortex-m4"]["latency_estimate"]
    assert est["clock_mhz"] == 64 and 0 < est["ms_low"] < est["ms_high"]
    assert "cycles per instruction" in est["assumption"]


def test_digits_runs_on_cortex_m7_and_on_cortex_m55_with_helium(digits_bundle, tmp_path):
    report, out = _built(digits_bundle, tmp_path, "digits", ("cortex-m4", "cortex-m7", "cortex-m55"))
    outputs = {t: report["build"][t]["output"] for t in ("cortex-m4", "cortex-m7", "cortex-m55")}
    assert outputs["cortex-m4"] == outputs["cortex-m7"] == outputs["cortex-m55"]  # one answer on every core
    insns = {t: report["build"][t]["probe"]["instructions_per_inference"] for t in outputs}
    assert insns["cortex-m55"] < insns["cortex-m4"] / 2  # CMSIS-NN's MVE (Helium) paths on the M55
    smallest = max(m["min_bytes"] for m in report["arena_measured"].values())
    assert smallest <= report["arena_bytes"] <= smallest * 1.02 + 16  # the largest need among the targets
