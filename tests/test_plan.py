"""Our arena plan: TFLM's lifetimes and greedy plan reproduced, a better plan where the graph allows
it, written as OfflineMemoryAllocation metadata that the real TFLM (the tflite-micro package) reads;
never emitted when TFLM refuses it or computes something else with it."""

from __future__ import annotations

import itertools
import json
import random
import struct

import numpy as np
import pytest

from conftest import int8_ds_cnn, int8_mobilenet
from contract.runtime import Model
from contract.tflite import _schema
from firmware_export import ExportError, plan, tflm
from firmware_export.cli import main as fw_main
from firmware_export.export import export


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    return int8_mobilenet(tmp_path_factory.mktemp("mnet") / "mnet.tflite").read_bytes()


def _smallest(model: bytes, x: np.ndarray) -> int:
    return tflm.smallest_arena(model, x, 1024, 1 << 20)


def _zeros(model: bytes) -> np.ndarray:
    m = Model(model, num_threads=1)
    return np.zeros(m.input.shape, m.input.dtype)


def test_tflms_greedy_plan_written_as_ours_needs_exactly_tflms_arena(mobilenet, tmp_path):
    """The lifetimes and the greedy planner as TFLM has them: its own plan, handed to it offline,
    allocates in the very arena it needs when it plans itself."""
    for model in (mobilenet, int8_ds_cnn(tmp_path / "kws.tflite").read_bytes()):
        bufs, count = plan.buffers(model)
        offsets, peak = plan.tflm_greedy(bufs)
        theirs = plan.Plan(offsets, peak, plan.lower_bound(bufs), peak, False, count)
        theirs.check(bufs)
        x = _zeros(model)
        assert _smallest(plan.with_plan(model, theirs), x) == _smallest(model, x)


def test_our_plan_packs_the_mobilenet_at_its_lower_bound_and_tflm_runs_it_the_same(mobilenet):
    ours = plan.best_plan(mobilenet)
    assert ours.exact and ours.bytes == ours.lower_bound < ours.greedy_bytes  # 6,144 B against 8,192 B
    assert ours.beats_greedy and ours.summary()["versus_greedy"] == round(ours.bytes / ours.greedy_bytes, 4)
    planned = plan.with_plan(mobilenet, ours)
    x = _zeros(mobilenet)
    # TFLM reads the plan: the arena shrinks by what the activations save
    saved = _smallest(mobilenet, x) - _smallest(planned, x)
    assert saved >= ours.greedy_bytes - ours.bytes
    rng = np.random.default_rng(0)
    xs = rng.integers(-128, 128, (8, *x.shape[1:])).astype(np.int8)
    a, b = tflm.load(mobilenet), tflm.load(planned)
    lite_a, lite_b = Model(mobilenet, num_threads=1), Model(planned, num_threads=1)
    for v in xs:
        v = v[None]
        assert np.array_equal(a.run(v), b.run(v)) and np.array_equal(lite_a.run(v), lite_b.run(v))


def test_the_plan_is_added_to_the_model_and_nothing_else_moves(mobilenet):
    ours = plan.best_plan(mobilenet)
    planned = plan.with_plan(mobilenet, ours)
    schema = _schema()
    old, new = schema.Model.GetRootAs(mobilenet, 0), schema.Model.GetRootAs(planned, 0)
    assert planned[4:8] == b"TFL3" and len(planned) % 16 == 0
    pad = (-len(mobilenet)) % 16
    assert planned[len(planned) - pad - len(mobilenet):len(planned) - pad] == mobilenet  # the original, kept
    assert new.BuffersLength() == old.BuffersLength() + 1 and new.MetadataLength() == old.MetadataLength() + 1
    def where(buf):
        return buf._tab.Vector(buf._tab.Offset(4))
    for i in range(old.BuffersLength()):  # every buffer the same bytes, at the same alignment
        o, n = old.Buffers(i), new.Buffers(i)
        assert o.DataLength() == n.DataLength()
        if o.DataLength():
            assert n.DataAsNumpy().tobytes() == o.DataAsNumpy().tobytes() and where(n) % 16 == where(o) % 16
    entry = new.Metadata(new.MetadataLength() - 1)
    assert entry.Name() == b"OfflineMemoryAllocation"
    assert where(new.Buffers(entry.Buffer())) % 16 == 0
    words = new.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    version, subgraph, n, *offsets = struct.unpack(f"<{len(words) // 4}i", words)
    count = old.Subgraphs(0).TensorsLength()
    assert (version, subgraph, n, len(offsets)) == (1, 0, count, count)
    bufs, _ = plan.buffers(mobilenet)
    assert {b.tensor: offsets[b.tensor] for b in bufs} == ours.offsets
    assert sum(o != plan.ONLINE for o in offsets) == len(bufs)  # constants left to TFLM
    with pytest.raises(ExportError, match="carries an offline memory plan of its own"):
        plan.buffers(planned)


def test_our_plan_is_exact_on_small_graphs_and_never_worse_than_greedy_on_larger_ones():
    """Random graphs: up to EXACT_UP_TO buffers the plan is the best first fit over every order (an
    optimal packing); beyond, it sits between the lower bound and TFLM's greedy plan, and beats
    greedy on some of each; every plan keeps the buffers alive together apart."""
    rng = random.Random(0)
    wins = {"small": 0, "large": 0}
    for n in [*[5] * 150, *[12] * 60]:
        bufs = []
        for t in range(n):
            first = rng.randint(0, n)
            bufs.append(plan.Buffer(t, 16 * rng.randint(1, 12), first, first + rng.randint(0, 3)))
        _, greedy = plan.tflm_greedy(bufs)
        ours = plan.pack(bufs, n)  # checked inside
        assert plan.lower_bound(bufs) <= ours.bytes <= greedy == ours.greedy_bytes
        if n <= plan.EXACT_UP_TO:
            assert ours.exact and ours.bytes == min(plan.first_fit(list(o))[1] for o in itertools.permutations(bufs))
        wins["small" if n <= plan.EXACT_UP_TO else "large"] += ours.bytes < greedy
    assert wins["small"] > 0 and wins["large"] > 0
    with pytest.raises(ExportError, match="alive together, in the same bytes"):
        a, b = plan.Buffer(0, 32, 0, 1), plan.Buffer(1, 32, 1, 2)
        plan.Plan({0: 0, 1: 16}, 48, 64, 64, False, 2).check([a, b])


def test_export_writes_our_plan_when_tflm_accepts_it(mobilenet, tmp_path):
    src = tmp_path / "mnet.tflite"
    src.write_bytes(mobilenet)
    r = export(src, tmp_path / "fw", compile_check=False).report
    ap = r["arena_plan"]
    assert ap["used"] and ap["bytes"] == ap["lower_bound_bytes"] < ap["greedy_bytes"]
    assert r["arena_bytes"] == ap["arena_bytes"] < ap["greedy_arena_bytes"]
    assert r["sha256"] != r["source_sha256"] and r["model_bytes"] > len(mobilenet)
    assert r["parity"]["tflm_vs_litert_reference"]["max_step_diff"] == 0
    data = (tmp_path / "fw" / "mnet_model_data.cc").read_text()
    assert "OfflineMemoryAllocation" in data  # said in the array's comment
    g = export(src, tmp_path / "fw_greedy", compile_check=False, plan="greedy").report
    assert not g["arena_plan"]["used"] and g["sha256"] == g["source_sha256"]
    assert g["arena_bytes"] == ap["greedy_arena_bytes"]


def test_a_straight_line_at_its_bound_keeps_tflms_plan(digits_bundle, tmp_path):
    r = export(digits_bundle, tmp_path / "fw", compile_check=False).report
    ap = r["arena_plan"]
    assert not ap["used"] and ap["greedy_bytes"] == ap["lower_bound_bytes"]
    assert ap["why"] == "TFLM's greedy plan is at the lower bound already"
    assert r["sha256"] == r["source_sha256"]


@pytest.mark.parametrize("bad", ["count", "overlap"])
def test_a_plan_tflm_refuses_or_computes_otherwise_with_is_never_emitted(digits_bundle, tmp_path, monkeypatch,
                                                                        capsys, bad):
    """A plan with the wrong number of tensors (TFLM refuses the model) or with every activation at
    offset 0 (TFLM runs it, and computes garbage): the export keeps TFLM's plan and says why."""
    real = plan.best_plan

    def broken(model, seed=0):
        p = real(model, seed)
        if bad == "count":
            return plan.Plan(p.offsets, p.bytes - 16, p.lower_bound, p.greedy_bytes, True, p.tensors + 1)
        return plan.Plan({t: 0 for t in p.offsets}, p.bytes - 16, p.lower_bound, p.greedy_bytes, True, p.tensors)
    monkeypatch.setattr(plan, "best_plan", broken)
    out = tmp_path / "fw"
    test, pre = np.load(digits_bundle / "testset.npz"), json.loads((digits_bundle / "model.json").read_text())
    pre = pre["input"]["preprocess"]  # 20 inputs as the float model takes them
    np.savez(tmp_path / "few.npz", x=(test["x"][:20] - pre["mean"]) / pre["std"], y=test["y"][:20])
    assert fw_main([str(digits_bundle), "--out", str(out), "--no-compile", "--inputs", str(tmp_path / "few.npz")]) == 0
    r = json.loads((out / "export.json").read_text())
    ap = r["arena_plan"]
    assert not ap["used"] and r["sha256"] == r["source_sha256"]
    assert ap["why"].startswith("TFLM refused it" if bad == "count" else
                                "TFLM's outputs with it differ from those with its own plan")
    err = capsys.readouterr().err
    assert f"arena plan: ours was not used: {ap['why']}; TFLM plans the arena itself" in err
    assert r["parity"]["tflm_vs_litert_reference"]["top1_agreement"] == 1.0


def test_an_unknown_arena_plan_is_refused(digits_bundle, tmp_path, capsys):
    with pytest.raises(ExportError, match="unknown arena plan 'best'"):
        export(digits_bundle, tmp_path / "fw", plan="best")
    with pytest.raises(SystemExit) as e:
        fw_main([str(digits_bundle), "--out", str(tmp_path / "fw2"), "--arena-plan", "best"])
    assert e.value.code == 2
    assert "invalid choice: 'best'" in capsys.readouterr().err
    assert not (tmp_path / "fw").exists() and not (tmp_path / "fw2").exists()
