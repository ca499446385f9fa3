// 实时喊话: pick an area, press 开始喊话, speak into the microphone; each terminal's state
// (connecting, live, failed, preempted, ended) and the speaking time are shown until
// 结束喊话. The microphone is resampled here to 16 kHz mono 16-bit PCM and sent over the
// session's WebSocket; the controller signs it frame by frame for the terminals.
import { post } from "../api.js";
import { broadcastWithDeliveries } from "../deliveries.js";
import { append, clear, h, placeName, toast } from "../dom.js";
import { t } from "../i18n.js";

const RATE = 16000;
const POLL_MS = 1000;

function shownState(state) {
  if (state === "playing") return "live";
  if (state === "preempted") return "preempted";
  if (state === "offline") return "offline";
  if (["failed", "rejected", "expired", "unknown"].includes(state)) return "failed";
  if (["done", "cancelled"].includes(state)) return "ended";
  return "connecting";
}

// Linear-interpolating resampler from the device's rate to 16 kHz, carrying its phase
// across blocks so the joins are seamless.
function resampler(fromRate) {
  const step = fromRate / RATE;
  let pos = 0;
  let last = 0;
  return (input) => {
    const out = [];
    while (pos < input.length) {
      const i = Math.floor(pos);
      const frac = pos - i;
      const a = i === 0 ? last : input[i - 1];
      const b = input[i];
      const v = a + (b - a) * frac;
      out.push(Math.max(-32768, Math.min(32767, Math.round(v * 32767))));
      pos += step;
    }
    pos -= input.length;
    last = input[input.length - 1];
    return Int16Array.from(out);
  };
}

export async function render(main, ctx) {
  await ctx.loadPlaces();
  const me = ctx.me;
  const townships = me.county_wide ? ctx.townships : ctx.townships.filter((x) => x.id === me.township_id);
  const township = h(
    "select",
    { name: "township", id: "lp-township" },
    me.county_wide ? h("option", { value: "" }, t("lp.county")) : null,
    townships.map((x) => h("option", { value: x.id }, x.name)),
  );
  if (!me.county_wide && townships.length) township.value = townships[0].id;
  const villages = h("div", { class: "lp-villages", id: "lp-villages" });
  const startBtn = h("button", { class: "btn btn-primary", id: "lp-start", type: "button" }, t("lp.start"));
  const stopBtn = h("button", { class: "btn btn-danger", id: "lp-stop", type: "button", disabled: true }, t("lp.stop"));
  const status = h("p", { id: "lp-status", class: "muted" }, t("lp.idle"));
  const clock = h("strong", { id: "lp-time" }, "0:00");
  const rows = h("tbody", { id: "lp-terminals" });

  function renderVillages() {
    clear(villages);
    const list = township.value ? ctx.villages.filter((v) => v.township_id === township.value) : [];
    for (const v of list) {
      villages.append(h("label", { class: "check" }, h("input", { type: "checkbox", value: v.id, "data-village": v.id }), " ", v.name));
    }
    if (list.length) villages.append(h("p", { class: "muted" }, t("lp.villages_hint")));
  }
  township.addEventListener("change", renderVillages);
  renderVillages();

  main.append(
    h("div", { class: "page-head" }, h("h1", {}, t("lp.title"))),
    h(
      "div",
      { class: "card" },
      h("label", { class: "field" }, h("span", { class: "field-label" }, t("lp.area")), township),
      villages,
      h("div", { class: "filter-actions" }, startBtn, stopBtn),
      status,
      h("p", {}, t("lp.speaking_time"), " ", clock),
    ),
    h(
      "div",
      { class: "card" },
      h("h2", {}, t("lp.terminals")),
      h("div", { class: "table-wrap" }, h("table", { class: "table" }, h("thead", {}, h("tr", {}, h("th", {}, t("lp.terminal")), h("th", {}, t("lp.place")), h("th", {}, t("lp.state")))), rows)),
    ),
  );

  let session = null; // { id, speakFrom, ws, stream, audio, poll, tick, refreshing }

  function targets() {
    const picked = [...villages.querySelectorAll("input[data-village]:checked")].map((x) => x.value);
    if (picked.length) return { villages: picked.sort() };
    if (township.value) return { townships: [township.value] };
    return { all: true };
  }

  async function refresh() {
    // Every page, as the board reads them: the first alone is 1,000 of a province's
    // 10,000 terminals. A poll still following pages when the next is due is left to
    // finish rather than doubled, and a session ended meanwhile is not redrawn.
    const current = session;
    if (!current || current.refreshing) return;
    current.refreshing = true;
    let view;
    try {
      view = await broadcastWithDeliveries(current.id);
    } finally {
      current.refreshing = false;
    }
    if (session !== current) return;
    append(
      clear(rows),
      view.deliveries.map((d) => {
        const shown = shownState(d.state);
        return h(
          "tr",
          { id: `lp-dev-${d.device_id}`, "data-state": shown },
          h("td", {}, d.device_id),
          h("td", {}, placeName(ctx.village(d.village_id) || { name: d.village_id })),
          h("td", { class: `lp-st lp-st-${shown}` }, t(`lp.st.${shown}`)),
        );
      }),
    );
  }

  function tick() {
    if (!session) return;
    const now = Date.now();
    if (now < session.speakFrom) {
      status.textContent = t("lp.wait_chime");
      status.dataset.phase = "chime";
      return;
    }
    if (!session.ended) {
      status.textContent = t("lp.speak");
      status.dataset.phase = "live";
      const s = Math.floor((now - session.speakFrom) / 1000);
      clock.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
    }
  }

  async function start() {
    startBtn.disabled = true;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
    } catch (e) {
      toast(`${t("lp.mic_denied")} ${e.message || e}`, "error");
      startBtn.disabled = false;
      return;
    }
    let view;
    try {
      const result = await post("/api/live-paging", { targets: targets() });
      view = result.data;
    } catch (e) {
      stream.getTracks().forEach((x) => x.stop());
      toast(e.message, "error");
      startBtn.disabled = false;
      return;
    }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/api/live-paging/${view.id}/audio`);
    ws.binaryType = "arraybuffer";
    const audio = new AudioContext();
    const source = audio.createMediaStreamSource(stream);
    // A ScriptProcessor of 1024 frames: ~21 ms at 48 kHz, small against the 500 ms
    // playout delay, and it needs no separate worklet file.
    const proc = audio.createScriptProcessor(1024, 1, 1);
    const resample = resampler(audio.sampleRate);
    proc.onaudioprocess = (e) => {
      e.outputBuffer.getChannelData(0).fill(0);
      const pcm = resample(e.inputBuffer.getChannelData(0));
      if (ws.readyState === WebSocket.OPEN) ws.send(pcm.buffer);
    };
    source.connect(proc);
    proc.connect(audio.destination);
    session = { id: view.id, speakFrom: view.speak_from_ms, ws, stream, audio, ended: false };
    document.body.dataset.liveSession = view.id;
    ws.onclose = () => {
      if (session && !session.ended) finish(false);
    };
    session.poll = setInterval(() => refresh().catch(() => {}), POLL_MS);
    session.tick = setInterval(tick, 200);
    stopBtn.disabled = false;
    tick();
    refresh().catch(() => {});
  }

  async function finish(ask = true) {
    if (!session || session.ended) return;
    session.ended = true;
    stopBtn.disabled = true;
    const current = session;
    if (ask) {
      try {
        await post(`/api/live-paging/${current.id}/stop`);
      } catch (e) {
        toast(e.message, "error");
      }
    }
    current.ws.close();
    current.stream.getTracks().forEach((x) => x.stop());
    current.audio.close().catch(() => {});
    clearInterval(current.tick);
    status.textContent = t("lp.ended");
    status.dataset.phase = "ended";
    startBtn.disabled = false;
    // Keep showing the terminals until their last reports are in.
    setTimeout(() => clearInterval(current.poll), 15000);
  }

  startBtn.addEventListener("click", start);
  stopBtn.addEventListener("click", () => finish(true));
  return () => {
    if (session) {
      clearInterval(session.poll);
      clearInterval(session.tick);
      if (!session.ended) {
        session.ended = true;
        session.ws.close(); // the controller ends the session when its socket closes
        session.stream.getTracks().forEach((x) => x.stop());
        session.audio.close().catch(() => {});
      }
    }
  };
}
