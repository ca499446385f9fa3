// The live board: every village of a broadcast turning from sent to received, fetched,
// playing and done (or failed, with the reason), with counts, elapsed time, one-click
// cancel and a ready correction / false-alarm message. Every delivery reaches a truthful
// end here: a terminal offline at dispatch shows "offline (waiting)", a play nobody
// reported on shows "unknown" (never "done"), and the board stops saying "on air" once
// nothing is left but terminals waiting offline. Reach and done rates are the server's;
// the unreached can be sent the same broadcast again with one button. Beside the list,
// the county map colours each village the same way as its tile, event by event.
import { api, get, onLive } from "../api.js";
import { broadcastWithDeliveries } from "../deliveries.js";
import { append, icon, clear, confirmDialog, fmtDuration, fmtTime, h, levelChip, modeBanner, toast } from "../dom.js";
import { categoryName, reasonWords, t } from "../i18n.js";
import { countyMap } from "../map.js";
import { BUCKETS, FINAL, PROBLEMS, bucketOf, deliveryName, reasonText } from "../states.js";

// Progress of a village, least advanced first: a village is as far as its least
// advanced terminal.
const PROGRESS = ["offline", "sent", "received", "fetched", "preempted", "playing", "done"];
// Reported "received" or later: the terminal had the command.
const REACHED = new Set(["received", "fetched", "preempted", "playing", "done", "unknown", "rejected"]);
// At most one counts-only refresh (reach, settled, resendable) per this many ms while
// deliveries change; the tiles themselves follow every event at once.
const REFRESH_MS = 1000;

// Any problem ending shows (worst first); otherwise the least advanced terminal.
function villageBucket(ds) {
  const buckets = ds.map((d) => bucketOf(d.state, d.reason));
  for (const p of PROBLEMS) if (buckets.includes(p)) return p;
  if (buckets.every((b) => b === "cancelled")) return "cancelled";
  let lowest = "done";
  for (const d of ds) {
    if (d.state === "cancelled") continue;
    const s = d.state === "preempted" ? "preempted" : bucketOf(d.state, d.reason);
    if (PROGRESS.indexOf(s) < PROGRESS.indexOf(lowest)) lowest = s;
  }
  return lowest;
}

function pct(part, whole) {
  return whole ? `${Math.round((100 * part) / whole)}%` : "—";
}

export async function render(main, ctx, [broadcastId]) {
  await ctx.loadPlaces();
  let view = null;
  const devices = new Map(); // device id -> delivery
  const root = h("div", { class: "board" });
  main.append(root);
  let timer = null;
  let pending = false;
  let refreshTimer = null;
  let lastRefresh = 0;
  let resending = false;
  // Built once and re-attached on every draw, so a delivery event only recolours marks.
  const map = countyMap(ctx, {
    label: t("board.map"),
    kind: "map-delivery",
    dotR: 7,
    minDotPx: 12,
    showNames: ctx.villages.length <= 60,
    onOpen: (href) => ctx.go(href),
  });
  const mapCard = h("section", { class: "card board-map", id: "board-map" }, map.el);
  const mapNote = h("p", { class: "board-map-note muted", id: "board-map-note" });

  // A full snapshot may have been read before a delivery event that reaches us while
  // it is on its way (a terminal's "cancelled" right after the cancel): replacing the
  // tiles with it would show that terminal's older state until its next event, which
  // for a final state never comes. So the events that arrive while any snapshot is in
  // flight are kept and applied again, in order, on top of the newest snapshot. Of two
  // snapshots in flight at once (the cancel button's and the live view's), only the one
  // asked for last is drawn: the other may have been read earlier and answered later.
  let loadsInFlight = 0;
  let lastLoad = 0;
  let backlog = [];

  async function load() {
    const mine = ++lastLoad;
    loadsInFlight += 1;
    try {
      const fresh = await broadcastWithDeliveries(broadcastId);
      if (mine !== lastLoad) return; // a newer snapshot is on its way
      view = fresh;
      devices.clear();
      for (const d of view.deliveries) {
        d.reached = REACHED.has(d.state) || (d.transitions || []).some((x) => REACHED.has(x.state));
        devices.set(d.device_id, d);
      }
      for (const data of backlog) applyDelivery(data);
      draw();
    } finally {
      loadsInFlight -= 1;
      if (!loadsInFlight) backlog = [];
    }
  }

  function applyDelivery(data) {
    const d = devices.get(data.device_id);
    if (!d) return false;
    d.state = data.state;
    d.reason = data.reason;
    d.reason_code = data.reason_code;
    d.reason_params = data.reason_params;
    d.updated_at = new Date(data.at).toISOString();
    if (REACHED.has(data.state)) d.reached = true;
    return true;
  }

  // The counts-only view carries what only the server can say for sure (settled, reach,
  // resendable); merge it without reloading every delivery.
  async function refreshCounts() {
    refreshTimer = null;
    lastRefresh = Date.now();
    try {
      const fresh = await get(`/api/broadcasts/${broadcastId}?deliveries=0`);
      mergeSummary(fresh);
      schedule();
    } catch {
      /* the next event or the live connection's resync tries again */
    }
  }

  function refreshSoon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(refreshCounts, Math.max(0, lastRefresh + REFRESH_MS - Date.now()));
  }

  function mergeSummary(data) {
    for (const [k, v] of Object.entries(data)) if (k !== "deliveries") view[k] = v;
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
    if (kind === "delivery" && data.broadcast_id === broadcastId && loadsInFlight) backlog.push(data);
    if (!view) return;
    if (kind === "delivery" && data.broadcast_id === broadcastId) {
      if (!applyDelivery(data)) return;
      schedule();
      refreshSoon();
    } else if (kind === "broadcast" && data.id === broadcastId) {
      // A resend or a cancel changes who is waiting for what: take every delivery again.
      if (data.status !== view.status || (data.attempt ?? 0) !== (view.attempt ?? 0)) load();
      else {
        mergeSummary(data);
        schedule();
      }
    } else if (kind === "resync") {
      load();
    }
  });

  function counts() {
    const c = Object.fromEntries(BUCKETS.map((s) => [s, 0]));
    for (const d of devices.values()) c[bucketOf(d.state, d.reason)] += 1;
    return c;
  }

  // The server's word when it gave one; the same rule applied to what is shown otherwise
  // (every delivery final, or waiting on an offline terminal).
  function settled() {
    if (typeof view.settled === "boolean") return view.settled;
    const all = [...devices.values()];
    return all.length > 0 && all.every((d) => FINAL.has(d.state) || d.state === "offline");
  }

  function reach() {
    if (view.reach && typeof view.reach.targeted === "number") return view.reach;
    const all = [...devices.values()];
    const reached = all.filter((d) => d.reached).length;
    const done = all.filter((d) => d.state === "done").length;
    return { targeted: all.length, reached, done, rate: all.length ? reached / all.length : 0 };
  }

  function expired() {
    return view.status === "finished" || (view.expires_at && Date.parse(view.expires_at) <= Date.now());
  }

  function elapsedMs() {
    const start = new Date(view.created_at).getTime();
    const all = [...devices.values()];
    if (all.length && (settled() || view.status !== "active")) {
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

  function statusPill() {
    const offline = [...devices.values()].filter((d) => d.state === "offline").length;
    let cls = view.status;
    let text = t(`bstatus.${view.status}`);
    if (view.status === "active" && settled()) {
      cls = "finished";
      text = offline ? t("board.settled_offline", { n: offline }) : t("board.all_final");
    }
    return h("span", { class: `status-pill st-${cls}`, id: "board-status", "data-status": cls }, text);
  }

  // Who sent it, and the second officer who confirmed it when the two-person rule held it.
  function officers() {
    return view.approved_by ? t("board.officers", { by: view.created_by, approver: view.approved_by }) : view.created_by;
  }

  // The buttons and links a person clicks stay the same nodes across redraws, which
  // come with every delivery report: a node replaced between a person's mousedown and
  // mouseup gets no click (the browser fires one only when both land on one element),
  // so a Cancel pressed during a county's burst of reports could do nothing. They are
  // rebuilt only when what they show changes (`signature`).
  const kept = new Map();
  function keep(key, signature, build) {
    const k = kept.get(key);
    if (k && k.signature === signature) return k.el;
    const el = build();
    kept.set(key, { signature, el });
    return el;
  }

  // A correction and its original point at each other.
  function links() {
    const items = [];
    if (view.corrects) {
      items.push(h("a", { href: `#/board/${view.corrects}`, id: "board-corrects" }, t("board.corrects")));
    }
    for (const c of view.corrections || []) {
      items.push(h("a", { href: `#/board/${c.id}`, class: "board-corrected-by", "data-correction": c.id }, t("board.corrected_by", { title: c.title, at: fmtTime(c.created_at) })));
    }
    return items.length ? h("p", { class: "board-links" }, items.map((a, i) => [i ? " · " : "", a])) : null;
  }

  function draw() {
    clear(root);
    // Drill or real is a question for emergencies (and any drill); a daily notice is
    // neither and must not be dressed as a real alert.
    const marked = view.drill || view.priority === "emergency";
    document.body.classList.toggle("drill-mode", view.drill);
    document.body.classList.toggle("real-mode", marked && !view.drill);
    const c = counts();
    const total = devices.size;

    append(root, [
      marked ? modeBanner(view.drill) : null,
      h(
        "div",
        { class: "board-head card" },
        h(
          "div",
          { class: "board-title" },
          levelChip(view.level, true),
          h(
            "div",
            {},
            h("h1", { id: "board-title" }, view.title),
            h("p", { class: "muted" }, `${categoryName(view.category)} · ${officers()} · ${fmtTime(view.created_at, true)}`),
            keep("links", JSON.stringify([view.corrects, (view.corrections || []).map((c) => c.id)]), links),
          ),
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
          statusPill(),
        ),
      ),
      reachRow(),
      h(
        "div",
        { class: "counts board-counts" },
        BUCKETS.map((s) =>
          h("div", { class: `count st-${s}`, "data-count": s }, h("strong", {}, c[s] || 0), h("span", {}, t(`state.${s}`))),
        ),
      ),
      progressBar(c, total),
      actions(),
      resendHistory(),
      legend(c),
      places(),
      attention(),
    ]);
  }

  function reachRow() {
    const r = reach();
    return h(
      "div",
      { class: "reach card", id: "board-reach", "data-reached": r.reached, "data-targeted": r.targeted, "data-done": r.done },
      h(
        "div",
        { class: "reach-item" },
        h("span", { class: "fact-label" }, t("board.reach")),
        h("strong", { id: "reach-rate" }, r.targeted ? `${Math.round(100 * r.rate)}%` : "—"),
        h("span", { class: "muted" }, t("board.reach.detail", { reached: r.reached, targeted: r.targeted })),
      ),
      h(
        "div",
        { class: "reach-item" },
        h("span", { class: "fact-label" }, t("board.done_rate")),
        h("strong", { id: "done-rate" }, pct(r.done, r.targeted)),
        h("span", { class: "muted" }, t("board.done.detail", { done: r.done, targeted: r.targeted })),
      ),
    );
  }

  function progressBar(c, total) {
    const bar = h("div", { class: "progress", title: `${c.done}/${total}` });
    for (const s of ["done", "playing", "fetched", "received", "offline", "unknown", "failed", "unreached", "cancelled"]) {
      if (!c[s]) continue;
      const seg = h("span", { class: `st-${s}` });
      seg.style.width = `${(100 * c[s]) / Math.max(1, total)}%`;
      bar.append(seg);
    }
    return bar;
  }

  function actions() {
    // Cancel stays while anything could still play, a terminal waiting offline included
    // (a wrong alert must not play when its village comes back).
    const cancellable = view.status === "active" && !expired() && [...devices.values()].some((d) => !FINAL.has(d.state));
    const resendable = Number(view.resendable) || 0;
    const signature = [cancellable, resendable, resending, view.status, expired(), view.priority, view.corrects].join("|");
    return keep("actions", signature, () => actionRow(cancellable, resendable));
  }

  function actionRow(cancellable, resendable) {
    const row = h("div", { class: "board-actions" });
    if (ctx.me.can_broadcast && cancellable) {
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
    if (ctx.me.can_control_terminals && resendable > 0 && view.status !== "cancelled" && !expired()) {
      const btn = h(
        "button",
        { type: "button", class: "btn btn-resend", id: "resend-btn", "data-resendable": resendable, disabled: resending },
        icon("undo"), " ",
        t("board.resend", { n: resendable }),
      );
      btn.addEventListener("click", onResend);
      row.append(btn);
    }
    // A correction is not corrected again from its own board: its original's board is
    // where a further correction starts.
    if (ctx.me.can_broadcast && view.priority === "emergency" && !view.corrects) {
      const btn = h("button", { type: "button", class: "btn btn-correction", id: "correction-btn" }, icon("undo"), " ", t("board.correction"));
      btn.addEventListener("click", onCorrection);
      row.append(btn);
    }
    row.append(h("a", { class: "btn", href: "#/records" }, t("nav.records")));
    return row;
  }

  function resendHistory() {
    const items = view.resends || [];
    if (!items.length) return null;
    return h(
      "div",
      { class: "resends muted", id: "resends" },
      h("strong", {}, t("board.resends"), ": "),
      items.map((r, i) =>
        h(
          "span",
          { class: "resend-item", "data-attempt": r.attempt },
          i ? t("sep") : "",
          t("board.resend.item", {
            n: r.attempt,
            at: fmtTime(r.at),
            by: r.by || "—",
            devices: Array.isArray(r.devices) ? r.devices.length : r.devices,
          }),
        ),
      ),
    );
  }

  // Only the colours on screen, so "unknown" is never read as a shade of "done".
  function legend(c) {
    const shown = BUCKETS.filter((s) => c[s]);
    if (shown.length < 2) return null;
    return h(
      "div",
      { class: "board-legend", id: "board-legend" },
      shown.map((s) => h("span", { class: "legend-key", "data-legend": s }, h("span", { class: `swatch st-${s}` }), t(`state.${s}`))),
    );
  }

  function byVillage() {
    const found = new Map();
    for (const d of devices.values()) {
      if (!found.has(d.village_id)) found.set(d.village_id, []);
      found.get(d.village_id).push(d);
    }
    return found;
  }

  // A village's colour, its name for that colour, and the terminal a click opens: the one
  // that decided the colour (the failed one, say), so the click leads to what needs seeing.
  function villageLook(ds) {
    const st = villageBucket(ds);
    const decider = ds.find((d) => (d.state === "preempted" ? "preempted" : bucketOf(d.state, d.reason)) === st);
    const label = decider ? deliveryName(decider.state, decider.reason) : t(`state.${st}`);
    return { st, label, device: (decider || ds[0]).device_id };
  }

  // The village list and, beside it (above it on a phone), the map.
  function places() {
    const grouped = byVillage();
    const specs = ctx.villages.map((v) => {
      const ds = grouped.get(v.id);
      if (!ds) return { key: v.id, village: v.id, state: "none", title: `${v.name}: ${t("board.map.untargeted")}`, data: { village: v.id } };
      const look = villageLook(ds);
      const doneN = ds.filter((d) => d.state === "done").length;
      return {
        key: v.id,
        village: v.id,
        state: look.st,
        title: `${v.name}: ${look.label}${ds.length > 1 ? ` · ${doneN}/${ds.length}` : ""}`,
        href: `#/terminal/${look.device}`,
        data: { village: v.id },
      };
    });
    map.setMarks(specs);
    const untargeted = specs.filter((x) => x.state === "none").length;
    clear(mapNote);
    if (untargeted) mapNote.append(h("span", { class: "swatch st-none" }), " ", t("board.map.untargeted_n", { n: untargeted }));
    if (!mapNote.parentNode) mapCard.append(mapNote);
    return h("div", { class: "board-places" }, mapCard, villagesGrid(grouped));
  }

  function villagesGrid(grouped) {
    const wrap = h("div", { class: "village-board" });
    const townships = [...new Set([...grouped.keys()].map((v) => ctx.village(v)?.township_id || "?"))].sort();
    for (const tid of townships) {
      const vids = [...grouped.keys()].filter((v) => (ctx.village(v)?.township_id || "?") === tid).sort();
      const tiles = vids.map((vid) => {
        const ds = grouped.get(vid);
        const doneN = ds.filter((d) => d.state === "done").length;
        // Named by the terminal that decided the colour, so "interrupted" or "expired
        // (never reached)" reads as such and not as a bare "failed".
        const { st, label, device } = villageLook(ds);
        const reason = ds.filter((d) => d.reason && !["done", "cancelled"].includes(d.state)).map((d) => reasonWords(d, reasonText));
        return h(
          "a",
          { class: `tile st-${st}`, href: `#/terminal/${device}`, "data-village": vid, "data-state": st, title: [label, ...new Set(reason)].join(" · ") },
          h("span", { class: "tile-name" }, ctx.village(vid)?.name || vid),
          h("span", { class: "tile-state" }, st === "done" ? "✓ " : st === "unknown" ? "? " : "", label, ds.length > 1 ? ` · ${doneN}/${ds.length}` : ""),
        );
      });
      wrap.append(h("section", { class: "tw-block" }, h("h3", {}, ctx.township(tid)?.name || tid, h("small", {}, ` ${vids.length}${t("unit.village")}`)), h("div", { class: "tiles" }, tiles)));
    }
    return wrap;
  }

  // Failed, never reached, unknown, then those still waiting offline: who to go and see.
  function attention() {
    const order = [...PROBLEMS, "offline"];
    const rank = (d) => order.indexOf(bucketOf(d.state, d.reason));
    const list = [...devices.values()].filter((d) => rank(d) >= 0).sort((x, y) => rank(x) - rank(y) || x.device_id.localeCompare(y.device_id));
    if (!list.length) return null;
    const problems = list.some((d) => rank(d) < PROBLEMS.length);
    return h(
      "section",
      { class: `card ${problems ? "failures" : "waiting-offline"}`, id: "board-attention" },
      h("h3", {}, t("board.attention"), ` (${list.length})`),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "table" },
          h("thead", {}, h("tr", {}, h("th", {}, t("col.village")), h("th", {}, t("col.device")), h("th", {}, t("col.state")), h("th", {}, t("col.reason")))),
          h(
            "tbody",
            {},
            list.map((d) =>
              h(
                "tr",
                { "data-device": d.device_id, "data-state": bucketOf(d.state, d.reason) },
                h("td", {}, ctx.village(d.village_id)?.name || d.village_id),
                h("td", {}, h("a", { href: `#/terminal/${d.device_id}` }, d.device_id)),
                h("td", {}, h("span", { class: `mini st-${bucketOf(d.state, d.reason)}` }, deliveryName(d.state, d.reason))),
                h("td", { title: d.reason || "" }, reasonWords(d, reasonText) || "—"),
              ),
            ),
          ),
        ),
      ),
    );
  }

  async function onResend() {
    const n = Number(view.resendable) || 0;
    const ok = await confirmDialog({
      title: t("board.resend.title"),
      body: h("p", {}, t("board.resend.body", { n })),
      ok: t("board.resend.send"),
    });
    if (!ok) return;
    resending = true;
    draw();
    try {
      await api("POST", `/api/broadcasts/${broadcastId}/resend`);
      toast(t("board.resend.sent"));
    } catch (e) {
      toast(resendError(e), "error");
    } finally {
      resending = false;
    }
    await load();
  }

  function resendError(e) {
    if (["nothing_to_resend", "expired", "cancelled", "not_sent"].includes(e.code)) return t(`err.${e.code}`);
    if (e.status === 403) return t("err.resend_forbidden");
    return e.message;
  }

  // One click, no dialog: stopping a wrong alert must be the fastest thing on the
  // screen (Hawaii, 2018: the retraction took 38 minutes).
  async function onCancel(e) {
    const btn = e.currentTarget;
    btn.disabled = true;
    try {
      await api("POST", `/api/broadcasts/${broadcastId}/cancel`);
      toast(t("board.cancelled"));
      await load();
    } catch (err) {
      btn.disabled = false; // the same node stays across redraws: let them try again
      toast(err.message, "error");
    }
  }

  // What the correction names: the original's own alert name from its text or title
  // (a 暴雨橙色预警 retraction names 暴雨橙色预警), else its category and colour.
  function correctedSubject() {
    const named = /[\u4e00-\u9fa5]{1,8}?[红橙黄蓝]色预警/.exec(`${view.title} ${view.text || ""}`);
    if (named) return named[0].replace(/^.*发布/, "");
    const colour = { 1: "红色", 2: "橙色", 3: "黄色", 4: "蓝色" }[view.level] || "";
    return `${categoryName(view.category)}${colour}${colour ? "预警" : ""}`;
  }

  async function onCorrection() {
    const original = fmtTime(view.created_at).slice(0, 5);
    // Short on purpose: the correction names what was wrong, it does not repeat it.
    const subject = correctedSubject();
    const base = {
      priority: "emergency",
      level: 4,
      drill: view.drill,
      targets: view.targets,
      category: view.category,
      corrects: view.id,
      title: t("board.correction.named", { subject }),
    };
    const player = h("div", { class: "muted" }, t("em.preview.making"));
    const textBox = h("textarea", { class: "spoken", id: "correction-text", rows: 4, "aria-label": t("em.text") });
    const again = h("button", { type: "button", class: "btn", id: "correction-preview" }, t("board.correction.preview"));
    let heard = null; // the text the player holds
    async function preview(body) {
      clear(player).append(t("em.preview.making"));
      try {
        const { data } = await api("POST", "/api/preview", body);
        if (!textBox.value) textBox.value = data.text;
        heard = textBox.value;
        clear(player).append(h("p", { class: "muted", id: "correction-spoken" }, data.spoken || data.text), h("audio", { controls: true, src: data.url, preload: "auto" }));
      } catch (e) {
        player.textContent = e.message;
      }
    }
    again.addEventListener("click", () => preview({ ...base, text: textBox.value }));
    const dlg = confirmDialog({
      title: t("board.correction.title"),
      body: h("div", {}, modeBanner(view.drill), h("p", {}, t("board.correction.body", { area: areaLabel() })), textBox, again, player),
      ok: t("board.correction.send"),
      okClass: view.drill ? "btn-drill" : "btn-real",
    });
    // Pre-filled from the template, with the original's own time and name; then editable.
    await preview({ ...base, template: "false_alarm_correction", params: { time: `今天${original}`, subject } });
    if (!(await dlg)) return;
    const body = { ...base, text: textBox.value.trim() };
    try {
      // What is sent is what was heard: an edit since the last preview is rendered first.
      if (body.text !== heard) await api("POST", "/api/preview", body);
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
    clearTimeout(refreshTimer);
    stop();
    map.destroy();
  };
}
