// 终端: the county drawn from its own coordinates (no map tiles reach a county server),
// every terminal coloured by state, and the ones that need a technician listed.
import { get, onLive } from "../api.js";
import { clear, fmtAgo, fmtTime, h, svg } from "../dom.js";
import { faultName, t } from "../i18n.js";

export function deviceState(d) {
  if (!d.online) return "offline";
  if (Object.keys(d.faults || {}).length) return "fault";
  if (d.playing) return "playing";
  return "online";
}

function hull(points) {
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

export async function render(main, ctx) {
  await ctx.loadPlaces();
  let devices = new Map();
  const mapBox = h("div", { class: "map-box card" });
  const side = h("aside", { class: "map-side" });
  const showNames = h("input", { type: "checkbox", checked: ctx.villages.length <= 60 });
  main.append(
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, t("dev.title")),
      h("label", { class: "inline" }, showNames, " ", t("dev.show_names")),
    ),
    h("div", { class: "map-layout" }, mapBox, side),
  );

  const W = 1000;
  const vs = ctx.villages;
  const lat0 = vs.reduce((a, v) => a + v.lat, 0) / Math.max(1, vs.length);
  const k = Math.cos((lat0 * Math.PI) / 180);
  const xs = vs.map((v) => v.lon * k);
  const ys = vs.map((v) => -v.lat);
  const [minX, maxX, minY, maxY] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const pad = 40;
  const scale = (W - 2 * pad) / Math.max(1e-6, maxX - minX, (maxY - minY) * 1.2);
  const Hh = Math.max(300, (maxY - minY) * scale + 2 * pad);
  const project = (lat, lon) => [pad + (lon * k - minX) * scale, pad + (-lat - minY) * scale];
  const circles = new Map();

  function drawMap() {
    clear(mapBox);
    const root = svg("svg", { viewBox: `0 0 ${W} ${Math.round(Hh)}`, class: "county-map", role: "img", "aria-label": t("dev.title") });
    const hues = [205, 140, 30, 280, 350, 90, 180, 50, 250, 320, 110, 10];
    const labels = [];
    ctx.townships.forEach((tw, i) => {
      const own = vs.filter((v) => v.township_id === tw.id);
      if (!own.length) return;
      const pts = own.map((v) => project(v.lat, v.lon));
      const hp = hull(pts);
      const cx = pts.reduce((a, p) => a + p[0], 0) / pts.length;
      const cy = pts.reduce((a, p) => a + p[1], 0) / pts.length;
      // Grow the outline a little so the dots sit inside the township's shape.
      const grown = hp.map(([x, y]) => {
        const dx = x - cx;
        const dy = y - cy;
        const len = Math.hypot(dx, dy) || 1;
        return [x + (dx / len) * 28, y + (dy / len) * 28];
      });
      const hue = hues[i % hues.length];
      if (grown.length >= 3) {
        root.append(svg("polygon", { points: grown.map((p) => p.join(",")).join(" "), class: "tw-area", fill: `hsl(${hue} 45% 92%)`, stroke: `hsl(${hue} 35% 65%)` }));
      }
      // Drawn last, over the dots, so a township's name is never hidden.
      labels.push(svg("text", { x: cx, y: cy - 22, class: "tw-label", "text-anchor": "middle" }, tw.name));
    });
    for (const v of vs) {
      const [x, y] = project(v.lat, v.lon);
      const own = [...devices.values()].filter((d) => d.village_id === v.id);
      own.forEach((d, i) => {
        const dx = own.length > 1 ? (i - (own.length - 1) / 2) * 11 : 0;
        const c = svg(
          "circle",
          { cx: x + dx, cy: y, r: 6.5, class: `dev st-${deviceState(d)}`, "data-device": d.id, "data-state": deviceState(d), tabindex: 0 },
          svg("title", {}, `${v.name} ${d.id}: ${t(`dstate.${deviceState(d)}`)}`),
        );
        c.addEventListener("click", () => ctx.go(`#/terminal/${d.id}`));
        c.addEventListener("keydown", (e) => e.key === "Enter" && ctx.go(`#/terminal/${d.id}`));
        circles.set(d.id, c);
        root.append(c);
      });
      if (showNames.checked) root.append(svg("text", { x: x, y: y + 17, class: "v-label", "text-anchor": "middle" }, v.name));
    }
    root.append(...labels);
    mapBox.append(root);
  }

  function drawSide() {
    clear(side);
    const counts = { online: 0, playing: 0, fault: 0, offline: 0 };
    for (const d of devices.values()) counts[deviceState(d)]++;
    side.append(
      h(
        "div",
        { class: "card legend" },
        h("h2", {}, t("dev.legend")),
        ["online", "playing", "fault", "offline"].map((s) =>
          h("div", { class: "legend-row", "data-legend": s }, h("span", { class: `dot st-${s}` }), h("span", {}, t(`dstate.${s}`)), h("strong", {}, counts[s])),
        ),
      ),
    );
    const attention = [...devices.values()].filter((d) => !d.online || Object.keys(d.faults || {}).length);
    const list = h("div", { class: "card attention", id: "attention" }, h("h2", {}, t("dev.attention"), ` (${attention.length})`));
    if (!attention.length) list.append(h("p", { class: "muted" }, t("dev.all_good")));
    for (const d of attention) {
      const v = ctx.village(d.village_id);
      const lines = d.online
        ? Object.entries(d.faults).map(([f, since]) => h("li", {}, faultName(f), h("small", { class: "muted" }, ` ${t("dev.since")} ${fmtTime(since)} (${fmtAgo(since)})`)))
        : [h("li", {}, t("dstate.offline"), h("small", { class: "muted" }, ` ${t("dev.since")} ${fmtTime(d.status_changed_at)}`))];
      list.append(
        h(
          "a",
          { class: `attention-item st-${deviceState(d)}`, href: `#/terminal/${d.id}`, "data-device": d.id },
          h("strong", {}, v ? `${ctx.township(v.township_id)?.name || ""} ${v.name}` : d.village_id),
          h("small", { class: "muted" }, ` ${d.id}`),
          h("ul", {}, lines),
        ),
      );
    }
    side.append(list);
  }

  async function load() {
    const data = await get("/api/devices");
    devices = new Map(data.devices.map((d) => [d.id, d]));
    drawMap();
    drawSide();
  }

  let reload = null;
  const stop = onLive((kind, data) => {
    if (kind === "delivery") {
      const d = devices.get(data.device_id);
      if (!d) return;
      if (data.state === "playing") d.playing = data.broadcast_id;
      else if (d.playing === data.broadcast_id) d.playing = null;
      const c = circles.get(d.id);
      if (c) {
        c.setAttribute("class", `dev st-${deviceState(d)}`);
        c.setAttribute("data-state", deviceState(d));
      }
      return;
    }
    if (kind === "device" || kind === "event" || kind === "resync") {
      clearTimeout(reload);
      reload = setTimeout(load, 300);
    }
  });
  showNames.addEventListener("change", drawMap);
  await load();
  return () => {
    stop();
    clearTimeout(reload);
  };
}
