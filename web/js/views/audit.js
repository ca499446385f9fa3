// 审计: who did what, when.
import { get } from "../api.js";
import { icon, clear, fmtTime, h, today } from "../dom.js";
import { t } from "../i18n.js";

export async function render(main) {
  const f = {
    from: h("input", { type: "date", name: "from", value: today(-7) }),
    to: h("input", { type: "date", name: "to", value: today() }),
    actor: h("input", { name: "actor", placeholder: t("audit.actor") }),
    action: h("input", { name: "action", placeholder: "broadcast. / approval. / session." }),
  };
  const csv = h("a", { class: "btn", download: "" }, icon("download"), " ", t("rec.csv"));
  const table = h("div", { class: "card" });
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, t("audit.title"))),
    h(
      "form",
      { class: "card filters", onsubmit: (e) => (e.preventDefault(), load()) },
      Object.entries(f).map(([k, el]) => h("label", { class: "field" }, h("span", { class: "field-label" }, t(`audit.${k}`)), el)),
      h("div", { class: "filter-actions" }, h("button", { class: "btn btn-primary", type: "submit" }, t("rec.apply")), csv),
    ),
    table,
  );
  for (const el of Object.values(f)) el.addEventListener("change", load);

  async function load() {
    const params = new URLSearchParams();
    for (const [k, el] of Object.entries(f)) if (el.value) params.set(k, el.value);
    csv.href = `/api/audit.csv?${params}`;
    const data = await get(`/api/audit?limit=300&${params}`);
    clear(table).append(
      h("p", { class: "muted" }, t("rec.count", { n: data.total })),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "table", id: "audit" },
          h("thead", {}, h("tr", {}, [t("col.time"), t("audit.actor"), t("audit.role"), t("audit.action"), t("audit.target"), t("audit.detail")].map((x) => h("th", {}, x)))),
          h(
            "tbody",
            {},
            data.entries.map((e) =>
              h(
                "tr",
                {},
                h("td", {}, fmtTime(e.at, true)),
                h("td", {}, e.actor),
                h("td", {}, t(`role.${e.role}`)),
                h("td", {}, h("code", {}, e.action)),
                h("td", {}, e.target),
                h("td", { class: "detail" }, Object.entries(e.detail || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join("  ")),
              ),
            ),
          ),
        ),
      ),
    );
  }
  await load();
}
