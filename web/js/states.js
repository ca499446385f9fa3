// How a delivery's state reads to a person. The wire state alone is not enough for two
// endings: "expired" that never reached the terminal (it was offline the whole time)
// and "failed" because the play was cut (crash, power loss). Both get their own name,
// and the board groups every delivery into one bucket for counts and colours.
import { t } from "./i18n.js";

// Nothing more will happen to these (the controller's final states).
export const FINAL = new Set([
  "done",
  "silent",
  "failed",
  "rejected",
  "expired",
  "cancelled",
  "unknown",
]);

// A broadcast listed with its outcome counts is still "active" until it expires, but
// nothing more will happen once every terminal has reached a final state or waits
// offline. The server's `settled` when it sends one.
export function settled(b, total) {
  if (b.status !== "active") return false;
  if (typeof b.settled === "boolean") return b.settled;
  const ended = [...FINAL, "offline"].reduce((n, s) => n + (b.outcomes?.[s] || 0), 0);
  return total > 0 && ended === total;
}

// The state a person sees: the wire state, or one of the two reason-qualified endings.
export function shownState(state, reason) {
  const why = reason || "";
  if (state === "expired" && why.startsWith("never reached")) return "unreached";
  if (state === "failed" && why.startsWith("interrupted")) return "interrupted";
  return state;
}

export function deliveryName(state, reason) {
  return t(`state.${shownState(state, reason)}`);
}

// One bucket per colour on the board. Rejected, interrupted and expired-after-reaching
// are failures with a reason; preempted waits to be played again, like fetched.
const BUCKET = {
  scheduled: "sent",
  sent: "sent",
  offline: "offline",
  received: "received",
  fetched: "fetched",
  preempted: "fetched",
  playing: "playing",
  done: "done",
  unknown: "unknown",
  failed: "failed",
  interrupted: "failed",
  silent: "failed", // played to its end, but the output monitor heard no sound for part of it
  rejected: "failed",
  expired: "failed",
  unreached: "unreached",
  cancelled: "cancelled",
};

export function bucketOf(state, reason) {
  return BUCKET[shownState(state, reason)] || "sent";
}

// The order the counts read in: from waiting, through progress, to each kind of end.
export const BUCKETS = [
  "sent",
  "offline",
  "received",
  "fetched",
  "playing",
  "done",
  "unknown",
  "failed",
  "unreached",
  "cancelled",
];

// Endings a duty officer must look at, worst first: they decide a village's colour
// before any progress does.
export const PROBLEMS = ["failed", "unreached", "unknown"];

// Known reasons in the reader's language (the controller and terminals write them in
// English); anything else is shown as written. Captured parts fill the placeholders.
const REASONS = [
  [/^never reached/, "reason.never_reached"],
  [/^interrupted/, "reason.interrupted"],
  [/^not played before expiry/, "reason.not_played"],
  [/^amplifier failed/, "reason.amplifier"],
  [/^no sound on the speaker line for (?<s>[\d.]+) s from (?<from>[\d.]+) s/, "reason.no_sound"],
  [/^no report from the terminal/, "reason.no_report"],
  [/^the terminal went silent/, "reason.silent"],
  [/^resent \(attempt (?<n>\d+)\) by (?<by>.+)$/, "reason.resent"],
  [/^cancelled by (?<by>.+)$/, "reason.cancelled_by"],
  [/^terminal refused the command: (?<detail>.*)$/, "reason.refused"],
  [/^media: (?<detail>.*)$/, "reason.media"],
];

export function reasonText(reason) {
  if (!reason) return "";
  for (const [pattern, key] of REASONS) {
    const m = pattern.exec(reason);
    if (m) return t(key, m.groups);
  }
  return reason;
}
