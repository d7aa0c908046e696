// tinysense record view: drives `python -m device record --dashboard` (start, stop, a label and a
// count) and shows its live signal and the recordings per label, polled four times a second.
// Every string from the device goes in with textContent, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#3867d6", "#c77700", "#2e7d32", "#b3261e", "#7b1fa2", "#00838f"];
let filled = false;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

async function post(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                               body: JSON.stringify(body || {}), credentials: "same-origin"});
  const answer = await r.json().catch(() => ({error: "the device answered " + r.status}));
  if (!r.ok) {
    const last = document.getElementById("last");
    last.textContent = answer.error || ("the device answered " + r.status);
    last.className = "last error";
    return;
  }
  render(answer);
}

function drawSignal(signal) {
  const svg = document.getElementById("signal");
  svg.removeAttribute("hidden");  // an SVG element has no .hidden property
  const all = signal.flat();
  const low = Math.min(...all, 0), high = Math.max(...all, 1e-9);
  const span = high - low || 1;
  svg.replaceChildren(...signal.map((axis, k) => {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", "axis");
    line.dataset.axis = String(k);
    line.setAttribute("stroke", COLOURS[k % COLOURS.length]);
    line.setAttribute("points", axis.map((v, i) => i + "," + (100 - 100 * (v - low) / span).toFixed(2)).join(" "));
    return line;
  }));
}

function render(s) {
  document.getElementById("source").textContent = s.source;
  if (s.format) {
    document.getElementById("format").textContent =
      s.format.axes + " axes at " + s.format.rate_hz + " Hz, " + s.format.window + " samples a recording";
  }
  if (!filled && s.label) document.getElementById("label").value = s.label;
  filled = true;
  const rec = s.recording;
  const status = document.getElementById("status");
  if (rec) {
    const of = rec.count ? " of " + rec.count : "";
    const refused = rec.refused ? ", " + rec.refused + " refused for their rate" : "";
    status.textContent = "recording '" + rec.label + "': " + rec.taken + of + " in " + rec.seconds + " s" + refused;
    status.className = "status recording";
  } else {
    status.textContent = "idle";
    status.className = "status";
  }
  document.getElementById("start").disabled = !!rec;
  document.getElementById("stop").disabled = !rec;
  const last = document.getElementById("last");
  if (last.className !== "last error" || s.last) {
    last.textContent = s.last;
    last.className = "last";
  }

  const labels = Object.keys(s.counts).sort();
  document.getElementById("labels").replaceChildren(...labels.map((l) => { const o = el("option"); o.value = l; return o; }));
  const head = el("tr");
  head.append(el("th", "", "label"), el("th", "", "recordings"));
  document.getElementById("counts").replaceChildren(head, ...labels.map((l) => {
    const r = el("tr");
    r.dataset.label = l;
    r.append(el("td", "", l), el("td", "count", String(s.counts[l])));
    return r;
  }));

  if (s.signal && s.signal.length) drawSignal(s.signal);
  const frame = document.getElementById("frame");
  if (s.kind === "image" && s.frame && frame.dataset.version !== String(s.frame)) {
    frame.dataset.version = String(s.frame);
    frame.src = "/record/frame.jpg?v=" + s.frame;
    frame.alt = "the camera's latest frame";
    frame.hidden = false;
  }
}

async function poll() {
  const badge = document.getElementById("connection");
  try {
    const r = await fetch("/record/state", {credentials: "same-origin", cache: "no-store"});
    if (!r.ok) throw new Error(String(r.status));
    render(await r.json());
    badge.textContent = "live";
    badge.className = "badge online";
  } catch (e) {
    badge.textContent = "reconnecting";
    badge.className = "badge offline";
  }
  setTimeout(poll, 250);
}

document.getElementById("controls").addEventListener("submit", (e) => {
  e.preventDefault();
  const count = document.getElementById("count").value;
  post("/record/start", {label: document.getElementById("label").value.trim(),
                         count: count ? Number(count) : null});
});
document.getElementById("stop").addEventListener("click", () => post("/record/stop"));
poll();
