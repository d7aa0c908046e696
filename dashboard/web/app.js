// tinysense dashboard: one card per device, redrawn from the server-sent /events stream.
// Every device-supplied string goes in with textContent, never as HTML.
"use strict";

const cards = new Map();
const SVG = "http://www.w3.org/2000/svg";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function card(name) {
  if (cards.has(name)) return cards.get(name);
  const c = el("section", "card");
  c.dataset.device = name;
  const h = el("h2");
  h.append(el("span", "name", name), el("span", "badge unknown state", "?"));
  const now = el("div", "now");
  now.append(el("span", "label", "-"), el("span", "score", ""));
  const thumb = el("img", "thumb");
  thumb.alt = "latest frame of " + name;
  thumb.hidden = true;
  const plot = document.createElementNS(SVG, "svg");
  plot.setAttribute("class", "minute");
  plot.setAttribute("viewBox", "0 0 60 20");
  plot.setAttribute("preserveAspectRatio", "none");
  for (const kind of ["score", "ms"]) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", kind);
    plot.append(line);
  }
  const title = document.createElementNS(SVG, "title");
  title.textContent = "the last minute: top score (0 to 1) and latency (to its highest)";
  plot.append(title);
  c.append(h, thumb, now, el("div", "bars"), el("div", "strip"), plot, el("table", "latency"), el("div", "counters"));
  document.getElementById("devices").append(c);
  cards.set(name, c);
  return c;
}

function fmt(v, digits) {
  return v === null || v === undefined ? "-" : Number(v).toFixed(digits);
}

function draw(name, d) {
  const c = card(name);
  const state = c.querySelector(".state");
  // MQTT says online/offline on the status topic; a serial stream is "receiving" while messages arrive.
  // The server says "stale" when a device has been silent for ten periods, whatever its status says.
  const said = d.online !== undefined ? (d.online ? "online" : "offline") : "receiving";
  const online = !d.stale && said !== "offline";
  state.textContent = d.stale ? (d.online !== undefined ? "stale" : "silent") : said;
  state.className = "badge state " + (online ? "online" : "offline");
  const thumb = c.querySelector(".thumb");
  if (d.thumbnail && thumb.dataset.version !== String(d.thumbnail)) {
    thumb.dataset.version = String(d.thumbnail);
    thumb.src = "/thumbnail/" + encodeURIComponent(name) + ".jpg?v=" + d.thumbnail;
    thumb.hidden = false;
  }
  c.querySelector(".label").textContent = d.label === null ? "-" : d.label;
  c.querySelector(".score").textContent = d.score === null ? "" : fmt(d.score, 3);

  const bars = c.querySelector(".bars");
  bars.replaceChildren(...(d.topk || []).map(([label, score]) => {
    const row = el("div", "bar");
    const track = el("div", "track"), fill = el("div", "fill");
    fill.style.width = Math.max(0, Math.min(100, score * 100)) + "%";
    track.append(fill);
    row.append(el("span", "", label), track, el("span", "", fmt(score, 2)));
    return row;
  }));

  c.querySelector(".strip").replaceChildren(...(d.recent || []).map((p) => {
    const s = el("span", "", p.label);
    s.title = "seq " + p.seq + ", score " + fmt(p.score, 3);
    return s;
  }));

  // the last minute, newest on the right: top score on 0..1, latency scaled to its highest
  const minute = d.minute || [];
  const top = Math.max(...minute.map((m) => m[2]), 1e-9);
  const points = (scale) => minute.map((m) => (60 - m[0]) + "," + (20 - 20 * scale(m)).toFixed(2)).join(" ");
  c.querySelector(".minute .score").setAttribute("points", points((m) => Math.max(0, Math.min(1, m[1]))));
  c.querySelector(".minute .ms").setAttribute("points", points((m) => m[2] / top));

  const table = c.querySelector(".latency");
  const head = el("tr");
  head.append(el("th", "", "stage, ms"), el("th", "", "p50"), el("th", "", "p99"));
  const rows = Object.entries(d.stages_ms || {}).map(([stage, v]) => {
    const r = el("tr");
    r.append(el("td", "", stage), el("td", "", fmt(v.p50, 3)), el("td", "", fmt(v.p99, 3)));
    return r;
  });
  const total = el("tr");
  total.append(el("td", "", "total"), el("td", "", fmt(d.latency_ms.p50, 3)), el("td", "", fmt(d.latency_ms.p99, 3)));
  table.replaceChildren(head, ...rows, total);

  const dev = d.device || {};
  const items = [
    ["predictions", d.predictions], ["gaps", d.gaps], ["errors", d.errors],
    ["misses", dev.misses], ["drops", dev.drops], ["reconnects", dev.reconnects],
    ["skips", d.skips], ["restarts", d.restarts], ["duplicates", d.duplicates],
  ];
  if (d.accuracy !== undefined) items.push(["accuracy", fmt(d.accuracy * 100, 2) + "% of " + d.labelled]);
  if (d.period) items.push(["period", fmt(d.period * 1000, 0) + " ms"]);
  c.querySelector(".counters").replaceChildren(...items.map(([k, v]) => {
    const s = el("span", "counter");
    s.dataset.name = k;
    s.textContent = k + " " + (v === undefined || v === null ? "-" : v);
    return s;
  }));
}

function render(snapshot) {
  const names = Object.keys(snapshot.devices);
  document.getElementById("waiting").hidden = names.length > 0;
  document.getElementById("fleet-count").textContent = names.length + " device" + (names.length === 1 ? "" : "s");
  document.getElementById("foreign").textContent = snapshot.foreign ? snapshot.foreign + " messages not ours" : "";
  for (const name of names) draw(name, snapshot.devices[name]);
}

function connect() {
  const badge = document.getElementById("connection");
  const events = new EventSource("/events");
  events.onopen = () => { badge.textContent = "live"; badge.className = "badge online"; };
  events.onmessage = (e) => render(JSON.parse(e.data));
  events.onerror = () => { badge.textContent = "reconnecting"; badge.className = "badge offline"; };
}

connect();
