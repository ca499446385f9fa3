// 电话广播: the calls terminals answered or refused, and (with the phone-book
// permission) the whitelists of numbers that may speak through a township's, a village's
// or one terminal's loudspeakers. Numbers are personal data: the server masks callers
// for readers without the permission and refuses them the whitelists.
import { api, get } from "../api.js";
import { clear, field, fmtDuration, fmtTime, h, placeName, select, toast } from "../dom.js";
import { t } from "../i18n.js";

const OUTCOMES = ["played", "rejected", "wrong_pin", "busy", "abandoned", "preempted", "failed"];

export async function render(main, ctx) {
  await ctx.loadPlaces();
  const calls = h("div", { class: "card", id: "calls" });
  const lists = h("div", { class: "card", id: "whitelists" });
  main.append(h("div", { class: "page-head" }, h("h1", {}, t("calls.title"))), calls);
  if (ctx.me.can_manage_phone_book) main.append(lists);

  async function loadCalls() {
    const data = await get("/api/calls?limit=300");
    clear(calls).append(
      h("h2", {}, t("calls.list")),
      data.callers_masked ? h("p", { class: "muted" }, t("calls.masked")) : "",
      data.calls.length === 0
        ? h("p", { class: "muted" }, t("calls.none"))
        : h(
            "div",
            { class: "table-wrap" },
            h(
              "table",
              { class: "table" },
              h("thead", {}, h("tr", {}, ["calls.time", "calls.terminal", "calls.caller", "calls.outcome", "calls.duration"].map((k) => h("th", {}, t(k))))),
              h(
                "tbody",
                {},
                data.calls.map((c) =>
                  h(
                    "tr",
                    { "data-outcome": c.outcome },
                    h("td", {}, fmtTime(c.rang_at_ms, true)),
                    h("td", {}, h("a", { href: `#/terminal/${c.device_id}` }, c.device_id)),
                    h("td", {}, c.caller || t("calls.withheld")),
                    h("td", {}, OUTCOMES.includes(c.outcome) ? t(`calls.out.${c.outcome}`) : c.outcome),
                    h("td", {}, c.played_ms ? fmtDuration(c.played_ms) : "—"),
                  ),
                ),
              ),
            ),
          ),
    );
  }

  function scopeOptions(scope) {
    if (scope === "township") return ctx.townships.map((x) => [x.id, placeName(x)]);
    if (scope === "village") return ctx.villages.map((x) => [x.id, `${placeName(ctx.township(x.township_id))} ${placeName(x)}`]);
    return null; // a terminal: typed
  }

  async function loadLists() {
    const data = await get("/api/phone/whitelists");
    const scope = select(["township", "village", "device"].map((s) => [s, t(`calls.scope.${s}`)]), "village", { name: "scope" });
    const target = h("span", {});
    const numbers = h("textarea", { name: "numbers", rows: 8, placeholder: "138 0013 8000" });
    const pin = h("input", { name: "pin", inputmode: "numeric", pattern: "[0-9]{4,8}", autocomplete: "off" });
    const clearPin = h("input", { type: "checkbox", name: "clear_pin" });
    let targetInput = null;
    function drawTarget() {
      const options = scopeOptions(scope.value);
      targetInput = options ? select(options, options[0]?.[0], { name: "scope_id" }) : h("input", { name: "scope_id", placeholder: "d-…" });
      clear(target).append(targetInput);
      const existing = data.whitelists.find((w) => w.scope === scope.value && w.scope_id === targetInput.value);
      numbers.value = existing ? existing.numbers.join("\n") : "";
    }
    scope.addEventListener("change", drawTarget);
    target.addEventListener("change", () => {
      const existing = data.whitelists.find((w) => w.scope === scope.value && w.scope_id === targetInput.value);
      numbers.value = existing ? existing.numbers.join("\n") : "";
    });
    drawTarget();
    async function save(e) {
      e.preventDefault();
      const body = { numbers: numbers.value.split(/[\n,;]+/).map((x) => x.trim()).filter(Boolean) };
      if (pin.value) body.pin = pin.value;
      if (clearPin.checked) body.clear_pin = true;
      try {
        const { data: saved } = await api("PUT", `/api/phone/whitelists/${scope.value}/${encodeURIComponent(targetInput.value)}`, body);
        toast(t("calls.saved", { n: saved.numbers.length, d: saved.devices, p: saved.published }), "ok");
        pin.value = "";
        await loadLists();
      } catch (err) {
        toast(err.field ? `${err.field}: ${err.message}` : err.message, "error");
      }
    }
    clear(lists).append(
      h("h2", {}, t("calls.whitelists")),
      h("p", { class: "muted" }, t("calls.whitelist_hint")),
      h(
        "form",
        { class: "form", onsubmit: save },
        field(t("calls.scope"), scope),
        field(t("calls.target"), target),
        field(t("calls.numbers"), numbers, t("calls.numbers_hint")),
        field(t("calls.pin"), pin, t("calls.pin_hint")),
        h("label", {}, clearPin, " ", t("calls.clear_pin")),
        h("div", {}, h("button", { class: "btn btn-primary", type: "submit" }, t("calls.save"))),
      ),
      h(
        "ul",
        { class: "plain" },
        data.whitelists.map((w) =>
          h("li", {}, `${t(`calls.scope.${w.scope}`)} ${w.scope_id}: ${t("calls.count", { n: w.numbers.length })}${w.has_pin ? " · PIN" : ""} · ${w.updated_by} ${fmtTime(w.updated_ms, true)}`),
        ),
      ),
    );
  }

  await loadCalls();
  if (ctx.me.can_manage_phone_book) await loadLists();
}

// 听一听: on a terminal's page, ask it for the first seconds of what it last played and
// play the clip here (terminal control; the terminal uploads it with a one-time token).
export function clipControl(deviceId) {
  const player = h("div", { class: "clip-player" }); // its own line: the audio takes the card's width
  const ask = h("button", { type: "button", class: "btn", id: "clip-request" }, t("clip.request"));
  ask.addEventListener("click", async () => {
    ask.disabled = true;
    clear(player).append(h("small", { class: "muted" }, t("clip.waiting")));
    try {
      const { data } = await api("POST", `/api/devices/${deviceId}/clip`, { seconds: 10 });
      let clip = data;
      for (let i = 0; i < 60 && clip.status === "pending"; i++) {
        await new Promise((r) => setTimeout(r, 1000));
        clip = await get(`/api/devices/${deviceId}/clip/${data.request_id}`);
      }
      clear(player).append(
        clip.status === "uploaded"
          ? h("audio", { controls: true, src: clip.media_url, id: "clip-audio" })
          : h("small", { class: "muted" }, t(clip.status === "empty" ? "clip.empty" : "clip.timeout")),
      );
    } catch (e) {
      clear(player);
      toast(e.message, "error");
    } finally {
      ask.disabled = false;
    }
  });
  return h("div", {}, h("div", { class: "control-row" }, ask, h("small", { class: "muted" }, t("clip.hint"))), player);
}
