// The worklist: new findings arrive over server-sent events and are inserted without a reload.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("worklist");
  if (!table) return;
  const body = table.tBodies[0];
  const live = table.dataset.live === "1";
  const canAct = table.dataset.canAct === "1";
  const here = table.dataset.here || "/";
  const filter = {
    site: table.dataset.filterSite, device: table.dataset.filterDevice,
    modality: table.dataset.filterModality, label: table.dataset.filterLabel,
    state: table.dataset.filterState, positive: table.dataset.filterPositive,
  };
  const banner = document.getElementById("new-banner");
  const count = document.getElementById("new-count");
  let outside = 0;

  function matches(finding) {
    if (filter.site && finding.site !== filter.site) return false;
    if (filter.device && finding.device !== filter.device) return false;
    if (filter.modality && finding.modality !== filter.modality) return false;
    if (filter.label && finding.label !== filter.label) return false;
    if (filter.state && finding.state !== filter.state) return false;
    if (filter.positive === "1" && !finding.positive) return false;
    if (filter.positive === "0" && finding.positive) return false;
    return true;
  }

  function ackForm(finding) {
    if (!canAct || finding.state !== "new") return null;
    return medge.el("form", { method: "post", action: `/findings/${finding.id}/acknowledge`, class: "inline" },
      medge.el("input", { type: "hidden", name: "csrf_token", value: medge.csrf() }),
      medge.el("input", { type: "hidden", name: "next", value: here }),
      medge.el("button", { type: "submit", class: "small", text: "Acknowledge" }));
  }

  function row(finding) {
    const label = medge.el("td", { class: "label" }, medge.el("a", { href: finding.url, text: finding.label }));
    if (finding.positive) label.append(" ", medge.el("span", { class: "badge pos", text: "POSITIVE" }));
    return medge.el("tr", {
      class: `finding ${finding.positive ? "positive" : "negative"} arrived`,
      "data-id": finding.id,
      "data-arrived-at": Date.now(),
    },
    medge.el("td", {}, medge.el("time", { datetime: finding.created, text: medge.localTime(finding.created) })),
    medge.el("td", { text: `${finding.site}/${finding.device}` }),
    medge.el("td", { text: finding.modality }),
    label,
    medge.el("td", { class: "num", text: Number(finding.score).toFixed(2) }),
    medge.el("td", {}, medge.el("span", { class: `state ${finding.state}`, text: finding.state })),
    medge.el("td", { class: "muted", text: finding.package }),
    medge.el("td", { class: "act" }, ackForm(finding)));
  }

  function insert(finding) {
    if (body.querySelector(`tr[data-id="${finding.id}"]`)) return;  // a replay after reconnecting
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    // Newest first by creation time; a late finding made earlier goes below newer ones.
    const created = new Date(finding.created).getTime();
    let before = null;
    for (const existing of body.rows) {
      const time = existing.querySelector("time");
      if (time && new Date(time.getAttribute("datetime")).getTime() <= created) { before = existing; break; }
    }
    body.insertBefore(row(finding), before);
  }

  const newest = Number(table.dataset.newest) || 0;
  medge.stream(`/api/v1/stream?after=${newest}&kinds=finding,finding-state`, {
    finding(finding) {
      if (live && matches(finding)) {
        insert(finding);
      } else if (!body.querySelector(`tr[data-id="${finding.id}"]`)) {
        outside += 1;
        count.textContent = String(outside);
        banner.hidden = false;
      }
    },
    "finding-state"(change) {
      const existing = body.querySelector(`tr[data-id="${change.id}"]`);
      if (!existing) return;
      const state = existing.querySelector(".state");
      state.className = `state ${change.state}`;
      state.textContent = change.state;
      if (change.state !== "new") {
        const form = existing.querySelector("td.act form");
        if (form) form.remove();
      }
    },
  });
});
