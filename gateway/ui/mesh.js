// The live mesh view: GET /api/admin/mesh every second. Calls/s per instance come from
// the difference between two readings of its call count, over the gateway's clock.
"use strict";

const status = document.getElementById("mesh-status");
const servicesEl = document.getElementById("mesh-services");
let last = null; // { at: ms, calls: Map(id -> calls) }

function td(text, cls) {
  const el = document.createElement("td");
  el.textContent = text;
  if (cls) el.className = cls;
  return el;
}

function render(body, rates) {
  servicesEl.replaceChildren(...body.services.map((s) => {
    const section = document.createElement("section");
    section.className = "mesh-service";
    section.dataset.service = s.name;
    const h = document.createElement("h2");
    h.textContent = `${s.name} · ${s.instances.length} instance${s.instances.length === 1 ? "" : "s"} · ${s.retries} retries`;
    const table = document.createElement("table");
    table.className = "trace-list";
    const head = document.createElement("thead");
    head.innerHTML = "<tr><th>address</th><th>zone</th><th>version</th><th>health</th><th>calls/s</th><th>latency</th><th>in flight</th><th>ejections</th></tr>";
    const rows = document.createElement("tbody");
    rows.append(...s.instances.map((i) => {
      const tr = document.createElement("tr");
      tr.className = "mesh-instance";
      tr.dataset.instance = i.id;
      tr.dataset.address = i.address;
      const health = i.ejected ? "ejected" : i.serving ? "serving" : "not serving";
      tr.append(
        td(i.address),
        td(i.zone || "—"),
        td(i.version || "—"),
        td(health, i.ejected || !i.serving ? "trace-error" : ""),
        td(rates.has(i.id) ? rates.get(i.id).toFixed(1) : "…"),
        td(i.calls ? i.latency_ms.toFixed(2) + " ms" : "—"),
        td(String(i.in_flight)),
        td(String(i.ejections)),
      );
      return tr;
    }));
    table.append(head, rows);
    section.append(h, table);
    return section;
  }));
  const consumers = document.getElementById("consumers");
  document.getElementById("consumers-status").textContent = body.consumers.length
    ? "As the groups' instances report it every 2 s."
    : "The store does not answer: no lag to show.";
  consumers.hidden = body.consumers.length === 0;
  document.getElementById("consumer-rows").replaceChildren(...body.consumers.map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.group = c.group;
    tr.append(td(c.group), td(c.topic), td(String(c.members), c.members ? "" : "trace-error"), td(c.oldest_pending_s.toFixed(1) + " s", c.oldest_pending_s > 30 ? "trace-error" : ""), td(String(c.in_flight)));
    return tr;
  }));
}

async function refresh() {
  try {
    const resp = await fetch("/api/admin/mesh");
    const body = await resp.json();
    if (!resp.ok) {
      status.textContent = body.error || "the mesh view is not available";
      return;
    }
    const now = body.sampled_at_ms;
    const calls = new Map();
    for (const s of body.services) for (const i of s.instances) calls.set(i.id, i.calls);
    const rates = new Map();
    if (last) {
      const secs = Math.max((now - last.at) / 1000, 0.001);
      for (const [id, n] of calls) if (last.calls.has(id)) rates.set(id, (n - last.calls.get(id)) / secs);
    }
    last = { at: now, calls };
    const total = body.services.reduce((n, s) => n + s.instances.length, 0);
    status.textContent = `${body.services.length} services, ${total} instances, as this gateway sees them · updated ${new Date(now).toLocaleTimeString()}`;
    render(body, rates);
  } catch (e) {
    status.textContent = "cannot reach the gateway: " + e.message;
  }
}

refresh();
setInterval(refresh, 1000);
