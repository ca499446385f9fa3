// 用户: console users and roles (admin only).
import { api, get } from "../api.js";
import { clear, h, select, toast } from "../dom.js";
import { t } from "../i18n.js";

const ROLES = ["admin", "duty_officer", "township_staff", "technician", "viewer"];
const PASSWORD_CODES = ["password_too_short", "password_too_long", "password_common", "password_contains_name", "password_too_simple"];

// A password the policy refused, in the user's language; anything else as the server said it.
function errorText(e) {
  return PASSWORD_CODES.includes(e.code) ? t(`err.${e.code}`) : e.message;
}

export async function render(main, ctx) {
  await ctx.loadPlaces();
  const list = h("div", { class: "card" });
  const form = h("div", { class: "card" });
  main.append(h("div", { class: "page-head" }, h("h1", {}, t("users.title"))), h("div", { class: "two-col wide-left" }, list, form));

  function roleSelect(value) {
    return select(ROLES.map((r) => [r, t(`role.${r}`)]), value, { name: "role" });
  }
  function townshipSelect(value) {
    return select([["", "—"], ...ctx.townships.map((x) => [x.id, x.name])], value || "", { name: "township_id" });
  }

  // Addresses slowed down after failed logins for this name, and the admin's way out.
  function backoff(u) {
    if (!u.login_backoff?.length) return null;
    const unlock = h("button", { type: "button", class: "btn", "data-action": "unlock" }, t("users.unlock"));
    unlock.addEventListener("click", async () => {
      try {
        const { data } = await api("POST", `/api/users/${encodeURIComponent(u.name)}/unlock`);
        toast(t("users.unlocked", { clients: data.cleared.join(", ") }));
        load();
      } catch (e) {
        toast(e.message, "error");
      }
    });
    return h(
      "div",
      { class: "login-backoff", "data-backoff": u.login_backoff.length },
      h("span", { class: "status-pill dst-fault" }, t("users.backoff")),
      h("ul", { class: "muted small" }, u.login_backoff.map((b) => h("li", {}, t("users.backoff.item", b)))),
      unlock,
    );
  }

  async function load() {
    const data = await get("/api/users");
    const body = h("tbody", {});
    for (const u of data.users) {
      // A warning source (issue 11) keeps its role; it is managed on the sources page.
      const source = u.role === "upstream";
      const role = source ? null : roleSelect(u.role);
      const tw = townshipSelect(u.township_id);
      const pw = h("input", { type: "password", placeholder: t("users.new_password"), autocomplete: "new-password" });
      const disabled = h("input", { type: "checkbox", checked: u.disabled });
      const save = h("button", { type: "button", class: "btn" }, t("common.save"));
      save.addEventListener("click", async () => {
        const patch = { township_id: tw.value || null, disabled: disabled.checked };
        if (role) patch.role = role.value;
        if (pw.value) patch.password = pw.value;
        try {
          await api("PATCH", `/api/users/${u.id}`, patch);
          toast(t("common.saved"));
          load();
        } catch (e) {
          toast(errorText(e), "error");
        }
      });
      body.append(h("tr", { "data-user": u.name }, h("td", {}, h("strong", {}, u.name), backoff(u)), h("td", {}, role || h("a", { href: "#/sources" }, t("role.upstream"))), h("td", {}, tw), h("td", {}, h("label", { class: "inline" }, disabled, " ", t("users.disabled"))), h("td", {}, pw), h("td", {}, save)));
    }
    clear(list).append(
      h("h2", {}, t("users.list")),
      h("div", { class: "table-wrap" }, h("table", { class: "table" }, h("thead", {}, h("tr", {}, [t("users.name"), t("users.role"), t("rec.township"), "", t("login.password"), ""].map((x) => h("th", {}, x)))), body)),
    );
  }

  const name = h("input", { name: "name", required: true, autocomplete: "off" });
  const role = roleSelect("duty_officer");
  const tw = townshipSelect("");
  const pw = h("input", { type: "password", name: "password", required: true, minlength: ctx.me.password_min_chars || 10, autocomplete: "new-password" });
  form.append(
    h("h2", {}, t("users.new")),
    h(
      "form",
      {
        onsubmit: async (e) => {
          e.preventDefault();
          try {
            await api("POST", "/api/users", { name: name.value.trim(), role: role.value, township_id: tw.value || null, password: pw.value });
            toast(t("common.saved"));
            name.value = pw.value = "";
            load();
          } catch (err) {
            toast(errorText(err), "error");
          }
        },
      },
      h("label", { class: "field" }, h("span", { class: "field-label" }, t("users.name")), name),
      h("label", { class: "field" }, h("span", { class: "field-label" }, t("users.role")), role, h("small", { class: "muted" }, t("users.role.technician_hint"))),
      h("label", { class: "field" }, h("span", { class: "field-label" }, t("rec.township")), tw, h("small", { class: "muted" }, t("users.township_hint"))),
      h("label", { class: "field" }, h("span", { class: "field-label" }, t("login.password")), pw, h("small", { class: "muted" }, t("users.password_hint"))),
      h("button", { class: "btn btn-primary", type: "submit" }, t("users.create")),
    ),
  );
  await load();
}
