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
