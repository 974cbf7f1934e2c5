// a0 ops: the stack as an admin sees it, from the gateway's /v1/ops API (the gateway reads
// Prometheus, Jaeger and Kafka for it; their ports stay private). Plain ES modules, no
// build step; the charts are uPlot's (vendored, pinned in stack/ui-vendor).
//
//   GET  /v1/ops/access                             204 for an admin, 404 for anyone else
//   GET  /v1/ops/charts?range=5m|1h|6h              the dashboard's panels (services/common/panels.py)
//   GET  /v1/ops/services                           processes (Prometheus) and dependencies
//   GET  /v1/ops/topics                             partitions, end offsets, each group's lag
//   GET  /v1/ops/traces?conversation_id=&turn_id=   a turn's trace (Jaeger)
//   GET  /v1/ops/dead-letters[?all=true]            dead letters
//   POST /v1/ops/dead-letters/{id}/replay|discard   act on one, recorded with the admin as who
//
// The page opens a trace from its URL: /ops#/trace/<conversation id>/<turn id> (the chat's
// "Trace" link next to each turn).

import uPlot from "./vendor/uPlot.esm.js";
import { request } from "./api.js";
import { el, show } from "./dom.js";
import { storedSession } from "./session.js";

const REFRESH_MS = 5000;
const DEAD_LETTERS_MS = 15000;
const CHART_HEIGHT = 200;
const COLORS = ["#2f5bea", "#1c7c43", "#c62828", "#b26a00", "#7b3fbf", "#00838f", "#6d4c41", "#546e7a"];
const SERVICE_CLASSES = { gateway: "svc-gateway", "conversation-worker": "svc-worker", "tool-executor": "svc-tools" };

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  range: "5m",
  charts: new Map(), // panel key → { plot, signature }
  timer: null,
  deadLettersTimer: null,
};

function api(method, path) {
  return request(method, path, undefined, state.token);
}

function showError(id, error) {
  const node = $(id);
  node.textContent = error ? error.message : "";
  show(node, Boolean(error));
}

// ---------------------------------------------------------------------------------------------
// Figures

function formatValue(unit, value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "-";
  if (unit === "percentunit") return `${(value * 100).toFixed(1)} %`;
  if (unit === "s") return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(2)} s`;
  if (unit === "ops") return `${value < 10 ? value.toFixed(2) : value.toFixed(0)} /s`;
  return value < 10 ? String(Math.round(value * 100) / 100) : value.toFixed(0);
}

function timeOf(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "-";
}

// ---------------------------------------------------------------------------------------------
// Charts

function chartWidth(box) {
  return Math.max(280, box.clientWidth - 24);
}

function drawChart(panel, timestamps) {
  const signature = panel.series.map((s) => s.label).join("\u0000");
  const data = [timestamps, ...panel.series.map((s) => s.values)];
  let chart = state.charts.get(panel.key);
  if (chart && chart.signature === signature) {
    chart.plot.setData(data);
    chart.box.dataset.points = String(countPoints(panel));
    chart.box.dataset.max = String(largest(panel));
    return;
  }
  let box = chart ? chart.box : null;
  if (chart) chart.plot.destroy();
  if (!box) {
    box = el("figure", { class: "chart", "data-testid": "chart", "data-panel": panel.key });
    box.append(el("figcaption", { class: "chart-title", text: panel.title }));
    $("chart-grid").append(box);
  }
  box.querySelector(".chart-empty")?.remove();
  const plot = new uPlot(
    {
      width: chartWidth($("chart-grid").firstElementChild || box),
      height: CHART_HEIGHT,
      series: [
        {},
        ...panel.series.map((s, i) => ({
          label: s.label || s.target,
          stroke: COLORS[i % COLORS.length],
          width: 1.5,
          spanGaps: false,
          value: (_, v) => formatValue(panel.unit, v),
        })),
      ],
      axes: [{}, { values: (_, ticks) => ticks.map((v) => formatValue(panel.unit, v)), size: 70 }],
      scales: { x: { time: true }, y: { range: (_, min, max) => yRange(panel.unit, max) } },
      legend: { live: true },
    },
    data,
    box,
  );
  if (!panel.series.length) box.append(el("p", { class: "chart-empty muted small", text: "No series yet." }));
  box.dataset.points = String(countPoints(panel));
  box.dataset.max = String(largest(panel));
  state.charts.set(panel.key, { plot, signature, box });
}

// From zero, to a little above the largest value (a share never above 100 %); a panel
// with nothing but zeros yet keeps a small scale instead of uPlot's 0..100.
function yRange(unit, max) {
  const top = Number.isFinite(max) && max > 0 ? max * 1.1 : unit === "percentunit" ? 0.01 : 1;
  return [0, unit === "percentunit" ? Math.min(top, 1) : top];
}

function countPoints(panel) {
  let points = 0;
  for (const series of panel.series) for (const v of series.values) if (v !== null) points += 1;
  return points;
}

function largest(panel) {
  let top = 0;
  for (const series of panel.series) for (const v of series.values) if (v !== null && v > top) top = v;
  return top;
}

async function refreshCharts() {
  try {
    const answer = await api("GET", `/v1/ops/charts?range=${encodeURIComponent(state.range)}`);
    for (const panel of answer.panels) drawChart(panel, answer.timestamps);
    $("chart-grid").dataset.range = answer.range;
    $("charts-updated").textContent = `rates over ${answer.rate_window} · updated ${new Date().toLocaleTimeString()}`;
    showError("charts-error", null);
  } catch (error) {
    showError("charts-error", error);
  }
}

// ---------------------------------------------------------------------------------------------
// Services and topics

function cells(values) {
  return values.map((value) => el("td", { text: String(value) }));
}

async function refreshServices() {
  try {
    const answer = await api("GET", "/v1/ops/services");
    const rows = answer.processes.map((p) => {
      const row = el("tr", { "data-testid": "service-row", "data-service": p.service, "data-state": p.state });
      row.append(...cells([p.service, p.instance, p.state, p.restarts, timeOf(p.since), p.health]));
      return row;
    });
    $("services-body").replaceChildren(...rows);
    const deps = Object.entries(answer.dependencies).map(([name, health]) => {
      const row = el("tr", { "data-testid": "dependency-row", "data-dependency": name, "data-ok": String(health === "ok") });
      row.append(...cells([name, health]));
      return row;
    });
    $("dependencies-body").replaceChildren(...deps);
    showError("services-error", null);
  } catch (error) {
    showError("services-error", error);
  }
}

async function refreshTopics() {
  try {
    const answer = await api("GET", "/v1/ops/topics");
    const groups = [...new Set(answer.partitions.flatMap((p) => Object.keys(p.groups)))].sort();
    const head = el("tr");
    for (const name of ["topic", "partition", "end offset", ...groups.map((g) => `${g} lag (committed)`)]) {
      head.append(el("th", { scope: "col", text: name }));
    }
    $("topics-head").replaceChildren(head);
    const rows = answer.partitions.map((p) => {
      const row = el("tr", { "data-testid": "topic-row", "data-topic": p.topic, "data-partition": String(p.partition) });
      const lags = groups.map((g) => (p.groups[g] ? `${p.groups[g].lag} (${p.groups[g].committed})` : "-"));
      row.append(...cells([p.topic, p.partition, p.end_offset, ...lags]));
      return row;
    });
    $("topics-body").replaceChildren(...rows);
    showError("topics-error", null);
  } catch (error) {
    showError("topics-error", error);
  }
}

// ---------------------------------------------------------------------------------------------
// A turn's trace as a waterfall

function traceFromHash() {
  const match = /^#\/trace\/([^/]*)\/?([^/]*)$/.exec(location.hash);
  if (!match) return null;
  return { conversation: decodeURIComponent(match[1]), turn: decodeURIComponent(match[2] || "") };
}

function spanFailed(span) {
  const a = span.attributes || {};
  return a.error === true || a["otel.status_code"] === "ERROR" || a["error.type"] !== undefined;
}

function depthOf(spans) {
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const depth = new Map();
  const walk = (span) => {
    if (depth.has(span.span_id)) return depth.get(span.span_id);
    const parent = span.parent_id && byId.get(span.parent_id);
    const d = parent ? walk(parent) + 1 : 0;
    depth.set(span.span_id, d);
    return d;
  };
  spans.forEach(walk);
  return depth;
}

function spanDetails(span) {
  const list = el("dl", { class: "span-details", "data-testid": "span-details" });
  const entries = Object.entries(span.attributes || {});
  for (const event of span.events || []) entries.push([`event at ${event.at_ms} ms`, JSON.stringify(event)]);
  for (const [key, value] of entries) {
    list.append(el("dt", { text: key }), el("dd", { text: typeof value === "string" ? value : JSON.stringify(value) }));
  }
  return list;
}

function waterfall(trace) {
  const spans = trace.spans;
  const starts = spans.map((s) => Date.parse(s.start));
  const t0 = Math.min(...starts);
  const end = Math.max(...spans.map((s, i) => starts[i] + s.duration_ms));
  const total = Math.max(end - t0, 0.001);
  const depth = depthOf(spans);
  const services = [...new Set(spans.map((s) => s.service))];
  const box = el("div", { class: "waterfall", "data-testid": "waterfall", "data-trace-id": trace.trace_id });
  box.append(
    el("p", {
      class: "small muted",
      text: `trace ${trace.trace_id} · ${spans.length} spans · ${total.toFixed(1)} ms · services: ${services.join(", ")}`,
    }),
  );
  const list = el("ol", { class: "spans" });
  spans.forEach((span, i) => {
    const failed = spanFailed(span);
    const row = el("li", {
      class: `span-row ${SERVICE_CLASSES[span.service] || "svc-other"}${failed ? " span-error" : ""}`,
      "data-testid": "span",
      "data-service": span.service,
      "data-error": String(failed),
    });
    const label = el("button", {
      type: "button",
      class: "span-label",
      "aria-expanded": "false",
      text: `${span.service} · ${span.name}${failed ? " · error" : ""}`,
    });
    label.style.paddingLeft = `${0.4 + (depth.get(span.span_id) || 0) * 0.9}rem`;
    const track = el("div", { class: "span-track" });
    const bar = el("div", { class: "span-bar", title: `${span.duration_ms} ms` });
    bar.style.left = `${((starts[i] - t0) / total) * 100}%`;
    bar.style.width = `${Math.max((span.duration_ms / total) * 100, 0.3)}%`;
    track.append(bar);
    const duration = el("span", { class: "span-duration", text: `${span.duration_ms.toFixed(1)} ms` });
    row.append(label, track, duration);
    let details = null;
    label.addEventListener("click", () => {
      if (details) {
        details.remove();
        details = null;
        label.setAttribute("aria-expanded", "false");
      } else {
        details = spanDetails(span);
        row.append(details);
        label.setAttribute("aria-expanded", "true");
      }
    });
    list.append(row);
  });
  box.append(list);
  return box;
}

async function showTrace(conversation, turn) {
  $("trace-conversation").value = conversation || "";
  $("trace-turn").value = turn || "";
  $("trace-view").replaceChildren(el("p", { class: "muted", text: "Loading the trace…" }));
  const query = new URLSearchParams();
  if (conversation) query.set("conversation_id", conversation);
  if (turn) query.set("turn_id", turn);
  try {
    const answer = await api("GET", `/v1/ops/traces?${query}`);
    $("trace-view").replaceChildren(...answer.traces.map(waterfall));
    showError("trace-error", null);
  } catch (error) {
    $("trace-view").replaceChildren();
    showError("trace-error", error);
  }
  $("trace").scrollIntoView();
}

function onTraceSubmit(event) {
  event.preventDefault();
  const conversation = $("trace-conversation").value.trim();
  const turn = $("trace-turn").value.trim();
  if (!conversation && !turn) {
    showError("trace-error", new Error("Enter a conversation id or a turn id."));
    return;
  }
  const where = `#/trace/${encodeURIComponent(conversation)}/${encodeURIComponent(turn)}`;
  if (location.hash === where) showTrace(conversation, turn);
  else location.hash = where; // → hashchange → showTrace
}

// ---------------------------------------------------------------------------------------------
// Dead letters

function source(entry) {
  return entry.source_topic ? `${entry.source_topic}[${entry.source_partition}]@${entry.source_offset}` : "-";
}

async function act(entry, action) {
  $("dead-letters-status").textContent = `${action === "replay" ? "Replaying" : "Discarding"} ${entry.id}…`;
  try {
    const result = await request(
      "POST",
      `/v1/ops/dead-letters/${encodeURIComponent(entry.id)}/${action}`,
      undefined,
      state.token,
    );
    const done = result.done[0];
    const where = done && done.replayed_to ? ` → ${done.replayed_to}` : "";
    $("dead-letters-status").textContent = `${action === "replay" ? "Replayed" : "Discarded"} ${entry.id}${where}.`;
    showError("dead-letters-error", null);
  } catch (error) {
    $("dead-letters-status").textContent = "";
    showError("dead-letters-error", error);
  }
  await refreshDeadLetters();
}

async function refreshDeadLetters() {
  const all = $("dead-letters-all").checked;
  try {
    const answer = await api("GET", `/v1/ops/dead-letters${all ? "?all=true" : ""}`);
    const rows = answer.entries.map((entry) => {
      const row = el("tr", { "data-testid": "dead-letter-row", "data-id": entry.id, "data-state": entry.state });
      row.append(...cells([entry.id, source(entry), new Date(entry.time).toLocaleString(), entry.reason, entry.replay_count, entry.state]));
      const actions = el("td");
      if (entry.state === "pending") {
        actions.append(
          el("button", { type: "button", "data-testid": "dead-letter-replay", text: "Replay", onclick: () => act(entry, "replay") }),
          el("button", { type: "button", class: "danger", "data-testid": "dead-letter-discard", text: "Discard", onclick: () => act(entry, "discard") }),
        );
      } else if (entry.history.length) {
        const last = entry.history[entry.history.length - 1];
        actions.append(el("span", { class: "small muted", text: `${last.action} by ${last.by}` }));
      }
      row.append(actions);
      return row;
    });
    $("dead-letters-body").replaceChildren(...rows);
    show($("dead-letters-empty"), rows.length === 0);
    showError("dead-letters-error", null);
  } catch (error) {
    showError("dead-letters-error", error);
  }
}

// ---------------------------------------------------------------------------------------------
// The page

function refreshAll() {
  return Promise.all([refreshCharts(), refreshServices(), refreshTopics()]);
}

function onRangeChange(event) {
  if (event.target.name !== "range") return;
  state.range = event.target.value;
  refreshCharts();
}

async function main() {
  const session = storedSession();
  if (!session) {
    show($("ops-signin"));
    return;
  }
  state.token = session.token;
  try {
    await api("GET", "/v1/ops/access");
  } catch (error) {
    if (error.status === 401) show($("ops-signin"));
    else show($("ops-denied"));
    return;
  }
  show($("ops"));
  $("ops-user").textContent = session.user;
  $("trace-form").addEventListener("submit", onTraceSubmit);
  $("dead-letters-refresh").addEventListener("click", refreshDeadLetters);
  $("dead-letters-all").addEventListener("change", refreshDeadLetters);
  document.querySelector(".range-picker").addEventListener("change", onRangeChange);
  window.addEventListener("hashchange", () => {
    const wanted = traceFromHash();
    if (wanted) showTrace(wanted.conversation, wanted.turn);
  });
  window.addEventListener("resize", () => {
    for (const chart of state.charts.values()) chart.plot.setSize({ width: chartWidth(chart.box), height: CHART_HEIGHT });
  });
  const wanted = traceFromHash();
  await refreshAll();
  refreshDeadLetters();
  if (wanted) showTrace(wanted.conversation, wanted.turn);
  state.timer = setInterval(refreshAll, REFRESH_MS);
  state.deadLettersTimer = setInterval(refreshDeadLetters, DEAD_LETTERS_MS);
}

main();
