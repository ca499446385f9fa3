// The live board: every village of a broadcast turning from sent to received, fetched,
// playing and done (or failed, with the reason), with counts, elapsed time, one-click
// cancel and a ready correction / false-alarm message.
import { api, get, onLive } from "../api.js";
import { append, icon, clear, confirmDialog, fmtDuration, fmtTime, h, levelChip, modeBanner, toast } from "../dom.js";
import { categoryName, stateName, t } from "../i18n.js";

const ORDER = ["sent", "received", "fetched", "preempted", "playing", "done"];
const FAILED = new Set(["failed", "rejected", "expired"]);
const FINAL = new Set(["done", "failed", "rejected", "expired", "cancelled"]);
const COUNTED = ["sent", "received", "fetched", "playing", "done", "failed", "cancelled"];

function bucket(state) {
  return FAILED.has(state) ? "failed" : state === "preempted" ? "fetched" : state;
}

// A village is as far as its least advanced terminal; any failure shows.
function villageState(states) {
  if (states.some((s) => FAILED.has(s))) return "failed";
  if (states.every((s) => s === "cancelled")) return "cancelled";
  let lowest = "done";
  for (const s of states) {
    if (s === "cancelled") continue;
    if (ORDER.indexOf(s) < ORDER.indexOf(lowest)) lowest = s;
  }
  return lowest;
}

export async function render(main, ctx, [broadcastId]) {
  await ctx.loadPlaces();
  let view = null;
  const devices = new Map(); // device id -> delivery
  const root = h("div", { class: "board" });
  main.append(root);
  let timer = null;
  let pending = false;

  async function load() {
    view = await get(`/api/broadcasts/${broadcastId}`);
    devices.clear();
    for (const d of view.deliveries) devices.set(d.device_id, d);
    draw();
  }

  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      draw();
    });
  }

  const stop = onLive((kind, data) => {
    if (kind === "delivery" && data.broadcast_id === broadcastId) {
      const d = devices.get(data.device_id);
      if (!d) return;
      d.state = data.state;
      d.reason = data.reason;
      d.updated_at = new Date(data.at).toISOString();
      schedule();
    } else if ((kind === "broadcast" && data.id === broadcastId) || kind === "resync") {
      load();
    }
  });

  function counts() {
    const c = Object.fromEntries(COUNTED.map((s) => [s, 0]));
    for (const d of devices.values()) c[bucket(d.state)] = (c[bucket(d.state)] || 0) + 1;
    return c;
  }

  function elapsedMs() {
    const start = new Date(view.created_at).getTime();
    const all = [...devices.values()];
    if (all.length && all.every((d) => FINAL.has(d.state))) {
      const last = Math.max(...all.map((d) => new Date(d.updated_at).getTime()));
      return last - start;
    }
    return Date.now() - start;
  }

  function areaLabel() {
    const tg = view.targets || {};
    if (tg.all) return t("em.area.county_all", { n: ctx.townships.length });
    if (tg.townships?.length) return tg.townships.map((id) => ctx.township(id)?.name || id).join(t("sep"));
    const vs = tg.villages || [];
    if (vs.length && vs.length <= 4) return vs.map((id) => ctx.village(id)?.name || id).join(t("sep"));
    if (vs.length) return t("em.area.villages_n", { n: vs.length, t: new Set(vs.map((v) => ctx.village(v)?.township_id)).size });
    return (tg.devices || []).join(t("sep"));
  }

  function draw() {
    clear(root);
    document.body.classList.toggle("drill-mode", view.drill);
    document.body.classList.toggle("real-mode", !view.drill);
    const c = counts();
    const total = devices.size;
    const finished = [...devices.values()].filter((d) => FINAL.has(d.state)).length;
    const active = view.status === "active" && finished < total;

    append(root, [
      modeBanner(view.drill),
      h(
        "div",
        { class: "board-head card" },
        h(
          "div",
          { class: "board-title" },
          levelChip(view.level, true),
          h("div", {}, h("h1", { id: "board-title" }, view.title), h("p", { class: "muted" }, `${categoryName(view.category)} · ${view.created_by} · ${fmtTime(view.created_at, true)}`)),
        ),
        h(
          "div",
          { class: "board-area" },
          h("span", { class: "fact-label" }, t("em.fact.area")),
          h("strong", { id: "board-area" }, areaLabel()),
          h("span", { class: "muted" }, `${new Set([...devices.values()].map((d) => d.village_id)).size}${t("unit.village")} · ${total}${t("unit.terminal")}`),
        ),
        h(
          "div",
          { class: "board-clock" },
          h("span", { class: "fact-label" }, t("board.elapsed")),
          h("strong", { id: "board-elapsed" }, fmtDuration(elapsedMs())),
          h(
            "span",
            { class: `status-pill st-${active || view.status !== "active" ? view.status : "finished"}`, id: "board-status" },
            t(active || view.status !== "active" ? `bstatus.${view.status}` : "board.all_final"),
          ),
        ),
      ),
      h(
        "div",
        { class: "counts" },
        COUNTED.map((s) =>
          h("div", { class: `count st-${s}`, "data-count": s }, h("strong", {}, c[s] || 0), h("span", {}, stateName(s))),
        ),
      ),
      progressBar(c, total),
      actions(active),
      villagesGrid(),
      failures(),
    ]);
  }

  function progressBar(c, total) {
    const bar = h("div", { class: "progress", title: `${c.done}/${total}` });
    for (const s of ["done", "playing", "fetched", "received", "failed", "cancelled"]) {
      if (!c[s]) continue;
      const seg = h("span", { class: `st-${s}` });
      seg.style.width = `${(100 * c[s]) / Math.max(1, total)}%`;
      bar.append(seg);
    }
    return bar;
  }

  function actions(active) {
    const row = h("div", { class: "board-actions" });
    if (ctx.me.can_broadcast && active) {
      row.append(
        h(
          "button",
          { type: "button", class: "btn btn-cancel", id: "cancel-btn", title: t("board.cancel.body") },
          icon("stop"), " ",
          t("board.cancel"),
        ),
      );
      row.lastChild.addEventListener("click", onCancel);
    }
    if (ctx.me.can_broadcast && view.priority === "emergency") {
      const btn = h("button", { type: "button", class: "btn btn-correction", id: "correction-btn" }, icon("undo"), " ", t("board.correction"));
      btn.addEventListener("click", onCorrection);
      row.append(btn);
    }
    row.append(h("a", { class: "btn", href: "#/records" }, t("nav.records")));
    return row;
  }

  function villagesGrid() {
    const byVillage = new Map();
    for (const d of devices.values()) {
      if (!byVillage.has(d.village_id)) byVillage.set(d.village_id, []);
      byVillage.get(d.village_id).push(d);
    }
    const wrap = h("div", { class: "village-board" });
    const townships = [...new Set([...byVillage.keys()].map((v) => ctx.village(v)?.township_id || "?"))].sort();
    for (const tid of townships) {
      const vids = [...byVillage.keys()].filter((v) => (ctx.village(v)?.township_id || "?") === tid).sort();
      const tiles = vids.map((vid) => {
        const ds = byVillage.get(vid);
        const st = villageState(ds.map((d) => d.state));
        const doneN = ds.filter((d) => d.state === "done").length;
        const reason = ds.find((d) => FAILED.has(d.state))?.reason;
        return h(
          "div",
          { class: `tile st-${st}`, "data-village": vid, "data-state": st, title: reason || stateName(st) },
          h("span", { class: "tile-name" }, ctx.village(vid)?.name || vid),
          h("span", { class: "tile-state" }, st === "done" ? "✓ " : "", stateName(st), ds.length > 1 ? ` · ${doneN}/${ds.length}` : ""),
        );
      });
      wrap.append(h("section", { class: "tw-block" }, h("h3", {}, ctx.township(tid)?.name || tid, h("small", {}, ` ${vids.length}${t("unit.village")}`)), h("div", { class: "tiles" }, tiles)));
    }
    return wrap;
  }

  function failures() {
    const bad = [...devices.values()].filter((d) => FAILED.has(d.state));
    if (!bad.length) return null;
    return h(
      "section",
      { class: "card failures" },
      h("h3", {}, t("board.failures"), ` (${bad.length})`),
      h(
        "table",
        { class: "table" },
        h("thead", {}, h("tr", {}, h("th", {}, t("col.village")), h("th", {}, t("col.device")), h("th", {}, t("col.state")), h("th", {}, t("col.reason")))),
        h(
          "tbody",
          {},
          bad.map((d) =>
            h(
              "tr",
              {},
              h("td", {}, ctx.village(d.village_id)?.name || d.village_id),
              h("td", {}, h("a", { href: `#/terminal/${d.device_id}` }, d.device_id)),
              h("td", {}, stateName(d.state)),
              h("td", {}, d.reason || "—"),
            ),
          ),
        ),
      ),
    );
  }

  // One click, no dialog: stopping a wrong alert must be the fastest thing on the
  // screen (Hawaii, 2018: the retraction took 38 minutes).
  async function onCancel(e) {
    e.currentTarget.disabled = true;
    try {
      await api("POST", `/api/broadcasts/${broadcastId}/cancel`);
      toast(t("board.cancelled"));
      await load();
    } catch (e) {
      toast(e.message, "error");
    }
  }

  async function onCorrection() {
    const original = fmtTime(view.created_at).slice(0, 5);
    // Short on purpose: the correction names what was wrong, it does not repeat it.
    const colour = { 1: "红色", 2: "橙色", 3: "黄色", 4: "蓝色" }[view.level] || "";
    const params = { time: `今天${original}`, subject: `${categoryName(view.category)}${colour}预警` };
    const body = {
      template: "false_alarm_correction",
      params,
      priority: "emergency",
      level: 4,
      drill: view.drill,
      targets: view.targets,
    };
    const player = h("div", { class: "muted" }, t("em.preview.making"));
    const textBox = h("p", { class: "spoken" });
    const dlg = confirmDialog({
      title: t("board.correction.title"),
      body: h("div", {}, modeBanner(view.drill), h("p", {}, t("board.correction.body", { area: areaLabel() })), textBox, player),
      ok: t("board.correction.send"),
      okClass: view.drill ? "btn-drill" : "btn-real",
    });
    try {
      const { data } = await api("POST", "/api/preview", body);
      textBox.textContent = data.text;
      clear(player).append(h("audio", { controls: true, src: data.url, preload: "auto" }));
    } catch (e) {
      player.textContent = e.message;
    }
    if (!(await dlg)) return;
    try {
      const { status, data } = await api("POST", "/api/broadcasts", body);
      if (status === 202) ctx.go(`#/approvals/${data.approval_id}`);
      else ctx.go(`#/board/${data.id}`);
    } catch (e) {
      toast(e.message, "error");
    }
  }

  await load();
  timer = setInterval(() => {
    const el = document.getElementById("board-elapsed");
    if (el && view) el.textContent = fmtDuration(elapsedMs());
  }, 1000);
  return () => {
    clearInterval(timer);
    stop();
  };
}
