"""Resolver method names against TFLM's own micro_mutable_op_resolver.h (from ../shared's TFLM tree)."""

import re

import pytest

from contract.tflite import _names, _schema
from firmware_export.resolver import resolver_method

from conftest import ROOT

HEADER = ROOT.parent / "shared" / "third_party" / "tflm" / "tensorflow" / "lite" / "micro" / \
    "micro_mutable_op_resolver.h"


def test_every_builtin_maps_to_tflms_spelling():
    if not HEADER.is_file():
        pytest.skip("../shared/third_party/tflm is absent")
    methods = set(re.findall(r"TfLiteStatus (Add\w+)\(", HEADER.read_text()))
    assert len(methods) > 100
    by_lower = {m.lower(): m for m in methods}
    wrong = {}
    for name in _names(_schema().BuiltinOperator).values():
        ours = resolver_method(name)
        if ours not in methods and ours.lower() in by_lower:
            wrong[name] = (ours, by_lower[ours.lower()])
    assert not wrong, wrong
    assert resolver_method("UNIDIRECTIONAL_SEQUENCE_LSTM") in methods
    assert resolver_method("CONV_2D") == "AddConv2D"
