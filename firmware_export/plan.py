"""An arena plan of our own: where each activation tensor lives in TFLM's arena, written into the
model's ``OfflineMemoryAllocation`` metadata, which TFLM's allocator reads.

TFLM plans the arena at ``AllocateTensors``: every tensor that is not a constant lives from the
operator that writes it to the last one that reads it (graph inputs from the start, graph outputs
to the end), and its greedy planner places the largest first, each at the lowest offset clear of
the buffers alive at the same time. That is often optimal for a straight line of layers and not
always: a small tensor placed early can keep a large one off the bottom. Here the same lifetimes
(tensorflow/lite/micro/micro_allocation_info.cc) are packed by first fit in many orders (every
order for a small graph, so the plan is exact there; sorted orders and a seeded local search
beyond), against the lower bound no plan can beat: the most bytes alive at any one time.
Kernels' scratch buffers are not in the model; TFLM still places them, around the plan.
"""

from __future__ import annotations

import itertools
import random
import struct
from dataclasses import dataclass

import flatbuffers
import numpy as np

from contract.tflite import _schema

from . import ExportError

METADATA_NAME = "OfflineMemoryAllocation"
ONLINE = -1  # TFLM's kOnlinePlannedBuffer: the tensor is planned by TFLM itself
ALIGN = 16  # MicroArenaBufferAlignment()
MODEL_FIELDS = 10  # the Model table's fields in this schema: version, then offsets only
EXACT_UP_TO = 8  # buffers: every placement order is tried
SEARCH_STEPS = 4000  # local-search moves beyond that
DTYPE_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1, "INT16": 2,
               "INT8": 1, "FLOAT64": 8, "UINT32": 4, "UINT16": 2, "INT4": 1}


@dataclass(frozen=True)
class Buffer:
    """One tensor TFLM plans: its index in the subgraph, bytes (aligned to 16) and the allocation
    scopes it lives in, inclusive (0 is the graph's inputs, operator i is scope i + 1)."""

    tensor: int
    size: int
    first: int
    last: int

    def overlaps(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class Plan:
    """Offsets (bytes) by tensor index, the arena they need, and how they were found."""

    offsets: dict[int, int]
    bytes: int
    lower_bound: int
    greedy_bytes: int
    exact: bool
    tensors: int  # of the subgraph, planned or not

    @property
    def beats_greedy(self) -> bool:
        return self.bytes < self.greedy_bytes

    def check(self, bufs: list[Buffer]) -> None:
        """Raise unless every buffer has an aligned offset inside the plan's bytes and no two that
        live at the same time share a byte."""
        for b in bufs:
            at = self.offsets.get(b.tensor)
            if at is None or at % ALIGN or at < 0 or at + b.size > self.bytes:
                raise ExportError(f"the arena plan places tensor {b.tensor} at {at}: a bug in the planner")
        for x, y in itertools.combinations(bufs, 2):
            ox, oy = self.offsets[x.tensor], self.offsets[y.tensor]
            if x.overlaps(y) and ox < oy + y.size and oy < ox + x.size:
                raise ExportError(f"the arena plan puts tensors {x.tensor} and {y.tensor}, alive together, in the "
                                  "same bytes: a bug in the planner")

    def metadata(self) -> bytes:
        """The OfflineMemoryAllocation buffer: version 1, subgraph 0, the count, one int32 offset per
        tensor of the subgraph (-1 for those TFLM plans itself: constants, and any not in the plan)."""
        offsets = [self.offsets.get(t, ONLINE) for t in range(self.tensors)]
        return struct.pack(f"<3i{len(offsets)}i", 1, 0, len(offsets), *offsets)

    def summary(self) -> dict:
        return {"bytes": self.bytes, "greedy_bytes": self.greedy_bytes, "lower_bound_bytes": self.lower_bound,
                "planned_tensors": len(self.offsets), "exact": self.exact,
                "versus_greedy": round(self.bytes / self.greedy_bytes, 4) if self.greedy_bytes else None}


def buffers(model: bytes) -> tuple[list[Buffer], int]:
    """The tensors TFLM's planner places for the main subgraph, with TFLM's lifetimes, and the
    subgraph's tensor count. Raises ExportError for a graph this plan does not cover."""
    schema = _schema()
    m = schema.Model.GetRootAs(model, 0)
    if m.SubgraphsLength() != 1:
        raise ExportError(f"the model has {m.SubgraphsLength()} subgraphs (control flow): TFLM plans it itself")
    for i in range(m.MetadataLength()):
        if (m.Metadata(i).Name() or b"").decode() == METADATA_NAME:
            raise ExportError("the model carries an offline memory plan of its own: kept as it is")
    if any(m.Buffers(i).Offset() > 1 for i in range(m.BuffersLength())):
        raise ExportError("the model keeps its weights outside the flatbuffer (buffer offsets): TFLM plans it itself")
    g = m.Subgraphs(0)
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for t in g.InputsAsNumpy() if g.InputsLength() else []:
        first.setdefault(int(t), 0)
        last[int(t)] = 0
    n_ops = g.OperatorsLength()
    for i in range(n_ops):
        op, scope = g.Operators(i), i + 1
        outs = [int(t) for t in op.OutputsAsNumpy() if t >= 0] if op.OutputsLength() else []
        ins = [int(t) for t in op.InputsAsNumpy() if t >= 0] if op.InputsLength() else []
        for t in outs:
            first.setdefault(t, scope)
        for t in ins + outs:
            last[t] = scope
    for t in g.OutputsAsNumpy() if g.OutputsLength() else []:
        first.setdefault(int(t), n_ops)
        last[int(t)] = n_ops
    out = []
    for t in sorted(first):
        tensor = g.Tensors(t)
        buf = m.Buffers(tensor.Buffer()) if tensor.Buffer() < m.BuffersLength() else None
        if (buf is not None and buf.DataLength()) or tensor.IsVariable():
            continue  # a constant, or a variable TFLM keeps apart
        name = types.get(tensor.Type(), "?")
        if name not in DTYPE_BYTES:
            raise ExportError(f"tensor {t} has type {name}: its size in the arena is not known here")
        shape = tensor.ShapeAsNumpy() if tensor.ShapeLength() else np.array([], int)
        if (shape < 0).any():
            raise ExportError(f"tensor {t} has a dynamic shape {shape.tolist()}: TFLM plans it itself")
        size = int(np.prod(shape, dtype=np.int64)) * DTYPE_BYTES[name]  # TFLM counts INT4 a byte each too
        if size:
            out.append(Buffer(t, -(-size // ALIGN) * ALIGN, first[t], last[t]))
    return out, g.TensorsLength()


def first_fit(order: list[Buffer], limit: int | None = None) -> tuple[dict[int, int], int]:
    """Each buffer in turn at the lowest offset clear of those placed that live at the same time;
    the offsets and the bytes they need. Stops early (bytes > limit) once past ``limit``."""
    placed: list[tuple[int, Buffer]] = []
    offsets, peak = {}, 0
    for b in order:
        taken = sorted((o, o + p.size) for o, p in placed if p.overlaps(b))
        at = 0
        for lo, hi in taken:
            if lo - at >= b.size:
                break
            at = max(at, hi)
        offsets[b.tensor] = at
        placed.append((at, b))
        peak = max(peak, at + b.size)
        if limit is not None and peak > limit:
            return offsets, peak
    return offsets, peak


def tflm_greedy(bufs: list[Buffer]) -> tuple[dict[int, int], int]:
    """TFLM's own greedy plan (greedy_memory_planner.cc) of the activations: the buffers go in from
    the tail of its list, are bubble-sorted largest first (ties keep that order), then placed by
    first fit. Kernels' scratch buffers, which TFLM plans beside them, are not in the model."""
    order = list(reversed(bufs))
    order.sort(key=lambda b: -b.size)  # stable, as TFLM's bubble sort is
    return first_fit(order)


def lower_bound(bufs: list[Buffer]) -> int:
    """The most bytes alive at one time: no plan needs less."""
    scopes = {s for b in bufs for s in (b.first, b.last)}
    return max((sum(b.size for b in bufs if b.first <= s <= b.last) for s in scopes), default=0)


def best_plan(model: bytes, seed: int = 0) -> Plan:
    """Our plan for the model's activations (see ``pack``)."""
    bufs, count = buffers(model)
    return pack(bufs, count, seed)


def pack(bufs: list[Buffer], count: int, seed: int = 0) -> Plan:
    """The best placement found: exact (every order) up to EXACT_UP_TO buffers, else the best of
    sorted orders improved by a seeded local search; never worse than TFLM's greedy, and checked."""
    greedy, g_bytes = tflm_greedy(bufs)
    bound = lower_bound(bufs)
    best, best_bytes, exact = greedy, g_bytes, False
    if best_bytes > bound and len(bufs) <= EXACT_UP_TO:
        for order in itertools.permutations(bufs):
            offs, peak = first_fit(list(order), best_bytes - 1)
            if peak < best_bytes:
                best, best_bytes = offs, peak
                if peak == bound:
                    break
        exact = True  # every order tried: first fit over all orders reaches an optimal packing
    elif best_bytes > bound:
        keys = [lambda b: (-b.size, b.first), lambda b: (-(b.last - b.first), -b.size),
                lambda b: (-b.size * (b.last - b.first + 1), b.first), lambda b: (b.first, -b.size),
                lambda b: (-b.last, -b.size)]
        orders = [sorted(bufs, key=k) for k in keys]
        for order in orders:
            offs, peak = first_fit(order)
            if peak < best_bytes:
                best, best_bytes = offs, peak
        rng = random.Random(seed)
        order = min(orders, key=lambda o: first_fit(o)[1])
        current = first_fit(order)[1]
        for _ in range(SEARCH_STEPS):
            if best_bytes == bound:
                break
            i, j = rng.randrange(len(order)), rng.randrange(len(order))
            trial = order[:]
            trial.insert(j, trial.pop(i))
            offs, peak = first_fit(trial, current)
            if peak <= current:
                order, current = trial, peak
                if peak < best_bytes:
                    best, best_bytes = offs, peak
    exact = exact or best_bytes == bound
    plan = Plan(best, best_bytes, bound, g_bytes, exact, count)
    plan.check(bufs)
    return plan


def with_plan(model: bytes, plan: Plan) -> bytes:
    """The model with ``plan`` as its OfflineMemoryAllocation metadata. The original bytes are kept
    as they are, at the end (padded to 16, so every buffer keeps its alignment); in front of them a
    new root table points at the original subgraphs, operator codes and buffers, plus one buffer and
    one metadata entry for the plan."""
    schema = _schema()
    pad = (-len(model)) % ALIGN
    old = bytes(model) + b"\0" * pad
    m = schema.Model.GetRootAs(old, 0)
    tab = m._tab
    b = flatbuffers.Builder(0)
    b.Bytes, b.head, b.minalign = bytearray(old), 0, ALIGN
    end = len(old)

    def target(field_pos: int) -> int:  # an offset field's object, as the builder counts (from the end)
        return end - (field_pos + struct.unpack_from("<I", old, field_pos)[0])

    def vector(slot: int) -> list[int]:  # the objects an offset vector of the root table points at
        o = tab.Offset(4 + 2 * slot)
        if not o:
            return []
        start, n = tab.Vector(o), tab.VectorLen(o)
        return [target(start + 4 * i) for i in range(n)]

    name = b.CreateString(METADATA_NAME)
    data = plan.metadata()
    b.StartVector(1, len(data), ALIGN)
    b.head -= len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    data_vec = b.EndVector()
    schema.BufferStart(b)
    schema.BufferAddData(b, data_vec)
    plan_buffer = schema.BufferEnd(b)
    buffers = [*vector(4), plan_buffer]
    schema.MetadataStart(b)
    schema.MetadataAddName(b, name)
    schema.MetadataAddBuffer(b, len(buffers) - 1)
    entry = schema.MetadataEnd(b)
    metadata = [*vector(6), entry]
    vectors = {}
    for slot, items in ((4, buffers), (6, metadata)):
        b.StartVector(4, len(items), 4)
        for off in reversed(items):
            b.PrependUOffsetTRelative(off)
        vectors[slot] = b.EndVector()
    slots = (struct.unpack_from("<H", old, tab.Pos - struct.unpack_from("<i", old, tab.Pos)[0])[0] - 4) // 2
    if slots > MODEL_FIELDS:
        raise ExportError(f"the model's root table has {slots} fields, this schema knows {MODEL_FIELDS}: "
                          "TFLM plans it itself")
    b.StartObject(max(slots, 7))
    for slot in range(slots):
        o = tab.Offset(4 + 2 * slot)
        if slot in vectors or not o:
            continue
        if slot == 0:
            b.PrependUint32Slot(0, struct.unpack_from("<I", old, tab.Pos + o)[0], 0)
        else:
            b.PrependUOffsetTRelativeSlot(slot, target(tab.Pos + o), 0)
    for slot, vec in vectors.items():
        b.PrependUOffsetTRelativeSlot(slot, vec, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output())
