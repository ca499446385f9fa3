// 首页, in the order a duty officer reads it: the one obvious emergency entry, what is on
// air now, what waits for a second officer, the latest real and drill broadcasts (what
// has played, never coming schedule occurrences: those live on the schedules page), and
// how the terminals are, with offline and faults marked only when there are some.
import { get, onLive } from "../api.js";
import { append, icon, clear, fmtTime, h, levelChip, modeBadge } from "../dom.js";
import { stateName, t } from "../i18n.js";
import { countyMap } from "../map.js";
import { fmtLeft, notifyButton, secondsLeft } from "../alerts.js";
import { settled } from "../states.js";
import { deviceState } from "./terminals.js";

// A village is as well as its worst terminal: a fault first (someone must go), then a
// terminal offline, then one playing.
const WORST = ["fault", "offline", "playing", "online"];

function villageHealth(ds) {
  const states = ds.map(deviceState);
  const st = WORST.find((s) => states.includes(s)) || "online";
  const worst = ds[states.indexOf(st)];
  return { st, worst, online: ds.filter((d) => d.online).length };
}

export async function render(main, ctx) {
  await ctx.loadPlaces();
  const me = ctx.me;
  const root = h("div", { class: "home" });
  main.append(root);
  const onAir = h("section", { class: "card", id: "home-on-air" });
  const recent = h("section", { class: "card", id: "home-recent" });
  const health = h("section", { class: "card" });
  const map = countyMap(ctx, {
    label: t("home.map"),
    kind: "map-health",
    dotR: 7,
    minDotPx: 12,
    showNames: ctx.villages.length <= 40,
    onOpen: (href) => ctx.go(href),
  });
  const mapCard = h("section", { class: "card home-map", id: "home-map" }, h("h2", {}, t("home.map"), me.township_name ? ` · ${me.township_name}` : ""), map.el);
  const mapLegend = h("div", { class: "board-legend map-legend", id: "home-map-legend" });
  mapCard.append(mapLegend);
  let devices = [];
  const queue = h("section", { class: "card", id: "home-approvals" });

  // Second in the main column: the approvals queue for those who approve, else a way on.
  const second = ctx.seesApprovals()
    ? queue
    : me.role === "technician"
    ? h(
        "a",
        { class: "card home-link", href: "#/terminals", id: "home-terminals" },
        h("strong", {}, t("home.tech")),
        h("span", { class: "muted" }, t("home.tech.sub")),
      )
    : h(
        "a",
        { class: "card home-link", href: "#/schedules", id: "home-schedules" },
        h("strong", {}, t("home.schedules", { t: me.township_name || "" })),
        h("span", { class: "muted" }, t("home.schedules.sub")),
      );

  root.append(
    h(
      "div",
      { class: "home-top" },
      me.can_broadcast
        ? h(
            "a",
            { class: "big-emergency", href: "#/emergency", id: "big-emergency" },
            h("span", { class: "big-emergency-icon" }, icon("megaphone")),
            h("span", {}, h("strong", {}, t("home.emergency")), h("small", {}, t("home.emergency.sub"))),
          )
        : null,
      onAir,
    ),
    h("div", { class: "home-grid" }, h("div", { class: "home-main" }, second, recent), h("div", { class: "home-side" }, health, mapCard)),
  );

  function item(b) {
    const done = b.outcomes.done || 0;
    const total = Object.values(b.outcomes).reduce((a, n) => a + n, 0);
    const ended = settled(b, total);
    return h(
      "li",
      { class: b.drill ? "is-drill" : "", "data-broadcast": b.id },
      h(
        "a",
        { href: `#/board/${b.id}` },
        // The red REAL badge is for real emergencies: a routine notice or a test tone is
        // not an alert and must not look like one.
        b.drill || b.priority === "emergency" ? modeBadge(b.drill) : null,
        levelChip(b.level),
        h("span", { class: "bc-title" }, b.title),
        h("span", { class: "muted", title: t("home.played_at") }, fmtTime(b.start_at || b.created_at)),
        h("span", { class: `status-pill st-${ended ? "finished" : b.status}` }, t(ended ? "board.all_final" : `bstatus.${b.status}`)),
        h("span", { class: "bc-done" }, `${stateName("done")} ${done}/${total}`),
      ),
    );
  }

  async function loadRecent() {
    const data = await get("/api/records/broadcasts?aired=true&limit=8");
    const live = data.broadcasts.filter((b) => {
      const total = Object.values(b.outcomes).reduce((a, n) => a + n, 0);
      return b.status === "active" && !settled(b, total);
    });
    clear(onAir).append(h("h2", {}, t("home.on_air")));
    if (live.length) onAir.append(h("ul", { class: "bc-list" }, live.map(item)));
    else onAir.append(h("p", { class: "muted" }, t("home.on_air.none")));
    const latest = data.broadcasts.filter((b) => !live.includes(b));
    clear(recent).append(h("h2", {}, t("home.recent")));
    if (!latest.length) recent.append(h("p", { class: "muted" }, t("home.no_broadcasts")));
    else recent.append(h("ul", { class: "bc-list" }, latest.map(item)));
  }

  function drawMap() {
    const grouped = new Map();
    for (const d of devices) {
      if (!grouped.has(d.village_id)) grouped.set(d.village_id, []);
      grouped.get(d.village_id).push(d);
    }
    const counts = { online: 0, playing: 0, fault: 0, offline: 0 };
    const specs = [];
    for (const [vid, ds] of grouped) {
      const v = ctx.village(vid);
      const { st, worst, online } = villageHealth(ds);
      counts[st] += 1;
      const faults = ds.flatMap((d) => Object.keys(d.faults || {}));
      specs.push({
        key: vid,
        village: vid,
        state: st,
        title: `${v ? v.name : vid}: ${t(`dstate.${st}`)} · ${t("home.map.online_n", { n: online, total: ds.length })}${faults.length ? ` · ${[...new Set(faults)].map((f) => t(`fault.${f}`)).join(t("sep"))}` : ""}`,
        href: `#/terminal/${worst.id}`,
        data: { village: vid },
      });
    }
    map.setMarks(specs);
    append(clear(mapLegend), [
      ["online", "playing", "fault", "offline"].map((s) =>
        h("span", { class: "legend-key", "data-legend": s }, h("span", { class: `dot st-${s}` }), `${t(`dstate.${s}`)} ${counts[s]}`),
      ),
      h("span", { class: "muted" }, t("home.map.unit")),
    ]);
  }

  async function loadHealth() {
    const data = await get("/api/devices");
    devices = data.devices;
    drawMap();
    const faults = data.devices.filter((d) => Object.keys(d.faults || {}).length).length;
    const playing = data.devices.filter((d) => d.playing).length;
    const offline = data.total - data.online;
    clear(health).append(
      h("h2", {}, t("home.health")),
      h(
        "div",
        { class: "counts small" },
        h("a", { class: "count st-done", href: "#/terminals" }, h("strong", {}, `${data.online}/${data.total}`), h("span", {}, t("dev.online"))),
        // Offline and faults are marked only when there are some: a red 0 cries wolf.
        h("a", { class: `count${offline ? " st-unknown" : ""}`, href: "#/terminals", id: "home-offline", "data-alert": offline ? "1" : "0" }, h("strong", {}, offline), h("span", {}, t("home.offline"))),
        h("a", { class: `count${faults ? " st-failed" : ""}`, href: "#/terminals", id: "home-faults", "data-alert": faults ? "1" : "0" }, h("strong", {}, faults), h("span", {}, t("dev.fault"))),
        h("a", { class: "count st-playing", href: "#/terminals" }, h("strong", {}, playing), h("span", {}, t("dev.playing"))),
      ),
    );
  }

  async function loadQueue() {
    if (!ctx.seesApprovals()) return;
    const data = await get("/api/approvals");
    const ask = ctx.isOfficer() ? notifyButton() : null;
    clear(queue).append(h("h2", {}, t("ap.title"), data.approvals.length ? h("span", { class: "badge" }, data.approvals.length) : null));
    if (ask) queue.append(ask);
    if (!data.approvals.length) queue.append(h("p", { class: "muted" }, t("ap.none")));
    for (const a of data.approvals) {
      queue.append(
        h(
          "a",
          { class: "queue-item", href: `#/approvals/${a.id}` },
          levelChip(a.level),
          " ",
          h("strong", {}, a.title),
          h("span", { class: "muted" }, ` · ${t("ap.by", { who: a.requested_by })} · ${fmtTime(a.created_at)} · `),
          h("strong", { class: "approval-left", "data-expires": a.expires_at }, fmtLeft(secondsLeft(a.expires_at))),
        ),
      );
    }
  }

  let timer = null;
  const tick = setInterval(() => {
    for (const el of queue.querySelectorAll(".approval-left")) el.textContent = fmtLeft(secondsLeft(el.dataset.expires));
  }, 1000);
  const stop = onLive((kind, data) => {
    if (kind === "delivery") {
      // Playing or not follows every delivery event, as on the terminals page.
      const d = devices.find((x) => x.id === data.device_id);
      if (!d) return;
      if (data.state === "playing") d.playing = data.broadcast_id;
      else if (d.playing === data.broadcast_id) d.playing = null;
      drawMap();
      return;
    }
    if (kind === "approval") loadQueue();
    if (kind === "broadcast") loadRecent();
    if (kind === "device" || kind === "event") {
      clearTimeout(timer);
      timer = setTimeout(loadHealth, 500);
    }
  });
  await Promise.all([loadRecent(), loadHealth(), loadQueue()]);
  return () => {
    stop();
    clearTimeout(timer);
    clearInterval(tick);
    map.destroy();
  };
}
