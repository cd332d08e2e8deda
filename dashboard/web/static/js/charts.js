// Small SVG charts drawn by the page itself (no charting library, nothing fetched).
"use strict";

const charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const H = 180, PAD = { left: 40, right: 10, top: 10, bottom: 24 };
  let W = 600;  // set to the container's width before each drawing, so text is never stretched

  function svg(tag, attributes = {}, text = null) {
    const node = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (text !== null) node.textContent = text;
    return node;
  }

  function niceMax(value, integer = false) {
    if (integer) return Math.ceil(niceMax(Math.max(value, 4)) / 4) * 4;  // counts: four whole-number ticks
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  function frame(container, maxY, xLabels, legend) {
    container.replaceChildren();
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}` });
    const plotH = H - PAD.top - PAD.bottom;
    for (let i = 0; i <= 4; i += 1) {
      const y = PAD.top + plotH - (plotH * i) / 4;
      root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: i ? "grid-line" : "axis" }));
      const value = (maxY * i) / 4;
      const label = Number.isInteger(value) ? String(value) : value.toFixed(value < 1 ? 2 : 1);
      root.append(svg("text", { x: PAD.left - 4, y: y + 3, "text-anchor": "end" }, label));
    }
    for (const [x, label] of xLabels) root.append(svg("text", { x, y: H - 6, "text-anchor": "middle" }, label));
    container.append(root);
    if (legend) {
      const keys = document.createElement("div");
      for (const [cls, text] of legend) {
        const item = document.createElement("span");
        item.className = "legend-item";
        const swatch = document.createElement("span");
        swatch.className = `swatch ${cls}`;
        item.append(swatch, text);
        keys.append(item);
      }
      container.append(keys);
    }
    return root;
  }

  function measure(container) {
    W = Math.max(280, Math.round(container.clientWidth || 600));
  }

  function empty(container, text) {
    measure(container);
    container.replaceChildren();
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}` });
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, text));
    container.append(root);
  }

  function hourLabel(iso) {
    return medge.localTime(iso).slice(11, 13) + "h";
  }

  // points: [[label ISO, total, positives]]
  function bars(container, points) {
    if (!points.length) return empty(container, "no data");
    measure(container);
    const maxY = niceMax(Math.max(...points.map((p) => p[1])), true);
    const plotW = W - PAD.left - PAD.right, plotH = H - PAD.top - PAD.bottom;
    const step = plotW / points.length;
    const labels = points.map((p, i) => [PAD.left + step * (i + 0.5), hourLabel(p[0])]).filter((_, i) => i % 4 === 0);
    const root = frame(container, maxY, labels, [["bar-all", "findings"], ["bar-pos", "positive"]]);
    points.forEach(([when, total, positives], i) => {
      const x = PAD.left + step * i + step * 0.15, width = step * 0.7;
      const h = (plotH * total) / maxY, hp = (plotH * positives) / maxY;
      const bar = svg("rect", { x, y: PAD.top + plotH - h, width, height: h, class: "bar-all" });
      bar.append(svg("title", {}, `${medge.localTime(when)}: ${total} findings, ${positives} positive`));
      root.append(bar, svg("rect", { x, y: PAD.top + plotH - hp, width, height: hp, class: "bar-pos" }));
    });
  }

  // series: [{cls, label, points: [[ISO, value|null]]}]; integer: the values are counts
  function lines(container, series, integer = false) {
    const all = series.flatMap((s) => s.points).filter((p) => p[1] !== null && p[1] !== undefined);
    if (!all.length) return empty(container, "no heartbeats yet");
    measure(container);
    const times = all.map((p) => new Date(p[0]).getTime());
    const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1);
    const maxY = niceMax(Math.max(...all.map((p) => p[1])), integer);
    const plotW = W - PAD.left - PAD.right, plotH = H - PAD.top - PAD.bottom;
    const x = (iso) => PAD.left + (plotW * (new Date(iso).getTime() - t0)) / (t1 - t0);
    const y = (value) => PAD.top + plotH - (plotH * value) / maxY;
    const labels = [0, 0.5, 1].map((f) => {
      const iso = new Date(t0 + f * (t1 - t0)).toISOString();
      return [PAD.left + f * plotW, medge.localTime(iso).slice(11, 16)];
    });
    const root = frame(container, maxY, labels, series.map((s) => [s.cls, s.label]));
    for (const s of series) {
      const points = s.points.filter((p) => p[1] !== null && p[1] !== undefined);
      const path = points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
      if (path) root.append(svg("path", { d: path, class: s.cls }));
      if (points.length <= 60) {  // few heartbeats yet: mark each, a single one would be invisible as a line
        for (const p of points) {
          const dot = svg("circle", { cx: x(p[0]).toFixed(1), cy: y(p[1]).toFixed(1), r: 2.5, class: `${s.cls} dot` });
          dot.append(svg("title", {}, `${medge.localTime(p[0])}: ${p[1]}`));
          root.append(dot);
        }
      }
    }
  }

  return { bars, lines };
})();
