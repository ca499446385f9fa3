// One terminal: state and faults (with when they started), telemetry and its history,
// the last deliveries; for whoever may control terminals (technicians, officers, township
// staff in their township): volume, a test tone and a health check.
import { api, get, onLive } from "../api.js";
import { icon, clear, fmtAgo, fmtTime, h, levelChip, modeBadge, svg, toast } from "../dom.js";
import { faultName, reasonWords, t } from "../i18n.js";
import { deliveryName, reasonText } from "../states.js";
import { deviceState } from "./terminals.js";
import { clipControl } from "./calls.js";

function sparkline(samples, key, label, unit) {
  const values = samples.map((s) => s[key]).filter((v) => typeof v === "number");
  const box = h("div", { class: "spark" }, h("span", { class: "fact-label" }, label));
  // Samples without this reading: the board has no such sensor (absent), not no data.
  if (!values.length) return box.append(h("span", { class: "muted" }, samples.length ? t("dev.absent") : "—")), box;
  const W = 240;
  const H = 48;
  const min = Math.min(...values);
  const max = Math.max(...values);
  const span = max - min || 1;
  const y = (v) => (max === min ? H / 2 : H - 4 - ((v - min) / span) * (H - 8));
  const pts = values.map((v, i) => `${values.length === 1 ? W / 2 : (i / (values.length - 1)) * W},${y(v)}`);
  const mark = values.length === 1 ? svg("circle", { cx: W / 2, cy: y(values[0]), r: 4 }) : svg("polyline", { points: pts.join(" "), fill: "none" });
  box.append(
    svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "spark-svg", preserveAspectRatio: "none" }, mark),
    h("small", {}, `${values[values.length - 1]}${unit}  (${min}–${max}${unit}, ${values.length} ${t("dev.samples")})`),
  );
  return box;
}

export async function render(main, ctx, [deviceId]) {
  await ctx.loadPlaces();
  const root = h("div", { class: "terminal" });
  main.append(root);

  async function load() {
    const [d, hist, dels] = await Promise.all([
      get(`/api/devices/${deviceId}`),
      get(`/api/devices/${deviceId}/telemetry`),
      get(`/api/devices/${deviceId}/deliveries?limit=15`),
    ]);
    draw(d, hist.samples, dels.deliveries);
  }

  function draw(d, samples, deliveries) {
    clear(root);
    const v = ctx.village(d.village_id);
    const tel = d.telemetry || {};
    // A sensor the terminal's board does not have is reported absent (null): "absent",
    // not a dash, which means no report has come yet.
    const reading = (value, unit = "") => (value != null ? `${value}${unit}` : d.telemetry ? t("dev.absent") : "—");
    const st = deviceState(d);
    root.append(
      h("p", {}, h("a", { href: "#/terminals" }, "← ", t("dev.title"))),
      h(
        "div",
        { class: "page-head" },
        h("h1", {}, v ? `${ctx.township(v.township_id)?.name || ""} ${v.name}` : d.village_id, h("small", { class: "muted" }, ` ${d.id}`)),
        h("span", { class: `status-pill dst-${st}`, id: "dev-state" }, t(`dstate.${st}`)),
      ),
    );
    const faults = Object.entries(d.faults || {});
    root.append(
      h(
        "section",
        { class: `card faults${faults.length ? " has-faults" : ""}`, id: "faults" },
        h("h2", {}, t("dev.faults")),
        faults.length
          ? h(
              "ul",
              {},
              faults.map(([f, since]) => h("li", { "data-fault": f }, h("strong", {}, faultName(f)), ` ${t("dev.since")} ${fmtTime(since, true)} (${fmtAgo(since)})`)),
            )
          : h("p", { class: "muted" }, t("dev.no_faults")),
      ),
    );
    const facts = [
      [t("dev.last_seen"), `${fmtTime(d.last_seen, true)} (${fmtAgo(d.last_seen)})`],
      [t("dev.firmware"), d.firmware || "—"],
      [t("dev.volume"), tel.volume ?? d.volume ?? "—"],
      [t("dev.power"), tel.power_source ? `${t(`power.${tel.power_source}`)}${tel.battery_pct != null ? ` ${tel.battery_pct}%` : ""}` : reading(null)],
      [t("dev.amplifier"), tel.amplifier_ok === undefined ? "—" : `${tel.amplifier_ok ? "✓" : "✗"} ${tel.amplifier_on ? t("dev.amp_on") : t("dev.amp_off")}`],
      [t("dev.speaker_line"), tel.speaker_line_ok === undefined ? "—" : tel.speaker_line_ok ? "✓" : "✗"],
      [t("dev.temperature"), reading(tel.temperature_c, " °C")],
      [t("dev.signal"), reading(tel.signal_dbm, " dBm")],
      [t("dev.operator"), reading(tel.operator)],
      [t("dev.clock"), tel.clock_offset_ms != null ? `${tel.clock_offset_ms} ms` : "—"],
      [t("dev.cache"), tel.cache_items != null ? `${tel.cache_items} / ${Math.round((tel.cache_bytes || 0) / 1024)} KiB` : "—"],
    ];
    root.append(
      h(
        "div",
        { class: "two-col" },
        h("section", { class: "card" }, h("h2", {}, t("dev.telemetry")), h("dl", { class: "facts" }, facts.map(([k, val]) => [h("dt", {}, k), h("dd", {}, String(val))]))),
        h(
          "section",
          { class: "card" },
          h("h2", {}, t("dev.history")),
          sparkline(samples, "temperature_c", t("dev.temperature"), " °C"),
          sparkline(samples, "signal_dbm", t("dev.signal"), " dBm"),
          sparkline(samples, "battery_pct", t("dev.battery"), "%"),
        ),
      ),
    );
    if (ctx.me.can_control_terminals) root.append(controls(d, tel));
    root.append(
      h(
        "section",
        { class: "card" },
        h("h2", {}, t("dev.deliveries")),
        h(
          "table",
          { class: "table", id: "deliveries" },
          h("thead", {}, h("tr", {}, h("th", {}, t("col.time")), h("th", {}, t("col.title")), h("th", {}, t("col.state")), h("th", {}, t("col.reason")))),
          h(
            "tbody",
            {},
            deliveries.map((x) =>
              h(
                "tr",
                { class: x.drill ? "is-drill" : "" },
                h("td", {}, fmtTime(x.created_at, true)),
                h("td", {}, x.priority === "emergency" ? [modeBadge(x.drill), " ", levelChip(x.level), " "] : null, h("a", { href: `#/board/${x.broadcast_id}` }, x.title)),
                h("td", { "data-state": x.state }, deliveryName(x.state, x.reason)),
                h("td", { title: x.reason || "" }, reasonWords(x, reasonText)),
              ),
            ),
          ),
        ),
      ),
    );
  }

  function controls(d, tel) {
    const current = tel.volume ?? d.volume ?? 70;
    const slider = h("input", { type: "range", min: 0, max: 100, step: 5, value: current, id: "volume" });
    const out = h("output", {}, String(current));
    slider.addEventListener("input", () => (out.textContent = slider.value));
    const apply = h("button", { type: "button", class: "btn btn-primary", id: "volume-apply" }, t("dev.volume.apply"));
    apply.addEventListener("click", async () => {
      try {
        await api("POST", `/api/devices/${deviceId}/volume`, { normal_volume: Number(slider.value) });
        toast(t("dev.volume.sent"));
      } catch (e) {
        toast(e.message, "error");
      }
    });
    const tone = h("button", { type: "button", class: "btn", id: "test-tone" }, icon("bell"), " ", t("dev.tone"));
    tone.addEventListener("click", async () => {
      tone.disabled = true;
      try {
        const { data } = await api("POST", `/api/devices/${deviceId}/test-tone`);
        // Never "sent" for a tone nobody can hear yet: offline means queued until expiry.
        if (data.delivery_state === "offline") toast(t("dev.tone.queued", { min: Math.round((data.expires_in_s || 120) / 60) }), "error");
        else toast(t("dev.tone.waiting"));
        setTimeout(load, 500);
      } catch (e) {
        toast(e.message, "error");
      } finally {
        tone.disabled = false;
      }
    });
    const interval = h("input", { type: "number", min: 5, max: 3600, step: 1, id: "diag-interval", placeholder: t("dev.diag.interval") });
    const diag = h("button", { type: "button", class: "btn", id: "diagnostics" }, icon("wait"), " ", t("dev.diag"));
    diag.addEventListener("click", async () => {
      diag.disabled = true;
      try {
        const body = interval.value ? { telemetry_interval_s: Number(interval.value) } : {};
        await api("POST", `/api/devices/${deviceId}/diagnostics`, body);
        toast(t("dev.diag.sent"));
      } catch (e) {
        toast(e.message, "error");
      } finally {
        diag.disabled = false;
      }
    });
    // Enrolment (issue 13): a one-time code for this terminal's board, shown once, and
    // revoking a lost one (its broker login ends at once).
    const codeOut = h("code", { id: "enrol-code" });
    const enrolNew = h("button", { type: "button", class: "btn", id: "enrol-code-new" }, t("dev.enrol.new"));
    enrolNew.addEventListener("click", async () => {
      enrolNew.disabled = true;
      try {
        const issued = await api("POST", `/api/devices/${deviceId}/enrolment-code`, {});
        codeOut.textContent = `${issued.code} (${t("dev.enrol.until", { at: fmtTime(issued.expires_at, true) })})`;
      } catch (e) {
        toast(e.message, "error");
      } finally {
        enrolNew.disabled = false;
      }
    });
    const revoke = h("button", { type: "button", class: "btn", id: "revoke" }, t("dev.revoke"));
    revoke.addEventListener("click", async () => {
      if (!confirm(t("dev.revoke.confirm", { id: deviceId }))) return;
      try {
        await api("POST", `/api/devices/${deviceId}/revoke`);
        toast(t("dev.revoke.done"));
        setTimeout(load, 500);
      } catch (e) {
        toast(e.message, "error");
      }
    });
    return h(
      "section",
      { class: "card controls" },
      h("h2", {}, t("dev.controls")),
      ctx.me.can_broadcast ? null : h("p", { class: "muted" }, t("dev.controls.tech")),
      h("div", { class: "control-row" }, h("label", { class: "field" }, h("span", { class: "field-label" }, t("dev.volume.normal")), h("span", { class: "range" }, slider, out)), apply),
      h("div", { class: "control-row" }, tone, h("small", { class: "muted" }, t("dev.tone.hint"))),
      h("div", { class: "control-row" }, diag, h("label", { class: "field" }, h("span", { class: "field-label" }, t("dev.diag.interval")), interval), h("small", { class: "muted" }, t("dev.diag.hint"))),
      h("div", { class: "control-row" }, enrolNew, codeOut, h("small", { class: "muted" }, t("dev.enrol.hint"))),
      h("div", { class: "control-row" }, revoke, h("small", { class: "muted" }, t("dev.revoke.hint"))),
      clipControl(deviceId),
    );
  }

  let reload = null;
  const stop = onLive((kind, data) => {
    if ((data.device_id || data.id) !== deviceId && kind !== "resync") return;
    clearTimeout(reload);
    reload = setTimeout(load, 300);
  });
  await load();
  return () => {
    stop();
    clearTimeout(reload);
  };
}
