import { api } from "../api.js";
import { h, icon } from "../dom.js";
import { applyStaticText, lang, setLang, t } from "../i18n.js";

export async function render(main, ctx) {
  const error = h("p", { class: "form-error", role: "alert" });
  const name = h("input", { name: "name", autocomplete: "username", required: true, autofocus: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const submit = h("button", { class: "btn btn-primary btn-block", type: "submit" }, t("login.submit"));
  const form = h(
    "form",
    { class: "card login-card", onsubmit: onSubmit },
    h("div", { class: "login-brand" }, icon("megaphone", "brand-mark big"), h("div", {}, h("h1", {}, t("app.name")), h("p", { class: "muted" }, t("app.tagline")))),
    h("label", { class: "field" }, h("span", { class: "field-label" }, t("login.name")), name),
    h("label", { class: "field" }, h("span", { class: "field-label" }, t("login.password")), password),
    error,
    submit,
    h(
      "button",
      {
        class: "link",
        type: "button",
        onclick: () => {
          setLang(lang() === "en" ? "zh-CN" : "en");
          applyStaticText();
          ctx.go("#/login");
        },
      },
      lang() === "en" ? "中文" : "English",
    ),
  );
  main.append(h("div", { class: "login-wrap" }, form));

  let holding = null;
  function holdSubmit(seconds) {
    let left = seconds;
    submit.disabled = true;
    const label = t("login.submit");
    const tick = () => {
      if (left <= 0 || !submit.isConnected) {
        clearInterval(holding);
        holding = null;
        submit.disabled = false;
        submit.textContent = label;
        return;
      }
      submit.textContent = `${label} (${left})`;
      left -= 1;
    };
    tick();
    holding = setInterval(tick, 1000);
  }
  // The wait is for that name from here: another name may try at once.
  name.addEventListener("input", () => {
    if (!holding) return;
    clearInterval(holding);
    holding = null;
    submit.disabled = false;
    submit.textContent = t("login.submit");
  });

  async function onSubmit(e) {
    e.preventDefault();
    error.textContent = "";
    submit.disabled = true;
    try {
      const { data } = await api("POST", "/api/session/login", { name: name.value.trim(), password: password.value });
      await ctx.loggedIn(data);
    } catch (err) {
      password.value = "";
      const wait = Number(err.info?.retry_after_s) || 0;
      if (err.code === "login_backoff") error.textContent = t("login.backoff", { n: wait });
      else if (err.code === "invalid_credentials") error.textContent = wait ? t("login.wrong_wait", { n: wait }) : t("login.wrong");
      else error.textContent = err.message;
      // The server refuses tries from here for that long anyway: say so on the button.
      if (wait) return holdSubmit(wait);
    } finally {
      if (!holding) submit.disabled = false;
    }
  }
}
