// Tiny DOM helpers: no framework, no build step.
import { t, lang } from "./i18n.js";

export function h(tag, attrs, ...children) {
  if (tag === "input" && (attrs?.type === "date" || attrs?.type === "time")) return dateTimeInput(attrs);
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") listen(el, k.slice(2), v);
    else if (k === "html") el.innerHTML = v; // only ever used with our own constant strings
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

// Handlers given to h() live in one table per element, so that patch() can hand the
// handlers of a freshly built element to the one already on screen (which keeps its
// focus, its caret and its place under the pointer).
const HANDLERS = new WeakMap();

function listen(el, type, fn) {
  let table = HANDLERS.get(el);
  if (!table) HANDLERS.set(el, (table = {}));
  if (!(type in table)) el.addEventListener(type, (e) => HANDLERS.get(el)[type]?.call(el, e));
  table[type] = fn;
}

function adoptHandlers(old, fresh) {
  const table = HANDLERS.get(fresh) || {};
  const mine = HANDLERS.get(old);
  if (mine) for (const type of Object.keys(mine)) if (!(type in table)) mine[type] = null;
  for (const [type, fn] of Object.entries(table)) listen(old, type, fn);
}

// Elements that must never be patched into one another (a form field is its name).
const keyOf = (el) => `${el.id}|${el.getAttribute("name") || ""}|${el.getAttribute("type") || ""}`;

// Make `old` look and behave like `fresh`, keeping every element that is still the same
// kind of element at the same place. A re-render through patch() leaves keyboard focus
// where the person put it: the emergency form redraws after every choice, and a screen
// reader or keyboard user must not be thrown back to the top of the page each time.
// Only for trees built with h() (listeners added otherwise are not carried over).
export function patch(old, fresh) {
  const same =
    old.nodeType === fresh.nodeType &&
    old.nodeName === fresh.nodeName &&
    (old.nodeType !== Node.ELEMENT_NODE || keyOf(old) === keyOf(fresh));
  if (!same || (old.nodeType !== Node.ELEMENT_NODE && old.nodeType !== Node.TEXT_NODE)) {
    old.replaceWith(fresh);
    return fresh;
  }
  if (old.nodeType === Node.TEXT_NODE) {
    if (old.data !== fresh.data) old.data = fresh.data;
    return old;
  }
  for (const a of [...old.attributes]) if (!fresh.hasAttribute(a.name)) old.removeAttribute(a.name);
  for (const a of [...fresh.attributes]) if (old.getAttribute(a.name) !== a.value) old.setAttribute(a.name, a.value);
  adoptHandlers(old, fresh);
  const had = [...old.childNodes];
  const wanted = [...fresh.childNodes];
  wanted.forEach((node, i) => (i < had.length ? patch(had[i], node) : old.append(node)));
  for (const node of had.slice(wanted.length)) node.remove();
  // What a person typed or ticked lives in properties, not attributes.
  if (/^(INPUT|TEXTAREA|SELECT)$/.test(old.nodeName) && old.value !== fresh.value) old.value = fresh.value;
  if (old.nodeName === "INPUT" && old.checked !== fresh.checked) old.checked = fresh.checked;
  return old;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export const LEVEL_CLASS = { 1: "lv1", 2: "lv2", 3: "lv3", 4: "lv4" };
export const ROMAN = { 1: "I", 2: "II", 3: "III", 4: "IV" };

export function levelChip(level, big = false) {
  if (!level) return null;
  return h("span", { class: `level ${LEVEL_CLASS[level]}${big ? " big" : ""}` }, t(`level.${level}`));
}

export function modeBadge(drill, big = false) {
  return h(
    "span",
    { class: `mode ${drill ? "mode-drill" : "mode-real"}${big ? " big" : ""}` },
    t(drill ? "mode.drill" : "mode.real"),
  );
}

// The banner shown on every step of a drill or a real alert (Hawaii lesson: the two
// must never look alike).
export function modeBanner(drill) {
  return h(
    "div",
    { class: `banner ${drill ? "banner-drill" : "banner-real"}`, role: "status" },
    h("strong", {}, t(drill ? "banner.drill" : "banner.real")),
    h("span", {}, t(drill ? "banner.drill.sub" : "banner.real.sub")),
  );
}

const pad = (n) => String(n).padStart(2, "0");

// Date and time fields in the console's own format. Chromium draws <input type=date>
// and <input type=time> in the browser's locale whatever the page's language: on a
// county PC with an English system the Chinese console would show mm/dd/yyyy and
// "02:30 PM". So h("input", { type: "date" | "time" }) builds a text field that shows
// 2026年05月01日 (2026-05-01 in English) and 14:30, and whose .value is what a native
// field's would be: yyyy-mm-dd or hh:mm, or "" while the text is not a valid date or
// time. The views keep reading and setting .value as before. min, max and required
// are checked with the field's own validity message.
const NATIVE_VALUE = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value");

export function parseDate(text) {
  const m =
    /^\s*(\d{4})\s*\D{1,2}\s*(\d{1,2})\s*\D{1,2}\s*(\d{1,2})\s*日?\s*$/.exec(text) ||
    /^\s*(\d{4})(\d{2})(\d{2})\s*$/.exec(text);
  if (!m) return "";
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const day = new Date(y, mo - 1, d);
  if (day.getFullYear() !== y || day.getMonth() !== mo - 1 || day.getDate() !== d) return "";
  return `${m[1]}-${pad(mo)}-${pad(d)}`;
}

export function parseTime(text) {
  const m = /^\s*(\d{1,2})\s*[:：.时]?\s*(\d{2})\s*分?\s*$/.exec(text);
  if (!m || Number(m[1]) > 23 || Number(m[2]) > 59) return "";
  return `${pad(Number(m[1]))}:${m[2]}`;
}

export function showDate(iso) {
  if (!iso) return "";
  const [y, m, d] = iso.split("-");
  return lang() === "en" ? iso : `${y}年${m}月${d}日`;
}

function dateTimeInput(attrs) {
  const { type, value, min, max, ...rest } = attrs;
  const isDate = type === "date";
  const parse = isDate ? parseDate : parseTime;
  const show = isDate ? showDate : (v) => v;
  const el = h("input", {
    ...rest,
    type: "text",
    inputmode: "numeric",
    autocomplete: "off",
    spellcheck: "false",
    size: isDate ? 14 : 6,
    placeholder: rest.placeholder || t(isDate ? "date.placeholder" : "time.placeholder"),
    class: `${rest.class || ""} ${isDate ? "date-field" : "time-field"}`.trim(),
    "data-kind": type,
  });
  const shown = () => NATIVE_VALUE.get.call(el);
  function validate() {
    const text = shown().trim();
    const v = parse(text);
    let message = "";
    if (text && !v) message = t(isDate ? "date.invalid" : "time.invalid");
    else if (v && min && v < min) message = t("date.before_min", { d: show(min) });
    else if (v && max && v > max) message = t("date.after_max", { d: show(max) });
    el.setCustomValidity(message);
    if (message) el.setAttribute("aria-invalid", "true");
    else el.removeAttribute("aria-invalid");
  }
  Object.defineProperty(el, "value", {
    configurable: true,
    get: () => parse(shown()),
    set: (v) => {
      const text = String(v ?? "");
      NATIVE_VALUE.set.call(el, parse(text) ? show(parse(text)) : text);
      validate();
    },
  });
  // Typed as 20260501, 2026-5-1 or 2026/05/01: shown the reader's way once left. This
  // listener is the field's first, so a view's own change handler reads the tidy value.
  el.addEventListener("change", () => {
    const v = parse(shown());
    if (v) NATIVE_VALUE.set.call(el, show(v));
    validate();
  });
  el.addEventListener("input", validate);
  if (value) el.value = value;
  return el;
}

export function fmtTime(iso, withDate = false) {
  if (!iso) return "—";
  const d = new Date(iso);
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (!withDate) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

export function fmtDuration(ms) {
  if (ms < 0 || !Number.isFinite(ms)) ms = 0;
  const s = Math.floor(ms / 1000);
  const m = Math.floor(s / 60);
  return m ? `${m}:${pad(s % 60)}` : `${s}s`;
}

export function fmtAgo(iso) {
  if (!iso) return "—";
  const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  if (s < 60) return t("ago.s", { n: s });
  if (s < 3600) return t("ago.m", { n: Math.floor(s / 60) });
  if (s < 86400) return t("ago.h", { n: Math.floor(s / 3600) });
  return t("ago.d", { n: Math.floor(s / 86400) });
}

export function today(offsetDays = 0) {
  const d = new Date(Date.now() + offsetDays * 86400000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

export function placeName(item) {
  if (!item) return "";
  return lang() === "en" && item.name_en ? item.name_en : item.name;
}

let toastTimer = null;
export function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = `toast show ${kind}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.className = "toast"), kind === "error" ? 6000 : 3000);
}

export function confirmDialog({ title, body, ok, okClass = "btn-primary", cancel }) {
  return new Promise((resolve) => {
    const dlg = h(
      "dialog",
      { class: "dialog" },
      h("h3", {}, title),
      h("div", { class: "dialog-body" }, body),
      h(
        "div",
        { class: "actions" },
        h("button", { class: "btn", type: "button", onclick: () => close(false) }, cancel || t("common.cancel")),
        h("button", { class: `btn ${okClass}`, type: "button", "data-ok": "1", onclick: () => close(true) }, ok),
      ),
    );
    function close(v) {
      dlg.close();
      dlg.remove();
      resolve(v);
    }
    dlg.addEventListener("cancel", () => close(false));
    document.body.append(dlg);
    dlg.showModal();
  });
}

export function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), input, hint ? h("small", { class: "muted" }, hint) : null);
}

export function select(options, value, attrs = {}) {
  return h(
    "select",
    attrs,
    options.map(([v, label]) => h("option", { value: v, selected: String(v) === String(value) }, label)),
  );
}

const SVG_NS = "http://www.w3.org/2000/svg";
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

// Icons drawn inline: a county PC or a headless test browser may have no emoji font.
const ICONS = {
  megaphone: "M3 10v4h3l6 4V6L6 10H3z M15 9a4 4 0 0 1 0 6 M18 6a8 8 0 0 1 0 12",
  flood: "M2 8c2.5-2 4.5-2 7 0s4.5 2 7 0 4.5-2 6 0 M2 13c2.5-2 4.5-2 7 0s4.5 2 7 0 4.5-2 6 0 M2 18c2.5-2 4.5-2 7 0s4.5 2 7 0 4.5-2 6 0",
  forest_fire: "M12 2c1 4 5 6 5 11a5 5 0 0 1-10 0c0-3 2-4 2-7 2 1 3 3 3 5 1-2 1-5 0-9z",
  typhoon: "M10 12a2 2 0 1 0 4 0a2 2 0 1 0-4 0 M4 9a9 9 0 0 1 15-3 M20 15a9 9 0 0 1-15 3 M7 12a5 5 0 0 1 5-5 M17 12a5 5 0 0 1-5 5",
  earthquake: "M2 12h4l2-5 3 10 3-12 3 9 2-2h3",
  epidemic: "M7 12a5 5 0 1 0 10 0a5 5 0 1 0-10 0 M12 2v3 M12 19v3 M2 12h3 M19 12h3 M5 5l2 2 M17 17l2 2 M5 19l2-2 M17 7l2-2",
  pen: "M4 20h4L19 9l-4-4L4 16v4z M14 6l4 4",
  bell: "M6 16v-5a6 6 0 0 1 12 0v5l2 2H4l2-2z M10 20a2 2 0 0 0 4 0",
  mic: "M9 6a3 3 0 0 1 6 0v6a3 3 0 0 1-6 0z M5 11a7 7 0 0 0 14 0 M12 18v3",
  stop: "M6 6h12v12H6z",
  play: "M7 5v14l12-7z",
  download: "M12 4v11 M7 10l5 5 5-5 M5 20h14",
  undo: "M9 14L4 9l5-5 M4 9h10a6 6 0 0 1 0 12h-3",
  wait: "M6 3h12 M6 21h12 M7 3c0 5 10 5 10 9s-10 4-10 9 M17 3c0 5-10 5-10 9s10 4 10 9",
  people: "M6 11a3 3 0 1 0 6 0a3 3 0 1 0-6 0 M3 20c0-3 3-5 6-5s6 2 6 5 M15 6a3 3 0 1 1 2 5 M21 20c0-3-2-5-4-5",
  alert: "M12 3L2 21h20L12 3z M12 10v5 M12 18v1",
};
export function icon(name, cls = "") {
  return svg(
    "svg",
    { viewBox: "0 0 24 24", class: `icon ${cls}`, "aria-hidden": "true", fill: name === "stop" || name === "play" ? "currentColor" : "none", stroke: "currentColor", "stroke-width": 2, "stroke-linecap": "round", "stroke-linejoin": "round" },
    svg("path", { d: ICONS[name] || ICONS.megaphone }),
  );
}
