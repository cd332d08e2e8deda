// medge dashboard: shared helpers (no framework, no external code; the page works offline).
"use strict";

const medge = (() => {
  const zone = document.body ? document.body.dataset.timezone || "UTC" : "UTC";
  let formatter;
  try {
    formatter = new Intl.DateTimeFormat("sv-SE", {
      timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
    });
  } catch (error) {
    formatter = null;
  }

  function localTime(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso;
    return formatter ? formatter.format(date).replace("T", " ") : date.toISOString().replace("T", " ").slice(0, 19);
  }

  function ago(iso) {
    const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
    if (!Number.isFinite(seconds)) return "never";
    if (seconds < 1) return "just now";
    if (seconds < 90) return `${Math.round(seconds)} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} d ago`;
  }

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setLive(state, text) {
    const badge = document.getElementById("live-status");
    if (!badge) return;
    badge.hidden = false;
    badge.className = `live-status ${state}`;
    badge.textContent = text;
  }

  // One EventSource per page; the browser reconnects by itself and sends Last-Event-ID.
  function stream(url, handlers) {
    const source = new EventSource(url);
    source.addEventListener("open", () => setLive("on", "live"));
    source.addEventListener("error", () => setLive("off", "reconnecting…"));
    for (const [name, handler] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => {
        try {
          handler(JSON.parse(event.data), event);
        } catch (error) {
          console.error(`medge: bad ${name} event`, error);
        }
      });
    }
    window.addEventListener("pagehide", () => source.close());
    return source;
  }

  function fillBars(root = document) {
    for (const bar of root.querySelectorAll("[data-width]")) {
      bar.style.width = `${Math.max(0, Math.min(100, Number(bar.dataset.width) || 0))}%`;
    }
  }

  function tickAgo() {
    for (const node of document.querySelectorAll('time[data-field="last_seen"]')) {
      node.textContent = ago(node.getAttribute("datetime"));
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    fillBars();
    if (document.querySelector('time[data-field="last_seen"]')) setInterval(tickAgo, 1000);
  });

  return { localTime, ago, csrf, el, stream, fillBars, tickAgo };
})();
