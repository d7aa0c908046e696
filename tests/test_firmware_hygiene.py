"""Issue 10's codegen bugs: numbers printed right, non-classifiers printed as values, names and paths
that cannot break the C, usual folder modes."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import ROOT, int8_autoencoder, require_tool
from firmware_export import ExportError, generate

GOLDEN = ROOT / "tests" / "golden"


def test_format_milli_prints_negative_numbers_right(tmp_path):
    """The old '%d.%03d' printed -8.747 as '-8.-747'."""
    gxx = require_tool("g++")
    (tmp_path / "t.cc").write_text(
        '#include "tiny_model_config.h"\n'
        "int main() {\n  char b[24];\n"
        "  const float v[] = {-8.747f, 0.5f, -0.0004f, 12.3456f, -0.25f, 0.0f};\n"
        '  for (float x : v) printf("%s\\n", tiny::FormatMilli(b, sizeof(b), x));\n  return 0;\n}\n')
    subprocess.run([gxx, "-std=c++17", "-Wall", "-Werror", "-I", str(GOLDEN), str(tmp_path / "t.cc"), "-o",
                    str(tmp_path / "t")], check=True)
    out = subprocess.run([str(tmp_path / "t")], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["-8.747", "0.500", "0.000", "12.346", "-0.250", "0.000"]


@pytest.mark.parametrize("name, words", [
    ("int8_t", "already use"), ("std", "already use"), ("NULL", "already use"), ("main", "already use"),
    ("class", "C identifier"), ("x" * 300, "300-character identifier"), ("9lives", "does not make a C identifier"),
])
def test_names_that_would_break_the_build_are_refused(name, words):
    with pytest.raises(ExportError, match=words) as e:
        generate.sanitise(name)
    assert "\n" not in str(e.value) and len(str(e.value)) < 200


def test_text_in_comments_cannot_inject_code():
    files = generate.model_data("m", b"TFL3" * 4, "bundle\n#error injected\r\n*/ x", "0" * 64)
    for text in files.values():
        first = text.splitlines()[0]
        assert first.startswith("// Generated") and "#error injected" in first  # kept, but on the comment line
        assert not any(line.startswith("#error") for line in text.splitlines())


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    return int8_autoencoder(tmp_path_factory.mktemp("ae") / "autoencoder.tflite")


def test_an_autoencoder_exports_and_prints_values(autoencoder, tmp_path):
    from firmware_export.export import export

    out = tmp_path / "fw"
    export(autoencoder, out, compile_check=False)
    import json

    report = json.loads((out / "export.json").read_text())
    # tiny activations: the recorded total misses the planner's scratch; the old export refused this model
    assert report["arena_bytes"] >= report["arena_smallest_host_bytes"] > report["arena_recorded_bytes"]
    config = (out / "autoencoder_model_config.h").read_text()
    assert "constexpr bool kIsClassifier = false;" in config and "constexpr int kOutputSize = 640;" in config
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's 0700


def test_a_bundle_is_a_classifier(digits_bundle, tmp_path):
    from firmware_export.export import export

    export(digits_bundle, tmp_path / "fw", compile_check=False)
    assert "constexpr bool kIsClassifier = true;" in (tmp_path / "fw" / "digits_model_config.h").read_text()
