// The console's counts chart: inline SVG, drawn in the element's own pixels (so text keeps
// its shape on a phone). No library. The window grows with the samples from 1 to 10 minutes.
"use strict";

window.HalobestieChart = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const MIN_MS = 60 * 1000;
  const MAX_MS = 10 * 60 * 1000;

  function el(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function minutes(ms) {
    const m = Math.round(ms / 60000);
    return m === 1 ? "1 minute" : m + " minutes";
  }

  // options: {svg, legend, desc, title, samples: [{at (ms), ...}], now (ms), series:
  // [[key, name, get]]}. Returns the samples still inside the largest window.
  function draw(options) {
    const { svg, legend, desc, title, now, series } = options;
    const samples = options.samples.filter((p) => p.at >= now - MAX_MS);
    const oldest = samples.length ? samples[0].at : now;
    const span = Math.min(MAX_MS, Math.max(MIN_MS, Math.ceil((now - oldest) / 60000) * 60000));
    const W = Math.max(svg.clientWidth || 600, 200);
    const H = 180, left = 34, right = 6, top = 8, bottom = 20;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.replaceChildren();
    let max = 1;
    for (const p of samples) for (const [, , get] of series) max = Math.max(max, get(p) || 0);
    const x = (t) => left + ((t - (now - span)) / span) * (W - left - right);
    const y = (v) => top + (1 - v / max) * (H - top - bottom);
    for (const v of new Set([0, Math.round(max / 2), max])) {
      svg.append(el("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: "grid" }));
      svg.append(el("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, v));
    }
    const ticks = [[now - span, "−" + minutes(span), "start"], [now, "now", "end"]];
    for (const [t, text, anchor] of ticks) {
      svg.append(el("text", { x: x(t), y: H - 4, "text-anchor": anchor, class: "axis" }, text));
    }
    legend.replaceChildren();
    const summary = [];
    for (const [key, name, get] of series) {
      const points = samples.filter((p) => get(p) != null)
        .map((p) => x(p.at).toFixed(1) + "," + y(get(p)).toFixed(1));
      if (points.length) svg.append(el("polyline", { points: points.join(" "), class: "s-" + key }));
      const last = samples.length ? get(samples[samples.length - 1]) : null;
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch s-" + key;
      item.append(swatch, name + (last == null ? "" : ": " + last));
      legend.append(item);
      if (samples.length) summary.push(name + " from " + (get(samples[0]) ?? "–") + " to " + (last ?? "–"));
    }
    title.textContent = "Counts over the last " + minutes(span);
    desc.textContent = samples.length ? "Over the last " + minutes(span) + ": " + summary.join("; ") + "." : "No samples yet.";
    return samples;
  }

  return { draw };
})();
