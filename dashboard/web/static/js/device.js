// A device's page: charts from /api/v1/devices/{id}/metrics, its status from the live feed.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const head = document.getElementById("device");
  if (!head) return;
  const id = Number(head.dataset.id);

  async function draw() {
    const response = await fetch(`/api/v1/devices/${id}/metrics?hours=24`, { credentials: "same-origin" });
    if (!response.ok) return;
    const metrics = await response.json();
    charts.bars(document.getElementById("chart-findings"), metrics.findings_per_hour);
    charts.lines(document.getElementById("chart-latency"), [
      { cls: "line-p50", label: "p50", points: metrics.latency.map((p) => [p[0], p[1]]) },
      { cls: "line-p95", label: "p95", points: metrics.latency.map((p) => [p[0], p[2]]) },
    ]);
    charts.lines(document.getElementById("chart-queue"), [
      { cls: "line-queue", label: "queued instances", points: metrics.queue_depth.map((p) => [p[0], p[1]]) },
      { cls: "line-outbox", label: "outbox", points: metrics.queue_depth.map((p) => [p[0], p[2]]) },
    ], true);
    document.body.dataset.chartsDrawn = String(Date.now());
  }

  draw();
  setInterval(draw, 30000);
  medge.stream("/api/v1/stream?devices=1&kinds=device", {
    device(device) {
      if (device.id !== id) return;
      const state = head.querySelector('[data-field="state"]');
      state.className = `conn ${device.state}`;
      state.textContent = device.state;
      head.querySelector('[data-field="offline_reason"]').textContent = device.offline_reason || "";
      const seen = head.querySelector('time[data-field="last_seen"]');
      seen.setAttribute("datetime", device.last_seen);
      seen.textContent = medge.ago(device.last_seen);
    },
  });
});
