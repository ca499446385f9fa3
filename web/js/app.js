// The console shell: session, navigation by role, hash router, live connection.
import { alertApproval } from "./alerts.js";
import { api, connectLive, disconnectLive, get, onLive, post, setCsrf } from "./api.js";
import { clear, h, toast } from "./dom.js";
import { applyStaticText, lang, setLang, t } from "./i18n.js";

const VIEWS = {
  "": () => import("./views/home.js"),
  login: () => import("./views/login.js"),
  emergency: () => import("./views/emergency.js"),
  board: () => import("./views/board.js"),
  approvals: () => import("./views/approvals.js"),
  terminals: () => import("./views/terminals.js"),
  terminal: () => import("./views/terminal.js"),
  records: () => import("./views/records.js"),
  stats: () => import("./views/stats.js"),
  audit: () => import("./views/audit.js"),
  schedules: () => import("./views/schedules.js"),
  groups: () => import("./views/groups.js"),
  users: () => import("./views/users.js"),
  workorders: () => import("./views/workorders.js"),
  inbox: () => import("./views/inbox.js"),
  sources: () => import("./views/sources.js"),
  updates: () => import("./views/updates.js"),
  calls: () => import("./views/calls.js"),
  live: () => import("./views/live.js"),
};

const ctx = {
  me: null,
  townships: [],
  villages: [],
  pendingApprovals: 0,
  go: (hash) => {
    if (location.hash === hash) route();
    else location.hash = hash;
  },
  async loadPlaces(force = false) {
    if (ctx.villages.length && !force) return;
    const [ts, vs] = await Promise.all([get("/api/townships"), get("/api/villages")]);
    ctx.townships = ts.townships;
    ctx.villages = vs.villages;
  },
  township(id) {
    return ctx.townships.find((x) => x.id === id);
  },
  village(id) {
    return ctx.villages.find((x) => x.id === id);
  },
  isOfficer() {
    return Boolean(ctx.me && ctx.me.can_approve);
  },
  // The approvals queue: the county's officers and viewers; a technician has no part in it.
  seesApprovals() {
    return Boolean(ctx.me && ctx.me.county_wide && ctx.me.role !== "technician");
  },
};

let cleanup = null;

function navItems(me) {
  const items = [["#/", "nav.home"]];
  if (me.can_broadcast) items.push(["#/emergency", "nav.emergency", "nav-emergency"]);
  if (me.can_broadcast) items.push(["#/live", "nav.live_paging"]);
  if (ctx.seesApprovals()) items.push(["#/approvals", "nav.approvals"], ["#/inbox", "nav.inbox"]);
  if (me.can_broadcast) items.push(["#/schedules", "nav.schedules"]);
  items.push(["#/terminals", "nav.terminals"], ["#/workorders", "nav.workorders"], ["#/records", "nav.records"], ["#/stats", "nav.stats"], ["#/audit", "nav.audit"]);
  items.push(["#/calls", "nav.calls"]); // everyone reads calls; numbers masked without the permission
  if (me.can_broadcast) items.push(["#/groups", "nav.groups"]);
  if (me.role === "admin") items.push(["#/users", "nav.users"], ["#/sources", "nav.sources"]);
  // Agent updates: admins roll them out, technicians follow them on the terminals.
  if (me.role === "admin" || me.role === "technician") items.push(["#/updates", "nav.updates"]);
  return items;
}

function renderNav() {
  const nav = clear(document.getElementById("nav"));
  const current = location.hash.split("/")[1] || "";
  for (const [href, key, extra] of navItems(ctx.me)) {
    const name = href.split("/")[1];
    const a = h(
      "a",
      { href, class: `${extra || ""}${name === current ? " active" : ""}`, "data-nav": name || "home" },
      t(key),
    );
    if (name === "approvals" && ctx.pendingApprovals) a.append(h("span", { class: "badge" }, ctx.pendingApprovals));
    nav.append(a);
  }
  const role = t(`role.${ctx.me.role}`);
  const place = ctx.me.township_name ? ` · ${ctx.me.township_name}` : "";
  document.getElementById("who-name").textContent = `${ctx.me.user} (${role}${place})`;
}

async function refreshApprovals() {
  if (!ctx.seesApprovals()) return;
  try {
    const data = await get("/api/approvals");
    ctx.pendingApprovals = data.approvals.length;
    renderNav();
  } catch {
    /* shown by the view that needs it */
  }
}

async function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  let name = parts[0] || "";
  if (!ctx.me && name !== "login") {
    await loadSession();
    if (!ctx.me) {
      // Back to where they were going once logged in (a link to a live board, say).
      if (location.hash && !location.hash.startsWith("#/login")) ctx.afterLogin = location.hash;
      name = "login";
    }
  }
  if (!(name in VIEWS)) name = "";
  if (cleanup) {
    try {
      cleanup();
    } catch (e) {
      console.error(e);
    }
    cleanup = null;
  }
  setMenuOpen(false);
  // A fresh element for each route: a view still rendering when the reader moves on
  // (its data arrived late, or the language changed under it) finishes into the
  // detached old one instead of appending to the next page.
  const old = document.getElementById("main");
  const main = old.cloneNode(false);
  old.replaceWith(main);
  document.body.dataset.view = name || "home";
  document.body.classList.remove("drill-mode", "real-mode");
  document.getElementById("top").hidden = !ctx.me;
  if (ctx.me) renderNav();
  try {
    const view = await VIEWS[name]();
    cleanup = (await view.render(main, ctx, parts.slice(1))) || null;
  } catch (e) {
    console.error(e);
    main.append(h("div", { class: "card error" }, t("common.load_failed"), " ", e.message || String(e)));
  }
  window.scrollTo(0, 0);
}

async function loadSession() {
  try {
    const { data } = await api("GET", "/api/session");
    setSession(data);
  } catch {
    ctx.me = null;
  }
}

function setSession(me) {
  ctx.me = me;
  setCsrf(me.csrf_token || null);
  connectLive((up) => {
    const dot = document.getElementById("live-dot");
    dot.className = `live-dot ${up ? "up" : "down"}`;
    dot.title = t(up ? "live.up" : "live.down");
  });
  refreshApprovals();
}

ctx.loggedIn = async (me) => {
  setSession(me);
  await ctx.loadPlaces(true);
  const next = ctx.afterLogin || "#/";
  ctx.afterLogin = null;
  ctx.go(next);
};

onLive((kind, data) => {
  if (kind !== "approval") return;
  refreshApprovals();
  // The second officer is alerted on whatever page they are (issue 16).
  alertApproval(ctx, data);
});

window.addEventListener("dalaba:unauthenticated", () => {
  if (!ctx.me) return;
  ctx.me = null;
  disconnectLive();
  toast(t("login.expired"), "error");
  ctx.go("#/login");
});

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await post("/api/session/logout");
  } catch {
    /* already gone */
  }
  ctx.me = null;
  ctx.villages = [];
  disconnectLive();
  ctx.go("#/login");
});

document.getElementById("lang").addEventListener("click", () => {
  setLang(lang() === "en" ? "zh-CN" : "en");
  applyStaticText();
  route();
});

// On a phone the navigation folds behind one button (style.css shows it below 600 px):
// ten links in a row would make the header scroll sideways.
function setMenuOpen(open) {
  document.getElementById("top").classList.toggle("menu-open", open);
  document.getElementById("menu-toggle").setAttribute("aria-expanded", String(open));
}

document.getElementById("menu-toggle").addEventListener("click", () => {
  setMenuOpen(!document.getElementById("top").classList.contains("menu-open"));
});

window.addEventListener("hashchange", route);
applyStaticText();
route();
