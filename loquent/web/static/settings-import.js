// Settings: import the account's message history and follow its progress live.
//
// The latest import is shown on load; progress arrives over SSE (twilio.import.progress per
// page, twilio.import.finished at the end). Twilio's list has no total, so the bar moves a
// step per page (pages / (pages + 1)) and fills when the import ends. While an import runs,
// the page also asks for it every few seconds: a stream that drops costs nothing.
import { api } from "./api.js";

const EVT_PROGRESS = "twilio.import.progress";
const EVT_FINISHED = "twilio.import.finished";
const POLL_MS = 5000;

const els = {
  section: document.getElementById("history-import"),
  form: document.getElementById("import-form"),
  since: document.getElementById("import-since"),
  start: document.getElementById("import-start"),
  status: document.getElementById("import-status"),
  progress: document.getElementById("import-progress"),
  state: document.getElementById("import-state"),
  imported: document.getElementById("import-imported"),
  skipped: document.getElementById("import-skipped"),
  pages: document.getElementById("import-pages"),
  error: document.getElementById("import-error"),
};

const STATES = {
  running: ["importing…", "pill-warn"],
  finished: ["finished", "pill-ok"],
  failed: ["failed", "pill-bad"],
};

let shown = null; // the import on screen
let pollTimer = null;

function show(run) {
  // Events may arrive out of order with a poll: never go back to fewer pages.
  if (shown && shown.id === run.id && shown.state !== "running" && run.state === "running") return;
  if (shown && shown.id === run.id && run.state === "running" && run.pages < shown.pages) return;
  if (shown && run.id < shown.id) return;
  shown = run;
  els.status.hidden = false;
  const [label, tone] = STATES[run.state] || [run.state, "pill-muted"];
  els.state.textContent = label;
  els.state.className = `pill ${tone}`;
  els.imported.textContent = String(run.imported);
  els.skipped.textContent = String(run.skipped);
  els.pages.textContent = String(run.pages);
  els.progress.max = 1;
  els.progress.value = run.state === "running" ? run.pages / (run.pages + 1) : 1;
  els.error.hidden = !run.error;
  els.error.textContent = run.error || "";
  if (els.start) els.start.disabled = run.state === "running";
  clearTimeout(pollTimer);
  if (run.state === "running") pollTimer = setTimeout(poll, POLL_MS);
}

async function poll() {
  if (!shown) return;
  try {
    show(await api(`/api/twilio/imports/${shown.id}`));
  } catch {
    pollTimer = setTimeout(poll, POLL_MS);
  }
}

async function loadLatest() {
  const data = await api("/api/twilio/imports?kind=history&limit=1");
  if (data.items.length) show(data.items[0]);
}

function showError(message) {
  els.status.hidden = false;
  els.error.hidden = false;
  els.error.textContent = message;
}

async function onSubmit(event) {
  event.preventDefault();
  els.start.disabled = true;
  const since = els.since.value;
  try {
    show(await api("/api/twilio/sync-messages", { method: "POST", json: since ? { since } : {} }));
  } catch (error) {
    els.start.disabled = false;
    showError(error.message);
  }
}

function onEvent(event) {
  let data;
  try {
    data = JSON.parse(event.data);
  } catch {
    return;
  }
  if (data.payload && data.payload.kind === "history") show(data.payload);
}

function start() {
  if (!els.section) return;
  els.form?.addEventListener("submit", onSubmit);
  const source = new EventSource("/api/events");
  source.addEventListener(EVT_PROGRESS, onEvent);
  source.addEventListener(EVT_FINISHED, onEvent);
  window.addEventListener("pagehide", () => source.close());
  loadLatest().catch((error) => showError(error.message));
}

start();
