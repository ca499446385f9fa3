// 首页: the one obvious emergency entry, what waits for a second officer, what is on air
// and how the terminals are.
import { get, onLive } from "../api.js";
import { icon, clear, fmtTime, h, levelChip, modeBadge } from "../dom.js";
import { stateName, t } from "../i18n.js";
import { settled } from "../states.js";

export async function render(main, ctx) {
  await ctx.loadPlaces();
  const me = ctx.me;
  const root = h("div", { class: "home" });
  main.append(root);
  const recent = h("section", { class: "card" });
  const health = h("section", { class: "card" });
  const queue = h("section", { class: "card", id: "home-approvals" });

  root.append(
    h(
      "div",
      { class: "home-top" },
      me.can_broadcast
        ? h(
            "a",
            { class: "big-emergency", href: "#/emergency", id: "big-emergency" },
            h("span", { class: "big-emergency-icon" }, icon("megaphone")),
            h("span", {}, h("strong", {}, t("home.emergency")), h("small", {}, t("home.emergency.sub"))),
          )
        : null,
      ctx.seesApprovals()
        ? queue
        : me.role === "technician"
        ? h(
            "a",
            { class: "card home-link", href: "#/terminals", id: "home-terminals" },
            h("strong", {}, t("home.tech")),
            h("span", { class: "muted" }, t("home.tech.sub")),
          )
        : h(
            "a",
            { class: "card home-link", href: "#/schedules", id: "home-schedules" },
            h("strong", {}, t("home.schedules", { t: me.township_name || "" })),
            h("span", { class: "muted" }, t("home.schedules.sub")),
          ),
    ),
    h("div", { class: "home-grid" }, recent, health),
  );

  async function loadRecent() {
    const data = await get("/api/records/broadcasts?limit=8");
    clear(recent).append(h("h2", {}, t("home.recent")));
    if (!data.broadcasts.length) recent.append(h("p", { class: "muted" }, t("home.no_broadcasts")));
    const list = h("ul", { class: "bc-list" });
    for (const b of data.broadcasts) {
      const done = b.outcomes.done || 0;
      const total = Object.values(b.outcomes).reduce((a, n) => a + n, 0);
      list.append(
        h(
          "li",
          { class: b.drill ? "is-drill" : "" },
          h(
            "a",
            { href: `#/board/${b.id}` },
            modeBadge(b.drill),
            levelChip(b.level),
            h("span", { class: "bc-title" }, b.title),
            h("span", { class: "muted" }, fmtTime(b.created_at)),
            h("span", { class: `status-pill st-${settled(b, total) ? "finished" : b.status}` }, t(settled(b, total) ? "board.all_final" : `bstatus.${b.status}`)),
            h("span", { class: "bc-done" }, `${stateName("done")} ${done}/${total}`),
          ),
        ),
      );
    }
    recent.append(list);
  }

  async function loadHealth() {
    const data = await get("/api/devices");
    const faults = data.devices.filter((d) => Object.keys(d.faults || {}).length).length;
    const playing = data.devices.filter((d) => d.playing).length;
    clear(health).append(
      h("h2", {}, t("home.health")),
      h(
        "div",
        { class: "counts small" },
        h("a", { class: "count st-done", href: "#/terminals" }, h("strong", {}, `${data.online}/${data.total}`), h("span", {}, t("dev.online"))),
        h("a", { class: "count st-failed", href: "#/terminals" }, h("strong", {}, faults), h("span", {}, t("dev.fault"))),
        h("a", { class: "count st-playing", href: "#/terminals" }, h("strong", {}, playing), h("span", {}, t("dev.playing"))),
      ),
    );
  }

  async function loadQueue() {
    if (!ctx.seesApprovals()) return;
    const data = await get("/api/approvals");
    clear(queue).append(h("h2", {}, t("ap.title"), data.approvals.length ? h("span", { class: "badge" }, data.approvals.length) : null));
    if (!data.approvals.length) queue.append(h("p", { class: "muted" }, t("ap.none")));
    for (const a of data.approvals) {
      queue.append(
        h(
          "a",
          { class: "queue-item", href: `#/approvals/${a.id}` },
          levelChip(a.level),
          " ",
          h("strong", {}, a.title),
          h("span", { class: "muted" }, ` · ${t("ap.by", { who: a.requested_by })} · ${fmtTime(a.created_at)}`),
        ),
      );
    }
  }

  let timer = null;
  const stop = onLive((kind) => {
    if (kind === "approval") loadQueue();
    if (kind === "broadcast") loadRecent();
    if (kind === "device" || kind === "event") {
      clearTimeout(timer);
      timer = setTimeout(loadHealth, 500);
    }
  });
  await Promise.all([loadRecent(), loadHealth(), loadQueue()]);
  return () => {
    stop();
    clearTimeout(timer);
  };
}
