// The county drawn from its villages' own coordinates (no map tiles reach a county
// server): each township as the grown hull of its villages, its name on top, and one
// mark per thing a page wants shown (a terminal, a village), coloured by class. The
// terminals page, the home page and the live board draw the same map.
import { clear, svg } from "./dom.js";

const W = 1000; // viewBox width; height follows the county's shape
const PAD = 40;
const HUES = [205, 140, 30, 280, 350, 90, 180, 50, 250, 320, 110, 10];
const SVG_NS = "http://www.w3.org/2000/svg";

export function hull(points) {
  const pts = [...points].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  if (pts.length < 3) return pts;
  const cross = (o, a, b) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const lower = [];
  for (const p of pts) {
    while (lower.length >= 2 && cross(lower[lower.length - 2], lower[lower.length - 1], p) <= 0) lower.pop();
    lower.push(p);
  }
  const upper = [];
  for (const p of pts.reverse()) {
    while (upper.length >= 2 && cross(upper[upper.length - 2], upper[upper.length - 1], p) <= 0) upper.pop();
    upper.push(p);
  }
  return lower.slice(0, -1).concat(upper.slice(0, -1));
}

// Equirectangular with the longitude shrunk by cos(latitude): true enough for one county.
function projection(villages) {
  const lat0 = villages.reduce((a, v) => a + v.lat, 0) / Math.max(1, villages.length);
  const k = Math.cos((lat0 * Math.PI) / 180);
  const xs = villages.map((v) => v.lon * k);
  const ys = villages.map((v) => -v.lat);
  const [minX, maxX] = xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
  const [minY, maxY] = ys.length ? [Math.min(...ys), Math.max(...ys)] : [0, 1];
  const scale = (W - 2 * PAD) / Math.max(1e-6, maxX - minX, (maxY - minY) * 1.2);
  const height = Math.max(300, (maxY - minY) * scale + 2 * PAD);
  const project = (lat, lon) => [PAD + (lon * k - minX) * scale, PAD + (-lat - minY) * scale];
  return { height, project };
}

/**
 * countyMap(ctx, options) → { el, setMarks, setShowNames, destroy }
 *
 * options:
 *   label     the map's accessible name
 *   kind      an extra class on the <svg> (the page's colour scheme: map-delivery, map-health)
 *   markClass the class every mark carries ("dev" on the terminals page, "vmark" elsewhere)
 *   dotR      a mark's radius in map units; minDotPx (12 unless given; 0 for none) keeps
 *             every mark at least that many screen pixels across however narrow the map is
 *   showNames draw the villages' names
 *   onOpen    (href) => void: a mark was clicked or Enter pressed on it
 *
 * setMarks([{ key, village, state, title, href, data }]): marks are kept by key, so a
 * page can call it on every event; several marks in one village sit side by side.
 */
export function countyMap(ctx, options = {}) {
  // Every map keeps its marks at least 12 px across unless told otherwise: a mark drawn
  // at map scale on a 390 px phone is a 3 px speck no finger can hit.
  const { label = "", kind = "", markClass = "vmark", dotR = 6.5, minDotPx = 12, onOpen = null } = options;
  let showNames = Boolean(options.showNames);
  const villages = ctx.villages.filter((v) => Number.isFinite(v.lat) && Number.isFinite(v.lon));
  const { height, project } = projection(villages);
  const at = new Map(villages.map((v) => [v.id, project(v.lat, v.lon)]));

  const root = svg("svg", {
    viewBox: `0 0 ${W} ${Math.round(height)}`,
    class: `county-map ${kind}${minDotPx > 0 ? " scaled" : ""}`.trim(),
    role: "group",
    "aria-label": label,
  });
  // Offline is striped on the tiles; the map's marks use the same stripes.
  root.append(
    svg(
      "defs",
      {},
      svg(
        "pattern",
        { id: "map-stripes-offline", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" },
        svg("rect", { width: 6, height: 6, class: "stripe-a" }),
        svg("rect", { width: 3, height: 6, class: "stripe-b" }),
      ),
    ),
  );
  const areas = svg("g", { class: "map-areas" });
  const names = svg("g", { class: "map-names" });
  const markLayer = svg("g", { class: "map-marks" });
  const labels = svg("g", { class: "map-labels" });
  root.append(areas, names, markLayer, labels);

  ctx.townships.forEach((tw, i) => {
    const pts = villages.filter((v) => v.township_id === tw.id).map((v) => at.get(v.id));
    if (!pts.length) return;
    const cx = pts.reduce((a, p) => a + p[0], 0) / pts.length;
    const cy = pts.reduce((a, p) => a + p[1], 0) / pts.length;
    // Grow the outline a little so the marks sit inside the township's shape.
    const grown = hull(pts).map(([x, y]) => {
      const len = Math.hypot(x - cx, y - cy) || 1;
      return [x + ((x - cx) / len) * 28, y + ((y - cy) / len) * 28];
    });
    const hue = HUES[i % HUES.length];
    if (grown.length >= 3) {
      areas.append(
        svg("polygon", {
          points: grown.map((p) => p.join(",")).join(" "),
          class: "tw-area",
          "data-township": tw.id,
          fill: `hsl(${hue} 45% 92%)`,
          stroke: `hsl(${hue} 35% 65%)`,
        }),
      );
    }
    // Drawn last, over the marks, so a township's name is never hidden.
    labels.append(svg("text", { x: cx, y: cy - 22, class: "tw-label", "text-anchor": "middle" }, tw.name));
  });

  function drawNames() {
    clear(names);
    if (!showNames) return;
    for (const v of villages) {
      const [x, y] = at.get(v.id);
      names.append(svg("text", { x, y: y + radius + 10 * unit, class: "v-label", "text-anchor": "middle" }, v.name));
    }
  }

  const marks = new Map(); // key -> { el, spec }
  let radius = dotR;
  let unit = 1; // map units per screen pixel, once known (scaled maps only)

  function open(key) {
    const m = marks.get(key);
    if (m && m.spec.href && onOpen) onOpen(m.spec.href);
  }

  function place() {
    const perVillage = new Map();
    for (const m of marks.values()) {
      const list = perVillage.get(m.spec.village) || [];
      list.push(m);
      perVillage.set(m.spec.village, list);
    }
    const gap = Math.max(11, 2 * radius + 1);
    for (const [vid, list] of perVillage) {
      const [x, y] = at.get(vid);
      list.forEach((m, i) => {
        m.el.setAttribute("cx", x + (list.length > 1 ? (i - (list.length - 1) / 2) * gap : 0));
        m.el.setAttribute("cy", y);
        m.el.setAttribute("r", radius);
      });
    }
  }

  function setMarks(specs) {
    const seen = new Set();
    let added = false;
    for (const spec of specs) {
      if (!at.has(spec.village)) continue;
      seen.add(spec.key);
      let m = marks.get(spec.key);
      if (!m) {
        const el = document.createElementNS(SVG_NS, "circle");
        el.append(document.createElementNS(SVG_NS, "title"));
        el.addEventListener("click", () => open(spec.key));
        el.addEventListener("keydown", (e) => {
          if (e.key === "Enter") open(spec.key);
        });
        m = { el, spec };
        marks.set(spec.key, m);
        markLayer.append(el);
        added = true;
      }
      m.spec = spec;
      const { el } = m;
      el.setAttribute("class", `${markClass} st-${spec.state}${spec.href ? " link" : ""}`);
      el.setAttribute("data-state", spec.state);
      for (const [k, v] of Object.entries(spec.data || {})) el.setAttribute(`data-${k}`, v);
      if (spec.href) {
        el.setAttribute("tabindex", "0");
        el.setAttribute("role", "link");
      } else {
        el.removeAttribute("tabindex");
        el.removeAttribute("role");
      }
      el.setAttribute("aria-label", spec.title || "");
      if (el.firstChild.textContent !== spec.title) el.firstChild.textContent = spec.title || "";
    }
    for (const [key, m] of marks) {
      if (!seen.has(key)) {
        m.el.remove();
        marks.delete(key);
        added = true;
      }
    }
    if (added) place();
  }

  // A scaled map keeps its marks a finger's width at least and its names readable,
  // however small it is drawn: sizes follow the map units per screen pixel (the names'
  // through --map-unit in style.css, set through the CSSOM as the CSP requires).
  let observer = null;
  if (minDotPx > 0 && typeof ResizeObserver === "function") {
    observer = new ResizeObserver(() => {
      const ctm = root.getScreenCTM();
      if (!ctm || !ctm.a) return; // not on screen
      const perPx = 1 / ctm.a;
      if (Math.abs(perPx - unit) < 0.005) return;
      unit = perPx;
      root.style.setProperty("--map-unit", String(unit));
      radius = Math.max(dotR, (minDotPx / 2) * unit);
      place();
      drawNames();
    });
    observer.observe(root);
  }

  drawNames();
  return {
    el: root,
    setMarks,
    setShowNames(on) {
      showNames = Boolean(on);
      drawNames();
    },
    radius: () => radius,
    destroy() {
      if (observer) observer.disconnect();
    },
  };
}
