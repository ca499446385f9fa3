// 上级预警: every warning received from upstream (CAP from the warning-release platform,
// EBM from the upper-level platform), newest first, with what became of it; one message
// opened shows it verbatim and the villages it targeted on the county map.
import { get, onLive } from "../api.js";
import { clear, fmtAgo, fmtTime, h, levelChip } from "../dom.js";
import { t } from "../i18n.js";
import { countyMap } from "../map.js";

export function outcomePill(m) {
  return h("span", { class: `status-pill up-${m.outcome}`, "data-outcome": m.outcome }, t(`up.out.${m.outcome}`));
}

// Why, and for a warning held for review what the officer decided since.
export function reasonText(m) {
  const why = m.reason ? t(`up.reason.${m.reason}`) : "";
  return m.approval_status && m.approval_status !== "pending" ? `${why} · ${t(`ap.st.${m.approval_status}`)}` : why;
}

function links(m) {
  const out = [];
  if (m.broadcast_id) out.push(h("a", { class: "btn", href: `#/board/${m.broadcast_id}` }, t("up.to_broadcast")));
  if (m.approval_id && !m.broadcast_id) out.push(h("a", { class: "btn", href: `#/approvals/${m.approval_id}` }, t("up.to_approval")));
  return out;
}

// The villages a warning (or a held request) targets, marked on the county map.
export function areaPreview(ctx, villageIds, label) {
  const map = countyMap(ctx, { label, kind: "map-delivery", dotR: 7, minDotPx: 10, showNames: ctx.villages.length <= 60 });
  const wanted = new Set(villageIds || []);
  map.setMarks(
    ctx.villages.map((v) => ({
      key: v.id,
      village: v.id,
      state: wanted.has(v.id) ? "playing" : "none",
      title: `${v.name}${wanted.has(v.id) ? ` · ${t("up.in_area")}` : ""}`,
      data: { area: wanted.has(v.id) ? "1" : "0" },
    })),
  );
  return map;
}

export async function render(main, ctx, [messageId]) {
  await ctx.loadPlaces();
  const root = h("div", { class: "inbox" });
  main.append(root);
  let map = null;

  async function one() {
    const m = await get(`/api/upstream/messages/${messageId}`);
    clear(root);
    if (map) map.destroy?.();
    map = areaPreview(ctx, m.village_ids, t("up.area_map"));
    root.append(
      h("div", { class: "page-head" }, h("h1", {}, m.headline || m.identifier), h("p", { class: "muted" }, `${m.source_name || m.source_id} · ${fmtTime(m.received_at, true)}`)),
      h(
        "section",
        { class: "card", id: "upstream-message", "data-message": m.id },
        h(
          "div",
          { class: "confirm-facts" },
          fact(t("up.outcome"), outcomePill(m), reasonText(m)),
          fact(t("up.kind"), `${t(`up.type.${m.msg_type}`)} · ${t(`up.status.${m.status}`)}`, m.protocol.toUpperCase()),
          fact(t("up.mode"), t(`up.mode.${m.mode}`), ""),
          fact(t("em.fact.level"), m.level ? levelChip(m.level) : "—", m.drill ? t("up.drill") : ""),
          fact(t("em.fact.area"), `${m.villages}${t("up.unit_village")}`, m.detail?.area_desc || ""),
        ),
        h("dl", { class: "kv" }, kv(t("up.identifier"), m.identifier), kv(t("up.sender"), m.sender), kv(t("up.sent"), m.sent), m.references?.length ? kv(t("up.references"), m.references.join(" ")) : null),
        m.text ? h("p", { class: "spoken" }, m.text) : null,
        h("div", { class: "board-actions" }, ...links(m), h("a", { class: "btn", href: "#/inbox" }, t("up.back"))),
      ),
      h("section", { class: "card" }, h("h2", {}, t("up.area_map")), map.el),
      h("section", { class: "card" }, h("details", {}, h("summary", {}, t("up.raw"), ` (${m.content_type})`), h("pre", { class: "raw-xml", id: "raw-xml" }, m.raw))),
    );
  }

  function fact(label, value, small) {
    return h("div", { class: "fact" }, h("span", { class: "fact-label" }, label), h("strong", { class: "fact-value" }, value), h("small", {}, small || ""));
  }
  function kv(k, v) {
    return [h("dt", {}, k), h("dd", {}, v)];
  }

  async function list() {
    const data = await get("/api/upstream/messages?limit=200");
    const body = h("tbody", {});
    for (const m of data.messages) {
      body.append(
        h(
          "tr",
          { "data-message": m.id, "data-outcome": m.outcome },
          h("td", {}, fmtTime(m.received_at, true), h("br"), h("small", { class: "muted" }, fmtAgo(m.received_at))),
          h("td", {}, m.source_name || m.source_id, h("br"), h("small", { class: "muted" }, `${m.protocol.toUpperCase()} · ${t(`up.mode.${m.mode}`)}`)),
          h("td", {}, h("a", { href: `#/inbox/${m.id}` }, m.headline || m.identifier), h("br"), h("small", { class: "muted" }, `${t(`up.type.${m.msg_type}`)} · ${t(`up.status.${m.status}`)}`)),
          h("td", {}, m.level ? levelChip(m.level) : "—"),
          h("td", {}, outcomePill(m), h("br"), h("small", { class: "muted" }, reasonText(m))),
          h("td", {}, ...links(m)),
        ),
      );
    }
    clear(root).append(
      h("div", { class: "page-head" }, h("h1", {}, t("up.inbox")), h("p", { class: "muted" }, t("up.inbox.subtitle"))),
      data.messages.length
        ? h(
            "div",
            { class: "card table-wrap" },
            h("table", { class: "table", id: "inbox" }, h("thead", {}, h("tr", {}, [t("up.received"), t("up.source"), t("up.message"), t("em.fact.level"), t("up.outcome"), ""].map((x) => h("th", {}, x)))), body),
          )
        : h("div", { class: "card empty", id: "no-messages" }, t("up.none")),
    );
  }

  const load = messageId ? one : list;
  // New warnings start broadcasts or requests; a held one changes when an officer decides
  // it. One message opened is not redrawn under its reader (the raw text may be open).
  const stop = onLive((kind) => {
    if (!messageId && (kind === "approval" || kind === "broadcast")) load();
  });
  await load();
  return () => {
    stop();
    if (map) map.destroy?.();
  };
}
