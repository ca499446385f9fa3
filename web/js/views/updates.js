// 终端升级: agent releases and their rollouts in waves (controller/updates.py). Admins
// (Permission.UPDATES) upload a release, roll it out to a target, halt or resume it;
// technicians read where each terminal stands. The server decides everything: the
// first wave, the automatic halt, what a terminal reported.
import { api, onLive, post, upload } from "../api.js";
import { append, clear, field, fmtTime, h, select, toast } from "../dom.js";
import { t } from "../i18n.js";

// Error codes this page words itself (the rest show the server's own message).
const OWN_ERRORS = new Set(["release_exists", "not_halted"]);
const ROLLOUT_PILL = { first_wave: "dst-playing", second_wave: "dst-playing", halted: "dst-fault", finished: "dst-online" };
const TERMINAL_PILL = {
  waiting: "dst-offline",
  offered: "dst-offline",
  downloading: "dst-playing",
  installed: "dst-playing",
  done: "dst-online",
  rolled_back: "dst-fault",
  failed: "dst-fault",
};
const STATES = Object.keys(TERMINAL_PILL);
const REFRESH_MS = 5_000; // while a rollout moves; terminals report through events

function errorText(e) {
  return OWN_ERRORS.has(e.code) ? t(`err.${e.code}`) : e.message;
}

function fmtSize(bytes) {
  return bytes >= 1048576 ? `${(bytes / 1048576).toFixed(1)} MiB` : `${Math.ceil(bytes / 1024)} KiB`;
}

export async function render(main, ctx) {
  await ctx.loadPlaces();
  // Mirrors ROLE_PERMISSIONS (controller/auth.py): Permission.UPDATES is the admins'.
  const canAct = ctx.me.role === "admin";
  const open = new Set(); // rollouts whose terminals are shown
  const uploadBox = h("div", { id: "upd-upload" });
  const releasesBox = h("div", { id: "upd-releases" });
  const rolloutsBox = h("div", { id: "upd-rollouts" });
  append(main, [
    h("div", { class: "page-head" }, h("h1", {}, t("upd.title"))),
    canAct ? uploadBox : h("p", { class: "muted", id: "upd-readonly" }, t("upd.readonly")),
    h("h2", {}, t("upd.releases")),
    releasesBox,
    h("h2", {}, t("upd.rollouts")),
    rolloutsBox,
  ]);

  function uploadForm() {
    const file = h("input", { type: "file", name: "file", accept: ".whl,.zip" });
    const version = h("input", { type: "text", name: "version", placeholder: "0.2.1", size: 10, maxlength: 32 });
    const minVersion = h("input", { type: "text", name: "min_version", placeholder: "0.2.0", size: 10, maxlength: 32 });
    const notes = h("input", { type: "text", name: "notes", size: 40, maxlength: 2000 });
    const send = async () => {
      const chosen = file.files && file.files[0];
      if (!chosen) return toast(t("upd.pick_file"), "error");
      const q = new URLSearchParams({ version: version.value.trim(), min_version: minVersion.value.trim(), filename: chosen.name, notes: notes.value.trim() });
      try {
        const made = await upload(`/api/updates/releases?${q}`, chosen);
        toast(t("upd.uploaded", { version: made.version }), "ok");
        file.value = "";
        await load();
      } catch (e) {
        toast(errorText(e), "error");
      }
    };
    return h(
      "div",
      { class: "card" },
      h("h2", {}, t("upd.upload")),
      h(
        "div",
        { class: "control-row" },
        field(t("upd.file"), file),
        field(t("upd.version"), version),
        field(t("upd.min_version"), minVersion, t("upd.min_version.hint")),
        field(t("upd.notes"), notes),
        h("button", { class: "btn btn-primary", type: "button", "data-action": "upload", onclick: send }, t("upd.upload")),
      ),
    );
  }

  function rolloutForm(release) {
    const scope = select(
      [["all", t("upd.target.all")], ...ctx.townships.map((x) => [`t:${x.id}`, x.name]), ["devices", t("upd.target.devices")]],
      "all",
      { name: "scope" },
    );
    const devices = h("input", { type: "text", name: "devices", size: 30, placeholder: "d-t01-v01-1 d-t01-v02-1", hidden: true });
    scope.addEventListener("change", () => (devices.hidden = scope.value !== "devices"));
    const number = (name, value, min, max) => h("input", { type: "number", name, value, min, max, step: 1 });
    const first = number("first_wave_percent", 10, 1, 100);
    const halt = number("halt_failure_percent", 20, 1, 100);
    const selfTest = number("self_test_s", 120, 10, 3600);
    const start = async () => {
      let targets = { all: true };
      if (scope.value.startsWith("t:")) targets = { townships: [scope.value.slice(2)] };
      if (scope.value === "devices") targets = { devices: devices.value.split(/[\s,]+/).filter(Boolean) };
      try {
        await post("/api/updates/rollouts", {
          release_id: release.id,
          targets,
          first_wave_percent: Number(first.value),
          halt_failure_percent: Number(halt.value),
          self_test_s: Number(selfTest.value),
        });
        toast(t("upd.started", { version: release.version }), "ok");
        await load();
      } catch (e) {
        toast(errorText(e), "error");
      }
    };
    return h(
      "div",
      { class: "control-row", "data-release": release.id },
      field(t("upd.target"), h("span", {}, scope, " ", devices)),
      field(t("upd.first_wave"), first, t("upd.first_wave.hint")),
      field(t("upd.halt_at"), halt, t("upd.halt_at.hint")),
      field(t("upd.self_test"), selfTest),
      h("button", { class: "btn btn-primary", type: "button", "data-action": "rollout", onclick: start }, t("upd.roll_out")),
    );
  }

  function drawReleases(releases) {
    clear(releasesBox);
    if (!releases.length) return releasesBox.append(h("div", { class: "card empty" }, t("upd.no_releases")));
    for (const r of releases) {
      releasesBox.append(
        h(
          "article",
          { class: "card", "data-release": r.id, "data-version": r.version },
          h("h3", {}, `${t("upd.version")} ${r.version}`, " ", h("small", { class: "muted" }, r.filename)),
          h(
            "dl",
            { class: "facts" },
            [
              [t("upd.min_version"), r.min_version],
              ["sha256", h("code", { title: r.sha256 }, r.sha256.slice(0, 16) + "…")],
              [t("upd.size"), fmtSize(r.size)],
              [t("upd.uploaded_by"), `${r.uploaded_by} · ${fmtTime(r.created_at, true)}`],
              r.notes ? [t("upd.notes"), r.notes] : null,
            ]
              .filter(Boolean)
              .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
          ),
          canAct ? rolloutForm(r) : null,
        ),
      );
    }
  }

  async function act(rollout, action) {
    try {
      await post(`/api/updates/rollouts/${rollout.id}/${action}`);
      toast(t(`upd.${action}_ok`), "ok");
      await load();
    } catch (e) {
      toast(errorText(e), "error");
    }
  }

  function terminalsTable(view) {
    const rows = view.terminals.map((x) => {
      const village = ctx.village(x.village_id);
      return h(
        "tr",
        { "data-device": x.device_id, "data-state": x.state },
        h("td", {}, h("a", { href: `#/terminal/${x.device_id}` }, x.device_id)),
        h("td", {}, village ? village.name : x.village_id || ""),
        h("td", {}, x.wave),
        h("td", {}, h("span", { class: `status-pill ${TERMINAL_PILL[x.state]}` }, t(`upd.state.${x.state}`))),
        h("td", {}, x.reason || ""),
        h("td", {}, x.running || ""),
        h("td", {}, x.updated_at ? fmtTime(x.updated_at, true) : ""),
      );
    });
    const head = [t("upd.col.terminal"), t("upd.col.village"), t("upd.col.wave"), t("upd.col.state"), t("upd.col.reason"), t("upd.col.running"), t("upd.col.updated")];
    return h("div", { class: "table-wrap" }, h("table", { class: "table" }, h("thead", {}, h("tr", {}, head.map((x) => h("th", {}, x)))), h("tbody", {}, rows)));
  }

  async function drawRollouts(rollouts) {
    const details = await Promise.all(rollouts.map((r) => (open.has(r.id) ? api("GET", `/api/updates/rollouts/${r.id}`).then((x) => x.data) : null)));
    clear(rolloutsBox);
    if (!rollouts.length) return rolloutsBox.append(h("div", { class: "card empty" }, t("upd.no_rollouts")));
    rollouts.forEach((r, i) => {
      const counts = STATES.filter((s) => r.counts[s]).map((s) => h("span", { class: `status-pill ${TERMINAL_PILL[s]}`, "data-count": s }, `${t(`upd.state.${s}`)} ${r.counts[s]}`));
      const buttons = canAct
        ? [
            r.state === "first_wave" || r.state === "second_wave"
              ? h("button", { class: "btn", type: "button", "data-action": "halt", onclick: () => act(r, "halt") }, t("upd.halt"))
              : null,
            r.state === "halted" ? h("button", { class: "btn btn-primary", type: "button", "data-action": "resume", onclick: () => act(r, "resume") }, t("upd.resume")) : null,
          ]
        : [];
      const toggle = h(
        "button",
        {
          class: "btn",
          type: "button",
          "data-action": "terminals",
          onclick: () => {
            if (open.has(r.id)) open.delete(r.id);
            else open.add(r.id);
            load().catch((e) => toast(errorText(e), "error"));
          },
        },
        open.has(r.id) ? t("upd.hide_terminals") : t("upd.show_terminals"),
      );
      rolloutsBox.append(
        h(
          "article",
          { class: "card", "data-rollout": r.id, "data-state": r.state },
          h(
            "div",
            { class: "approval-head" },
            h("h3", {}, `${t("upd.version")} ${r.version}`),
            h("span", { class: `status-pill ${ROLLOUT_PILL[r.state]}` }, t(`upd.rollout.${r.state}`)),
            h("small", { class: "muted" }, `${r.created_by} · ${fmtTime(r.created_at, true)}`),
          ),
          r.halt ? h("p", { class: "warn", "data-halt": r.halt.code }, t(`upd.halt.${r.halt.code}`, r.halt)) : null,
          h("p", { class: "muted" }, t("upd.waves", { first: r.first_wave_percent, halt: r.halt_failure_percent })),
          h("div", { class: "control-row" }, counts),
          h("div", { class: "control-row" }, buttons, toggle),
          details[i] ? terminalsTable(details[i]) : null,
        ),
      );
    });
  }

  let moving = false;
  async function load() {
    const [releases, rollouts] = await Promise.all([api("GET", "/api/updates/releases"), api("GET", "/api/updates/rollouts")]);
    drawReleases(releases.data.releases);
    await drawRollouts(rollouts.data.rollouts);
    moving = rollouts.data.rollouts.some((r) => r.state === "first_wave" || r.state === "second_wave");
  }

  if (canAct) uploadBox.append(uploadForm());
  // Typing in a form must not be wiped by a refresh.
  const busy = () => [...main.querySelectorAll("input")].some((el) => el === document.activeElement);
  const refresh = () => {
    if (moving && !busy()) load().catch(() => {});
  };
  const timer = setInterval(refresh, REFRESH_MS);
  const stop = onLive((kind) => {
    if (kind === "event" || kind === "resync") refresh();
  });
  await load();
  return () => {
    stop();
    clearInterval(timer);
  };
}
