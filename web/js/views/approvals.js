// 待确认: real county-wide emergencies waiting for a second officer. The second officer
// hears the exact audio before the approve button unlocks.
import { api, get, onLive } from "../api.js";
import { icon, clear, confirmDialog, fmtAgo, fmtTime, h, levelChip, modeBanner, toast } from "../dom.js";
import { categoryName, t } from "../i18n.js";
import { areaPreview } from "./inbox.js";
import { fmtLeft, notifyButton, secondsLeft } from "../alerts.js";

export async function render(main, ctx, [approvalId]) {
  await ctx.loadPlaces();
  const root = h("div", { class: "approvals" });
  main.append(root);
  // Requests this officer has listened to: a redraw (a live event for another request,
  // or for this one arriving late) must neither lock the approve button again nor cut
  // off the audio being heard.
  const heard = new Set();
  let shown = null;

  async function load() {
    let items;
    if (approvalId) items = [await get(`/api/approvals/${approvalId}`)];
    else items = (await get("/api/approvals")).approvals;
    const signature = JSON.stringify(items.map((i) => [i.id, i.status, i.broadcast_id]));
    if (signature === shown) return; // nothing a person would see has changed
    shown = signature;
    draw(items);
  }

  function areaOf(item) {
    if (item.targets?.all) return t("em.area.county_all", { n: ctx.townships.length });
    return item.townships.map((id) => ctx.township(id)?.name || id).join(t("sep"));
  }

  function draw(items) {
    clear(root);
    root.append(h("div", { class: "page-head" }, h("h1", {}, approvalId ? t("ap.one") : t("ap.title")), h("p", { class: "muted" }, t("ap.subtitle")), ctx.isOfficer() ? notifyButton() : null));
    if (!items.length) {
      root.append(h("div", { class: "card empty", id: "no-approvals" }, t("ap.none")));
      return;
    }
    for (const item of items) root.append(card(item));
    if (approvalId) {
      document.body.classList.toggle("drill-mode", items[0].drill);
      document.body.classList.toggle("real-mode", !items[0].drill);
    }
  }

  function stagedText(staged) {
    return t("ap.staged.count", { n: staged.held, of: staged.of });
  }

  // The staged count grows while the terminals fetch: updated in place, since a redraw
  // would cut off the audio being heard.
  async function refreshStaged() {
    const open = [...root.querySelectorAll(".approval-staged")];
    if (!open.length) return;
    const items = approvalId ? [await get(`/api/approvals/${approvalId}`)] : (await get("/api/approvals")).approvals;
    for (const item of items) {
      const el = open.find((e) => e.dataset.staged === item.id);
      if (el && item.staged) el.textContent = stagedText(item.staged);
    }
  }

  // Why it waits: this request with the same officer's other real alerts around it.
  function why(item) {
    const w = item.why || {};
    if (!w.of) return null;
    const vars = { who: item.requested_by, min: Math.round((w.window_s || 600) / 60), n: w.townships, of: w.of, threshold: w.threshold };
    const text = [t(w.sends?.length || w.schedules?.length ? "ap.why" : "ap.why.single", vars)];
    if (w.earlier?.length) text.push(t("ap.why.earlier", { places: w.earlier.map((id) => ctx.township(id)?.name || id).join(t("sep")) }));
    return h("p", { class: "approval-why", "data-why": w.townships }, icon("wait"), " ", text.join(" "));
  }

  // A warning from upstream held for review: who sent it, where it would play (on the
  // map), the CAP text as received, and the townships the officer may send it to instead.
  const areaChoice = new Map(); // approval id -> () => targets or null (unchanged)
  function upstream(item) {
    const w = item.why || {};
    if (!w.upstream) return null;
    const held = new Set(item.townships);
    const boxes = ctx.townships.map((tw) => h("input", { type: "checkbox", value: tw.id, checked: held.has(tw.id), "data-township": tw.id }));
    areaChoice.set(item.id, () => {
      const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
      const same = chosen.length === held.size && chosen.every((x) => held.has(x));
      return same ? null : { townships: chosen };
    });
    const map = areaPreview(ctx, w.village_ids, t("up.area_map"));
    return h(
      "div",
      { class: "upstream-held", "data-upstream": w.upstream },
      h("p", {}, h("strong", {}, t("up.held_from", { source: w.source_name || w.source })), " · ", t(`up.reason.${w.reason}`), " · ", h("a", { href: `#/inbox/${w.upstream}` }, w.identifier)),
      h("div", { class: "upstream-map" }, map.el),
      item.status === "pending" && ctx.isOfficer()
        ? h("fieldset", { class: "area-edit" }, h("legend", {}, t("up.edit_area")), ...boxes.map((b) => h("label", { class: "inline" }, b, ` ${ctx.township(b.value)?.name || b.value}`)))
        : null,
      w.cap_text ? h("details", {}, h("summary", {}, t("up.raw")), h("pre", { class: "raw-xml" }, w.cap_text)) : null,
    );
  }

  function card(item) {
    const mine = item.requested_by === ctx.me.user;
    const el = h("section", { class: `card approval status-${item.status}`, "data-approval": item.id });
    el.append(modeBanner(item.drill));
    el.append(
      h(
        "div",
        { class: "approval-head" },
        levelChip(item.level, true),
        h("div", {}, h("h2", {}, item.title), h("p", { class: "muted" }, `${categoryName(item.category)} · ${t("ap.by", { who: item.requested_by })} · ${fmtTime(item.created_at)} (${fmtAgo(item.created_at)})`)),
      ),
      h(
        "div",
        { class: "confirm-facts" },
        h("div", { class: "fact" }, h("span", { class: "fact-label" }, t("em.fact.area")), h("strong", { class: "fact-value" }, areaOf(item)), h("small", {}, `${item.device_count}${t("unit.terminal")}`)),
        h("div", { class: "fact" }, h("span", { class: "fact-label" }, t("ap.status")), h("strong", { class: "fact-value", "data-status": item.status }, t(`ap.st.${item.status}`))),
        item.status === "pending" && item.expires_at
          ? h("div", { class: "fact" }, h("span", { class: "fact-label" }, t("ap.time_left")), h("strong", { class: "fact-value approval-left", "data-expires": item.expires_at }, fmtLeft(secondsLeft(item.expires_at))))
          : null,
        // Approving needs no download where the audio is already on the terminals.
        item.status === "pending" && item.staged
          ? h("div", { class: "fact" }, h("span", { class: "fact-label" }, t("ap.staged")), h("strong", { class: "fact-value approval-staged", "data-staged": item.id }, stagedText(item.staged)))
          : null,
        item.decided_by && item.status === "approved"
          ? h("div", { class: "fact" }, h("span", { class: "fact-label" }, t("ap.officers")), h("strong", { class: "fact-value approval-officers" }, t("board.officers", { by: item.requested_by, approver: item.decided_by })))
          : null,
      ),
      // Native append writes null as text: leave out what does not apply.
      ...[why(item), upstream(item)].filter(Boolean),
      h("p", { class: "spoken" }, item.text),
    );
    const audio = h("audio", { controls: true, src: item.media_url, preload: "auto", class: "approval-audio" });
    el.append(audio);
    if (item.status === "pending") {
      const row = h("div", { class: "board-actions" });
      if (mine) {
        row.append(h("p", { class: "waiting" }, icon("wait"), " ", t("ap.waiting")));
        const withdraw = h("button", { type: "button", class: "btn" }, t("ap.withdraw"));
        withdraw.addEventListener("click", () => decide(item, "reject"));
        row.append(withdraw);
      } else if (ctx.isOfficer()) {
        const approve = h("button", { type: "button", class: "btn btn-real btn-big", disabled: true, "data-action": "approve" }, t("ap.listen_first"));
        const unlock = () => {
          heard.add(item.id);
          approve.disabled = false;
          approve.textContent = t("ap.approve");
        };
        if (heard.has(item.id)) unlock();
        audio.addEventListener("play", unlock);
        approve.addEventListener("click", () => decide(item, "approve"));
        const reject = h("button", { type: "button", class: "btn btn-big", "data-action": "reject" }, t("ap.reject"));
        reject.addEventListener("click", () => decide(item, "reject"));
        row.append(approve, reject);
      }
      el.append(row);
    } else if (item.broadcast_id) {
      el.append(h("a", { class: "btn btn-primary", href: `#/board/${item.broadcast_id}` }, t("ap.to_board")));
    } else if (item.reason) {
      el.append(h("p", { class: "muted" }, t("ap.reason"), ": ", item.reason));
    }
    return el;
  }

  async function decide(item, action) {
    const reason = h("textarea", { rows: 2, placeholder: t("ap.reason") });
    const approving = action === "approve";
    const ok = await confirmDialog({
      title: approving ? t("ap.approve.title") : t("ap.reject.title"),
      body: h("div", {}, modeBanner(item.drill), h("p", {}, levelChip(item.level), " ", h("strong", {}, areaOf(item)), ` · ${item.device_count}${t("unit.terminal")}`), approving ? null : reason),
      ok: approving ? t("ap.approve") : t("ap.reject"),
      okClass: approving ? "btn-real" : "btn-primary",
    });
    if (!ok) return;
    try {
      const decision = { reason: reason.value };
      const targets = approving ? areaChoice.get(item.id)?.() : null;
      if (targets) {
        if (!targets.townships.length) throw new Error(t("up.edit_area.empty"));
        decision.targets = targets;
      }
      const { data } = await api("POST", `/api/approvals/${item.id}/${action}`, decision);
      if (approving) {
        toast(t("ap.approved"));
        ctx.go(`#/board/${data.id}`);
      } else {
        toast(t("ap.rejected"));
        load();
      }
    } catch (e) {
      toast(e.message, "error");
      load();
    }
  }

  const stop = onLive((kind, data) => {
    if (kind !== "approval") return;
    if (approvalId && data.id === approvalId && data.status === "approved" && data.broadcast_id) {
      toast(t("ap.approved_by", { who: data.decided_by }));
      ctx.go(`#/board/${data.broadcast_id}`);
      return;
    }
    load();
  });
  // The time left ticks without redrawing (a redraw would cut the audio being heard).
  let ticks = 0;
  const tick = setInterval(() => {
    for (const el of root.querySelectorAll(".approval-left")) el.textContent = fmtLeft(secondsLeft(el.dataset.expires));
    if (++ticks % 5 === 0) refreshStaged().catch(() => {});
  }, 1000);
  await load();
  return () => {
    stop();
    clearInterval(tick);
  };
}
