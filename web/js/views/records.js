// 记录: the broadcast log with per-village outcomes, filters and CSV export.
import { get } from "../api.js";
import { broadcastWithDeliveries } from "../deliveries.js";
import { icon, clear, fmtTime, h, levelChip, modeBadge, select, today } from "../dom.js";
import { CATEGORIES, categoryName, reasonWords, t } from "../i18n.js";
import { bucketOf, deliveryName, reasonText, settled } from "../states.js";

export async function render(main, ctx) {
  await ctx.loadPlaces();
  const f = {
    from: h("input", { type: "date", name: "from", value: today(-7) }),
    to: h("input", { type: "date", name: "to", value: today() }),
    category: select([["", t("rec.any")], ...CATEGORIES.map((c) => [c, categoryName(c)])], "", { name: "category" }),
    township: select(
      [...(ctx.me.county_wide ? [["", t("rec.any")]] : []), ...ctx.townships.map((x) => [x.id, x.name])],
      "",
      { name: "township" },
    ),
    drill: select([["", t("rec.any")], ["false", t("mode.real")], ["true", t("mode.drill")]], "", { name: "drill" }),
    q: h("input", { type: "search", name: "q", placeholder: t("rec.search") }),
  };
  const csv = h("a", { class: "btn", id: "csv-link", download: "" }, icon("download"), " ", t("rec.csv"));
  const table = h("div", { class: "card" });
  const form = h(
    "form",
    { class: "card filters", onsubmit: (e) => (e.preventDefault(), load()) },
    h("label", { class: "field" }, h("span", { class: "field-label" }, t("rec.from")), f.from),
    h("label", { class: "field" }, h("span", { class: "field-label" }, t("rec.to")), f.to),
    h("label", { class: "field" }, h("span", { class: "field-label" }, t("em.category")), f.category),
    h("label", { class: "field" }, h("span", { class: "field-label" }, t("rec.township")), f.township),
    h("label", { class: "field" }, h("span", { class: "field-label" }, t("rec.mode")), f.drill),
    h("label", { class: "field" }, h("span", { class: "field-label" }, t("rec.text")), f.q),
    h("div", { class: "filter-actions" }, h("button", { class: "btn btn-primary", type: "submit" }, t("rec.apply")), csv),
  );
  for (const el of Object.values(f)) el.addEventListener("change", load);
  // Phone calls are records too; they have their own list (web/js/views/calls.js).
  const calls = h("a", { class: "btn", href: "#/calls", id: "rec-calls" }, t("calls.list"));
  main.append(h("div", { class: "page-head" }, h("h1", {}, t("rec.title")), calls), form, table);

  function query() {
    const params = new URLSearchParams();
    for (const [k, el] of Object.entries(f)) if (el.value) params.set(k, el.value);
    return params.toString();
  }

  async function load() {
    const q = query();
    csv.href = `/api/records/broadcasts.csv?${q}`;
    const data = await get(`/api/records/broadcasts?limit=200&${q}`);
    clear(table).append(h("p", { class: "muted" }, t("rec.count", { n: data.total })));
    const body = h("tbody", {});
    for (const b of data.broadcasts) {
      const total = Object.values(b.outcomes).reduce((a, n) => a + n, 0);
      const failed = ["failed", "rejected", "expired", "unknown"].reduce((n, s) => n + (b.outcomes[s] || 0), 0);
      const row = h(
        "tr",
        { class: `rec-row${b.drill ? " is-drill" : ""}`, "data-broadcast": b.id, tabindex: 0 },
        // 时间 is when it played (its start), not when the row was written: a schedule's
        // occurrence is written ahead of its time.
        h("td", { title: t("rec.created_at", { at: fmtTime(b.created_at, true) }) }, fmtTime(b.start_at || b.created_at, true)),
        // REAL only on real emergencies; routine notices and test tones carry no badge.
        h("td", {}, b.drill || b.priority === "emergency" ? modeBadge(b.drill) : null, " ", levelChip(b.level)),
        h("td", {}, h("strong", {}, b.title), h("div", { class: "muted small" }, categoryName(b.category), " · ", b.approved_by ? t("board.officers", { by: b.created_by, approver: b.approved_by }) : b.created_by)),
        h("td", {}, b.townships.map((id) => ctx.township(id)?.name || id).join(t("sep"))),
        h("td", { class: "num" }, h("span", { class: "ok" }, `${b.outcomes.done || 0}`), `/${total}`, failed ? h("span", { class: "bad" }, ` ✗${failed}`) : null),
        h("td", {}, t(settled(b, total) ? "board.all_final" : `bstatus.${b.status}`)),
      );
      const detail = h("tr", { class: "rec-detail", hidden: true }, h("td", { colspan: 6 }));
      row.addEventListener("click", () => toggleDetail(b, detail));
      // A focusable row is a control: Enter or Space opens it as a click does (issue 16).
      row.addEventListener("keydown", (e) => {
        if (e.target !== row || (e.key !== "Enter" && e.key !== " ")) return;
        e.preventDefault();
        toggleDetail(b, detail);
      });
      body.append(row, detail);
    }
    table.append(
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "table", id: "records" },
          h("thead", {}, h("tr", {}, [t("col.time"), t("col.mode"), t("col.title"), t("col.area"), t("col.done"), t("col.status")].map((x) => h("th", {}, x)))),
          body,
        ),
      ),
    );
  }

  async function toggleDetail(b, detail) {
    if (!detail.hidden) {
      detail.hidden = true;
      return;
    }
    detail.hidden = false;
    const cell = clear(detail.firstChild);
    cell.append(t("common.loading"));
    const view = await broadcastWithDeliveries(b.id);
    const byVillage = new Map();
    for (const d of view.deliveries) {
      if (!byVillage.has(d.village_id)) byVillage.set(d.village_id, []);
      byVillage.get(d.village_id).push(d);
    }
    clear(cell).append(
      h("p", { class: "spoken small" }, view.text || view.title),
      // A live paging session's media is, once it ended, its recording (chime and voice).
      view.priority === "paging"
        ? h("p", { class: "small" }, t("lp.recording"), " ", h("audio", { controls: true, preload: "none", src: `/media/${view.media_id}`, class: "live-recording" }))
        : null,
      h(
        "div",
        { class: "outcomes" },
        [...byVillage.entries()].map(([vid, ds]) =>
          h(
            "div",
            { class: "outcome", "data-village": vid },
            h("strong", {}, ctx.village(vid)?.name || vid),
            ds.map((d) =>
              h(
                "span",
                { class: `mini st-${d.state} st-${bucketOf(d.state, d.reason)}`, title: d.reason || "" },
                deliveryName(d.state, d.reason),
                d.reason ? ` (${reasonWords(d, reasonText)})` : "",
              ),
            ),
          ),
        ),
      ),
      h("a", { href: `#/board/${b.id}` }, t("rec.open_board")),
    );
  }

  await load();
}
