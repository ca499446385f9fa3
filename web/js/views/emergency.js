// 紧急广播: content (template or text) -> area -> level + drill/real -> preview -> confirm.
// Everything on one page, the choices so far always in view in the summary panel, and
// drill and real coloured differently from the moment one is chosen.
import { ApiError, api, get } from "../api.js";
import { append, h, clear, icon, levelChip, modeBanner, patch, toast, select } from "../dom.js";
import { t, categoryName } from "../i18n.js";
import { createRecorder, IDLE, RECORDING } from "../recorder.js";

const FREE_CATEGORIES = ["flood", "forest_fire", "typhoon", "earthquake", "epidemic", "other"];
// Content kinds that are a recording rather than words: sent as media_id, and the server
// lays the emergency signal and the drill framing around them (controller/broadcasts.py).
const RECORDED = new Set(["record", "upload"]);
// What villages hear around a recorded drill, as the server speaks it
// (controller/speech/service.py DRILL_START/DRILL_END): heard in Mandarin whatever the
// console's language, so shown as heard.
const DRILL_FRAME = ["现在进行的是演练，不是真实警报。", "以上是演练。"];

export async function render(main, ctx) {
  await ctx.loadPlaces();
  const me = ctx.me;
  const [tplData, groupData] = await Promise.all([
    get("/api/templates?enabled=1").catch(() => ({ templates: [] })),
    get("/api/groups").catch(() => ({ groups: [] })),
  ]);
  const templates = tplData.templates
    .filter((x) => x.priority === "emergency" && !x.disabled && x.id !== "false_alarm_correction")
    .sort((a, b) => (a.level || 9) - (b.level || 9));
  const groups = groupData.groups;

  const state = {
    template: null, // a template object, "free", "record" (in the browser) or "upload"
    uploads: null, // uploaded recordings (GET /api/media), loaded when first offered
    picked: null, // the uploaded recording chosen, its media view
    params: {},
    text: "",
    category: "flood",
    areaKind: me.county_wide ? "county" : "townships",
    townships: new Set(me.county_wide ? [] : [me.township_id]),
    villages: new Set(),
    group: null,
    level: null,
    drill: null,
    preview: null,
    previewKey: null,
    confirmedReal: false,
    sending: false,
    villageQuery: "",
    repeat: 3,
  };

  const recorder = createRecorder({
    onChange: () => update(),
    // The elapsed time ticks without a redraw, so the stop button keeps focus untouched.
    onTick: (s) => {
      const el = document.getElementById("rec-seconds");
      if (el) el.textContent = t("em.rec.seconds", { s });
    },
  });

  function recording() {
    if (state.template === "record") return recorder.media;
    if (state.template === "upload") return state.picked;
    return null;
  }

  const summary = h("aside", { class: "summary card", id: "em-summary" });
  const steps = h("div", { class: "steps" });
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, t("em.title")), h("p", { class: "muted" }, t("em.subtitle"))),
    h("div", { class: "em-layout" }, steps, summary),
  );

  // ---------------------------------------------------------------- derived

  function targets() {
    if (state.areaKind === "county") return { all: true };
    if (state.areaKind === "townships") return state.townships.size ? { townships: [...state.townships].sort() } : null;
    if (state.areaKind === "villages") return state.villages.size ? { villages: [...state.villages].sort() } : null;
    if (state.areaKind === "codes") {
      const codes = areaCodes();
      return codes.length && codes.every((c) => codeVillages(c).length) ? { areas: codes } : null;
    }
    const g = groups.find((x) => x.id === state.group);
    return g ? { villages: g.villages } : null;
  }

  // Administrative codes typed by the officer (issue 11): each a prefix of village codes.
  function areaCodes() {
    return [...new Set((state.codes || "").split(/[\s,，、]+/).filter(Boolean))];
  }
  function codeVillages(code) {
    if (!/^[0-9]{2,12}$/.test(code)) return [];
    return ctx.villages.filter((v) => (v.code || ctx.township(v.township_id)?.code || "").startsWith(code));
  }

  function areaVillages() {
    const tg = targets();
    if (!tg) return [];
    if (tg.all) return ctx.villages;
    if (tg.areas) return [...new Set(tg.areas.flatMap(codeVillages))];
    if (tg.townships) return ctx.villages.filter((v) => tg.townships.includes(v.township_id));
    return ctx.villages.filter((v) => tg.villages.includes(v.id));
  }

  function areaText() {
    const tg = targets();
    if (!tg) return t("em.area.none");
    const vs = areaVillages();
    const devices = vs.reduce((n, v) => n + (v.device_count || 0), 0);
    const tcount = new Set(vs.map((v) => v.township_id)).size;
    let name;
    if (tg.all) name = t("em.area.county_all", { n: ctx.townships.length });
    else if (state.areaKind === "group") name = groups.find((x) => x.id === state.group).name;
    else if (tg.areas) name = `${tg.areas.join(t("sep"))} · ${t("em.area.villages_n", { n: vs.length, t: tcount })}`;
    else if (tg.townships) name = tg.townships.map((id) => ctx.township(id)?.name || id).join(t("sep"));
    else name = vs.length <= 4 ? vs.map((v) => v.name).join(t("sep")) : t("em.area.villages_n", { n: vs.length, t: tcount });
    return { name, villages: vs.length, devices, townships: tcount };
  }

  function fillText() {
    if (state.template === "free") return state.text;
    if (RECORDED.has(state.template)) return recording() ? recordingLabel(recording()) : "";
    if (!state.template) return "";
    const colours = { 1: "红色", 2: "橙色", 3: "黄色", 4: "蓝色" };
    const grades = { 1: "一级", 2: "二级", 3: "三级", 4: "四级" };
    return state.template.body.replace(/\{([a-z0-9_]+)\}/g, (_, name) => {
      if (name === "level_colour") return colours[state.level] || "";
      if (name === "level_grade") return grades[state.level] || "";
      const v = state.params[name];
      return v ? v : `【${placeholderLabel(name)}】`;
    });
  }

  function recordingLabel(m) {
    return t("em.rec.label", { title: m.text || t("em.rec.untitled"), s: Math.round(m.duration_ms / 1000) });
  }

  // The words of a recorded announcement in the order heard: the recording in brackets,
  // framed for a drill.
  function heardRecording() {
    const inner = `〔${recordingLabel(recording())}〕`;
    return state.drill ? `${DRILL_FRAME[0]}${inner}${DRILL_FRAME[1]}` : inner;
  }

  function contentName() {
    if (state.template === "free") return categoryName(state.category);
    if (RECORDED.has(state.template)) return t(state.template === "record" ? "em.rec.record" : "em.rec.upload");
    return state.template.name;
  }

  function placeholderLabel(name) {
    const ph = state.template?.placeholders?.find((p) => p.name === name);
    return ph?.label || name;
  }

  function missing() {
    const out = [];
    if (!state.template) out.push(t("em.need.content"));
    else if (state.template === "free" && !state.text.trim()) out.push(t("em.need.text"));
    else if (RECORDED.has(state.template)) {
      if (!recording()) out.push(t("em.need.recording"));
    } else if (state.template !== "free") {
      for (const ph of state.template.placeholders) if (ph.required && !state.params[ph.name]?.trim()) out.push(ph.label || ph.name);
    }
    if (!targets()) out.push(t("em.need.area"));
    if (!state.level) out.push(t("em.need.level"));
    if (state.drill === null) out.push(t("em.need.mode"));
    return out;
  }

  function body() {
    const b = { priority: "emergency", level: state.level, drill: state.drill, targets: targets(), repeat: state.repeat };
    if (state.template === "free") Object.assign(b, { text: state.text.trim(), category: state.category });
    else if (RECORDED.has(state.template)) {
      const m = recording();
      Object.assign(b, { media_id: m.media_id, category: state.category, title: (m.text || t("em.rec.untitled")).slice(0, 100) });
    } else {
      b.template = state.template.id;
      b.params = Object.fromEntries(Object.entries(state.params).filter(([, v]) => v && v.trim()));
    }
    return b;
  }

  function needsSecond() {
    if (state.drill !== false || !me.two_person_levels?.includes(state.level)) return false;
    const a = areaText();
    if (!a.villages) return false;
    if (a.townships >= ctx.townships.length) return true;
    return me.two_person_min_townships > 0 && a.townships >= me.two_person_min_townships;
  }

  // ---------------------------------------------------------------- render

  // Typing re-renders only what follows the text (preview, confirm, summary), never the
  // field being typed in or a button the pointer may be on its way to.
  function update(tailOnly = false) {
    document.body.classList.toggle("drill-mode", state.drill === true);
    document.body.classList.toggle("real-mode", state.drill === false);
    const key = missing().length ? null : JSON.stringify(body());
    if (state.previewKey !== key) {
      state.preview = null;
      state.previewKey = null;
    }
    if (tailOnly) renderTail();
    else renderSteps();
    renderSummary();
  }

  function stepHead(n, title, done) {
    return h("h2", { class: `step-head${done ? " done" : ""}` }, h("span", { class: "step-no" }, done ? "✓" : n), title);
  }

  const slots = [0, 1, 2, 3, 4].map(() => h("div", { class: "slot-step" }));
  steps.append(...slots);
  const builders = [contentStep, areaStep, levelStep, previewStep, confirmStep];

  // The choice steps are patched in place: the button just pressed (or the field being
  // typed in) stays the same element and keeps focus. The tail is rebuilt whole; nothing
  // in it is ever focused while a choice above changes.
  function renderSteps() {
    builders.slice(0, 3).forEach((build, i) => {
      const fresh = build();
      if (slots[i].firstChild) patch(slots[i].firstChild, fresh);
      else slots[i].append(fresh);
    });
    renderTail();
  }

  function renderTail() {
    clear(slots[3]).append(previewStep());
    clear(slots[4]).append(confirmStep());
  }

  function contentStep() {
    const grid = h("div", { class: "tpl-grid" });
    for (const tpl of templates) {
      grid.append(
        h(
          "button",
          {
            type: "button",
            class: `tpl${state.template === tpl ? " selected" : ""}`,
            "aria-pressed": String(state.template === tpl),
            "data-template": tpl.id,
            onclick: () => {
              state.template = tpl;
              state.params = Object.fromEntries(tpl.placeholders.map((p) => [p.name, p.default || ""]));
              if (tpl.repeat) state.repeat = tpl.repeat;
              if (!state.level && tpl.level) state.level = tpl.level;
              update();
            },
          },
          h("span", { class: "tpl-icon" }, icon(tpl.category)),
          h("span", { class: "tpl-name" }, tpl.name),
          levelChip(tpl.level),
        ),
      );
    }
    grid.append(
      h(
        "button",
        {
          type: "button",
          class: `tpl${state.template === "free" ? " selected" : ""}`,
          "aria-pressed": String(state.template === "free"),
          "data-template": "free",
          onclick: () => {
            state.template = "free";
            update();
          },
        },
        h("span", { class: "tpl-icon" }, icon("pen")),
        h("span", { class: "tpl-name" }, t("em.free")),
      ),
    );
    for (const [kind, glyph, label] of [["record", "mic", "em.rec.record"], ["upload", "play", "em.rec.upload"]]) {
      grid.append(
        h(
          "button",
          {
            type: "button",
            class: `tpl${state.template === kind ? " selected" : ""}`,
            "aria-pressed": String(state.template === kind),
            "data-template": kind,
            onclick: () => {
              state.template = kind;
              if (kind === "upload" && state.uploads === null) loadUploads();
              update();
            },
          },
          h("span", { class: "tpl-icon" }, icon(glyph)),
          h("span", { class: "tpl-name" }, t(label)),
        ),
      );
    }
    const section = h("section", { class: "card step" }, stepHead(1, t("em.step.content"), !!state.template && !missingContent()), grid);
    if (state.template === "record") section.append(recordPanel(), categoryField());
    else if (state.template === "upload") section.append(uploadsPanel(), categoryField());
    else if (state.template === "free") {
      const ta = h("textarea", {
        rows: 4,
        name: "text",
        placeholder: t("em.text.placeholder"),
        maxlength: 2000,
        oninput: (e) => {
          state.text = e.target.value;
          update(true);
        },
      }, state.text);
      const cat = select(
        FREE_CATEGORIES.map((c) => [c, categoryName(c)]),
        state.category,
        {
          name: "category",
          onchange: (e) => {
            state.category = e.target.value;
            update();
          },
        },
      );
      section.append(h("div", { class: "form-grid" }, h("label", { class: "field wide" }, h("span", { class: "field-label" }, t("em.text")), ta), h("label", { class: "field" }, h("span", { class: "field-label" }, t("em.category")), cat)));
    } else if (state.template) {
      const fields = h("div", { class: "form-grid" });
      for (const ph of state.template.placeholders) {
        const input = h("input", {
          name: `param-${ph.name}`,
          value: state.params[ph.name] || "",
          placeholder: ph.example || "",
          oninput: (e) => {
            state.params[ph.name] = e.target.value;
            const spoken = document.getElementById("em-spoken");
            if (spoken) spoken.textContent = fillText();
            update(true);
          },
        });
        fields.append(h("label", { class: "field" }, h("span", { class: "field-label" }, ph.label || ph.name, ph.required ? h("b", { class: "req" }, " *") : null), input));
      }
      section.append(fields, h("p", { class: "spoken", id: "em-spoken" }, fillText()));
    }
    return section;
  }

  function missingContent() {
    return RECORDED.has(state.template) && !recording();
  }

  function categoryField() {
    const cat = select(
      FREE_CATEGORIES.map((c) => [c, categoryName(c)]),
      state.category,
      { name: "category", onchange: (e) => ((state.category = e.target.value), update()) },
    );
    return h("div", { class: "form-grid" }, h("label", { class: "field" }, h("span", { class: "field-label" }, t("em.category")), cat));
  }

  // Record in the browser: one button that starts and stops (the same element, so focus
  // stays on it), then the take to listen back to, and a second take on request.
  function recordPanel() {
    const r = recorder;
    const panel = h("div", { class: "rec-panel", id: "rec-panel" });
    const live = r.state === RECORDING;
    const toggle = h(
      "button",
      {
        type: "button",
        class: `btn${live ? " btn-real" : ""}`,
        id: "rec-btn",
        "data-rec": r.state,
        "aria-pressed": String(live),
        onclick: () => (live ? r.stop() : r.start(() => t("em.rec.auto_title", { time: new Date().toLocaleTimeString() }))),
      },
      icon(live ? "stop" : "mic"),
      " ",
      t(live ? "em.rec.stop" : r.state === IDLE ? "em.rec.start" : "em.rec.again"),
    );
    panel.append(h("div", { class: "control-row" }, toggle, live ? h("span", { id: "rec-seconds", class: "rec-live", role: "status" }, t("em.rec.seconds", { s: r.seconds })) : null));
    if (r.blobUrl) {
      // Once stored, the take is heard as the server keeps it (checked, levelled, with
      // its length known: a browser's own WebM take often declares none).
      const src = r.media ? r.media.url : r.blobUrl;
      panel.append(h("audio", { controls: true, src, id: "rec-audio", class: "media-player", "aria-label": t("em.rec.listen") }));
    }
    let status = null;
    if (r.error) status = h("p", { class: "error", role: "alert" }, r.error.status ? r.error.message : t("em.rec.denied", { msg: r.error.message }));
    else if (r.uploading) status = h("p", { class: "muted", role: "status" }, t("em.rec.uploading"));
    else if (r.media) status = h("p", { class: "muted", id: "rec-ok", role: "status" }, "✓ ", recordingLabel(r.media));
    if (status) panel.append(status);
    return panel;
  }

  async function loadUploads() {
    try {
      state.uploads = (await get("/api/media?source=upload&usable=1&limit=50")).media;
    } catch (e) {
      state.uploads = [];
      toast(e.message, "error");
    }
    update();
  }

  // Pick an uploaded recording: each with its own player, to hear it before choosing.
  function uploadsPanel() {
    if (state.uploads === null) return h("p", { class: "muted" }, t("common.loading"));
    if (!state.uploads.length) return h("p", { class: "muted" }, t("em.rec.none"));
    return h(
      "ul",
      { class: "rec-list", "aria-label": t("em.rec.upload") },
      state.uploads.map((m) => {
        const on = state.picked?.media_id === m.media_id;
        return h(
          "li",
          { class: `rec-item${on ? " on" : ""}` },
          h(
            "button",
            {
              type: "button",
              class: `chip${on ? " on" : ""}`,
              "aria-pressed": String(on),
              "data-media": m.media_id,
              onclick: () => ((state.picked = m), update()),
            },
            on ? "✓ " : "",
            recordingLabel(m),
            h("small", {}, ` ${m.created_at.slice(0, 16).replace("T", " ")}`),
          ),
          h("audio", { controls: true, preload: "none", src: m.url, class: "media-player", "aria-label": t("em.rec.listen_to", { title: m.text || t("em.rec.untitled") }) }),
        );
      }),
    );
  }

  function areaStep() {
    const kinds = [];
    if (me.county_wide) kinds.push(["county", t("em.area.county")]);
    kinds.push(["townships", t("em.area.townships")], ["villages", t("em.area.villages")]);
    if (ctx.villages.some((v) => v.code)) kinds.push(["codes", t("em.area.codes")]);
    if (groups.length) kinds.push(["group", t("em.area.group")]);
    const seg = h(
      "div",
      { class: "seg", role: "group", "aria-label": t("em.step.area") },
      kinds.map(([k, label]) =>
        h(
          "button",
          {
            type: "button",
            class: state.areaKind === k ? "on" : "",
            "aria-pressed": String(state.areaKind === k),
            "data-area": k,
            onclick: () => {
              state.areaKind = k;
              update();
            },
          },
          label,
        ),
      ),
    );
    const section = h("section", { class: "card step" }, stepHead(2, t("em.step.area"), !!targets()), seg);
    if (state.areaKind === "county") {
      section.append(h("p", { class: "area-note" }, t("em.area.county_note", { t: ctx.townships.length, v: ctx.villages.length })));
    } else if (state.areaKind === "townships") {
      const list = h("div", { class: "chips" });
      for (const tw of ctx.townships) {
        const n = ctx.villages.filter((v) => v.township_id === tw.id).length;
        list.append(checkChip(tw.name, `${n}${t("unit.village")}`, state.townships.has(tw.id), (on) => toggle(state.townships, tw.id, on), { "data-township": tw.id }));
      }
      section.append(list);
    } else if (state.areaKind === "villages") {
      const search = h("input", {
        type: "search",
        name: "village-search",
        placeholder: t("em.area.search"),
        "aria-label": t("em.area.search"),
        class: "search",
        value: state.villageQuery,
        oninput: (e) => {
          state.villageQuery = e.target.value;
          update();
        },
      });
      const box = h("div", { class: "village-box" });
      {
        const q = state.villageQuery.trim();
        for (const tw of ctx.townships) {
          const vs = ctx.villages.filter((v) => v.township_id === tw.id && (!q || v.name.includes(q)));
          if (!vs.length) continue;
          const allOn = vs.every((v) => state.villages.has(v.id));
          box.append(
            h(
              "div",
              { class: "village-group" },
              h(
                "div",
                { class: "village-group-head" },
                h("strong", {}, tw.name),
                h(
                  "button",
                  {
                    type: "button",
                    class: "link",
                    onclick: () => {
                      for (const v of vs) toggle(state.villages, v.id, !allOn, false);
                      update();
                    },
                  },
                  allOn ? t("em.area.none_of") : t("em.area.all_of"),
                ),
              ),
              h(
                "div",
                { class: "chips" },
                vs.map((v) => checkChip(v.name, null, state.villages.has(v.id), (on) => toggle(state.villages, v.id, on), { "data-village": v.id })),
              ),
            ),
          );
        }
      }
      section.append(search, box);
    } else if (state.areaKind === "codes") {
      const input = h("input", { type: "text", name: "areas", inputmode: "numeric", class: "search", placeholder: t("em.area.codes_hint"), value: state.codes || "" });
      const found = h("ul", { class: "muted small", id: "em-codes" });
      const show = () => {
        clear(found);
        for (const code of areaCodes()) {
          const vs = codeVillages(code);
          found.append(h("li", { "data-code": code, "data-villages": vs.length }, code, " — ", vs.length ? t("em.area.villages_n", { n: vs.length, t: new Set(vs.map((v) => v.township_id)).size }) : t("em.area.code_none")));
        }
      };
      input.addEventListener("change", () => {
        state.codes = input.value;
        update();
      });
      show();
      section.append(input, found);
    } else {
      const list = h("div", { class: "chips" });
      for (const g of groups) {
        list.append(
          checkChip(g.name, `${g.villages.length}${t("unit.village")}`, state.group === g.id, () => {
            state.group = g.id;
            update();
          }, { "data-group": g.id }),
        );
      }
      section.append(list);
    }
    return section;
  }

  function checkChip(label, extra, on, onToggle, attrs) {
    return h(
      "button",
      { type: "button", class: `chip${on ? " on" : ""}`, "aria-pressed": on ? "true" : "false", onclick: () => onToggle(!on), ...attrs },
      on ? "✓ " : "",
      label,
      extra ? h("small", {}, ` ${extra}`) : null,
    );
  }

  function toggle(set, id, on, redraw = true) {
    if (on) set.add(id);
    else set.delete(id);
    if (redraw) update();
  }

  function levelStep() {
    const levels = h(
      "div",
      { class: `levels${state.level ? " chosen" : ""}`, role: "group", "aria-label": t("em.level") },
      [1, 2, 3, 4].map((lv) =>
        h(
          "button",
          {
            type: "button",
            class: `level-btn lv${lv}${state.level === lv ? " on" : ""}`,
            "aria-pressed": String(state.level === lv),
            "data-level": lv,
            onclick: () => {
              state.level = lv;
              update();
            },
          },
          h("strong", {}, t(`level.${lv}`)),
          h("small", {}, t(`level.${lv}.desc`)),
        ),
      ),
    );
    const modes = h(
      "div",
      { class: "modes", role: "group", "aria-label": t("em.mode") },
      h(
        "button",
        { type: "button", class: `mode-btn drill${state.drill === true ? " on" : ""}`, "aria-pressed": String(state.drill === true), "data-mode": "drill", onclick: () => ((state.drill = true), (state.confirmedReal = false), update()) },
        h("strong", {}, t("mode.drill")),
        h("small", {}, t("em.mode.drill_desc")),
      ),
      h(
        "button",
        { type: "button", class: `mode-btn real${state.drill === false ? " on" : ""}`, "aria-pressed": String(state.drill === false), "data-mode": "real", onclick: () => ((state.drill = false), update()) },
        h("strong", {}, t("mode.real")),
        h("small", {}, t("em.mode.real_desc")),
      ),
    );
    return h(
      "section",
      { class: "card step" },
      stepHead(3, t("em.step.level"), !!state.level && state.drill !== null),
      h("h3", { class: "sub" }, t("em.level")),
      levels,
      h("h3", { class: "sub" }, t("em.mode")),
      modes,
      h("h3", { class: "sub" }, t("em.repeat")),
      h(
        "div",
        { class: "seg", role: "group", "aria-label": t("em.repeat") },
        [1, 2, 3, 5].map((n) =>
          h("button", { type: "button", class: state.repeat === n ? "on" : "", "aria-pressed": String(state.repeat === n), "data-repeat": n, onclick: () => ((state.repeat = n), update()) }, t("em.repeat.n", { n })),
        ),
      ),
    );
  }

  function previewStep() {
    const gaps = missing();
    const section = h("section", { class: "card step" }, stepHead(4, t("em.step.preview"), !!state.preview));
    if (state.drill !== null) section.append(modeBanner(state.drill));
    if (gaps.length) {
      section.append(h("p", { class: "muted" }, t("em.need", { what: gaps.join(t("sep")) })));
      return section;
    }
    if (state.preview) {
      const audio = h("audio", { controls: true, src: state.preview.url, preload: "auto", id: "preview-audio" });
      section.append(
        audio,
        h("p", { class: "muted" }, t("em.preview.length", { s: Math.round(state.preview.duration_ms / 1000) })),
        h("p", { class: "spoken" }, RECORDED.has(state.template) ? heardRecording() : state.preview.spoken || state.preview.text || fillText()),
      );
    } else {
      const btn = h("button", { type: "button", class: "btn btn-big", id: "preview-btn" }, icon("play"), " ", t("em.preview.make"));
      btn.addEventListener("click", async () => {
        btn.disabled = true;
        btn.textContent = t("em.preview.making");
        try {
          const key = JSON.stringify(body());
          const { data } = await api("POST", "/api/preview", body());
          state.preview = data;
          state.previewKey = key;
          renderTail();
          renderSummary();
          const audio = document.getElementById("preview-audio");
          // The button pressed is gone: the keyboard continues from what replaced it.
          audio?.focus();
          audio?.play().catch(() => {});
        } catch (e) {
          toast(e.message, "error");
          btn.disabled = false;
          btn.textContent = t("em.preview.make");
        }
      });
      section.append(btn);
    }
    return section;
  }

  function confirmStep() {
    const section = h("section", { class: "card step confirm-step" }, stepHead(5, t("em.step.confirm"), false));
    if (!state.preview) {
      section.append(h("p", { class: "muted" }, t("em.confirm.after_preview")));
      return section;
    }
    const a = areaText();
    section.append(modeBanner(state.drill));
    section.append(
      h(
        "div",
        { class: "confirm-facts" },
        fact(t("em.fact.mode"), h("span", { class: `mode-word ${state.drill ? "drill" : "real"}` }, t(state.drill ? "mode.drill" : "mode.real"))),
        fact(t("em.fact.level"), levelChip(state.level, true)),
        fact(t("em.fact.area"), h("strong", {}, a.name), h("small", {}, `${a.villages}${t("unit.village")} · ${a.devices}${t("unit.terminal")}`)),
        fact(t("em.fact.content"), contentName()),
      ),
    );
    if (needsSecond()) section.append(h("p", { class: "notice-second" }, icon("people"), " ", t("em.second_needed")));
    const send = h(
      "button",
      { type: "button", class: `btn btn-huge ${state.drill ? "btn-drill" : "btn-real"}`, id: "send-btn" },
      t(state.drill ? "em.send.drill" : "em.send.real"),
    );
    if (!state.drill) {
      const check = h("input", { type: "checkbox", id: "confirm-real", checked: state.confirmedReal });
      check.addEventListener("change", () => {
        state.confirmedReal = check.checked;
        send.disabled = !check.checked;
      });
      section.append(h("label", { class: "confirm-real" }, check, " ", t("em.confirm.real_check")));
      send.disabled = !state.confirmedReal;
    }
    send.addEventListener("click", () => doSend(send));
    section.append(send);
    return section;
  }

  function fact(label, ...value) {
    return h("div", { class: "fact" }, h("span", { class: "fact-label" }, label), h("span", { class: "fact-value" }, value));
  }

  async function doSend(btn) {
    if (state.sending) return;
    state.sending = true;
    btn.disabled = true;
    try {
      const { status, data } = await api("POST", "/api/broadcasts", body());
      if (status === 202) {
        toast(t("em.sent.pending"));
        ctx.go(`#/approvals/${data.approval_id}`);
      } else {
        toast(t(state.drill ? "em.sent.drill" : "em.sent.real"));
        ctx.go(`#/board/${data.id}`);
      }
    } catch (e) {
      toast(e instanceof ApiError ? e.message : String(e), "error");
      btn.disabled = false;
    } finally {
      state.sending = false;
    }
  }

  function renderSummary() {
    clear(summary);
    const a = areaText();
    summary.className = `summary card ${state.drill === true ? "is-drill" : state.drill === false ? "is-real" : ""}`;
    append(summary, [
      state.drill === null ? h("div", { class: "banner banner-unset" }, t("em.mode.unset")) : modeBanner(state.drill),
      h(
        "dl",
        {},
        h("dt", {}, t("em.fact.level")),
        h("dd", { id: "sum-level" }, state.level ? levelChip(state.level, true) : "—"),
        h("dt", {}, t("em.fact.area")),
        h("dd", { id: "sum-area" }, a.name ? h("strong", {}, a.name) : "—", a.name ? h("div", { class: "muted" }, `${a.villages}${t("unit.village")} · ${a.devices}${t("unit.terminal")}`) : null),
        h("dt", {}, t("em.fact.content")),
        h("dd", { id: "sum-content" }, !state.template ? "—" : contentName()),
      ),
      fillText() ? h("p", { class: "spoken small" }, fillText().slice(0, 160)) : null,
    ]);
  }

  update();
  return () => {
    recorder.dispose();
    document.body.classList.remove("drill-mode", "real-mode");
  };
}
