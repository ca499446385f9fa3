// A real alert waiting for a second officer must reach one, whatever page they are on and
// even with the console in a background tab: a sound, and a desktop notification when the
// officer has allowed them (the permission is asked on a click, as browsers require).
import { h } from "./dom.js";
import { t } from "./i18n.js";

const alerted = new Set();

// Seconds left before a request times out (never negative).
export function secondsLeft(expiresAt, now = Date.now()) {
  return Math.max(0, Math.round((new Date(expiresAt).getTime() - now) / 1000));
}

export function fmtLeft(s) {
  const m = Math.floor(s / 60);
  return t("ap.left", { t: `${m}:${String(s % 60).padStart(2, "0")}` });
}

// Two rising tones, loud enough to be heard across a duty room; no file to fetch.
export function chime() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return false;
  try {
    const ac = new Ctx();
    [880, 1320].forEach((hz, i) => {
      const osc = ac.createOscillator();
      const gain = ac.createGain();
      osc.frequency.value = hz;
      gain.gain.setValueAtTime(0.0001, ac.currentTime + i * 0.35);
      gain.gain.exponentialRampToValueAtTime(0.4, ac.currentTime + i * 0.35 + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, ac.currentTime + i * 0.35 + 0.3);
      osc.connect(gain).connect(ac.destination);
      osc.start(ac.currentTime + i * 0.35);
      osc.stop(ac.currentTime + i * 0.35 + 0.32);
    });
    setTimeout(() => ac.close(), 1500);
    return true;
  } catch {
    return false;
  }
}

// Called for every live `approval` event: a new pending request that this officer can
// confirm (not their own) rings once and notifies once.
export function alertApproval(ctx, item) {
  if (!ctx.me || !ctx.isOfficer() || item.status !== "pending") return false;
  if (item.requested_by === ctx.me.user || alerted.has(item.id)) return false;
  alerted.add(item.id);
  chime();
  document.dispatchEvent(new CustomEvent("dalaba:approval-alert", { detail: { id: item.id } }));
  if ("Notification" in window && Notification.permission === "granted") {
    const n = new Notification(t("ap.notify.title"), {
      body: `${item.title} · ${t("ap.by", { who: item.requested_by })} · ${fmtLeft(secondsLeft(item.expires_at))}`,
      tag: `approval-${item.id}`,
      requireInteraction: true,
    });
    n.onclick = () => {
      window.focus();
      ctx.go(`#/approvals/${item.id}`);
      n.close();
    };
  }
  return true;
}

// The button that asks for desktop notifications; nothing when they are already decided.
export function notifyButton() {
  if (!("Notification" in window) || Notification.permission !== "default") return null;
  const btn = h("button", { type: "button", class: "btn", id: "notify-permission" }, t("ap.notify.enable"));
  btn.addEventListener("click", async () => {
    const answer = await Notification.requestPermission();
    btn.replaceWith(h("span", { class: "muted" }, t(answer === "granted" ? "ap.notify.on" : "ap.notify.off")));
  });
  return btn;
}
