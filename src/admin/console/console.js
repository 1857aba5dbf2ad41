// mongotap's incident console: one page, no dependencies, nothing fetched
// from anywhere but this admin endpoint. Everything shown comes from the
// admin routes, which carry names and shapes, never values.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_EVENTS = 500;
const SPARK_POINTS = 60;

// admin.token: from the address's fragment (#token=…, never sent to the
// server), else this tab's storage, else asked for on the first 401.
let token = sessionStorage.getItem("mongotap-token") || "";
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) {
  token = fromHash;
  sessionStorage.setItem("mongotap-token", token);
  history.replaceState(null, "", location.pathname);
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value;
  sessionStorage.setItem("mongotap-token", token);
  $("token-form").hidden = true;
  $("error").textContent = "";
  refreshAll();
  startEvents();
});

async function api(path, opts = {}) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(path, { ...opts, headers });
  if (r.status === 401) {
    $("token-form").hidden = false;
    $("error").textContent = "admin.token required";
    throw new Error("401");
  }
  return r;
}
const getJson = async (path) => (await api(path)).json();

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
const ns = (r) => (r.db || "") + (r.collection ? "." + r.collection : "");
const stages = (s) => (Array.isArray(s) ? s.join(" > ") : (s || "").split(">").join(" > "));
function ms(v) {
  if (v === undefined || v === null) return "";
  if (v >= 10000) return (v / 1000).toFixed(1) + " s";
  return Math.round(v) + " ms";
}
const us = (v) => ms(v / 1000);
function fillBody(table, rows, render) {
  const tbody = $(table).querySelector("tbody");
  const fresh = document.createElement("tbody");
  rows.forEach((r) => fresh.appendChild(render(r)));
  tbody.replaceWith(fresh);
}

// In flight: polled each second; ages tick between polls.
let inflight = [];
let inflightAt = performance.now();
async function loadInflight() {
  inflight = await getJson("/inflight");
  inflightAt = performance.now();
  renderInflight();
}
function renderInflight() {
  $("inflight-empty").hidden = inflight.length > 0;
  fillBody("inflight", inflight, (r) => {
    const tr = document.createElement("tr");
    tr.dataset.conn = r.conn;
    tr.dataset.requestId = r.request_id;
    if (r.stalled) tr.className = "stalled";
    const age = cell(tr, "", "num age");
    const text = document.createElement("span");
    text.className = "age-text";
    text.dataset.age = r.age_ms;
    age.appendChild(text);
    if (r.stalled) {
      const b = document.createElement("span");
      b.className = "badge stalled-mark";
      b.textContent = "STALLED";
      age.appendChild(b);
    }
    cell(tr, r.app, "app");
    cell(tr, r.driver, "driver");
    cell(tr, r.command, "command");
    cell(tr, ns(r), "ns");
    cell(tr, stages(r.stages), "stages");
    cell(tr, r.max_time_ms ?? "none", "num");
    cell(tr, r.allow_disk_use ?? "", "");
    cell(tr, r.diagnosis ? diagnosisText(r.diagnosis) : "", "diagnosis");
    cell(tr, r.conn + " / " + r.request_id, "num");
    const kill = document.createElement("button");
    kill.className = "kill";
    kill.textContent = "Kill";
    kill.addEventListener("click", () => killCommand(r));
    const td = document.createElement("td");
    td.appendChild(kill);
    tr.appendChild(td);
    return tr;
  });
  tickAges();
}
function tickAges() {
  const extra = performance.now() - inflightAt;
  $("inflight").querySelectorAll(".age-text").forEach((el) => {
    el.textContent = ms(+el.dataset.age + extra);
  });
}
async function killCommand(r) {
  if (!confirm(`Kill ${r.command} on conn ${r.conn} (${r.app})? Its connection is closed.`)) return;
  const resp = await api(`/inflight/${r.conn}/${r.request_id}/kill`, { method: "POST" });
  const text = await resp.text();
  $("error").textContent = resp.ok ? "" : `kill: ${resp.status} ${text}`;
  loadInflight();
}

// Events: the ring for the first paint, then the live stream.
let events = [];
function addEvent(e, newest) {
  if (newest) events.unshift(e);
  else events.push(e);
  if (events.length > MAX_EVENTS) events.length = MAX_EVENTS;
  for (const [sel, key] of [["f-app", "app"], ["f-kind", "event"]]) {
    const v = e[key];
    if (v && ![...$(sel).options].some((o) => o.value === v)) {
      const o = document.createElement("option");
      o.value = o.textContent = v;
      $(sel).appendChild(o);
    }
  }
}
function detail(e) {
  switch (e.event) {
    case "failed": return [e.code_name, e.hint].filter(Boolean).join(": ");
    case "never_replied": return e.reason;
    case "killed": return `${e.method} by ${e.by}`;
    case "stalled": return [`report ${e.report}`, e.hint].filter(Boolean).join(": ");
    case "slow": return e.was_stalled ? "was stalled" : "";
    case "cursor_leaked": return e.reason;
    default: return e.message || "";
  }
}
function renderEvents() {
  const app = $("f-app").value, kind = $("f-kind").value;
  const shown = events.filter((e) => (!app || e.app === app) && (!kind || e.event === kind));
  fillBody("events", shown, (e) => {
    const tr = document.createElement("tr");
    tr.dataset.event = e.event;
    cell(tr, (e.timestamp || "").replace("T", " ").replace(/\.\d+Z$/, "Z"));
    cell(tr, e.event, "kind kind-" + e.event);
    cell(tr, e.app, "app");
    cell(tr, e.command, "command");
    cell(tr, ns(e), "ns");
    cell(tr, stages(e.stages), "stages");
    cell(tr, ms(e.age_ms ?? e.duration_ms), "num");
    cell(tr, detail(e), "detail");
    return tr;
  });
}
$("f-app").addEventListener("change", renderEvents);
$("f-kind").addEventListener("change", renderEvents);

let streaming = false;
async function startEvents() {
  if (streaming) return;
  streaming = true;
  try {
    events = [];
    (await getJson("/events/recent")).forEach((e) => addEvent(e, false));
    renderEvents();
    // EventSource cannot send a bearer token: read the stream with fetch.
    const resp = await api("/events");
    $("live").textContent = "events: live";
    $("live").className = "pill ok";
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (!data) continue;
        const e = JSON.parse(data);
        if (e.dropped) continue;
        addEvent(e, true);
        renderEvents();
        if (["stalled", "killed", "never_replied", "abandoned", "slow"].includes(e.event)) loadInflight().catch(() => {});
      }
    }
  } catch (err) {
    // Reconnect below.
  }
  streaming = false;
  $("live").textContent = "events: reconnecting";
  $("live").className = "pill bad";
  setTimeout(startEvents, 2000);
}

// Latency, with a p99 sparkline per row kept here, bounded.
const p99History = new Map();
function spark(points) {
  if (points.length === 1) points = [points[0], points[0]];
  const w = 80, h = 16, max = Math.max(...points, 1);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("class", "spark");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  const step = points.length > 1 ? w / (points.length - 1) : 0;
  line.setAttribute("points", points.map((p, i) => `${(i * step).toFixed(1)},${(h - 1 - (p / max) * (h - 2)).toFixed(1)}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#b3261e");
  svg.appendChild(line);
  return svg;
}
// The last minutes, from mongotap_command_duration_seconds' cumulative
// buckets: each poll keeps a snapshot; a window is the latest minus the
// oldest kept, and its quantiles are bucket upper bounds.
const WINDOW_MS = 5 * 60 * 1000;
const snapshots = [];
function parseBuckets(text) {
  const out = new Map();
  const re = /^mongotap_command_duration_seconds_bucket\{([^}]*)\} (\d+)/;
  for (const line of text.split("\n")) {
    const m = re.exec(line);
    if (!m) continue;
    const l = {};
    for (const [, k, v] of m[1].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) l[k] = v;
    const key = [l.command, ns(l), l.app, l.member].join("|");
    const le = l.le === "+Inf" ? Infinity : Number(l.le);
    const b = out.get(key) || new Map();
    b.set(le, (b.get(le) || 0) + Number(m[2]));
    out.set(key, b);
  }
  return out;
}
// Counts per bucket bound in `now` minus `then`, and the bound under
// which fraction q of them fall.
function windowOf(now, then) {
  const bounds = [...now.keys()].sort((a, b) => a - b);
  const counts = bounds.map((le) => now.get(le) - ((then && then.get(le)) || 0));
  const n = counts[counts.length - 1] || 0;
  const q = (f) => {
    if (!n) return null;
    const i = counts.findIndex((c) => c >= f * n);
    return bounds[i];
  };
  return { n, p50: q(0.5), p99: q(0.99) };
}
const bound = (s) => (s === null ? "" : s === Infinity ? "> 60 s" : us(s * 1e6));
async function loadWindows() {
  const now = Date.now();
  snapshots.push({ t: now, buckets: parseBuckets(await (await api("/metrics")).text()) });
  while (snapshots.length > 2 && now - snapshots[1].t >= WINDOW_MS) snapshots.shift();
}
async function loadStats() {
  await loadWindows().catch(() => {});
  const rows = (await getJson("/stats")).commands || [];
  const latest = snapshots[snapshots.length - 1];
  const previous = snapshots[snapshots.length - 2];
  fillBody("latency", rows, (r) => {
    const key = [r.command, ns(r), r.app, r.member].join("|");
    const buckets = latest && latest.buckets.get(key);
    const oldest = snapshots.length > 1 ? snapshots[0].buckets.get(key) : undefined;
    const win = buckets ? windowOf(buckets, oldest) : { n: 0, p50: null, p99: null };
    const step = buckets ? windowOf(buckets, previous && previous.buckets.get(key)) : null;
    const h = p99History.get(key) || [];
    h.push(step && step.p99 !== null && step.p99 !== Infinity ? step.p99 * 1e6 : 0);
    if (h.length > SPARK_POINTS) h.shift();
    p99History.set(key, h);
    const tr = document.createElement("tr");
    cell(tr, r.command);
    cell(tr, ns(r));
    cell(tr, r.app);
    cell(tr, win.n, "num win-n");
    cell(tr, bound(win.p50), "num win-p50").dataset.s = win.p50 ?? "";
    cell(tr, bound(win.p99), "num win-p99").dataset.s = win.p99 ?? "";
    cell(tr, r.count, "num");
    cell(tr, us(r.p50_us), "num");
    cell(tr, us(r.p99_us), "num");
    cell(tr, us(r.max_us), "num");
    cell(tr, "").appendChild(spark(h));
    return tr;
  });
}
async function loadQueries() {
  const rows = (await getJson("/stats/queries?top=15")).queries || [];
  fillBody("queries", rows, (r) => {
    const tr = document.createElement("tr");
    cell(tr, r.command);
    cell(tr, ns(r));
    cell(tr, JSON.stringify(r.shape)).style.whiteSpace = "normal";
    cell(tr, r.count, "num");
    cell(tr, us(r.p99_us), "num");
    cell(tr, (r.apps || []).join(", "));
    return tr;
  });
}
async function loadCursors() {
  const rows = await getJson("/cursors");
  fillBody("cursors", rows, (r) => {
    const tr = document.createElement("tr");
    cell(tr, ms(r.age_ms), "num");
    cell(tr, r.app);
    cell(tr, r.command);
    cell(tr, ns(r));
    cell(tr, stages(r.stages));
    cell(tr, r.batches, "num");
    cell(tr, r.documents, "num");
    return tr;
  });
}
async function loadConnections() {
  const c = await getJson("/connections");
  fillBody("apps", c.by_app, (r) => {
    const tr = document.createElement("tr");
    cell(tr, r.app || "(no appName)");
    cell(tr, r.connections, "num");
    return tr;
  });
  $("conns").textContent = "connections: " + c.connections;
}
async function loadHealth() {
  const r = await fetch("/readyz");
  const body = await r.json();
  $("health").textContent = `upstream ${body.upstream ?? ""}: ${r.ok ? "up" : "down"}`;
  $("health").className = "pill " + (r.ok ? "ok" : "bad");
  $("topology").textContent = JSON.stringify(await getJson("/topology"), null, 1);
}

function refreshAll() {
  for (const f of [loadInflight, loadStats, loadQueries, loadCursors, loadConnections, loadHealth]) f().catch(() => {});
}
refreshAll();
startEvents();
setInterval(() => loadInflight().catch(() => {}), 1000);
setInterval(() => {
  for (const f of [loadStats, loadQueries, loadCursors, loadConnections, loadHealth]) f().catch(() => {});
}, 3000);
setInterval(tickAges, 200);

// A stalled aggregate's findings (/inflight's `diagnosis`), warnings and
// errors first, one per line: "warning $lookup: ...".
function diagnosisText(findings) {
  const list = Array.isArray(findings) ? findings : findings.findings || [];
  const rank = { error: 0, warning: 1, info: 2 };
  return list
    .slice()
    .sort((a, b) => (rank[a.severity] ?? 3) - (rank[b.severity] ?? 3))
    .map((f) => `${f.severity}${f.stage ? " " + f.stage : ""}: ${f.message}`)
    .join("\n");
}
