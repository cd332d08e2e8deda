// The fleet page: each appliance's row follows its device events (online/offline within a second).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("fleet");
  if (!table) return;
  const body = table.tBodies[0];

  function ms(value) {
    return value === null || value === undefined ? "–" : `${Number(value).toFixed(1)} ms`;
  }

  function engines(device) {
    if (!device.engines.length) return [medge.el("span", { class: "muted", text: "–" })];
    return device.engines.map((engine) => {
      const line = medge.el("div", {}, `${engine.engine} on ${engine.device}`);
      if (engine.providers && engine.providers.length) line.append(` (${engine.providers.join(", ")})`);
      if (engine.degraded) {
        line.append(" ", medge.el("span", { class: "badge warn", text: `DEGRADED${engine.reason ? `: ${engine.reason}` : ""}` }));
      }
      return line;
    });
  }

  function packages(device) {
    if (!device.packages.length) return [medge.el("span", { class: "muted", text: "–" })];
    return device.packages.map((p) => medge.el("div", {}, `${p.name} ${p.version} `, medge.el("span", { class: "muted", text: p.precision })));
  }

  function lastError(device) {
    if (!device.last_error) return [medge.el("span", { class: "muted", text: "–" })];
    const error = device.last_error;
    return [medge.el("span", { class: `sev ${error.severity}`, text: error.kind }), ` ${error.message}`];
  }

  function newRow(device) {
    const tr = medge.el("tr", { id: `device-${device.id}`, "data-id": device.id, class: "device" },
      medge.el("td", {}, medge.el("a", { href: `/devices/${device.id}`, text: `${device.site}/${device.device}` }),
        medge.el("div", { class: "muted small", "data-field": "version" })),
      medge.el("td", {}, medge.el("span", { "data-field": "state" }), medge.el("div", { class: "muted small", "data-field": "offline_reason" })),
      medge.el("td", {}, medge.el("time", { "data-field": "last_seen" })),
      medge.el("td", { "data-field": "engines" }),
      medge.el("td", { "data-field": "packages" }),
      medge.el("td", { class: "num", "data-field": "queue_depth" }),
      medge.el("td", { class: "num", "data-field": "latency" }),
      medge.el("td", { class: "num", "data-field": "missing_count" }),
      medge.el("td", { "data-field": "last_error" }));
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    body.append(tr);
    return tr;
  }

  function update(device) {
    const tr = document.getElementById(`device-${device.id}`) || newRow(device);
    const field = (name) => tr.querySelector(`[data-field="${name}"]`);
    const was = tr.dataset.state;
    tr.dataset.state = device.state;
    tr.className = `device ${device.state}${device.degraded ? " degraded" : ""}`;
    const state = field("state");
    state.className = `conn ${device.state}`;
    state.textContent = device.state;
    field("offline_reason").textContent = device.offline_reason || "";
    field("version").textContent = device.version || "";
    const seen = field("last_seen");
    seen.setAttribute("datetime", device.last_seen);
    seen.textContent = medge.ago(device.last_seen);
    field("engines").replaceChildren(...engines(device));
    field("packages").replaceChildren(...packages(device));
    field("queue_depth").textContent = device.queue_depth === null ? "–" : String(device.queue_depth);
    field("latency").textContent = `${ms(device.latency_ms_p50)} / ${ms(device.latency_ms_p95)}`;
    const missing = field("missing_count");
    missing.replaceChildren(device.missing_count ? medge.el("span", { class: "warn", text: device.missing_count }) : "0");
    field("last_error").replaceChildren(...lastError(device));
    if (was && was !== device.state) {
      tr.classList.add("flash");
      tr.dataset.changedAt = String(Date.now());
    }
    const rows = [...body.querySelectorAll("tr.device")];
    document.getElementById("fleet-online").textContent = String(rows.filter((r) => r.classList.contains("online")).length);
    document.getElementById("fleet-total").textContent = String(rows.length);
  }

  for (const tr of body.querySelectorAll("tr.device")) {
    tr.dataset.state = tr.classList.contains("offline") ? "offline" : tr.classList.contains("online") ? "online" : "unknown";
  }
  medge.stream("/api/v1/stream?devices=1&kinds=device", { device: update });
});
