// 分组: saved target groups ("沿河村") to pick an area in one click.
import { api, get } from "../api.js";
import { clear, confirmDialog, h, toast } from "../dom.js";
import { t } from "../i18n.js";

export async function render(main, ctx) {
  await ctx.loadPlaces();
  const list = h("div", { class: "card" });
  const editor = h("div", { class: "card" });
  main.append(h("div", { class: "page-head" }, h("h1", {}, t("grp.title")), h("p", { class: "muted" }, t("grp.subtitle"))), h("div", { class: "two-col" }, list, editor));

  async function load() {
    const data = await get("/api/groups");
    clear(list).append(h("h2", {}, t("grp.list")));
    if (!data.groups.length) list.append(h("p", { class: "muted" }, t("grp.none")));
    for (const g of data.groups) {
      const del = h("button", { type: "button", class: "link danger" }, t("common.delete"));
      del.addEventListener("click", async () => {
        if (!(await confirmDialog({ title: t("grp.delete"), body: g.name, ok: t("common.delete") }))) return;
        try {
          await api("DELETE", `/api/groups/${g.id}`);
          load();
        } catch (e) {
          toast(e.message, "error");
        }
      });
      const edit = h("button", { type: "button", class: "link" }, t("common.edit"));
      edit.addEventListener("click", () => drawEditor(g));
      list.append(
        h(
          "div",
          { class: "group-item", "data-group": g.id },
          h("strong", {}, g.name),
          h("small", { class: "muted" }, ` ${g.villages.length}${t("unit.village")} · ${g.township_id ? ctx.township(g.township_id)?.name : t("grp.county")}`),
          h("div", { class: "muted small" }, g.villages.map((v) => ctx.village(v)?.name || v).join(t("sep"))),
          h("div", {}, edit, " ", del),
        ),
      );
    }
  }

  function drawEditor(group) {
    const chosen = new Set(group?.villages || []);
    const name = h("input", { name: "name", value: group?.name || "", required: true, maxlength: 60 });
    const desc = h("input", { name: "description", value: group?.description || "" });
    const box = h("div", { class: "village-box" });
    for (const tw of ctx.townships) {
      const vs = ctx.villages.filter((v) => v.township_id === tw.id);
      box.append(
        h(
          "div",
          { class: "village-group" },
          h("div", { class: "village-group-head" }, h("strong", {}, tw.name)),
          h(
            "div",
            { class: "chips" },
            vs.map((v) => {
              const chip = h("button", { type: "button", class: `chip${chosen.has(v.id) ? " on" : ""}`, "data-village": v.id }, v.name);
              chip.addEventListener("click", () => {
                if (chosen.has(v.id)) chosen.delete(v.id);
                else chosen.add(v.id);
                chip.classList.toggle("on");
              });
              return chip;
            }),
          ),
        ),
      );
    }
    const save = h("button", { type: "submit", class: "btn btn-primary" }, t("common.save"));
    clear(editor).append(
      h("h2", {}, group ? t("grp.edit") : t("grp.new")),
      h(
        "form",
        {
          onsubmit: async (e) => {
            e.preventDefault();
            const body = { name: name.value.trim(), description: desc.value.trim(), villages: [...chosen] };
            try {
              if (group) await api("PUT", `/api/groups/${group.id}`, body);
              else await api("POST", "/api/groups", body);
              toast(t("common.saved"));
              drawEditor(null);
              load();
            } catch (err) {
              toast(err.message, "error");
            }
          },
        },
        h("label", { class: "field" }, h("span", { class: "field-label" }, t("grp.name")), name),
        h("label", { class: "field" }, h("span", { class: "field-label" }, t("grp.description")), desc),
        box,
        save,
      ),
    );
  }

  drawEditor(null);
  await load();
}
