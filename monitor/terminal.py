"""The monitor's terminal view: a screenful per device (latest label, a bar per class, latency, counters)."""

from __future__ import annotations

from dashboard.fleet import MAX_DEVICES, Fleet, Monitor

BAR = 30


def shown(text: str, width: int | None = None) -> str:
    """A stranger's string as it may reach a terminal: control characters escaped, cut to ``width``."""
    text = text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if width is None else text[:width]


def render(m: Monitor) -> str:
    """A screenful: latest label, a bar per class, latency against the period, counters."""
    lines = []
    if m.last:
        lines.append(f"seq {m.last.seq}  label {shown(m.last.label)}  score {m.last.score:.3f}")
        scores = {name: s for name, s in m.last.topk}
        for name in m.decoder.labels or scores:
            s = float(scores.get(name, 0.0))
            bar = "#" * round(min(max(s, 0.0), 1.0) * BAR)  # a raw score beyond [0, 1] fills or empties it
            lines.append(f"  {shown(name, 14):14s} {bar:{BAR}s} {s:5.2f}  n={m.counts.get(name, 0)}")
    else:
        lines.append("waiting for predictions...")
    s = m.summary()
    budget = f" / period {m.period * 1e3:.0f} ms" if m.period else ""
    lines.append(f"latency p50 {s['latency_ms']['p50']:.3f} ms  p99 {s['latency_ms']['p99']:.3f} ms{budget}")
    dev = s.get("device") or {}
    lines.append(f"predictions {m.predictions}  gaps {m.gaps}  decode errors {m.errors}  "
                 f"skips {m.skips}  misses {dev.get('misses', '-')}  drops {dev.get('drops', '-')}  "
                 f"reconnects {dev.get('reconnects', '-')}")
    if m.errors:
        lines.append("refused: " + ", ".join(f"{kind} {n}" for kind, n in sorted(m.decoder.refused.items())))
    if m.hellos_refused:
        lines.append(f"hellos refused (labels or model changed while live): {m.hellos_refused}")
    if "accuracy" in s:
        lines.append(f"accuracy {s['accuracy'] * 100:.2f}% over {m.labelled} labelled frames")
    return "\n".join(lines)


def render_fleet(fleet: Fleet) -> str:
    with fleet.lock:
        if not fleet.devices:
            return "waiting for devices..."
        blocks = []
        for name, m in sorted(fleet.devices.items()):
            state = " STALE" if m.stale() else ("" if m.online is None else (" online" if m.online else " OFFLINE"))
            blocks.append(f"== {shown(name)}{state}\n{render(m)}")
        if fleet.foreign:
            blocks.append(f"messages that are not ours: {fleet.foreign}")
        if fleet.overflow:
            blocks.append(f"messages from devices beyond the first {MAX_DEVICES}: {fleet.overflow}")
        return "\n".join(blocks)
