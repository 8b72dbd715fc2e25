// The last traces `starling up` kept (GET /api/admin/traces), and one of them as a
// waterfall: a row per span, indented under its parent, its bar placed on the trace's
// time line. Refreshes the list every 2 s until a trace is opened.
"use strict";

const status = document.getElementById("traces-status");
const list = document.getElementById("trace-list");
const rows = document.getElementById("trace-rows");
const waterfall = document.getElementById("waterfall");
let timer = null;

function ms(us) {
  return us >= 1000 ? (us / 1000).toFixed(1) + " ms" : us + " µs";
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

async function loadList() {
  const resp = await fetch("/api/admin/traces");
  const body = await resp.json();
  if (!resp.ok) {
    status.textContent = body.error || "no traces";
    return;
  }
  status.textContent = body.length
    ? body.length + " traces kept, newest first. Open one to see its waterfall."
    : "No traces yet: use the app, then come back.";
  list.hidden = body.length === 0;
  rows.replaceChildren(...body.map((t) => {
    const tr = document.createElement("tr");
    tr.append(
      cell(new Date(t.start_us / 1000).toLocaleTimeString()),
      cell(t.name),
      cell(t.services.join(", ")),
      cell(String(t.spans)),
      cell(ms(t.duration_us), t.errors ? "trace-error" : ""),
    );
    tr.dataset.trace = t.trace_id;
    tr.tabIndex = 0;
    tr.addEventListener("click", () => openTrace(t.trace_id));
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter") openTrace(t.trace_id); });
    return tr;
  }));
}

async function openTrace(id) {
  clearInterval(timer);
  location.hash = id;
  const resp = await fetch("/api/admin/traces/" + encodeURIComponent(id));
  const body = await resp.json();
  if (!resp.ok) {
    status.textContent = body.error || "no such trace";
    return;
  }
  const spans = body.spans;
  const ids = new Set(spans.map((s) => s.span_id));
  const children = new Map();
  for (const s of spans) {
    const parent = ids.has(s.parent_id) ? s.parent_id : "";
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(s);
  }
  for (const c of children.values()) c.sort((a, b) => a.start_us - b.start_us);
  const start = Math.min(...spans.map((s) => s.start_us));
  const end = Math.max(...spans.map((s) => s.start_us + s.duration_us));
  const total = Math.max(end - start, 1);
  const out = [];
  const walk = (parent, depth) => {
    for (const s of children.get(parent) || []) {
      const row = document.createElement("div");
      row.className = "span-row";
      row.dataset.service = s.service;
      const label = document.createElement("div");
      label.className = "span-label";
      label.style.paddingLeft = depth * 14 + "px";
      label.textContent = s.service + " · " + s.name;
      label.title = s.kind + (s.error ? " · " + s.error : "");
      const lane = document.createElement("div");
      lane.className = "span-lane";
      const bar = document.createElement("div");
      bar.className = "span-bar span-" + s.kind + (s.error ? " span-error" : "");
      bar.style.left = ((s.start_us - start) / total) * 100 + "%";
      bar.style.width = Math.max((s.duration_us / total) * 100, 0.3) + "%";
      bar.title = ms(s.duration_us);
      const took = document.createElement("span");
      took.className = "span-took";
      took.textContent = ms(s.duration_us);
      lane.append(bar);
      row.append(label, took, lane);
      out.push(row);
      walk(s.span_id, depth + 1);
    }
  };
  walk("", 0);
  document.getElementById("waterfall-title").textContent =
    "trace " + body.trace_id + " · " + spans.length + " spans · " + ms(total);
  document.getElementById("waterfall-rows").replaceChildren(...out);
  waterfall.hidden = false;
  status.textContent = "Back to the list: reload the page.";
  list.hidden = true;
}

if (location.hash.length > 1) {
  openTrace(location.hash.slice(1));
} else {
  loadList();
  timer = setInterval(loadList, 2000);
}
