"""Per-operator cost of one inference on a Cortex-M, counted under QEMU.

The probe (baremetal/probe.cc.tmpl) gives the interpreter a MicroProfiler of ours whose events
call two marker functions around each operator's Invoke; the instruction-count plugin
(baremetal/insn_count.c) counts the instructions between them, and separately those executed
inside CMSIS-NN's functions (every ``arm_*`` symbol of the firmware). So each operator gets its
instructions and the kernel that really ran: CMSIS-NN when most of them were in CMSIS-NN, the
reference kernel when none were. An operator that CMSIS-NN has a kernel for but that ran the
reference one fell back, and is flagged with the reason and a hint. These are instructions, not
cycles.
"""

from __future__ import annotations

from math import prod
from pathlib import Path

from contract import tflite

# TFLM's kernels/cmsis_nn/*.cc and the operators each one registers
CMSIS_NN_FILES = {
    "add.cc": ("ADD",), "batch_matmul.cc": ("BATCH_MATMUL",), "conv.cc": ("CONV_2D",),
    "depthwise_conv.cc": ("DEPTHWISE_CONV_2D",), "fully_connected.cc": ("FULLY_CONNECTED",),
    "maximum_minimum.cc": ("MAXIMUM", "MINIMUM"), "mul.cc": ("MUL",), "pad.cc": ("PAD", "PADV2"),
    "pooling.cc": ("AVERAGE_POOL_2D", "MAX_POOL_2D"), "softmax.cc": ("SOFTMAX",), "svdf.cc": ("SVDF",),
    "transpose.cc": ("TRANSPOSE",), "transpose_conv.cc": ("TRANSPOSE_CONV",),
    "unidirectional_sequence_lstm.cc": ("UNIDIRECTIONAL_SEQUENCE_LSTM",),
}
CMSIS_SHARE = 0.5  # of an operator's instructions in CMSIS-NN: it ran CMSIS-NN's kernel
HINT_SHARE = 0.05  # a reference-only operator this costly gets a hint
NO_KERNEL_HINTS = {
    "MEAN": "global average pooling written as AVERAGE_POOL_2D (keras AveragePooling2D over the whole feature map, "
            "then Flatten) has a CMSIS-NN kernel",
    "RESHAPE": "a reshape only moves data when it is not in place: it should cost little",
}


def cmsis_nn_ops(tree: Path) -> set[str]:
    """The operators this TFLM tree has a CMSIS-NN kernel for."""
    kdir = Path(tree) / "tensorflow" / "lite" / "micro" / "kernels" / "cmsis_nn"
    return {op for f, ops in CMSIS_NN_FILES.items() if (kdir / f).is_file() for op in ops}


def macs(op: tflite.Op) -> int:
    """Multiply-accumulates of one operator (0 for those that do none, such as RESHAPE or ADD)."""
    ins, outs = op.input_shapes, op.output_shapes
    if not ins or not outs:
        return 0
    out = prod(outs[0]) if outs[0] else 0
    try:
        if op.name == "CONV_2D":  # filter (out_c, kh, kw, in_c)
            return out * prod(ins[1][1:])
        if op.name == "DEPTHWISE_CONV_2D":  # filter (1, kh, kw, out_c)
            return out * ins[1][1] * ins[1][2]
        if op.name == "FULLY_CONNECTED":  # weights (units, depth)
            return out * ins[1][-1]
        if op.name == "TRANSPOSE_CONV":  # (output shape, filter (out_c, kh, kw, in_c), input)
            return prod(ins[2]) * prod(ins[1][:3])
        if op.name == "BATCH_MATMUL":
            return out * ins[0][-1]
    except (IndexError, TypeError):
        return 0
    return 0


def _fallback(op: tflite.Op) -> tuple[str, str]:
    """Why CMSIS-NN handed this operator to the reference kernel, and what to change."""
    kernel_file = next(f for f, ops in CMSIS_NN_FILES.items() if op.name in ops)
    if op.name in ("ADD", "MUL") and len(op.input_shapes) >= 2 and op.input_shapes[0] != op.input_shapes[1]:
        return (f"its inputs have different shapes {op.input_shapes[0]} and {op.input_shapes[1]} (a broadcast), "
                "which CMSIS-NN's elementwise kernels do not take",
                "give both inputs the same shape in the model (tile the smaller one, or fold the constant into the "
                "layer before)")
    types = "/".join(dict.fromkeys(op.input_types))
    return (f"CMSIS-NN takes {op.name} but not with these types or options ({types})",
            f"see tensorflow/lite/micro/kernels/cmsis_nn/{kernel_file} for the cases it hands to the reference "
            "kernel")


def rows(info: tflite.ModelInfo, ops: list[tuple[int, int]], kernels: str, cmsis: set[str],
         helium: bool) -> list[dict]:
    """One row per operator: its index, type, the kernel that ran, MACs, instructions, instructions per
    MAC, share of the operators' total, and a flag when it fell back to the reference kernel.

    ``ops``: (instructions, of them in CMSIS-NN) per operator, in execution order.
    """
    total = sum(n for n, _ in ops) or 1
    out = []
    for i, (n, in_cmsis) in enumerate(ops):
        op = info.ops[i] if i < len(info.ops) else tflite.Op("?", False, (), ())
        m = macs(op)
        share = in_cmsis / n if n else 0.0
        row = {"index": i, "op": op.name, "macs": m, "instructions": n,
               "instructions_per_mac": round(n / m, 2) if m else None, "share": round(n / total, 4),
               "cmsis_nn_share": round(share, 3)}
        if kernels == "cmsis-nn" and share >= CMSIS_SHARE:
            row["kernel"] = "CMSIS-NN (Helium)" if helium else "CMSIS-NN"
        elif kernels == "cmsis-nn" and op.name in cmsis and not op.is_float:
            reason, hint = _fallback(op)
            row["kernel"] = "reference (fallback)"
            row["fallback"] = {"reason": reason, "hint": hint}
        else:
            row["kernel"] = "reference"
            if kernels == "cmsis-nn" and op.name not in cmsis:
                row["note"] = f"no CMSIS-NN kernel for {op.name}"
                if n / total >= HINT_SHARE and op.name in NO_KERNEL_HINTS:
                    row["hint"] = NO_KERNEL_HINTS[op.name]
        out.append(row)
    return out


def table(profile: dict, target: str) -> str:
    """The per-operator table as text, with the flagged operators under it."""
    head = f"{'#':>3}  {'operator':<18} {'kernel':<20} {'MACs':>11} {'instructions':>13} {'per MAC':>8} {'share':>6}"
    lines = [f"per-operator instructions on {target} (QEMU; instructions, not cycles):", head, "-" * len(head)]
    for r in profile["rows"]:
        per = f"{r['instructions_per_mac']:.2f}" if r["instructions_per_mac"] is not None else "-"
        lines.append(f"{r['index']:>3}  {r['op']:<18} {r['kernel']:<20} {r['macs']:>11,} {r['instructions']:>13,} "
                     f"{per:>8} {r['share'] * 100:>5.1f}%")
    lines.append(f"     operators {profile['operators_instructions']:,} of {profile['whole_instructions']:,} "
                 f"instructions in the inference ({profile['coverage'] * 100:.2f}%; the rest is the interpreter "
                 "between operators)")
    for r in profile["rows"]:
        if "fallback" in r:
            lines.append(f"  op {r['index']} {r['op']} fell back to the reference kernel: {r['fallback']['reason']}; "
                         f"{r['fallback']['hint']}")
        elif "hint" in r:
            lines.append(f"  op {r['index']} {r['op']}: {r['note']} ({r['share'] * 100:.0f}% of the time); "
                         f"{r['hint']}")
    return "\n".join(lines)


def chart(profiles: dict[str, dict], path: Path, name: str) -> None:
    """profile.png: instructions per operator, one panel per target, bars coloured by kernel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"CMSIS-NN": "#3867d6", "CMSIS-NN (Helium)": "#2e7d32", "reference": "#999999",
               "reference (fallback)": "#b3261e"}
    n_ops = max(len(p["rows"]) for p in profiles.values())
    fig, axes = plt.subplots(1, len(profiles), figsize=(4.5 * len(profiles) + 1.5, 0.32 * n_ops + 1.6),
                             squeeze=False, sharey=True)
    for ax, (target, p) in zip(axes[0], profiles.items()):
        rs = p["rows"]
        ax.barh(range(len(rs)), [r["instructions"] for r in rs], color=[colours[r["kernel"]] for r in rs])
        ax.set_title(f"{target}: {p['whole_instructions']:,} instructions", fontsize=9)
        ax.set_xlabel("instructions (QEMU count)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(range(n_ops))
    axes[0][0].set_yticklabels([f"{r['index']} {r['op']}" for r in next(iter(profiles.values()))["rows"]])
    axes[0][0].invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    fig.legend(handles, list(colours), loc="lower center", ncol=len(colours), fontsize=7, frameon=False)
    fig.suptitle(f"{name}: instructions per operator, one inference", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
