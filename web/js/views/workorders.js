// 工单: terminals whose fault lasted long enough to need a technician, on the county map
// (map.js) and listed by township. Technicians and admins assign an order, note what
// they did, and close it once the terminal reports the fault cleared; everyone else reads
// (township staff: their own township's only, as the server already limits them).
import { api, onLive, post } from "../api.js";
import { append, clear, fmtAgo, fmtTime, h, select, toast } from "../dom.js";
import { faultName, t } from "../i18n.js";
import { countyMap } from "../map.js";

// Error codes this page words itself (the rest show the server's own message).
const OWN_ERRORS = new Set(["fault_not_cleared", "work_order_closed", "too_many_notes"]);
// The map's colours: the terminals page's (open = fault, cleared = online again).
const MAP_STATE = { open: "fault", fault_cleared: "online", closed: "offline" };
const PILL = { open: "dst-fault", fault_cleared: "dst-online", closed: "dst-offline" };
const REFRESH_MS = 30_000; // orders the threshold opens come with no live event

function errorText(e) {
  return OWN_ERRORS.has(e.code) ? t(`err.${e.code}`) : e.message;
}

export async function render(main, ctx) {
  await ctx.loadPlaces();
  // Mirrors ROLE_PERMISSIONS (controller/auth.py): Permission.WORK_ORDERS.
  const canAct = ["technician", "admin"].includes(ctx.me.role);
  let orders = [];
  let focused = null;

  const f = {
    status: select(
      [
        ["", t("wo.filter.unclosed")],
        ["open", t("wo.status.open")],
        ["fault_cleared", t("wo.status.fault_cleared")],
        ["closed", t("wo.status.closed")],
        ["all", t("wo.filter.all")],
      ],
      "",
      { name: "status" },
    ),
    township: select(
      [...(ctx.me.county_wide ? [["", t("wo.all_townships")]] : []), ...ctx.townships.map((x) => [x.id, x.name])],
      ctx.me.county_wide ? "" : ctx.me.township_id,
      { name: "township", disabled: !ctx.me.county_wide },
    ),
  };
  const mapBox = h("div", { class: "map-box card" });
  const side = h("aside", { class: "map-side" });
  const list = h("div", { id: "workorders" });
  append(
    main,
    [
      h(
        "div",
        { class: "page-head" },
        h("h1", {}, t("wo.title")),
        h("label", { class: "inline" }, t("wo.filter.status"), " ", f.status),
        h("label", { class: "inline" }, t("wo.filter.township"), " ", f.township),
      ),
      canAct ? null : h("p", { class: "muted", id: "wo-readonly" }, t("wo.readonly")),
      h("div", { class: "map-layout" }, mapBox, side),
      list,
    ],
  );

  const map = countyMap(ctx, {
    label: t("wo.map"),
    markClass: "dev",
    showNames: ctx.villages.length <= 60,
    onOpen: (href) => {
      const el = document.getElementById(href.slice(1));
      if (!el) return;
      focused = el.dataset.order;
      el.scrollIntoView({ behavior: "smooth", block: "center" });
      el.focus();
    },
  });
  mapBox.append(map.el);

  const placeOf = (o) => {
    const v = ctx.village(o.village_id);
    return v ? v.name : o.village_id;
  };

  function drawMap() {
    map.setMarks(
      orders.map((o) => ({
        key: String(o.id),
        village: o.village_id,
        state: MAP_STATE[o.status],
        title: `${placeOf(o)} ${o.device_id}: ${faultName(o.fault)} · ${t(`wo.status.${o.status}`)}`,
        href: `#wo-${o.id}`,
        data: { order: o.id, device: o.device_id },
      })),
    );
  }

  function drawSide() {
    clear(side);
    const counts = { open: 0, fault_cleared: 0, closed: 0 };
    for (const o of orders) counts[o.status]++;
    side.append(
      h(
        "div",
        { class: "card legend" },
        h("h2", {}, t("wo.legend")),
        Object.keys(counts)
          .filter((s) => counts[s] || s !== "closed")
          .map((s) =>
            h("div", { class: "legend-row", "data-legend": s }, h("span", { class: `dot st-${MAP_STATE[s]}` }), h("span", {}, t(`wo.status.${s}`)), h("strong", {}, counts[s])),
          ),
      ),
    );
    const byTownship = new Map();
    for (const o of orders) byTownship.set(o.township_id, (byTownship.get(o.township_id) || 0) + 1);
    const towns = h("div", { class: "card" }, h("h2", {}, t("wo.by_township")));
    if (!byTownship.size) towns.append(h("p", { class: "muted" }, t("wo.none")));
    for (const tw of ctx.townships) {
      const n = byTownship.get(tw.id);
      if (n) towns.append(h("div", { class: "legend-row", "data-township": tw.id }, h("span", {}), h("a", { href: `#wo-tw-${tw.id}` }, tw.name), h("strong", {}, n)));
    }
    side.append(towns);
  }

  async function act(o, path, body, done) {
    try {
      await post(`/api/workorders/${o.id}/${path}`, body);
      toast(done, "ok");
      focused = String(o.id);
      await load();
    } catch (e) {
      toast(errorText(e), "error");
    }
  }

  function noteLine(n) {
    const text = n.kind === "reopened" ? t("wo.note.reopened") + (n.times > 1 ? t("wo.note.times", { n: n.times }) : "") : n.text;
    const by = n.by === "system" ? t("role.system") : n.by;
    return h("li", { "data-kind": n.kind || "note" }, h("small", { class: "muted" }, `${fmtTime(n.at, true)} · ${by} `), text);
  }

  function actions(o) {
    if (!canAct || o.status === "closed") return null;
    const who = h("input", { type: "text", name: "user", value: o.assigned_to || "", placeholder: t("wo.assign.placeholder"), maxlength: 64, size: 14 });
    const note = h("textarea", { name: "note", rows: 2, maxlength: 2000, placeholder: t("wo.note.placeholder") });
    const closeBtn = h(
      "button",
      {
        class: "btn btn-primary",
        type: "button",
        "data-action": "close",
        disabled: o.status !== "fault_cleared",
        title: o.status === "fault_cleared" ? null : t("wo.close.hint"),
        onclick: () => act(o, "close", note.value.trim() ? { note: note.value.trim() } : {}, t("wo.closed_ok")),
      },
      t("wo.close"),
    );
    return h(
      "div",
      { class: "wo-actions" },
      h(
        "div",
        { class: "control-row" },
        h("label", { class: "field" }, h("span", { class: "field-label" }, t("wo.assigned")), who),
        h("button", { class: "btn", type: "button", "data-action": "assign", onclick: () => who.value.trim() && act(o, "assign", { user: who.value.trim() }, t("wo.assigned_ok", { user: who.value.trim() })) }, t("wo.assign")),
        o.assigned_to === ctx.me.user
          ? null
          : h("button", { class: "btn", type: "button", "data-action": "assign-me", onclick: () => act(o, "assign", { user: ctx.me.user }, t("wo.assigned_ok", { user: ctx.me.user })) }, t("wo.assign_me")),
      ),
      h("label", { class: "field" }, h("span", { class: "field-label" }, t("wo.note.new")), note),
      h(
        "div",
        { class: "control-row" },
        h("button", { class: "btn", type: "button", "data-action": "note", onclick: () => note.value.trim() && act(o, "notes", { text: note.value.trim() }, t("wo.note.added")) }, t("wo.note.add")),
        closeBtn,
        o.status === "fault_cleared" ? null : h("small", { class: "muted" }, t("wo.close.hint")),
      ),
    );
  }

  function card(o) {
    const cls = o.status === "open" ? "st-fault" : o.status === "closed" ? "st-offline" : "st-online";
    const facts = [
      [t("wo.opened"), `${fmtTime(o.opened_at, true)} (${fmtAgo(o.opened_at)})`],
      [t("wo.fault_since"), o.episode ? fmtTime(o.episode.start_at, true) : "—"],
      [t("wo.assigned"), o.assigned_to || t("wo.unassigned")],
    ];
    if (o.fault_cleared_at) facts.push([t("wo.cleared_at"), fmtTime(o.fault_cleared_at, true)]);
    if (o.closed_at) facts.push([t("wo.closed_at"), `${fmtTime(o.closed_at, true)} · ${o.closed_by || ""}`]);
    return h(
      "article",
      { class: `card attention-item ${cls}`, id: `wo-${o.id}`, "data-order": o.id, "data-status": o.status, "data-device": o.device_id, tabindex: -1 },
      h(
        "div",
        { class: "approval-head" },
        h("h3", {}, `${placeOf(o)} · ${faultName(o.fault)}`),
        h("span", { class: `status-pill ${PILL[o.status]}` }, t(`wo.status.${o.status}`)),
        h("a", { href: `#/terminal/${o.device_id}` }, `${o.device_id} · ${t("wo.terminal")}`),
      ),
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      o.notes.length ? h("div", {}, h("strong", {}, t("wo.notes")), h("ul", { class: "wo-notes" }, o.notes.map(noteLine))) : null,
      actions(o),
    );
  }

  function drawList() {
    clear(list);
    if (!orders.length) {
      list.append(h("div", { class: "card empty" }, t("wo.none")));
      return;
    }
    for (const tw of ctx.townships) {
      const own = orders.filter((o) => o.township_id === tw.id);
      if (!own.length) continue;
      list.append(
        h(
          "section",
          { class: "tw-block", id: `wo-tw-${tw.id}`, "data-township": tw.id },
          h("h3", {}, tw.name, " ", h("small", {}, t("wo.count", { n: own.length }))),
          own.map(card),
        ),
      );
    }
    if (focused) document.getElementById(`wo-${focused}`)?.focus({ preventScroll: true });
  }

  async function load() {
    const params = new URLSearchParams();
    if (f.status.value) params.set("status", f.status.value);
    if (f.township.value) params.set("township", f.township.value);
    const { data } = await api("GET", `/api/workorders?${params}`);
    orders = data.orders;
    drawMap();
    drawSide();
    drawList();
  }

  // Typing in a form must not be wiped by a refresh: reload only when nothing is typed.
  const busy = () => [...list.querySelectorAll("textarea, input")].some((el) => el === document.activeElement || (el.tagName === "TEXTAREA" && el.value));
  let reload = null;
  const later = (ms) => {
    clearTimeout(reload);
    reload = setTimeout(() => (busy() ? later(REFRESH_MS) : load().catch(() => {})), ms);
  };
  const stop = onLive((kind) => {
    // A fault raised or cleared moves an order within a second (the server's sweep).
    if (kind === "event" || kind === "device" || kind === "resync") later(1500);
  });
  const timer = setInterval(() => later(0), REFRESH_MS);
  for (const el of Object.values(f)) el.addEventListener("change", () => load().catch((e) => toast(errorText(e), "error")));
  await load();
  return () => {
    stop();
    clearTimeout(reload);
    clearInterval(timer);
    map.destroy();
  };
}
