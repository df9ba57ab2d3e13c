// hashplane dashboard: history from the API, then live updates from its event stream.
"use strict";

const KEY_ITEM = "hashplane.apiKey";
const STREAM_TOPICS = ["metrics.energy", "alerts", "commands.asic", "commands.gpu",
  "commands.site", "commands.compute", "commands.acks", "gpu.telemetry"];
const ENERGY_POINTS = 3600;  // points kept per live series
const layout = (extra) => Object.assign({
  margin: { l: 50, r: 10, t: 10, b: 35 }, showlegend: true,
  legend: { orientation: "h", y: -0.2 }, xaxis: { type: "date" },
}, extra || {});
const config = { displaylogo: false, responsive: true };

// What the page has drawn, for people and for the browser test.
const state = { rendered: {}, commands: new Map(), acks: new Map(), gpus: new Map(), alerts: [] };
window.hashplane = state;

function key() { return localStorage.getItem(KEY_ITEM) || ""; }

async function api(path) {
  const res = await fetch(path, { headers: { "Authorization": "Bearer " + key() } });
  if (res.status === 401 || res.status === 403) throw Object.assign(new Error("key"), { auth: true });
  if (!res.ok) throw new Error(path + ": " + res.status + " " + (await res.text()));
  return res.json();
}

function mark(chart, points) {
  state.rendered[chart] = (state.rendered[chart] || 0) + points;
  document.body.dataset[chart] = String(state.rendered[chart]);
}

// -- charts ---------------------------------------------------------------------------------

function drawEnergy(points) {
  const t = points.map(p => p.ts);
  Plotly.react("chart-frequency", [{ x: t, y: points.map(p => p.frequency_hz), name: "Hz",
    mode: "lines", line: { color: "#2b6cb0" } }], layout({ showlegend: false }), config);
  const s = (f, name, color, dash) => ({ x: t, y: points.map(f), name, mode: "lines",
    line: { color, dash: dash || "solid" } });
  Plotly.react("chart-energy", [
    s(p => p.supply_kw, "supply", "#1f9d55"), s(p => p.available_kw, "available", "#68d391", "dot"),
    s(p => p.load_kw, "load", "#c05621"), s(p => p.target_load_kw, "target", "#805ad5", "dash"),
    s(p => p.headroom_kw, "headroom", "#2b6cb0"),
  ], layout(), config);
  mark("frequency", points.filter(p => p.frequency_hz != null).length);
  mark("energy", points.length);
}

function liveEnergy(e) {
  const x = [[e.ts]];
  if (e.frequency_hz != null) {
    Plotly.extendTraces("chart-frequency", { x, y: [[e.frequency_hz]] }, [0], ENERGY_POINTS);
    mark("frequency", 1);
  }
  Plotly.extendTraces("chart-energy", {
    x: [[e.ts], [e.ts], [e.ts], [e.ts], [e.ts]],
    y: [[e.supply_kw], [e.available_kw], [e.load_kw], [e.target_load_kw], [e.headroom_kw]],
  }, [0, 1, 2, 3, 4], ENERGY_POINTS);
  mark("energy", 1);
}

function drawHashrate(h) {
  const pts = (h.series[0] || { points: [] }).points;
  Plotly.react("chart-hashrate", [{ x: pts.map(p => p.bucket), y: pts.map(p => p.value),
    name: "TH/s", mode: "lines+markers", line: { color: "#d69e2e" } }],
    layout({ showlegend: false }), config);
  mark("hashrate", pts.length);
}

function drawShares(w) {
  const ws = w.workers;
  const x = ws.map(v => v.worker);
  Plotly.react("chart-shares", [
    { x, y: ws.map(v => v.accepted_pct), name: "accepted", type: "bar", marker: { color: "#1f9d55" } },
    { x, y: ws.map(v => v.rejected_pct), name: "rejected", type: "bar", marker: { color: "#c53030" } },
    { x, y: ws.map(v => v.stale_pct), name: "stale", type: "bar", marker: { color: "#a0aec0" } },
  ], layout({ barmode: "stack", xaxis: { type: "category" }, yaxis: { range: [0, 100] } }), config);
  mark("shares", ws.length);
}

function drawGpus() {
  const gs = [...state.gpus.values()].sort((a, b) => a.device_id.localeCompare(b.device_id));
  Plotly.react("chart-gpu", [{ x: gs.map(g => g.device_id), y: gs.map(g => g.temp_c),
    type: "bar", name: "°C", marker: { color: gs.map(g => g.temp_c >= 85 ? "#c53030" : "#3182ce") } }],
    layout({ showlegend: false, xaxis: { type: "category" }, yaxis: { range: [0, 100] } }), config);
  mark("gpu", gs.length ? 1 : 0);
}

const ACK_COLORS = { applied: "#1f9d55", rejected: "#c05621", failed: "#c53030",
  expired: "#718096", pending: "#3182ce" };

function drawCommands() {
  const cs = [...state.commands.values()];
  const byStatus = {};
  for (const c of cs) {
    const st = c.ack ? c.ack.status : "pending";
    (byStatus[st] = byStatus[st] || []).push(c);
  }
  const traces = Object.entries(byStatus).map(([st, list]) => ({
    x: list.map(c => c.ts), y: list.map(c => c.kind), name: st, mode: "markers", type: "scatter",
    marker: { color: ACK_COLORS[st] || "#000", size: 7 },
    text: list.map(c => c.device_id + (c.ack ? " · " + c.ack.detail : "")),
  }));
  Plotly.react("chart-commands", traces, layout({ yaxis: { type: "category" },
    margin: { l: 130, r: 10, t: 10, b: 35 } }), config);
  mark("commands", cs.length ? 1 : 0);
}

function drawAlerts() {
  const body = document.querySelector("#alerts tbody");
  body.replaceChildren(...state.alerts.slice(0, 50).map(a => {
    const tr = document.createElement("tr");
    tr.className = a.kind === "AlertResolved" ? "resolved" : a.severity;
    for (const v of [a.ts, a.severity, a.rule, a.device_id, a.message,
      a.kind === "AlertResolved" ? "resolved" : "firing"]) {
      const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    }
    return tr;
  }));
  mark("alerts", 1);
}

// -- money, uplink, tuner, fleet --------------------------------------------------------------

function cells(tr, values, numeric) {
  values.forEach((v, i) => {
    const td = document.createElement("td");
    td.textContent = v == null ? "–" : String(v);
    if (numeric && numeric.includes(i)) td.className = "num";
    tr.appendChild(td);
  });
  return tr;
}

const fix = (v, n) => v == null ? null : Number(v).toFixed(n);

function drawProfit(p) {
  const ws = [...p.windows].reverse();  // oldest first
  const x = ws.map(w => w.window_start);
  document.getElementById("currency").textContent = (ws[0] && ws[0].currency) || "–";
  document.getElementById("profit-total").textContent =
    `revenue ${fix(p.total_revenue, 2)} · power ${fix(p.total_power_cost, 2)} · ` +
    `profit ${fix(p.total_profit, 2)} over ${ws.length} windows`;
  Plotly.react("chart-profit", [
    { x, y: ws.map(w => w.profit), name: "profit", type: "bar",
      marker: { color: ws.map(w => w.profit >= 0 ? "#1f9d55" : "#c53030") } },
    { x, y: ws.map(w => w.revenue), name: "revenue", mode: "lines", line: { color: "#d69e2e" } },
    { x, y: ws.map(w => w.power_cost), name: "power cost", mode: "lines", line: { color: "#c05621" } },
  ], layout(), config);
  mark("profit", ws.length);
}

// Breakeven of each model from the fleet's own readings: hashprice x 1e6 / (24 x J/TH).
function breakevens(asics, hashprice) {
  const by = {};
  for (const a of asics) {
    if (a.state !== "running" || !(a.hashrate_ths > 0)) continue;
    (by[a.model || "?"] = by[a.model || "?"] || []).push(a.power_w / a.hashrate_ths);
  }
  return Object.entries(by).map(([model, js]) => {
    js.sort((a, b) => a - b);
    const j = js[Math.floor(js.length / 2)];
    return { model, j, breakeven: hashprice * 1e6 / (24 * j) };
  });
}

function drawPrice(pr, asics) {
  const series = (market, color) => {
    const x = [], y = [];
    for (const i of pr.intervals.filter(i => i.market === market)) {
      if (x.length && x[x.length - 1] !== i.start) { x.push(i.start); y.push(null); }
      x.push(i.start, i.end); y.push(i.price_per_mwh, i.price_per_mwh);
    }
    return { x, y, name: market.replace("_", "-"), mode: "lines", line: { color, shape: "hv" } };
  };
  const traces = [series("day_ahead", "#2b6cb0"), series("real_time", "#c53030")];
  const xs = pr.intervals.flatMap(i => [i.start, i.end]).sort();
  const span = xs.length ? [xs[0], xs[xs.length - 1]] : [];
  const bes = pr.hashprice_per_th_day != null ? breakevens(asics, pr.hashprice_per_th_day) : [];
  for (const b of bes) {
    traces.push({ x: span, y: [b.breakeven, b.breakeven], mode: "lines",
      name: `${b.model} ${b.j.toFixed(1)} J/TH`, line: { dash: "dot", width: 1 } });
  }
  Plotly.react("chart-price", traces, layout(), config);
  document.getElementById("price-now").textContent =
    (pr.price_now == null ? "no price in force" : `now ${pr.price_now.toFixed(2)}/MWh`) +
    ` · hashprice ${pr.hashprice_per_th_day == null ? "–" : pr.hashprice_per_th_day}/TH/s/day` +
    (pr.max_j_per_th == null ? " · no efficiency limit" :
      ` · limit ${pr.max_j_per_th.toFixed(1)} J/TH (less efficient miners sleep)`);
  mark("price", pr.intervals.length);
}

function drawUplink(u) {
  const rows = [
    ["uplink", u.up == null ? "never probed" : (u.up ? "up" : "DOWN"), u.up ? "up" : "down"],
    ["target", u.target || "–"], ["latency", u.latency_ms == null ? "–" : `${u.latency_ms.toFixed(0)} ms`],
    ["last probe", u.last_probe || "–"], ["detail", u.detail || "–"],
    ["local pool", `${u.local_pool_accepted_per_min.toFixed(1)} accepted/min from ${u.local_pool_workers} workers`],
  ];
  document.querySelector("#uplink tbody").replaceChildren(...rows.map(([k, v, cls]) => {
    const tr = cells(document.createElement("tr"), [k, v]);
    if (cls) tr.lastChild.className = cls;
    return tr;
  }));
  mark("uplink", 1);
}

function drawTuner(trials, gpus) {
  document.querySelector("#tuner tbody").replaceChildren(...trials.trials.slice(0, 20).map(t =>
    cells(document.createElement("tr"), [t.ts, t.device_id, t.trial, fix(t.power_limit_w, 0),
      t.mem_offset_mhz, t.intensity, fix(t.objective, 2),
      t.profit_per_day == null ? null : fix(t.profit_per_day, 3), t.objective_kind,
      t.outcome], [2, 3, 4, 5, 6, 7])));
  document.querySelector("#profiles tbody").replaceChildren(...gpus.gpus.map(g => {
    const p = g.profile || {};
    return cells(document.createElement("tr"), [g.device_id, g.card, p.profile, fix(p.power_limit_w, 0),
      p.core_offset_mhz, p.mem_offset_mhz, p.applied_at], [3, 4, 5]);
  }));
  mark("tuner", trials.trials.length + gpus.gpus.length);
}

const fleet = { rows: [], key: "device_id", dir: 1 };

function drawFleet() {
  const q = document.getElementById("fleet-filter").value.trim().toLowerCase();
  const words = q ? q.split(/\s+/) : [];
  const rows = fleet.rows.filter(a => words.every(w =>
    [a.device_id, a.firmware, a.model, a.state, a.last_command, a.last_ack]
      .some(v => v && String(v).toLowerCase().includes(w))));
  const k = fleet.key;
  rows.sort((a, b) => {
    const x = a[k], y = b[k];
    if (x == null && y == null) return 0;
    if (x == null) return 1;
    if (y == null) return -1;
    return (typeof x === "number" ? x - y : String(x).localeCompare(String(y))) * fleet.dir;
  });
  document.querySelector("#fleet tbody").replaceChildren(...rows.slice(0, 500).map(a => {
    const tr = cells(document.createElement("tr"), [a.device_id, a.firmware, a.model, a.state,
      a.cycles, a.last_command, a.last_ack, fix(a.power_kw, 2), fix(a.hashrate_ths, 1),
      fix(a.j_per_th, 1)], [4, 7, 8, 9]);
    tr.className = a.state;
    return tr;
  }));
  for (const th of document.querySelectorAll("#fleet th[data-key]")) {
    th.className = th.dataset.key === k ? (fleet.dir > 0 ? "asc" : "desc") : "";
  }
  document.getElementById("fleet-count").textContent =
    `${rows.length} of ${fleet.rows.length} ASICs` + (rows.length > 500 ? " (first 500 shown)" : "");
  document.body.dataset.fleetShown = String(rows.length);
  mark("fleet", 1);
}

function setFleet(asics) {
  fleet.rows = asics.map(a => Object.assign({}, a, { power_kw: a.power_w / 1000,
    j_per_th: a.state === "running" && a.hashrate_ths > 0 ? a.power_w / a.hashrate_ths : null }));
  drawFleet();
}

document.querySelectorAll("#fleet th[data-key]").forEach(th => th.addEventListener("click", () => {
  fleet.dir = fleet.key === th.dataset.key ? -fleet.dir : 1;
  fleet.key = th.dataset.key;
  drawFleet();
}));
document.getElementById("fleet-filter").addEventListener("input", drawFleet);

async function loadMoney() {
  const since = encodeURIComponent(new Date(Date.now() - 6 * 3600 * 1000).toISOString());
  const until = encodeURIComponent(new Date(Date.now() + 24 * 3600 * 1000).toISOString());
  const [profit, prices, asics, uplink, trials, gpus] = await Promise.all([
    api("/v1/profit?scope=site&limit=500&since=" + since),
    api("/v1/prices?since=" + since + "&until=" + until),
    api("/v1/asics?limit=1000"), api("/v1/uplink"),
    api("/v1/tuner/trials?limit=20"), api("/v1/gpus"),
  ]);
  drawProfit(profit);
  drawPrice(prices, asics.asics);
  setFleet(asics.asics);
  drawUplink(uplink);
  drawTuner(trials, gpus);
}

// -- loading --------------------------------------------------------------------------------

async function loadHistory() {
  const since = new Date(Date.now() - 30 * 60 * 1000).toISOString();
  const [fleet, energy, hashrate, workers, gpus, commands, alerts] = await Promise.all([
    api("/v1/fleet"),
    api("/v1/energy?bucket_s=2&since=" + encodeURIComponent(since)),
    api("/v1/history?table=asic_telemetry&field=hashrate_ths&agg=sum&by=fleet&bucket_s=10&since="
      + encodeURIComponent(since)),
    api("/v1/workers"),
    api("/v1/gpus"),
    api("/v1/commands?limit=500&since=" + encodeURIComponent(since)),
    api("/v1/alerts?limit=50"),
  ]);
  summary(fleet);
  drawEnergy(energy.history);
  drawHashrate(hashrate);
  drawShares(workers);
  for (const g of gpus.gpus) state.gpus.set(g.device_id, g);
  drawGpus();
  for (const c of commands.commands) state.commands.set(c.command_id, c);
  drawCommands();
  state.alerts = alerts.history;
  drawAlerts();
  await loadMoney();
}

function summary(f) {
  document.getElementById("site").textContent = f.site;
  const asics = Object.entries(f.asics).map(([k, v]) => v + " " + k).join(", ") || "no ASICs";
  const firing = Object.values(f.alerts_firing).reduce((a, b) => a + b, 0);
  document.getElementById("summary").textContent =
    `${asics} · ${f.hashrate_ths.toFixed(1)} TH/s · ${f.asic_power_kw.toFixed(1)} kW · ` +
    `${f.gpus} GPUs · ${firing} alerts firing`;
}

async function refresh() {
  try {
    const since = new Date(Date.now() - 30 * 60 * 1000).toISOString();
    const [fleet, hashrate, workers] = await Promise.all([api("/v1/fleet"),
      api("/v1/history?table=asic_telemetry&field=hashrate_ths&agg=sum&by=fleet&bucket_s=10&since="
        + encodeURIComponent(since)), api("/v1/workers")]);
    summary(fleet); drawHashrate(hashrate); drawShares(workers);
    await loadMoney();
  } catch (e) { console.warn("refresh", e); }
}

// -- live stream (fetch, so the key goes in a header, not the URL) ---------------------------

function onEvent(topic, e) {
  if (topic === "metrics.energy") liveEnergy(e);
  else if (topic === "gpu.telemetry") { state.gpus.set(e.device_id, e); state.gpuDirty = true; }
  else if (topic === "alerts") { state.alerts.unshift(e); drawAlerts(); }
  else if (topic === "commands.acks") {
    // topics are not ordered with each other: an ack may come before its command
    const ack = { status: e.status, detail: e.detail, latency_ms: e.latency_ms };
    const c = state.commands.get(e.command_id);
    if (c) { c.ack = ack; state.cmdDirty = true; } else state.acks.set(e.command_id, ack);
  } else if (topic.startsWith("commands.")) {
    state.commands.set(e.command_id, { command_id: e.command_id, kind: e.kind, ts: e.ts,
      device_id: e.device_id, ack: state.acks.get(e.command_id) || null });
    state.acks.delete(e.command_id);
    state.cmdDirty = true;
  }
}

async function stream() {
  const badge = document.getElementById("live");
  for (;;) {
    try {
      const res = await fetch("/v1/stream?topics=" + STREAM_TOPICS.join(","),
        { headers: { "Authorization": "Bearer " + key() } });
      if (!res.ok) throw new Error("stream " + res.status);
      badge.textContent = "live"; badge.className = "badge on";
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i); buf = buf.slice(i + 2);
          let topic = "", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) topic = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (topic && data) onEvent(topic, JSON.parse(data));
        }
      }
    } catch (e) { console.warn("stream", e); }
    badge.textContent = "reconnecting"; badge.className = "badge off";
    await new Promise(r => setTimeout(r, 2000));
  }
}

// -- start ----------------------------------------------------------------------------------

async function start() {
  const login = document.getElementById("login");
  try {
    await loadHistory();
  } catch (e) {
    if (e.auth) {
      localStorage.removeItem(KEY_ITEM);
      login.hidden = false;
      document.getElementById("login-error").textContent = key() ? "" : "enter an API key";
      return;
    }
    console.error(e);
  }
  login.hidden = true;
  document.getElementById("charts").hidden = false;
  window.dispatchEvent(new Event("resize"));
  stream();
  setInterval(refresh, 15000);
  setInterval(() => {
    if (state.gpuDirty) { state.gpuDirty = false; drawGpus(); }
    if (state.cmdDirty) { state.cmdDirty = false; drawCommands(); }
  }, 1000);
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem(KEY_ITEM, document.getElementById("key").value.trim());
  start();
});
document.getElementById("forget").addEventListener("click", () => {
  localStorage.removeItem(KEY_ITEM); location.reload();
});
if (key()) start(); else document.getElementById("login").hidden = false;
