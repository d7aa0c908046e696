"""The monitor's terminal view: a screenful per device (latest label, a bar per class, latency, counters)."""

from __future__ import annotations

from dashboard.fleet import Fleet, Monitor

BAR = 30


def render(m: Monitor) -> str:
    """A screenful: latest label, a bar per class, latency against the period, counters."""
    lines = []
    if m.last:
        lines.append(f"seq {m.last.seq}  label {m.last.label}  score {m.last.score:.3f}")
        scores = {name: s for name, s in m.last.topk}
        for name in m.decoder.labels or scores:
            s = float(scores.get(name, 0.0))
            lines.append(f"  {name[:14]:14s} {'#' * int(round(s * BAR)):{BAR}s} {s:5.2f}  n={m.counts.get(name, 0)}")
    else:
        lines.append("waiting for predictions...")
    s = m.summary()
    budget = f" / period {m.period * 1e3:.0f} ms" if m.period else ""
    lines.append(f"latency p50 {s['latency_ms']['p50']:.3f} ms  p99 {s['latency_ms']['p99']:.3f} ms{budget}")
    dev = s.get("device") or {}
    lines.append(f"predictions {m.predictions}  gaps {m.gaps}  decode errors {m.errors}  "
                 f"skips {m.skips}  misses {dev.get('misses', '-')}  drops {dev.get('drops', '-')}  "
                 f"reconnects {dev.get('reconnects', '-')}")
    if "accuracy" in s:
        lines.append(f"accuracy {s['accuracy'] * 100:.2f}% over {m.labelled} labelled frames")
    return "\n".join(lines)


def render_fleet(fleet: Fleet) -> str:
    with fleet.lock:
        if not fleet.devices:
            return "waiting for devices..."
        blocks = []
        for name, m in sorted(fleet.devices.items()):
            state = "" if m.online is None else (" online" if m.online else " OFFLINE")
            blocks.append(f"== {name}{state}\n{render(m)}")
        if fleet.foreign:
            blocks.append(f"messages that are not ours: {fleet.foreign}")
        return "\n".join(blocks)
