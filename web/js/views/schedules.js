// 日程: a township's week as a timeline, its schedules, creating and editing them with
// templates, text or recordings (uploaded or recorded in the browser), and quiet hours.
// Township staff see and pick only their own villages.
import { ApiError, api, get, upload } from "../api.js";
import { append, icon, clear, confirmDialog, fmtTime, h, select, toast, today } from "../dom.js";
import { CATEGORIES, categoryName, reasonWords, t } from "../i18n.js";

const KINDS = ["once", "daily", "weekly", "every_n_days", "monthly"];
const OUTCOME_CLASS = {
  planned: "planned",
  scheduled: "planned",
  fired: "played",
  played_offline: "played",
  suppressed: "quiet",
  skipped: "quiet",
  missed: "missed",
  failed: "missed",
};

function mondayOf(dateStr) {
  const d = new Date(`${dateStr}T12:00:00`);
  const back = (d.getDay() + 6) % 7;
  d.setDate(d.getDate() - back);
  return d;
}

function ymd(d) {
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

export async function render(main, ctx) {
  await ctx.loadPlaces();
  const me = ctx.me;
  const mine = me.county_wide ? ctx.townships : ctx.townships.filter((x) => x.id === me.township_id);
  let township = mine[0]?.id;
  let week = mondayOf(today());
  let templates = [];
  try {
    templates = (await get("/api/templates?enabled=1")).templates.filter((x) => x.priority !== "emergency" && !x.disabled);
  } catch {
    templates = [];
  }

  const head = h("div", { class: "page-head" }, h("h1", {}, t("sch.title")));
  const twSelect = select(mine.map((x) => [x.id, x.name]), township, { name: "township", id: "sch-township" });
  twSelect.addEventListener("change", () => {
    township = twSelect.value;
    refresh();
  });
  if (mine.length > 1) head.append(twSelect);
  else head.append(h("span", { class: "status-pill" }, mine[0]?.name || ""));

  const weekBox = h("section", { class: "card week-card" });
  const listBox = h("section", { class: "card" });
  const editBox = h("section", { class: "card", id: "sch-editor" });
  const quietBox = h("section", { class: "card" });
  main.append(head, weekBox, h("div", { class: "two-col" }, h("div", {}, listBox, quietBox), editBox));

  async function refresh() {
    await Promise.all([drawWeek(), drawList(), drawQuiet()]);
  }

  // ---------------------------------------------------------------- week

  async function drawWeek() {
    const days = [...Array(7)].map((_, i) => {
      const d = new Date(week);
      d.setDate(d.getDate() + i);
      return ymd(d);
    });
    let timelines;
    try {
      timelines = await Promise.all(days.map((d) => get(`/api/townships/${township}/timeline?date=${d}`)));
    } catch (e) {
      clear(weekBox).append(h("h2", {}, t("sch.week")), h("p", { class: "muted" }, t("sch.unavailable"), " ", e.message));
      return;
    }
    const narrow = window.matchMedia("(max-width: 600px)").matches;
    const prev = h("button", { type: "button", class: "btn" }, "‹");
    const next = h("button", { type: "button", class: "btn" }, "›");
    prev.addEventListener("click", () => (week.setDate(week.getDate() - 7), drawWeek()));
    next.addEventListener("click", () => (week.setDate(week.getDate() + 7), drawWeek()));
    const grid = h("div", { class: "week", id: "week" });
    const hours = h("div", { class: "week-hours" }, [...Array(25)].map((_, i) => (i % 3 === 0 ? h("span", { style: { top: `${(i / 24) * 100}%` } }, `${i}:00`) : null)));
    grid.append(hours);
    timelines.forEach((tl, i) => {
      const col = h("div", { class: `week-day${days[i] === today() ? " today" : ""}`, "data-date": days[i] });
      const label = new Date(`${days[i]}T12:00:00`);
      col.append(h("div", { class: "week-day-head" }, t(`wd.${(label.getDay() + 6) % 7}`), h("small", {}, ` ${days[i].slice(5)}`)));
      const body = h("div", { class: "week-day-body" });
      if (tl.quiet_hours) {
        for (const [from, to] of quietSpans(tl.quiet_hours.start, tl.quiet_hours.end)) {
          body.append(h("div", { class: "quiet-span", title: t("sch.quiet"), style: { top: `${from}%`, height: `${to - from}%` } }));
        }
      }
      const lanes = sideBySide(tl.entries);
      tl.entries.forEach((e, k) => {
        const [hh, mm] = e.local_time.split(":").map(Number);
        const top = ((hh * 60 + mm) / 1440) * 100;
        const { lane, of } = lanes[k];
        body.append(
          h(
            "div",
            {
              class: `slot out-${OUTCOME_CLASS[e.outcome] || "planned"}${e.conflicts_with?.length ? " conflict" : ""}`,
              // Items close in time share the row side by side, so none hides another.
              style: { top: `${top}%`, left: `calc(${(lane * 100) / of}% + 2px)`, right: `calc(${((of - lane - 1) * 100) / of}% + 2px)` },
              "data-lane": `${lane}/${of}`,
              title: `${e.local_time.slice(0, 5)} ${e.title} — ${t(`out.${e.outcome}`)}${e.reason ? ` (${reasonWords(e)})` : ""}`,
              "data-schedule": e.schedule_id,
            },
            h("b", {}, e.local_time.slice(0, 5)),
            " ",
            e.schedule_name,
            e.conflicts_with?.length ? " ⚠" : "",
          ),
        );
      });
      col.append(body);
      grid.append(col);
    });
    clear(weekBox).append(
      h("div", { class: "week-head" }, h("h2", {}, t("sch.week")), h("div", {}, prev, " ", h("strong", {}, `${days[0]} – ${days[6].slice(5)}`), " ", next)),
      // A phone gets the week as a list of days; a desk gets the timeline grid.
      narrow ? agenda(days, timelines) : h("div", { class: "week-scroll" }, grid),
      h("p", { class: "legend-inline muted" }, ["planned", "played", "quiet", "missed"].map((k) => h("span", { class: `slot-key out-${k}` }, t(`outk.${k}`)))),
    );
  }

  // A lane for each entry: entries whose slots would overlap on the day's column (closer
  // than SLOT_MIN minutes) sit side by side, each group split evenly.
  function sideBySide(entries) {
    const SLOT_MIN = 45;
    const minutes = entries.map((e) => {
      const [hh, mm] = e.local_time.split(":").map(Number);
      return hh * 60 + mm;
    });
    const order = minutes.map((m, i) => [m, i]).sort((a, b) => a[0] - b[0]);
    const out = new Array(entries.length);
    let group = [];
    const flush = () => group.forEach((i, lane) => (out[i] = { lane, of: group.length }));
    for (const [m, i] of order) {
      if (group.length && m - minutes[group[0]] >= SLOT_MIN) {
        flush();
        group = [];
      }
      group.push(i);
    }
    flush();
    return out;
  }

  function agenda(days, timelines) {
    const list = h("div", { class: "agenda", id: "week" });
    timelines.forEach((tl, i) => {
      const label = new Date(`${days[i]}T12:00:00`);
      list.append(
        h(
          "div",
          { class: `agenda-day${days[i] === today() ? " today" : ""}`, "data-date": days[i] },
          h("div", { class: "agenda-date" }, t(`wd.${(label.getDay() + 6) % 7}`), h("small", {}, days[i].slice(5))),
          h(
            "div",
            { class: "agenda-items" },
            tl.entries.length
              ? tl.entries.map((e) =>
                  h(
                    "div",
                    { class: `agenda-item slot-key out-${OUTCOME_CLASS[e.outcome] || "planned"}`, "data-schedule": e.schedule_id },
                    h("b", {}, e.local_time.slice(0, 5)),
                    " ",
                    e.schedule_name,
                    h("small", {}, ` ${t(`out.${e.outcome}`)}`),
                  ),
                )
              : h("span", { class: "muted" }, "—"),
          ),
        ),
      );
    });
    return list;
  }

  function quietSpans(start, end) {
    const toPct = (s) => {
      const [a, b] = s.split(":").map(Number);
      return ((a * 60 + b) / 1440) * 100;
    };
    const s = toPct(start);
    const e = toPct(end);
    return s < e ? [[s, e]] : [[s, 100], [0, e]];
  }

  // ---------------------------------------------------------------- list

  async function drawList() {
    let data;
    try {
      data = await get(`/api/schedules?township=${township}`);
    } catch (e) {
      clear(listBox).append(h("h2", {}, t("sch.list")), h("p", { class: "muted" }, t("sch.unavailable"), " ", e.message));
      return;
    }
    clear(listBox).append(h("h2", {}, t("sch.list"), " ", h("button", { type: "button", class: "btn btn-primary", id: "sch-new", onclick: () => drawEditor(null) }, "+ ", t("sch.new"))));
    const items = data.schedules.filter((s) => s.status !== "deleted");
    if (!items.length) listBox.append(h("p", { class: "muted" }, t("sch.none")));
    for (const s of items) {
      const row = h(
        "div",
        { class: `sch-item st-${s.status}`, "data-schedule": s.id },
        h("div", {}, h("strong", {}, s.name), " ", h("span", { class: "status-pill" }, t(`schst.${s.status}`))),
        h("div", { class: "muted small" }, describe(s.recurrence), " · ", categoryName(s.category), s.next?.length ? ` · ${t("sch.next")} ${fmtTime(s.next[0], true)}` : ""),
        h("div", { class: "muted small sch-reach", "data-reach": s.id }, t("sch.reaches", { places: reachOf(s.targets) })),
      );
      if (s.editable) {
        const actions = h("div", { class: "sch-actions" });
        actions.append(h("button", { type: "button", class: "link", onclick: () => drawEditor(s) }, t("common.edit")));
        const toggle = s.status === "active" ? "pause" : "resume";
        actions.append(h("button", { type: "button", class: "link", onclick: () => act(s, toggle) }, t(`sch.${toggle}`)));
        actions.append(h("button", { type: "button", class: "link danger", onclick: () => act(s, "delete") }, t("common.delete")));
        row.append(actions);
      }
      listBox.append(row);
    }
  }

  // Which villages a schedule reaches, by name: a whole township, or its villages.
  function reachOf(targets) {
    const towns = (targets?.townships || []).map((id) => t("sch.reaches.township", { name: ctx.township(id)?.name || id }));
    const names = (targets?.villages || []).map((id) => ctx.village(id)?.name || id);
    const shown = names.length > 6 ? [...names.slice(0, 6), t("sch.reaches.more", { n: names.length - 6 })] : names;
    return [...towns, ...shown].join(t("sep")) || "—";
  }

  function describe(r) {
    const times = (r.times || []).join(t("sep"));
    if (r.kind === "weekly") return `${t("kind.weekly")} ${(r.weekdays || []).map((d) => t(`wd.${d}`)).join("")} ${times}`;
    if (r.kind === "every_n_days") return `${t("kind.every_n_days", { n: r.interval_days || 1 })} ${times}`;
    if (r.kind === "monthly") return `${t("kind.monthly")} ${(r.month_days || []).join(",")} ${times}`;
    if (r.kind === "once") return `${r.start_date} ${times}`;
    return `${t("kind.daily")} ${times}`;
  }

  async function act(s, action) {
    if (action === "delete" && !(await confirmDialog({ title: t("sch.delete"), body: s.name, ok: t("common.delete") }))) return;
    try {
      if (action === "delete") await api("DELETE", `/api/schedules/${s.id}`);
      else await api("POST", `/api/schedules/${s.id}/${action}`);
      refresh();
    } catch (e) {
      toast(e.message, "error");
    }
  }

  // ---------------------------------------------------------------- quiet hours

  async function drawQuiet() {
    let q = { start: null, end: null };
    try {
      q = await get(`/api/townships/${township}/quiet-hours`);
    } catch {
      /* shown as empty */
    }
    const start = h("input", { type: "time", value: q.start || "", name: "quiet-start" });
    const end = h("input", { type: "time", value: q.end || "", name: "quiet-end" });
    const save = h("button", { type: "button", class: "btn" }, t("common.save"));
    save.addEventListener("click", async () => {
      try {
        await api("PUT", `/api/townships/${township}/quiet-hours`, { start: start.value || null, end: end.value || null });
        toast(t("common.saved"));
        drawWeek();
      } catch (e) {
        toast(e.message, "error");
      }
    });
    clear(quietBox).append(
      h("h2", {}, t("sch.quiet")),
      h("p", { class: "muted small" }, t("sch.quiet.hint")),
      h("div", { class: "control-row" }, h("label", { class: "field" }, h("span", { class: "field-label" }, t("sch.quiet.start")), start), h("label", { class: "field" }, h("span", { class: "field-label" }, t("sch.quiet.end")), end), save),
    );
  }

  // ---------------------------------------------------------------- editor

  function drawEditor(s) {
    const rec = s?.recurrence || { kind: "weekly", times: ["08:00"], start_date: today(), weekdays: [0, 2, 4] };
    const source = { kind: s ? (s.template ? "template" : s.text ? "text" : "media") : templates.length ? "template" : "text" };
    const name = h("input", { name: "name", required: true, value: s?.name || "", maxlength: 100 });
    const tplSel = select(templates.map((x) => [x.id, x.name]), s?.template || templates[0]?.id, { name: "template" });
    const params = h("div", { class: "form-grid" });
    const paramValues = { ...(s?.params || {}) };
    const text = h("textarea", { rows: 3, name: "text" }, s?.text || "");
    // No default category: a recording or a text is not a 会议通知 unless someone says so.
    const category = select([["", t("sch.category.choose")], ...CATEGORIES.map((c) => [c, categoryName(c)])], s?.category || "", { name: "category" });
    const priority = select([["notice", t("prio.notice")], ["routine", t("prio.routine")]], s?.priority || "notice", { name: "priority" });
    let mediaId = s?.media_id && !s?.text && !s?.template ? s.media_id : null;
    const mediaInfo = h("div", { class: "muted small media-info", style: { flexBasis: "100%" } }, mediaId ? `✓ ${mediaId.slice(0, 10)}…` : "");
    const kind = select(KINDS.map((k) => [k, t(`kind.${k}`, { n: "N" })]), rec.kind, { name: "kind" });
    const times = h("input", { name: "times", value: (rec.times || []).join(", "), placeholder: "08:00, 18:30" });
    const startDate = h("input", { type: "date", name: "start_date", value: rec.start_date || today() });
    const endDate = h("input", { type: "date", name: "end_date", value: rec.end_date || "" });
    const interval = h("input", { type: "number", min: 1, name: "interval_days", value: rec.interval_days || 2 });
    const monthDays = h("input", { name: "month_days", value: (rec.month_days || [1]).join(", ") });
    const weekdays = new Set(rec.weekdays || []);
    const wdBox = h(
      "div",
      { class: "chips" },
      [0, 1, 2, 3, 4, 5, 6].map((d) => {
        const chip = h("button", { type: "button", class: `chip${weekdays.has(d) ? " on" : ""}`, "data-weekday": d }, t(`wd.${d}`));
        chip.addEventListener("click", () => {
          if (weekdays.has(d)) weekdays.delete(d);
          else weekdays.add(d);
          chip.classList.toggle("on");
        });
        return chip;
      }),
    );
    const villages = new Set(s?.targets?.villages || []);
    let wholeTownship = !s || !!s.targets?.townships?.length;
    const villageChips = h("div", { class: "chips" });
    const drawVillages = () => {
      clear(villageChips);
      for (const v of ctx.villages.filter((x) => x.township_id === township)) {
        const chip = h("button", { type: "button", class: `chip${wholeTownship || villages.has(v.id) ? " on" : ""}`, disabled: wholeTownship, "data-village": v.id }, v.name);
        chip.addEventListener("click", () => {
          if (villages.has(v.id)) villages.delete(v.id);
          else villages.add(v.id);
          chip.classList.toggle("on");
        });
        villageChips.append(chip);
      }
    };
    const whole = h("input", { type: "checkbox", checked: wholeTownship, name: "whole" });
    whole.addEventListener("change", () => {
      wholeTownship = whole.checked;
      drawVillages();
    });
    drawVillages();

    const drawParams = () => {
      clear(params);
      const tpl = templates.find((x) => x.id === tplSel.value);
      for (const ph of tpl?.placeholders || []) {
        const input = h("input", { value: paramValues[ph.name] ?? ph.default ?? "", placeholder: ph.example || "", name: `param-${ph.name}` });
        input.addEventListener("input", () => (paramValues[ph.name] = input.value));
        paramValues[ph.name] = input.value;
        params.append(h("label", { class: "field" }, h("span", { class: "field-label" }, ph.label || ph.name), input));
      }
    };
    tplSel.addEventListener("change", () => {
      for (const k of Object.keys(paramValues)) delete paramValues[k];
      drawParams();
    });
    drawParams();

    const sourceBox = h("div", {});
    const segBtns = ["template", "text", "media"].map((k) =>
      h("button", { type: "button", class: source.kind === k ? "on" : "", "data-source": k, onclick: () => ((source.kind = k), drawSource()) }, t(`sch.src.${k}`)),
    );
    function drawSource() {
      segBtns.forEach((b) => b.classList.toggle("on", b.dataset.source === source.kind));
      clear(sourceBox);
      if (source.kind === "template") sourceBox.append(h("label", { class: "field" }, h("span", { class: "field-label" }, t("sch.template")), tplSel), params);
      else if (source.kind === "text") sourceBox.append(h("label", { class: "field" }, h("span", { class: "field-label" }, t("em.text")), text), h("label", { class: "field" }, h("span", { class: "field-label" }, t("em.category")), category));
      else sourceBox.append(recorder(), h("label", { class: "field" }, h("span", { class: "field-label" }, t("em.category")), category));
    }

    function recorder() {
      const file = h("input", { type: "file", accept: "audio/*", name: "file" });
      file.addEventListener("change", () => file.files[0] && send(file.files[0]));
      const rec = h("button", { type: "button", class: "btn", id: "record-btn" }, icon("mic"), " ", t("sch.record"));
      let recorderObj = null;
      let chunks = [];
      rec.addEventListener("click", async () => {
        if (recorderObj) {
          recorderObj.stop();
          return;
        }
        try {
          const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
          recorderObj = new MediaRecorder(stream);
          chunks = [];
          recorderObj.ondataavailable = (e) => chunks.push(e.data);
          recorderObj.onstop = () => {
            stream.getTracks().forEach((tr) => tr.stop());
            recorderObj = null;
            clear(rec).append(icon("mic"), " ", t("sch.record"));
            send(new Blob(chunks, { type: chunks[0]?.type || "audio/webm" }));
          };
          recorderObj.start();
          clear(rec).append(icon("stop"), " ", t("sch.record.stop"));
        } catch (e) {
          toast(t("sch.record.denied", { msg: e.message }), "error");
        }
      });
      async function send(blob) {
        mediaInfo.textContent = t("common.loading");
        const form = new FormData();
        form.append("file", blob, blob.name || "recording.webm");
        form.append("title", name.value.trim());
        try {
          const data = await upload("/api/media", form);
          mediaId = data.media_id;
          clear(mediaInfo).append(`✓ ${Math.round(data.duration_ms / 1000)}s `, h("audio", { controls: true, src: data.url, class: "media-player", style: { display: "block", width: "100%", minWidth: "260px" } }));
        } catch (e) {
          mediaInfo.textContent = e.message;
        }
      }
      return h("div", { class: "control-row" }, h("label", { class: "field" }, h("span", { class: "field-label" }, t("sch.upload")), file), rec, mediaInfo);
    }
    drawSource();

    const recBox = h("div", {});
    function drawRec() {
      append(clear(recBox), [
        h(
          "div",
          { class: "form-grid" },
          h("label", { class: "field" }, h("span", { class: "field-label" }, t("sch.kind")), kind),
          h("label", { class: "field" }, h("span", { class: "field-label" }, t("sch.times")), times),
          h("label", { class: "field" }, h("span", { class: "field-label" }, t("sch.start_date")), startDate),
          kind.value !== "once" ? h("label", { class: "field" }, h("span", { class: "field-label" }, t("sch.end_date")), endDate) : null,
          kind.value === "every_n_days" ? h("label", { class: "field" }, h("span", { class: "field-label" }, t("sch.interval")), interval) : null,
          kind.value === "monthly" ? h("label", { class: "field" }, h("span", { class: "field-label" }, t("sch.month_days")), monthDays) : null,
        ),
        kind.value === "weekly" ? wdBox : null,
      ]);
    }
    kind.addEventListener("change", drawRec);
    drawRec();

    function body() {
      if (source.kind !== "template" && !category.value) throw new Error(t("sch.category.required"));
      const r = { kind: kind.value, times: times.value.split(/[,，\s]+/).filter(Boolean), start_date: startDate.value };
      if (kind.value !== "once" && endDate.value) r.end_date = endDate.value;
      if (kind.value === "weekly") r.weekdays = [...weekdays].sort();
      if (kind.value === "every_n_days") r.interval_days = Number(interval.value);
      if (kind.value === "monthly") r.month_days = monthDays.value.split(/[,，\s]+/).filter(Boolean).map(Number);
      const b = {
        name: name.value.trim(),
        recurrence: r,
        priority: priority.value,
        targets: wholeTownship ? { townships: [township] } : { villages: [...villages].sort() },
      };
      if (source.kind === "template") {
        b.template = tplSel.value;
        b.params = Object.fromEntries(Object.entries(paramValues).filter(([, v]) => v));
      } else if (source.kind === "text") {
        b.text = text.value.trim();
        b.category = category.value;
      } else {
        b.media_id = mediaId;
        b.category = category.value;
        b.title = name.value.trim();
      }
      return b;
    }

    const error = h("p", { class: "form-error" });
    // Hear it before saving: the same rendering the villages will hear.
    const heard = h("div", { class: "sch-preview", id: "sch-preview" });
    const hear = h("button", { type: "button", class: "btn", id: "sch-preview-btn" }, icon("play"), " ", t("sch.preview"));
    hear.addEventListener("click", async () => {
      const b = body();
      delete b.name;
      delete b.recurrence;
      error.textContent = "";
      hear.disabled = true;
      clear(heard).append(h("span", { class: "muted" }, t("em.preview.making")));
      try {
        const { data } = await api("POST", "/api/preview", b);
        const audio = h("audio", { controls: true, src: data.url, preload: "auto", id: "sch-preview-audio", style: { display: "block", width: "100%" } });
        clear(heard);
        if (data.spoken || data.text) heard.append(h("p", { class: "spoken" }, data.spoken || data.text));
        heard.append(audio);
        audio.play().catch(() => {});
      } catch (err) {
        clear(heard);
        error.textContent = err.message;
      } finally {
        hear.disabled = false;
      }
    });
    const save = h("button", { type: "submit", class: "btn btn-primary", id: "sch-save" }, s ? t("common.save") : t("sch.create"));
    clear(editBox).append(
      h("h2", {}, s ? t("sch.edit") : t("sch.new")),
      h(
        "form",
        {
          onsubmit: async (e) => {
            e.preventDefault();
            error.textContent = "";
            save.disabled = true;
            try {
              const b = body();
              if (s) await api("PATCH", `/api/schedules/${s.id}`, b);
              else await api("POST", "/api/schedules", b);
              toast(t("common.saved"));
              drawEditor(null);
              refresh();
            } catch (err) {
              if (err instanceof ApiError && err.code === "two_person_rule" && err.info.why) {
                const why = err.info.why;
                error.textContent = t("err.two_person_rule", {
                  why: t("err.two_person_rule.why", {
                    n: why.townships, of: why.of, min: Math.round(why.window_s / 60),
                  }),
                });
              } else {
                // The message is already in the reader's language and names the field.
                error.textContent = err.message;
              }
            } finally {
              save.disabled = false;
            }
          },
        },
        h("label", { class: "field" }, h("span", { class: "field-label" }, t("sch.name")), name),
        h("div", { class: "seg" }, segBtns),
        sourceBox,
        h("label", { class: "field" }, h("span", { class: "field-label" }, t("sch.priority")), priority),
        h("h3", { class: "sub" }, t("sch.when")),
        recBox,
        h("h3", { class: "sub" }, t("sch.where")),
        h("label", { class: "inline" }, whole, " ", t("sch.whole_township")),
        villageChips,
        error,
        h("div", { class: "control-row" }, hear, save),
        heard,
      ),
    );
  }

  drawEditor(null);
  await refresh();
}
