// Charts as inline SVG, no library: horizontal bars and one line. Each chart is drawn in
// screen pixels at its box's width (so text stays readable on a phone) and drawn again
// when the box changes width. Colours come from classes in style.css (the console's CSP
// allows no inline style attribute, and a class keeps the palette in one place).
import { clear, svg } from "./dom.js";

// Wide enough for a label without measuring it: CJK characters are about one em wide,
// Latin ones about half.
function textWidth(text, px = 13) {
  let w = 0;
  for (const ch of String(text)) w += ch.charCodeAt(0) > 0x2e80 ? px : px * 0.58;
  return w;
}

// Patterns the charts share, defined once per page (an id must be unique in a document).
function ensureDefs() {
  if (document.getElementById("chart-stripes-drill")) return;
  document.body.append(
    svg(
      "svg",
      { class: "chart-defs", width: 0, height: 0, "aria-hidden": "true", focusable: "false" },
      svg(
        "defs",
        {},
        svg(
          "pattern",
          { id: "chart-stripes-drill", width: 8, height: 8, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" },
          svg("rect", { width: 8, height: 8, class: "stripe-drill-a" }),
          svg("rect", { width: 4, height: 8, class: "stripe-drill-b" }),
        ),
      ),
    ),
  );
}

// Draw `paint(width)` into `box` now and on every change of its width; returns a stop
// function for the view's cleanup.
export function responsive(box, paint) {
  ensureDefs();
  let last = -1;
  const draw = () => {
    const width = Math.max(240, Math.floor(box.clientWidth));
    if (width === last) return;
    last = width;
    clear(box).append(paint(width));
  };
  draw();
  if (typeof ResizeObserver !== "function") return () => {};
  const observer = new ResizeObserver(draw);
  observer.observe(box);
  return () => observer.disconnect();
}

/**
 * hbars(rows, { label, fmt, max }) → (width) => <svg>
 * rows: [{ key, label, parts: [{ value, cls, title }], note }] — parts are stacked; the
 * number after a bar is the sum of its parts, formatted by fmt. `max` fixes the scale
 * (1 for rates); otherwise the largest row fills the width.
 */
export function hbars(rows, { label = "", fmt = String, max = null } = {}) {
  return (width) => {
    const totals = rows.map((r) => r.parts.reduce((a, p) => a + (Number(p.value) || 0), 0));
    const top = max ?? Math.max(1e-9, ...totals);
    const labelW = Math.min(width * 0.42, Math.max(40, ...rows.map((r) => textWidth(r.label))) + 10);
    const numW = Math.max(36, ...rows.map((r, i) => textWidth(r.note ?? fmt(totals[i]), 12))) + 10;
    const barW = Math.max(20, width - labelW - numW);
    const rowH = 26;
    const height = Math.max(rowH, rows.length * rowH) + 4;
    const root = svg("svg", {
      class: "chart chart-bars",
      width,
      height,
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": label,
    });
    root.append(svg("title", {}, label));
    rows.forEach((r, i) => {
      const y = 2 + i * rowH;
      const g = svg("g", { class: "bar-row", "data-bar": r.key, "data-value": totals[i] });
      g.append(
        svg("title", {}, `${r.label}: ${r.note ?? fmt(totals[i])}`),
        svg("text", { x: labelW - 8, y: y + 17, class: "bar-label", "text-anchor": "end" }, r.label),
        svg("rect", { x: labelW, y: y + 4, width: barW, height: 16, rx: 3, class: "bar-track" }),
      );
      let x = labelW;
      for (const p of r.parts) {
        const w = top > 0 ? (barW * (Number(p.value) || 0)) / top : 0;
        if (w <= 0) continue;
        const part = svg("rect", { x, y: y + 4, width: Math.max(1, w), height: 16, rx: 3, class: `bar ${p.cls || ""}`.trim(), "data-value": p.value });
        if (p.title) part.append(svg("title", {}, p.title));
        g.append(part);
        x += w;
      }
      g.append(svg("text", { x: labelW + barW + 6, y: y + 17, class: "bar-value" }, r.note ?? fmt(totals[i])));
      root.append(g);
    });
    return root;
  };
}

/**
 * line(points, { label, fmt, tick }) → (width) => <svg>
 * points: [{ key, value (0..1 or null), title }]; null leaves a gap. The y axis runs from
 * a round number below the lowest value to 100 %, so a few points of online rate show.
 * tick(point) names a point on the x axis.
 */
export function line(points, { label = "", fmt = String, tick = (p) => p.key } = {}) {
  return (width) => {
    const height = 220;
    const left = 44;
    const right = 12;
    const top = 12;
    const bottom = 28;
    const values = points.map((p) => p.value).filter((v) => typeof v === "number");
    const low = values.length ? Math.min(...values) : 0;
    const floor = Math.max(0, Math.floor((low - 0.02) * 10) / 10);
    const span = Math.max(1e-9, 1 - floor);
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const xOf = (i) => left + (points.length > 1 ? (plotW * i) / (points.length - 1) : plotW / 2);
    const yOf = (v) => top + plotH * (1 - (v - floor) / span);
    const root = svg("svg", { class: "chart chart-line", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
    root.append(svg("title", {}, label));
    const steps = 4;
    for (let k = 0; k <= steps; k += 1) {
      const v = floor + (span * k) / steps;
      const y = yOf(v);
      root.append(
        svg("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid-line" }),
        svg("text", { x: left - 6, y: y + 4, class: "axis-label", "text-anchor": "end" }, `${Math.round(v * 100)}%`),
      );
    }
    // As many x labels as fit, evenly spaced, the last one always shown.
    const fit = Math.max(2, Math.floor(plotW / 70));
    const every = Math.max(1, Math.ceil(points.length / fit));
    points.forEach((p, i) => {
      if (i % every === 0 || i === points.length - 1) {
        if (i !== points.length - 1 && points.length - 1 - i < every / 2) return;
        // The end labels keep inside the chart.
        const anchor = points.length > 1 && i === points.length - 1 ? "end" : i === 0 && points.length > 1 ? "start" : "middle";
        root.append(svg("text", { x: xOf(i), y: height - 8, class: "axis-label", "text-anchor": anchor }, tick(p)));
      }
    });
    let run = [];
    const flush = () => {
      if (run.length > 1) root.append(svg("polyline", { points: run.join(" "), class: "line-path" }));
      run = [];
    };
    points.forEach((p, i) => {
      if (typeof p.value === "number") run.push(`${xOf(i)},${yOf(p.value)}`);
      else flush();
    });
    flush();
    points.forEach((p, i) => {
      if (typeof p.value !== "number") return;
      root.append(
        svg(
          "circle",
          { cx: xOf(i), cy: yOf(p.value), r: points.length > 40 ? 2 : 3.5, class: "line-point", "data-key": p.key, "data-value": p.value },
          svg("title", {}, `${p.title || tick(p)}: ${fmt(p.value)}`),
        ),
      );
    });
    if (!values.length) {
      root.append(svg("text", { x: left + plotW / 2, y: top + plotH / 2, class: "axis-label", "text-anchor": "middle" }, "—"));
    }
    return root;
  };
}

// A small bar inside a table cell: no text, so it may stretch with the cell.
export function cellBar(rate, cls = "") {
  const v = typeof rate === "number" ? Math.max(0, Math.min(1, rate)) : 0;
  return svg(
    "svg",
    { class: "cell-bar", viewBox: "0 0 100 8", preserveAspectRatio: "none", "aria-hidden": "true" },
    svg("rect", { x: 0, y: 0, width: 100, height: 8, class: "bar-track" }),
    svg("rect", { x: 0, y: 0, width: 100 * v, height: 8, class: `bar ${cls}`.trim() }),
  );
}
