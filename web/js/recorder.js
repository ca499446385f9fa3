// A voice recording made in the browser (MediaRecorder) and brought to the server
// through the ordinary upload endpoint (/api/media), which checks and normalises it like
// any uploaded file: the console never decides what audio is acceptable.
import { upload } from "./api.js";

// The states a recorder goes through; a view draws itself from `recorder.state`.
export const IDLE = "idle";
export const RECORDING = "recording";
export const RECORDED = "recorded";

// `onChange` runs after every state change (start, stop, upload done or failed), so
// the page redraws; `onTick` runs every second while recording, for the elapsed time.
export function createRecorder({ onChange = () => {}, onTick = () => {} } = {}) {
  let mediaRecorder = null;
  let stream = null;
  let timer = null;
  const rec = {
    state: IDLE,
    seconds: 0,
    blobUrl: null, // the take as recorded, for listening back before the server has it
    media: null, // the server's view of the uploaded take (media_id, url, duration_ms)
    uploading: false,
    error: null, // an ApiError or a getUserMedia failure, to be shown
  };

  function reset() {
    if (rec.blobUrl) URL.revokeObjectURL(rec.blobUrl);
    Object.assign(rec, { state: IDLE, seconds: 0, blobUrl: null, media: null, uploading: false, error: null });
  }

  function release() {
    clearInterval(timer);
    timer = null;
    stream?.getTracks().forEach((track) => track.stop());
    stream = null;
  }

  rec.start = async (title) => {
    if (rec.state === RECORDING) return;
    reset();
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (e) {
      rec.error = e;
      onChange();
      return;
    }
    const chunks = [];
    mediaRecorder = new MediaRecorder(stream);
    mediaRecorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
    mediaRecorder.onstop = async () => {
      release();
      const blob = new Blob(chunks, { type: chunks[0]?.type || "audio/webm" });
      rec.state = RECORDED;
      rec.blobUrl = URL.createObjectURL(blob);
      rec.uploading = true;
      onChange();
      const form = new FormData();
      form.append("file", blob, "recording.webm");
      form.append("title", title());
      try {
        rec.media = await upload("/api/media", form);
      } catch (e) {
        rec.error = e;
      }
      rec.uploading = false;
      onChange();
    };
    mediaRecorder.start();
    rec.state = RECORDING;
    timer = setInterval(() => {
      rec.seconds += 1;
      onTick(rec.seconds);
    }, 1000);
    onChange();
  };

  rec.stop = () => {
    if (rec.state === RECORDING) mediaRecorder.stop();
  };

  // Leaving the page mid-take must not leave the microphone open.
  rec.dispose = () => {
    if (mediaRecorder && mediaRecorder.state !== "inactive") {
      mediaRecorder.onstop = null;
      mediaRecorder.stop();
    }
    release();
    reset();
  };

  return rec;
}
