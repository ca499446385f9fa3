// 预警来源: who may send warnings (the warning-release platform, the upper-level platform),
// each with its token (shown once), its mode (automatic: plays at once; review: waits for
// an officer), the levels it always holds for an officer, and an optional certificate
// whose key must sign every CAP message. Admins edit; county officers read.
import { api, get } from "../api.js";
import { clear, fmtTime, h, select, toast } from "../dom.js";
import { t } from "../i18n.js";

const MODES = ["automatic", "review"];
const LEVELS = [1, 2, 3, 4];

export async function render(main, ctx) {
  const admin = ctx.me.role === "admin";
  const list = h("div", { class: "card" });
  const form = h("div", { class: "card" });
  main.append(h("div", { class: "page-head" }, h("h1", {}, t("up.sources")), h("p", { class: "muted" }, t("up.sources.subtitle"))), h("div", { class: admin ? "two-col wide-left" : "" }, list, admin ? form : null));

  function modeSelect(value) {
    return select(MODES.map((m) => [m, t(`up.mode.${m}`)]), value, { name: "mode" });
  }
  function levelBoxes(chosen) {
    const boxes = LEVELS.map((n) => h("input", { type: "checkbox", value: n, checked: chosen.includes(n), "data-level": n }));
    const el = h("span", { class: "level-boxes" }, ...boxes.map((b, i) => h("label", { class: "inline" }, b, ` ${t(`level.${LEVELS[i]}`)}`)));
    return { el, value: () => boxes.filter((b) => b.checked).map((b) => Number(b.value)) };
  }

  async function load() {
    const data = await get("/api/upstream/sources");
    const body = h("tbody", {});
    for (const s of data.sources) {
      const mode = modeSelect(s.mode);
      const hold = levelBoxes(s.hold_levels);
      const enabled = h("input", { type: "checkbox", checked: s.enabled });
      const cert = h("textarea", { rows: 2, placeholder: s.signature_required ? t("up.cert.keep") : t("up.cert.none"), class: "cert" });
      const save = h("button", { type: "button", class: "btn", "data-action": "save" }, t("common.save"));
      save.addEventListener("click", async () => {
        const patch = { mode: mode.value, hold_levels: hold.value(), enabled: enabled.checked };
        if (cert.value.trim()) patch.certificate_pem = cert.value.trim();
        try {
          await api("PATCH", `/api/upstream/sources/${encodeURIComponent(s.id)}`, patch);
          toast(t("common.saved"));
          load();
        } catch (e) {
          toast(e.message, "error");
        }
      });
      for (const el of [mode, enabled, cert, save]) el.disabled = !admin;
      const cells = [
        h("td", {}, h("strong", {}, s.name), h("br"), h("small", { class: "muted" }, `${s.id} · ${fmtTime(s.created_at, true)}`)),
        h("td", {}, mode),
        h("td", {}, hold.el),
        h("td", {}, h("label", { class: "inline" }, enabled, " ", t("up.enabled")), h("br"), h("small", { class: "muted" }, s.signature_required ? t("up.cert.required") : t("up.cert.none"))),
        h("td", {}, cert),
        h("td", {}, admin ? save : null),
      ];
      body.append(h("tr", { "data-source": s.id, "data-mode": s.mode }, ...cells));
    }
    clear(list).append(
      h("h2", {}, t("up.sources.list")),
      data.sources.length
        ? h("div", { class: "table-wrap" }, h("table", { class: "table", id: "sources" }, h("thead", {}, h("tr", {}, [t("up.source"), t("up.mode"), t("up.hold_levels"), "", t("up.cert"), ""].map((x) => h("th", {}, x)))), body))
        : h("p", { class: "muted", id: "no-sources" }, t("up.sources.none")),
      h("p", { class: "muted small" }, t("up.hold_levels.hint")),
    );
  }

  if (admin) {
    const id = h("input", { name: "id", required: true, pattern: "[a-z0-9][a-z0-9_.\\-]*", autocomplete: "off" });
    const name = h("input", { name: "name", autocomplete: "off" });
    const mode = modeSelect("review");
    const shown = h("div", { id: "source-token" });
    form.append(
      h("h2", {}, t("up.sources.new")),
      h(
        "form",
        {
          onsubmit: async (e) => {
            e.preventDefault();
            try {
              const { data } = await api("POST", "/api/upstream/sources", { id: id.value.trim(), name: name.value.trim() || null, mode: mode.value });
              clear(shown).append(h("p", {}, t("up.token_once")), h("pre", { class: "token" }, data.token));
              id.value = name.value = "";
              load();
            } catch (err) {
              toast(err.message, "error");
            }
          },
        },
        h("label", { class: "field" }, h("span", { class: "field-label" }, t("up.source_id")), id, h("small", { class: "muted" }, t("up.source_id.hint"))),
        h("label", { class: "field" }, h("span", { class: "field-label" }, t("up.source_name")), name),
        h("label", { class: "field" }, h("span", { class: "field-label" }, t("up.mode")), mode),
        h("button", { class: "btn btn-primary", type: "submit" }, t("up.sources.create")),
      ),
      shown,
    );
  }
  await load();
}
