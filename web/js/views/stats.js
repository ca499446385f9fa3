// 统计: what the county broadcast in a period and how well it reached — by category,
// real apart from drill, airtime, reach and timeliness per township, schedule outcomes
// and the terminals' online rate over time — with the year-end report a county files.
// The figures are the server's (/api/stats/...); this page only draws them. The choice
// of period, day and place lives in the address (#/stats/month/2026-11-30/t01), so a
// view can be bookmarked or sent.
import { get } from "../api.js";
import { cellBar, hbars, line, responsive } from "../charts.js";
import { append, clear, field, h, placeName, select, today } from "../dom.js";
import { lang, t } from "../i18n.js";

const PERIODS = ["day", "week", "month", "quarter", "half", "year"];
// One point of the online-rate line per hour of a day, per day of a week or month, ...
const BUCKET = { day: "hour", week: "day", month: "day", quarter: "week", half: "week", year: "month" };
const PRIORITIES = ["emergency", "paging", "notice", "routine"];
// Schedule outcomes by what they mean to a clerk: played, kept quiet, or not played.
const OUTCOME_CLASS = {
  fired: "bar-played",
  played_offline: "bar-played",
  suppressed: "bar-quiet",
  skipped: "bar-quiet",
  missed: "bar-missed",
  failed: "bar-missed",
  cancelled: "bar-quiet",
  planned: "bar-planned",
  scheduled: "bar-planned",
};
const DATE = /^\d{4}-\d{2}-\d{2}$/;

const num = (n) => (typeof n === "number" ? n.toLocaleString(lang() === "en" ? "en" : "zh-CN") : "—");
const pct = (r) => (typeof r === "number" ? `${(100 * r).toFixed(1)}%` : "—");
const secs = (ms) => (typeof ms === "number" ? t("stats.seconds", { s: (ms / 1000).toFixed(1) }) : "—");

export function airtime(s) {
  if (typeof s !== "number") return "—";
  const total = Math.round(s);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  if (hours) return t("stats.hm", { h: num(hours), m: minutes });
  return t("stats.ms", { m: minutes, s: total % 60 });
}

// A name from the i18n table (the first prefix that has one), or the server's own word.
function word(prefixes, key) {
  for (const prefix of [].concat(prefixes)) {
    const text = t(`${prefix}${key}`);
    if (text !== `${prefix}${key}`) return text;
  }
  return key;
}

// The period's last day: `end` is the first instant after it.
function lastDay(iso) {
  const end = new Date(iso);
  return new Date(end.getTime() - 1);
}

function ymd(d) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

function tickOf(bucket) {
  return (p) => {
    const d = new Date(p.key);
    const pad = (n) => String(n).padStart(2, "0");
    if (bucket === "hour") return `${pad(d.getHours())}:00`;
    if (bucket === "month") return `${d.getFullYear()}-${pad(d.getMonth() + 1)}`;
    return `${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  };
}

export async function render(main, ctx, [periodArg, dateArg, townshipArg, villageArg]) {
  await ctx.loadPlaces();
  const countyWide = Boolean(ctx.me.county_wide);
  const state = {
    period: PERIODS.includes(periodArg) ? periodArg : "month",
    date: DATE.test(dateArg || "") ? dateArg : today(),
    // Township staff see their own township (the server holds them to it as well).
    township: countyWide ? (ctx.township(townshipArg) ? townshipArg : "") : ctx.me.township_id || "",
    village: "",
  };
  if (villageArg && ctx.village(villageArg)?.township_id === state.township) state.village = villageArg;

  const stops = [];
  let seq = 0;

  const periodSeg = h("div", { class: "seg", id: "stats-period", role: "group", "aria-label": t("stats.period") });
  for (const p of PERIODS) {
    periodSeg.append(
      h("button", { type: "button", "data-period": p, class: p === state.period ? "on" : "", onclick: () => change({ period: p }) }, t(`stats.period.${p}`)),
    );
  }
  const dateInput = h("input", { type: "date", name: "date", value: state.date, max: today(), required: true });
  dateInput.addEventListener("change", () => DATE.test(dateInput.value) && change({ date: dateInput.value }));
  const townshipSelect = select(
    [...(countyWide ? [["", t("stats.county_all")]] : []), ...ctx.townships.map((tw) => [tw.id, placeName(tw)])],
    state.township,
    { name: "township" },
  );
  townshipSelect.addEventListener("change", () => change({ township: townshipSelect.value, village: "" }));
  const villageSelect = h("select", { name: "village" });
  villageSelect.addEventListener("change", () => change({ village: villageSelect.value }));

  const reportLinks = h("div", { class: "stats-report", id: "stats-report" });
  const rangeLine = h("p", { class: "muted stats-range", id: "stats-range" });
  const body = h("div", { class: "stats-body", id: "stats-body" }, h("p", { class: "muted" }, t("common.loading")));

  main.append(
    h("div", { class: "page-head" }, h("h1", {}, t("stats.title")), rangeLine),
    h(
      "section",
      { class: "card stats-controls" },
      periodSeg,
      h(
        "div",
        { class: "stats-filters" },
        field(t("stats.date"), dateInput),
        field(t("stats.township"), townshipSelect),
        field(t("stats.village"), villageSelect),
      ),
      reportLinks,
    ),
    body,
  );

  function fillVillages() {
    const own = ctx.villages.filter((v) => v.township_id === state.township);
    append(clear(villageSelect), [
      h("option", { value: "" }, t("stats.village_all")),
      own.map((v) => h("option", { value: v.id, selected: v.id === state.village }, placeName(v))),
    ]);
    villageSelect.disabled = !state.township;
  }

  function fillReport() {
    const year = state.date.slice(0, 4);
    const q = new URLSearchParams({ year, lang: lang() === "en" ? "en" : "zh" });
    if (state.township) q.set("township", state.township);
    const base = `/api/stats/report?${q}`;
    clear(reportLinks).append(
      h("span", { class: "fact-label" }, t("stats.report", { year })),
      h("a", { class: "btn", href: base, target: "_blank", rel: "noopener", "data-report": "html" }, t("stats.report.html")),
      h("a", { class: "btn", href: `${base}&format=pdf`, download: `dalaba-${year}.pdf`, "data-report": "pdf" }, "PDF"),
      h("a", { class: "btn", href: `${base}&format=xlsx`, download: `dalaba-${year}.xlsx`, "data-report": "xlsx" }, "XLSX"),
    );
  }

  function change(next) {
    Object.assign(state, next);
    for (const b of periodSeg.children) b.classList.toggle("on", b.dataset.period === state.period);
    dateInput.value = state.date;
    fillVillages();
    fillReport();
    const tail = [state.period, state.date, state.township, state.village].filter(Boolean).join("/");
    // Not a navigation: the view stays, only the address follows the choice.
    history.replaceState(null, "", `#/stats/${state.township || state.village ? tail : `${state.period}/${state.date}`}`);
    load();
  }

  function query(extra = {}) {
    const q = new URLSearchParams({ period: state.period, date: state.date, ...extra });
    if (state.township) q.set("township", state.township);
    if (state.village) q.set("village", state.village);
    return q.toString();
  }

  async function load() {
    const mine = ++seq;
    body.setAttribute("aria-busy", "true");
    try {
      const [summary, online] = await Promise.all([
        get(`/api/stats/summary?${query()}`),
        get(`/api/stats/online?${query({ bucket: BUCKET[state.period] })}`),
      ]);
      if (mine !== seq) return; // a later choice is on its way
      draw(summary, online);
    } catch (e) {
      if (mine !== seq) return;
      clear(body).append(h("div", { class: "card error" }, t("common.load_failed"), " ", e.message || String(e)));
    } finally {
      if (mine === seq) body.removeAttribute("aria-busy");
    }
  }

  function chartCard(id, title, paint, note) {
    const box = h("div", { class: "chart-box" });
    const card = h("section", { class: "card chart-card", "data-chart": id }, h("h2", {}, title), box, note ? h("p", { class: "muted small" }, note) : null);
    // Drawn once the card is in the page, at the width it is given there.
    queueMicrotask(() => stops.push(responsive(box, paint)));
    return card;
  }

  function figure(key, label, value, detail, raw) {
    return h(
      "div",
      { class: "stat-figure", "data-figure": key, "data-value": raw ?? "" },
      h("span", { class: "fact-label" }, label),
      h("strong", {}, value),
      detail ? h("small", { class: "muted" }, detail) : null,
    );
  }

  function draw(s, online) {
    for (const stop of stops.splice(0)) stop();
    const hasDrills = (s.drill?.broadcasts || 0) > 0;
    // A figure's line, with what drills add when there were any.
    const andDrills = (key, drillKey, vars) => (hasDrills ? `${t(key)}${t(drillKey, vars)}` : t(key));
    const b = s.broadcasts || {};
    const reach = s.reach || {};
    const timely = s.timeliness || {};
    const drillSide = s.drill || {};
    rangeLine.textContent = s.period
      ? t("stats.range", { start: ymd(new Date(s.period.start)), end: ymd(lastDay(s.period.end)) })
      : "";
    rangeLine.dataset.start = s.period?.start || "";

    const figures = h(
      "section",
      { class: "stat-figures", id: "stats-figures" },
      figure("broadcasts", t("stats.broadcasts"), num(b.total), t("stats.real_drill", { real: num(b.real), drill: num(b.drill) }), b.total),
      figure("plays", t("stats.plays"), num(s.plays?.total), andDrills("stats.plays.sub", "stats.plays.drill", { n: num(drillSide.plays?.total ?? 0) }), s.plays?.total),
      figure("airtime", t("stats.airtime"), airtime(s.plays?.airtime_s), andDrills("stats.airtime.sub", "stats.airtime.drill", { t: airtime(drillSide.plays?.airtime_s ?? 0) }), s.plays?.airtime_s),
      figure("reach", t("stats.reach"), pct(reach.rate), t("stats.reach.sub", { done: num(reach.done), targeted: num(reach.targeted) }), reach.rate),
      figure("timeliness", t("stats.timeliness"), secs(timely.median_ms), t("stats.timeliness.sub", { p95: secs(timely.p95_ms), n: num(timely.samples) }), timely.median_ms),
      figure("online", t("stats.online"), pct(s.online_rate), t("stats.online.sub", { n: num(s.terminals ?? online.terminals) }), s.online_rate),
    );

    // By category: real and drill stacked, drill striped; the counts are the server's
    // (real only in by_category, drills in drill_by_category).
    const real = b.by_category || {};
    const drill = b.drill_by_category || {};
    const cats = [...new Set([...Object.keys(real), ...Object.keys(drill)])]
      .filter((c) => (real[c] || 0) + (drill[c] || 0) > 0)
      .sort((x, y) => (real[y] || 0) - (real[x] || 0) || (drill[y] || 0) - (drill[x] || 0) || x.localeCompare(y));
    const catRows = cats.map((c) => ({
      key: c,
      label: word("cat.", c),
      parts: [
        { value: real[c] || 0, cls: "bar-real", title: `${t("stats.real")} ${real[c] || 0}` },
        { value: drill[c] || 0, cls: "bar-drill", title: `${t("stats.drill")} ${drill[c] || 0}` },
      ],
      note: drill[c] ? `${num(real[c] || 0)} + ${num(drill[c])}` : num(real[c] || 0),
    }));
    const categoryCard = catRows.length
      ? chartCard("category", t("stats.by_category"), hbars(catRows, { label: t("stats.by_category"), fmt: num }), t("stats.by_category.note"))
      : h("section", { class: "card chart-card", "data-chart": "category" }, h("h2", {}, t("stats.by_category")), h("p", { class: "muted" }, t("stats.none")));

    const modeCard = chartCard(
      "mode",
      t("stats.real_vs_drill"),
      hbars(
        [
          { key: "real", label: t("stats.real"), parts: [{ value: b.real || 0, cls: "bar-real" }] },
          { key: "drill", label: t("stats.drill"), parts: [{ value: b.drill || 0, cls: "bar-drill" }] },
        ],
        { label: t("stats.real_vs_drill"), fmt: num },
      ),
      hasDrills
        ? t("stats.drill_side", {
            plays: num(drillSide.plays?.total ?? 0),
            airtime: airtime(drillSide.plays?.airtime_s ?? 0),
            reach: pct(drillSide.reach?.rate),
          })
        : t("stats.no_drills"),
    );

    const prio = b.by_priority || {};
    const prioKeys = [...PRIORITIES.filter((p) => p in prio), ...Object.keys(prio).filter((p) => !PRIORITIES.includes(p))];
    const prioCard = chartCard(
      "priority",
      t("stats.by_priority"),
      hbars(
        prioKeys.map((p) => ({ key: p, label: word("stats.prio.", p), parts: [{ value: prio[p] || 0, cls: `bar-prio-${p}` }] })),
        { label: t("stats.by_priority"), fmt: num },
      ),
    );

    const outcomes = s.schedules || {};
    const outKeys = Object.keys(outcomes).filter((k) => outcomes[k] > 0).sort((x, y) => outcomes[y] - outcomes[x] || x.localeCompare(y));
    const scheduleCard = outKeys.length
      ? chartCard(
          "schedules",
          t("stats.schedules"),
          hbars(
            outKeys.map((k) => ({ key: k, label: word(["stats.out.", "out."], k), parts: [{ value: outcomes[k], cls: OUTCOME_CLASS[k] || "bar-planned" }] })),
            { label: t("stats.schedules"), fmt: num },
          ),
        )
      : h("section", { class: "card chart-card", "data-chart": "schedules" }, h("h2", {}, t("stats.schedules")), h("p", { class: "muted" }, t("stats.none")));

    const bucket = BUCKET[state.period];
    const points = (online.points || []).map((p) => ({ key: p.start, value: p.online_rate, title: ymd(new Date(p.start)) }));
    const onlineCard = chartCard(
      "online",
      t("stats.online_over_time", { bucket: t(`stats.bucket.${bucket}`) }),
      line(points, { label: t("stats.online_over_time", { bucket: t(`stats.bucket.${bucket}`) }), fmt: pct, tick: tickOf(bucket) }),
      t("stats.online.note"),
    );

    clear(body).append(
      figures,
      h("div", { class: "stats-grid" }, categoryCard, h("div", { class: "stats-stack" }, modeCard, prioCard)),
      townships(s.townships || []),
      h("div", { class: "stats-grid" }, onlineCard, scheduleCard),
    );
  }

  // Reach and timeliness per township: the table a report quotes, with bars beside it.
  function townships(rows) {
    const name = (r) => (r.name ? placeName(r) : placeName(ctx.township(r.id)) || r.id);
    const card = h("section", { class: "card", id: "stats-townships" }, h("h2", {}, t("stats.townships")));
    if (!rows.length) {
      card.append(h("p", { class: "muted" }, t("stats.none")));
      return card;
    }
    const head = ["stats.township", "stats.broadcasts", "stats.drill", "stats.plays", "stats.airtime", "stats.reach", "stats.median", "stats.p95", "stats.online"];
    card.append(
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "table stats-table" },
          h("thead", {}, h("tr", {}, head.map((k) => h("th", {}, t(k))))),
          h(
            "tbody",
            {},
            rows.map((r) =>
              h(
                "tr",
                { "data-township": r.id },
                h("td", {}, name(r)),
                h("td", { class: "num", "data-col": "broadcasts" }, num(r.broadcasts)),
                h("td", { class: "num", "data-col": "drills" }, num(r.drills ?? 0)),
                h("td", { class: "num", "data-col": "plays" }, num(r.plays)),
                h("td", { class: "num", "data-col": "airtime" }, airtime(r.airtime_s)),
                h("td", { class: "num rate-cell", "data-col": "reach", title: `${num(r.done)}/${num(r.targeted)}` }, pct(r.reach_rate), cellBar(r.reach_rate, "bar-reach")),
                h("td", { class: "num", "data-col": "median" }, secs(r.median_ms)),
                h("td", { class: "num", "data-col": "p95" }, secs(r.p95_ms)),
                h("td", { class: "num rate-cell", "data-col": "online" }, pct(r.online_rate), cellBar(r.online_rate, "bar-online")),
              ),
            ),
          ),
        ),
      ),
    );
    const bars = h(
      "div",
      { class: "stats-grid" },
      chartCard(
        "reach",
        t("stats.reach_by_township"),
        hbars(
          rows.map((r) => ({ key: r.id, label: name(r), parts: [{ value: r.reach_rate ?? 0, cls: "bar-reach" }], note: pct(r.reach_rate) })),
          { label: t("stats.reach_by_township"), max: 1 },
        ),
      ),
      chartCard(
        "timeliness",
        t("stats.timeliness_by_township"),
        hbars(
          rows.map((r) => ({
            key: r.id,
            label: name(r),
            parts: [
              { value: (r.median_ms ?? 0) / 1000, cls: "bar-median", title: `${t("stats.median")} ${secs(r.median_ms)}` },
              { value: Math.max(0, ((r.p95_ms ?? 0) - (r.median_ms ?? 0)) / 1000), cls: "bar-p95", title: `${t("stats.p95")} ${secs(r.p95_ms)}` },
            ],
            note: `${secs(r.median_ms)} / ${secs(r.p95_ms)}`,
          })),
          { label: t("stats.timeliness_by_township") },
        ),
        t("stats.timeliness.note"),
      ),
    );
    return h("div", { class: "stats-townships" }, card, bars);
  }

  fillVillages();
  fillReport();
  await load();
  return () => {
    seq += 1;
    for (const stop of stops.splice(0)) stop();
  };
}
