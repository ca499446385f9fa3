// 终端: the county map (map.js) with every terminal coloured by state, and the ones that
// need a technician listed.
import { get, onLive } from "../api.js";
import { clear, fmtAgo, fmtTime, h } from "../dom.js";
import { faultName, t } from "../i18n.js";
import { countyMap } from "../map.js";

export function deviceState(d) {
  if (!d.online) return "offline";
  if (Object.keys(d.faults || {}).length) return "fault";
  if (d.playing) return "playing";
  return "online";
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

  const map = countyMap(ctx, {
    label: t("dev.title"),
    markClass: "dev",
    showNames: showNames.checked,
    onOpen: (href) => ctx.go(href),
  });
  mapBox.append(map.el);

  function drawMap() {
    map.setMarks(
      [...devices.values()].map((d) => ({
        key: d.id,
        village: d.village_id,
        state: deviceState(d),
        title: `${ctx.village(d.village_id)?.name || d.village_id} ${d.id}: ${t(`dstate.${deviceState(d)}`)}`,
        href: `#/terminal/${d.id}`,
        data: { device: d.id },
      })),
    );
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
      drawMap();
      return;
    }
    if (kind === "device" || kind === "event" || kind === "resync") {
      clearTimeout(reload);
      reload = setTimeout(load, 300);
    }
  });
  showNames.addEventListener("change", () => map.setShowNames(showNames.checked));
  await load();
  return () => {
    stop();
    clearTimeout(reload);
    map.destroy();
  };
}
