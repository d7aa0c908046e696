"""The generated firmware built by real TFLM (the standalone tree in ../shared) and run: 'make firmware-test'.

Each model is built for the host and for a Cortex-M4 (CMSIS-NN kernels) under qemu-system-arm.
The first run compiles TFLM's runtime and the kernels each model registers, per target (about 7
minutes in all on 2 cores); later runs reuse the objects cached in ~/.cache/tinysense-tflm.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_MODELS, full_int8, int8_autoencoder, int8_ds_cnn, int8_mobilenet
from firmware_export import ExportError, build, generate
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
        used, of = map(int, re.fullmatch(r"(\d+) of (\d+)", b["tflm_sources"]).groups())
        assert used < of  # TFLM's runtime and only the kernels this model registers
    return report, out


def _check_cortex_m4(report, out, model_bytes):
    b = report["build"]["cortex-m4"]
    assert b["kernels"] == "cmsis-nn"
    assert (out / b["binary"]).stat().st_size > model_bytes  # the model is in the flash image
    mem = b["memory"]
    assert mem["flash"]["model"] >= model_bytes and mem["flash"]["tflm"] > 20_000
    assert mem["ram"]["arena"] == report["arena_bytes"]
    assert mem["flash_bytes"] == sum(mem["flash"].values()) and mem["ram_bytes"] == sum(mem["ram"].values())
    assert 0 < mem["stack_used_bytes"] < mem["ram"]["stack_reserved"] - 64  # the paint below it intact
    # linked again with the stack the run was measured to use (x 1.25 + 512 B), and run again
    assert mem["ram"]["stack_reserved"] == build.sized_stack(mem["stack_used_bytes"]) < build.STACK_BYTES
    assert mem["ram"]["heap"] == mem["heap_used_bytes"]
    probe = b["probe"]
    assert probe["self_test_at_min"] == f"{report['golden']['count']} of {report['golden']['count']}"
    smallest = probe["arena_min_bytes"]
    # emitted from the 32-bit measurement: at most 2 % + 16 B above the smallest that works there
    assert smallest <= report["arena_bytes"] <= smallest * 1.02 + 16
    assert probe["instructions_per_inference"] > 1000
    _check_profile(report, out, "cortex-m4")
    config = (out / f"{report['name']}_model_config.h").read_text()
    assert f"kTensorArenaSize = {report['arena_bytes']};" in config
    assert f"kTensorArenaSize = {report['arena_bytes_64bit']};" in config


def _check_profile(report, out, target):
    """The per-operator counts: one row per operator of the graph, adding up to the whole inference."""
    prof = report["build"][target]["profile"]
    rows = prof["rows"]
    assert prof["matches_graph"] and [r["op"] for r in rows] == [op for op in _graph_ops(report)]
    assert sum(r["instructions"] for r in rows) == prof["operators_instructions"]
    assert 0.99 <= prof["coverage"] <= 1.0  # the operators add up to the inference within 1 %
    # the profiled inference costs what the plain one does (the marks are a few instructions an operator)
    assert abs(prof["whole_instructions"] / report["build"][target]["probe"]["instructions_per_inference"] - 1) < 0.01
    assert abs(sum(r["share"] for r in rows) - 1) < 0.01
    for r in rows:
        if r["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            assert r["macs"] > 0 and r["instructions_per_mac"] == round(r["instructions"] / r["macs"], 2)
    assert (out / "profile.png").stat().st_size > 5000


def _graph_ops(report):
    from contract import tflite

    src = Path(report["source"])
    return [op.name for op in tflite.read((src / "model.tflite" if src.is_dir() else src).read_bytes()).ops]


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
    (tmp_path / "main.cc").write_text('#include "every_model_ops.h"\n'
                                      "int main() { static every::OpResolver r; return every::RegisterOps(r); }\n")
    # linked against a library of only the kernels these register: every one is found, no fallback
    tc = build.toolchain("host")
    lib = build.library(TREE, tc, build.resolver_ops(tmp_path / "every_model_ops.h"))
    assert lib.sources < lib.of  # the signal library, and kernels no Add method registers, left out
    said = []
    assert build._compile_link(tc, [str(tmp_path / "main.cc")], tmp_path, TREE, lib, tmp_path / "every",
                               log=said.append) == lib and not said
    assert subprocess.run([str(tmp_path / "every")], timeout=60).returncode == 0


def test_a_library_of_only_the_models_kernels_leaves_the_others_out(tmp_path):
    """The kernels-only library: the runtime and what each registered kernel includes and calls;
    a TFLM function it misses after all comes in with the kernel source that names it, said in one line."""
    sources = build._sources(TREE, "cmsis-nn")
    chosen = {p.relative_to(TREE).as_posix() for p in build._needed(TREE, sources, ["AddConv2D", "AddSoftmax"])}
    kernels = "tensorflow/lite/micro/kernels/"
    assert {kernels + "cmsis_nn/conv.cc", kernels + "conv_common.cc", kernels + "cmsis_nn/softmax.cc",
            kernels + "softmax_common.cc", kernels + "kernel_util.cc", "tensorflow/lite/micro/micro_interpreter.cc",
            "third_party/cmsis_nn/Source/ConvolutionFunctions/arm_convolve_wrapper_s8.c",
            "third_party/cmsis_nn/Source/ConvolutionFunctions/arm_convolve_s8.c"} <= chosen
    assert not any(p.startswith((kernels + "cmsis_nn/fully_connected", kernels + "lstm", "signal/",
                                 "third_party/cmsis_nn/Source/LSTMFunctions")) for p in chosen)
    with pytest.raises(ExportError, match="has no AddNoSuchOp: this tree is older"):
        build._needed(TREE, sources, ["AddNoSuchOp"])
    # a program that needs more than its resolver says (here FULLY_CONNECTED, called directly)
    for name, text in generate.model_ops("few", ["SOFTMAX"], "a test").items():
        (tmp_path / name).write_text(text)
    (tmp_path / "main.cc").write_text(
        '#include "few_model_ops.h"\n#include "tensorflow/lite/micro/kernels/fully_connected.h"\n'
        "int main() { static few::OpResolver r; TFLMRegistration fc = tflite::Register_FULLY_CONNECTED();\n"
        "  return few::RegisterOps(r) == kTfLiteOk && fc.invoke != nullptr ? 0 : 1; }\n")
    tc = build.toolchain("host")
    lib = build.library(TREE, tc, build.resolver_ops(tmp_path / "few_model_ops.h"))
    said = []
    used = build._compile_link(tc, [str(tmp_path / "main.cc")], tmp_path, TREE, lib, tmp_path / "few",
                               log=said.append)
    assert not used.whole and used.sources > lib.sources and "tensorflow/lite/micro/kernels/fully_connected.cc" in \
        used.also
    assert said[-1] == ("the kernels-only TFLM library misses tflite::Register_FULLY_CONNECTED(): linking again with "
                        "fully_connected.cc")
    # our own code's missing function is our error: no fallback, the link error stands
    (tmp_path / "ours.cc").write_text("void not_in_tflm(); int main() { not_in_tflm(); }\n")
    said.clear()
    with pytest.raises(ExportError, match="could not link"):
        build._compile_link(tc, [str(tmp_path / "ours.cc")], tmp_path, TREE, lib, tmp_path / "ours", log=said.append)
    assert not said
    assert subprocess.run([str(tmp_path / "few")], timeout=60).returncode == 0


def test_budgets_count_the_whole_firmware_once_it_is_built(digits_bundle, tmp_path):
    from firmware_export import ExportError

    # the arena (3 KB) fits in 6 KiB of RAM and the model (11 KB) in 64 KiB of flash; the firmware (8 KB of RAM
    # with its stack sized, 117 KB of flash) does not
    with pytest.raises(ExportError, match=r"the whole firmware \(as built for cortex-m4\) needs \d+ bytes of RAM"):
        export(digits_bundle, tmp_path / "ram", build=("cortex-m4",), tflm_tree=TREE, ram_kb=6)
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
    for t in outputs:
        _check_profile(report, out, t)
    kernels = {t: {r["kernel"] for r in report["build"][t]["profile"]["rows"] if r["op"] == "CONV_2D"}
               for t in outputs}
    assert kernels == {"cortex-m4": {"CMSIS-NN"}, "cortex-m7": {"CMSIS-NN"}, "cortex-m55": {"CMSIS-NN (Helium)"}}
    smallest = max(m["min_bytes"] for m in report["arena_measured"].values())
    assert smallest <= report["arena_bytes"] <= smallest * 1.02 + 16  # the largest need among the targets


def test_the_profile_names_a_fallback_to_the_reference_kernel_and_why(tmp_path):
    """A broadcast ADD (CMSIS-NN adds same-shape tensors only) and a MEAN (no CMSIS-NN kernel) on a
    Cortex-M4: the table says which kernel ran each operator, flags the fallback with its reason,
    and gives the MEAN a hint."""
    import numpy as np

    from build_model.tf import keras, tf

    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = L.Input((16, 16, 8))
    x = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    x = L.Lambda(lambda t: t + tf.constant(np.linspace(-1, 1, 16), tf.float32))(x)  # a (16,) broadcast over 16x16
    x = L.GlobalAveragePooling2D()(x)  # MEAN
    m = keras.Model(inp, L.Dense(4, activation="softmax")(x))
    model = full_int8(m, tmp_path / "broadcast.tflite", 50)
    report, out = _built(model, tmp_path, "broadcast", ("cortex-m4",))
    _check_profile(report, out, "cortex-m4")
    rows = {r["op"]: r for r in report["build"]["cortex-m4"]["profile"]["rows"]}
    assert rows["CONV_2D"]["kernel"] == "CMSIS-NN" and rows["CONV_2D"]["cmsis_nn_share"] > 0.9
    add = rows["ADD"]
    assert add["kernel"] == "reference (fallback)" and add["cmsis_nn_share"] == 0
    assert "different shapes" in add["fallback"]["reason"] and "same shape" in add["fallback"]["hint"]
    mean = rows["MEAN"]
    assert mean["kernel"] == "reference" and mean["note"] == "no CMSIS-NN kernel for MEAN"
    text = subprocess.run([sys.executable, "-m", "firmware_export", str(model), "--out", str(tmp_path / "cli"),
                           "--build", "cortex-m4", "--tflm-tree", str(TREE)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600).stdout
    assert "per-operator instructions on cortex-m4" in text and "ADD fell back to the reference kernel" in text


def test_the_keyword_spotting_shape_builds_and_the_probe_survives_tflm_aborting(tmp_path):
    """The MLPerf Tiny KWS DS-CNN shape on a Cortex-M4 (its reference model failed with 'the arena
    probe failed ... no output': TFLM aborts on an arena far too small, through a TFLITE_DCHECK on
    a persistent buffer it could not allocate, and the probe's buffered output was lost with it).
    Started from different points, the probe meets such aborts and still finds one smallest arena."""
    model = int8_ds_cnn(tmp_path / "kws.tflite")
    report, out = _built(model, tmp_path, "kws", ("cortex-m4",))
    _check_cortex_m4(report, out, model.stat().st_size)
    smallest = report["build"]["cortex-m4"]["probe"]["arena_min_bytes"]
    assert 15_000 < smallest < 40_000  # about 22.8 KB, as TFLM's own harness measures the reference model
    aborted, found = 0, set()
    for emitted in range(8192, 8192 + 8 * 2048, 2048):  # the bisection starts at a quarter of this
        p = build.probe(out, "kws", TREE, "cortex-m4", emitted)
        aborted += p["attempts_aborted"]
        found.add(p["arena_min_bytes"])
    assert aborted > 0 and found == {smallest}


def test_the_tflm_built_here_measures_and_checks_what_the_package_would(digits_bundle, tmp_path):
    """--tflm host: the arena, parity and golden outputs from the TFLM built from the tree (the path a
    model takes when the tflite-micro package crashes on it), and the firmware still passes."""
    report, out = _built(digits_bundle, tmp_path, "host-checked", ("host", "cortex-m4"))
    assert report["parity"]["tflm"] == "the tflite-micro package"
    host_out = tmp_path / "by-host"
    export(digits_bundle, host_out, build=("host", "cortex-m4"), tflm_tree=TREE,
           tflm_oracle="host")
    by_host = json.loads((host_out / "export.json").read_text())
    assert by_host["parity"]["tflm"].startswith("TFLM built here")
    assert by_host["parity"]["tflm_vs_litert_reference"]["top1_agreement"] == 1.0
    assert "diverging_ops_not_checked" in by_host["parity"]
    for t in ("host", "cortex-m4"):
        assert by_host["build"][t]["self_test"] == "5 of 5"
    # the same golden outputs from either TFLM; the arena on the host differs only by the recording allocator
    assert (host_out / "digits_golden.h").read_text() == (out / "digits_golden.h").read_text()
    assert 0.8 < by_host["arena_recorded_bytes"] / report["arena_recorded_bytes"] <= 1.0


def test_a_model_tflm_aborts_on_is_one_line_naming_the_operator_and_why(tmp_path):
    """keras.applications MobileNetV2 (alpha 0.35, 96x96, weights=None, full int8) took the export down
    with SIGABRT and not a word: the tflite-micro package aborts on it. Now that is one line, the TFLM
    built here is asked instead, and as real TFLM aborts too, the error names the operator and why."""
    from build_model.tf import keras

    keras.utils.set_random_seed(0)
    net = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=2)
    model = full_int8(net, tmp_path / "mobilenet_v2.tflite", 10)
    r = subprocess.run([sys.executable, "-m", "firmware_export", str(model), "--out", str(tmp_path / "fw"),
                        "--tflm-tree", str(TREE)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "crashed on this model (signal 6, SIGABRT): the TFLM built here" in lines[0]
    softmax = [i for i, op in enumerate(_graph_ops({"source": str(model)})) if op == "SOFTMAX"][0]
    assert lines[-1].startswith("firmware_export: error: TensorFlow Lite Micro (built here from the tree) cannot "
                                f"run this model either: op {softmax} SOFTMAX: its input scale")
    assert "calibrate on real samples" in lines[-1]
    assert not (tmp_path / "fw").exists()  # nothing half written


def test_the_smallest_build_passes_its_self_test_on_every_core(digits_bundle, tmp_path):
    """--size: TFLM and main.cc compiled for size without TFLM's error strings, the stack sized from the
    run: smaller in flash on every Cortex-M core, and its self-test still reports (and passes)."""
    cores = ("cortex-m4", "cortex-m7", "cortex-m55")
    out = tmp_path / "small"
    r = export(digits_bundle, out, build=cores, tflm_tree=TREE, size=True).report
    for t in cores:
        full, small = r["build"][t], r["build"][t]["size"]
        assert small["self_test"] == "5 of 5" and (out / small["program"]).is_file()
        assert "-DTF_LITE_STRIP_ERROR_STRINGS" in small["flags"]
        assert small["memory"]["flash_bytes"] < full["memory"]["flash_bytes"]
        assert small["memory"]["flash"]["tflm"] < full["memory"]["flash"]["tflm"]
        assert small["versus_full"]["flash"] == round(small["memory"]["flash_bytes"] / full["memory"]["flash_bytes"], 4)
        assert small["arena_min_bytes"] == full["probe"]["arena_min_bytes"]  # the strings cost no arena
        assert small["instructions_per_inference"] > 0
        # the error strings are gone from the image: TFLM's own message for a failed invoke
        image = (out / small["binary"]).read_bytes()
        assert b"failed to invoke with status" not in image and b"failed to invoke with status" in \
            (out / full["binary"]).read_bytes()


def test_our_arena_plan_is_read_by_tflm_on_every_core_and_needs_less(tmp_path):
    """The MobileNet-style net with our plan as OfflineMemoryAllocation metadata: on each Cortex-M
    core the firmware passes its self-test, and TFLM there allocates in no more arena than with its
    own greedy plan, measured by the same probe; on the M4 in less (on the M55 a Helium kernel's
    scratch buffer, which TFLM places around the plan, sets the peak either way)."""
    model = int8_mobilenet(tmp_path / "mnet.tflite")
    cores = ("cortex-m4", "cortex-m7", "cortex-m55")
    ours, _ = _built(model, tmp_path, "ours", cores)
    greedy = export(model, tmp_path / "greedy", build=cores, tflm_tree=TREE, plan="greedy").report
    plan = ours["arena_plan"]
    assert plan["used"] and not greedy["arena_plan"]["used"]
    saved = plan["greedy_bytes"] - plan["bytes"]
    arenas = {t: (ours["build"][t]["probe"]["arena_min_bytes"], greedy["build"][t]["probe"]["arena_min_bytes"])
              for t in cores}
    assert all(mine <= theirs for mine, theirs in arenas.values()), arenas
    # the export probed TFLM's own plan on each core too, to keep ours only where it is no worse
    assert {t: (v["arena_min_bytes"], v["greedy_arena_min_bytes"]) for t, v in plan["on_target"].items()} == arenas
    assert arenas["cortex-m4"][0] <= arenas["cortex-m4"][1] - saved // 2, arenas
    for t in cores:
        assert ours["build"][t]["output"] == greedy["build"][t]["output"]  # the same predictions


def test_a_plan_that_needs_more_arena_on_a_core_is_dropped_and_the_export_says_why(tmp_path, monkeypatch):
    """Should TFLM's own plan need less on a core (there, a stand-in measurement says so), the
    export is made again without ours: the firmware carries the model as it came, and says why."""
    from firmware_export import export as export_mod

    model = int8_mobilenet(tmp_path / "mnet.tflite")
    monkeypatch.setattr(export_mod, "_greedy_on_target", lambda stage, ident, original, tree, targets, *rest:
                        {t: 1024 for t in targets})
    said = []
    r = export(model, tmp_path / "fw", build=("cortex-m4",), tflm_tree=TREE, log=said.append).report
    ap = r["arena_plan"]
    assert not ap["used"] and ap["why"].startswith("on cortex-m4 TFLM needs ") and "scratch" in ap["why"]
    assert r["sha256"] == r["source_sha256"] and r["build"]["cortex-m4"]["self_test"] == "5 of 5"
    assert any(s.startswith("arena plan: ours was not used: on cortex-m4 TFLM needs") for s in said)
    assert json.loads((tmp_path / "fw" / "export.json").read_text())["arena_plan"] == ap


def test_a_model_too_big_for_the_cores_board_is_one_line_saying_by_how_much(tmp_path):
    """600 KB of int8 weights on the M55's board (512 KiB of ITCM stands in for flash): the link
    fails, and the export says which region overflowed by how much, not 'ld returned 1'."""
    from build_model.tf import keras

    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.layers.Input((1024,)), keras.layers.Dense(600)])
    model = full_int8(net, tmp_path / "big.tflite", 10)
    with pytest.raises(ExportError) as e:
        export(model, tmp_path / "fw", build=("cortex-m55",), tflm_tree=TREE)
    said = str(e.value)
    assert said.startswith("the firmware does not fit cortex-m55's memory (") and "512 KiB flash" in said
    assert re.search(r"FLASH overflowed by [\d,]+ B; build it for a core with more", said), said
    assert not (tmp_path / "fw").exists()
