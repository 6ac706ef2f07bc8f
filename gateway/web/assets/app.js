// gridtwin live view: draws the one-line diagram from /layout.json, then follows /live
// (Server-Sent Events). No framework, no build step: this file is served as is.
"use strict";

const STEP_X = 46, STEP_Y = 58, PAD = 30, R = 8;
const FLAG = { BAD: 1, CORRECTED: 4, MISSING: 8, LATE: 32, STALE: 256 };
const svgNS = "http://www.w3.org/2000/svg";
let layout = null, selected = null, lastPayload = null, minutes = 10;

function el(name, attrs, parent) {
  const e = document.createElementNS(svgNS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
function txt(id, s) { document.getElementById(id).textContent = s; }
function fmt(x, d) { return (x === null || x === undefined || !isFinite(x)) ? "–" : Number(x).toFixed(d); }

// |V| band: the same rule as gateway.web.page.voltage_band (documented there)
function band(vm) {
  const lo = layout.limits.low, hi = layout.limits.high, m = layout.limits.margin * (hi - lo);
  if (!isFinite(vm)) return "unknown";
  if (vm < lo) return "under";
  if (vm > hi) return "over";
  if (vm < lo + m) return "low";
  if (vm > hi - m) return "high";
  return "ok";
}

function pos(b) { return [PAD + b.x * STEP_X, PAD + b.y * STEP_Y]; }

function draw() {
  const svg = document.getElementById("diagram");
  svg.setAttribute("viewBox", `0 0 ${2 * PAD + (layout.width - 1) * STEP_X} ${2 * PAD + (layout.lanes - 1) * STEP_Y + 20}`);
  const defs = el("defs", {}, svg);
  for (const [id, orient] of [["arrow", "auto"], ["arrow-rev", "auto-start-reverse"]]) {
    const m = el("marker", { id, viewBox: "0 0 10 10", refX: "14", refY: "5", markerWidth: "5",
      markerHeight: "5", orient }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a98a8" }, m);
  }
  const byId = new Map(layout.buses.map(b => [b.id, b]));
  const gBr = el("g", { id: "branches" }, svg);
  layout.branches.forEach((br, k) => {
    const [x1, y1] = pos(byId.get(br.f)), [x2, y2] = pos(byId.get(br.t));
    // tree branches run along lanes: horizontal, or straight down then across for a
    // lateral (the column under a bus is free: laterals start one step to its right)
    const d = (br.tree && y1 !== y2) ? `M${x1},${y1} L${x1},${y2} L${x2},${y2}`
      : `M${x1},${y1} L${x2},${y2}`;
    el("path", { d, class: "branch" + (br.closed ? "" : " open"), id: `branch-${k}`,
      "data-name": br.name }, gBr);
  });
  const gBus = el("g", { id: "buses" }, svg);
  for (const b of layout.buses) {
    const [x, y] = pos(b);
    const c = el("circle", { cx: x, cy: y, r: R, class: "bus", id: `bus-${b.id}`,
      "data-bus": b.id, fill: layout.colours.unknown }, gBus);
    el("title", {}, c).textContent = `bus ${b.id}`;
    c.addEventListener("click", () => selectBus(b.id));
    el("text", { x, y: y + R + 11, class: "bus-label" }, gBus).textContent = b.id;
  }
  const gM = el("g", { id: "meters" }, svg);
  const perBus = new Map();
  for (const m of layout.meters) {
    const at = m.bus !== null ? m.bus : m.branch_from;
    const b = byId.get(at);
    if (!b) continue;
    const n = perBus.get(at) || 0; perBus.set(at, n + 1);
    const [x, y] = pos(b);
    const r = el("rect", { x: x + 6 + 7 * n, y: y - 17, width: 6, height: 6, class: "meter",
      id: `meter-${m.id}`, "data-meter": m.id, "data-kind": m.kind, "data-bad-count": "0",
      "data-flags": "0" }, gM);
    el("title", {}, r).textContent = `${m.kind} meter ${m.id}`;
  }
  for (const p of layout.plants) {
    const b = byId.get(p.bus); if (!b) continue;
    const [x, y] = pos(b);
    const g = el("polygon", { points: `${x + 8},${y + 24} ${x + 14},${y + 14} ${x + 20},${y + 24}`,
      class: "pv", id: `pv-${p.name}` }, gM);
    el("title", {}, g).textContent = `PV ${p.name}`;
  }
  const lg = document.getElementById("legend");
  for (const [name, label] of [["under", `< ${layout.limits.low}`], ["low", "low"], ["ok", "in range"],
    ["high", "high"], ["over", `> ${layout.limits.high} pu`]]) {
    const s = document.createElement("span");
    s.innerHTML = `<i style="background:${layout.colours[name]}"></i>${label}`;
    lg.appendChild(s);
  }
}

function flagClass(f) {
  if (f & FLAG.BAD) return "flag-bad";
  if (f & FLAG.MISSING) return "flag-missing";
  if (f & FLAG.CORRECTED) return "flag-corrected";
  if (f & FLAG.STALE) return "flag-stale";
  if (f & FLAG.LATE) return "flag-late";
  return "";
}

function update(p) {
  lastPayload = p;
  const svg = document.getElementById("diagram");
  svg.setAttribute("data-seq", p.seq);
  layout.buses.forEach((b, i) => {
    const c = document.getElementById(`bus-${b.id}`);
    const vm = p.vm[i];
    c.setAttribute("fill", layout.colours[band(vm)]);
    c.setAttribute("data-vm", vm);
    c.setAttribute("data-band", band(vm));
    c.querySelector("title").textContent = `bus ${b.id}: ${fmt(vm, 4)} pu, ${fmt(p.va[i] * 180 / Math.PI, 2)}°`;
  });
  if (p.branch_p_mw) {
    const pmax = Math.max(1e-9, ...p.branch_p_mw.map(Math.abs));
    p.branch_p_mw.forEach((pw, k) => {
      const e = document.getElementById(`branch-${k}`);
      if (!layout.branches[k].closed) return;
      e.setAttribute("stroke-width", (1.5 + 4 * Math.abs(pw) / pmax).toFixed(2));
      e.classList.toggle("flow-fwd", pw > 1e-6);
      e.classList.toggle("flow-rev", pw < -1e-6);
      e.setAttribute("data-p-mw", pw);
    });
  }
  for (const [id, f] of Object.entries(p.meter_flags || {})) {
    const m = document.getElementById(`meter-${id}`);
    if (!m) continue;
    m.setAttribute("class", `meter ${flagClass(f)}`.trim());
    m.setAttribute("data-flags", f);
    if (f & FLAG.BAD) m.setAttribute("data-bad-count", Number(m.getAttribute("data-bad-count")) + 1);
  }
  txt("seq", p.seq);
  txt("stime", new Date(p.source_time * 1000).toISOString().replace("T", " ").slice(0, 23));
  const fail = p.chi2 !== null && p.chi2_threshold !== null && p.chi2 > p.chi2_threshold;
  const c2 = document.getElementById("chi2");
  c2.textContent = `${fmt(p.chi2, 1)} / ${fmt(p.chi2_threshold, 1)}`;
  c2.className = fail ? "warn" : "";
  const vmin = Math.min(...p.vm), vmax = Math.max(...p.vm);
  txt("vrange", `${fmt(vmin, 4)} / ${fmt(vmax, 4)}`);
  txt("lat", `${fmt(p.latency_ms.p50, 2)} / ${fmt(p.latency_ms.p99, 2)} ms`);
  txt("misses", p.deadline_misses);
  const st = document.querySelector("#streams tbody"); st.innerHTML = "";
  for (const s of p.streams || []) {
    const tr = st.insertRow();
    tr.insertCell().textContent = s.name;
    tr.insertCell().textContent = `${fmt(s.rate_hz, 1)} Hz`;
    const up = tr.insertCell(); up.textContent = s.up ? "up" : "down"; up.className = s.up ? "" : "bad";
    tr.insertCell().textContent = `lost ${s.lost}`;
  }
  const pt = document.querySelector("#plants tbody"); pt.innerHTML = "";
  for (const pl of p.plants || []) {
    const tr = pt.insertRow();
    tr.insertCell().textContent = pl.name;
    tr.insertCell().textContent = fmt(pl.forecast_mw, 3);
    tr.insertCell().textContent = fmt(pl.measured_mw, 3);
  }
  const ev = document.getElementById("events"); ev.innerHTML = "";
  for (const e of (p.events || []).slice().reverse()) {
    const li = document.createElement("li");
    li.textContent = `${new Date(e.time * 1000).toISOString().slice(11, 19)} ${e.kind} (${e.source})`;
    ev.appendChild(li);
  }
  if (selected !== null && p.seq % 5 === 0) selectBus(selected);
}

async function selectBus(id) {
  document.querySelectorAll(".bus.selected").forEach(e => e.classList.remove("selected"));
  document.getElementById(`bus-${id}`).classList.add("selected");
  selected = id;
  txt("bus-sel", id);
  const r = await fetch(`/history?bus=${id}&minutes=${minutes}`);
  if (!r.ok) { txt("trend-note", `no history (${r.status})`); return; }
  const h = await r.json();
  drawTrend(h);
}

function drawTrend(h) {
  const svg = document.getElementById("trend"); svg.innerHTML = "";
  if (!h.t.length) { txt("trend-note", "no estimates yet"); return; }
  const t0 = h.t[0], t1 = h.t[h.t.length - 1] || t0 + 1;
  const vals = h.vm.concat((h.meter_vm || []).filter(v => v !== null));
  const lo = Math.min(...vals), hi = Math.max(...vals), span = Math.max(hi - lo, 1e-4);
  const X = t => 30 + 285 * (t - t0) / Math.max(t1 - t0, 1e-9);
  const Y = v => 10 + 120 * (1 - (v - lo) / span);
  const path = (ys) => ys.map((v, i) => v === null ? "" : `${i && ys[i - 1] !== null ? "L" : "M"}${X(h.t[i]).toFixed(1)},${Y(v).toFixed(1)}`).join("");
  el("path", { d: path(h.vm), class: "vm" }, svg);
  if (h.meter_vm) el("path", { d: path(h.meter_vm), class: "meter-v" }, svg);
  el("text", { x: 2, y: 14 }, svg).textContent = fmt(hi, 4);
  el("text", { x: 2, y: 132 }, svg).textContent = fmt(lo, 4);
  el("text", { x: 30, y: 146 }, svg).textContent = `|V| pu over the last ${Math.round((t1 - t0) / 60)} min` + (h.meter_vm ? " (dashed: meter)" : "");
  const va = h.va[h.va.length - 1];
  txt("trend-note", `latest: ${fmt(h.vm[h.vm.length - 1], 4)} pu, ${fmt(va * 180 / Math.PI, 3)}° (${h.source})`);
}

function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("/live");
  es.addEventListener("state", (m) => {
    conn.textContent = "live"; conn.className = "conn-ok";
    update(JSON.parse(m.data));
  });
  es.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "conn-lost"; };
}

for (const [id, m] of [["range-10", 10], ["range-60", 60], ["range-1440", 1440]]) {
  document.getElementById(id).addEventListener("click", (ev) => {
    ev.preventDefault(); minutes = m; if (selected !== null) selectBus(selected);
  });
}

fetch("/layout.json").then(r => r.json()).then(l => {
  layout = l;
  txt("twin-name", l.name);
  draw();
  connect();
});
