// The live inbox: renders the contact list and the open conversation from the JSON API and
// keeps both current with the organization's Server-Sent Events.
//
//   messaging.message.new     → re-fetch the contact list (coalesced), append to the open feed
//   messaging.message.status  → patch the message in place (body arrives, status changes)
//   resync                    → events were missed: re-fetch the list and the feed
//   twilio.catchup.finished   → messages missed while the app was down were recorded
//   twilio.import.finished      (or a history import ended): re-fetch the list and the feed
//
// Every message goes through upsertMessage(), which ignores a copy older than the one shown
// (by updated_at), so a fetch and an event racing each other cannot roll a message back.
// A message with MMS media fetches its media list once (again only if num_media changes)
// and shows image thumbnails and download links in place of "N attachments".
//
// The compose box sends a reply with POST /api/messages/send. The text shows at once as a
// "sending…" bubble in #feed-pending; it becomes the stored message when either the answer
// (201) or the SSE message.new for it arrives, whichever is first (matched by the id of the
// answer, or by the text for the event), so it is never shown twice. Twilio's reason for a
// refusal is shown under the bubble and the text goes back into the box.

import { api } from "./api.js";

const EVT_NEW = "messaging.message.new";
const EVT_STATUS = "messaging.message.status";
const EVT_RESYNC = "resync";
// One event per catch-up or import run, never one per recorded message.
const EVT_BULK_RECORDED = ["twilio.catchup.finished", "twilio.import.finished"];

const PAGE_SIZE = 50;
const MAX_PAGE = 200;

const body = document.body;
const openContactId = Number(body.dataset.contactId) || null;
const els = {
  contactList: document.getElementById("contact-list"),
  contactsEmpty: document.getElementById("contacts-empty"),
  contactsMore: document.getElementById("contacts-more"),
  feedScroll: document.getElementById("feed-scroll"),
  feed: document.getElementById("feed"),
  feedEmpty: document.getElementById("feed-empty"),
  loadOlder: document.getElementById("load-older"),
  liveStatus: document.getElementById("live-status"),
  notice: document.getElementById("notice"),
};

// ---------------------------------------------------------------------------------------
// Small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "href"
      || key === "datetime" || key === "title" || key === "role") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function loginUrl() {
  const here = window.location.pathname + window.location.search;
  return "/login?next=" + encodeURIComponent(here);
}

class Unauthorized extends Error {}

async function getJSON(url) {
  const response = await fetch(url, {
    headers: { Accept: "application/json" },
    credentials: "same-origin",
    cache: "no-store",
  });
  if (response.status === 401) {
    window.location.assign(loginUrl());
    throw new Unauthorized("signed out");
  }
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      const payload = await response.json();
      message = payload?.error?.message || message;
    } catch { /* not JSON: keep the status */ }
    throw new Error(message);
  }
  return response.json();
}

let noticeTimer = null;
function showNotice(text, { sticky = false } = {}) {
  if (!els.notice) return;
  els.notice.textContent = text;
  els.notice.hidden = false;
  clearTimeout(noticeTimer);
  if (!sticky) noticeTimer = setTimeout(() => { els.notice.hidden = true; }, 6000);
}

function reportError(error) {
  if (error instanceof Unauthorized) return;
  console.error(error);
  showNotice(`Could not refresh the inbox: ${error.message}`);
}

// ---------------------------------------------------------------------------------------
// Time

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const weekdayFormat = new Intl.DateTimeFormat(undefined, { weekday: "short" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function relativeTime(date, now = new Date()) {
  const seconds = Math.max(0, (now - date) / 1000);
  if (seconds < 45) return "now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 24 * 3600) return `${Math.floor(seconds / 3600)} h`;
  if (seconds < 6 * 24 * 3600) return weekdayFormat.format(date);
  return dayFormat.format(date);
}

function messageTime(date, now = new Date()) {
  const sameDay = date.toDateString() === now.toDateString();
  return sameDay ? timeFormat.format(date) : `${dayFormat.format(date)}, ${timeFormat.format(date)}`;
}

function timeElement(iso, { relative }) {
  if (!iso) return null;
  const date = new Date(iso);
  return el("time", {
    datetime: iso,
    title: fullFormat.format(date),
    "data-relative": relative ? "" : null,
  }, relative ? relativeTime(date) : messageTime(date));
}

function refreshRelativeTimes() {
  for (const node of document.querySelectorAll("time[data-relative]")) {
    node.textContent = relativeTime(new Date(node.getAttribute("datetime")));
  }
}

// ---------------------------------------------------------------------------------------
// What a message says, in the list preview and in the feed

const BODY_NOTES = {
  pending: "loading message…",
  empty: "no text",
  failed: "message text could not be loaded",
};

function bodyState(message) {
  if (message.body_state === "ready" && !message.body) return "empty";
  return message.body_state || "ready";
}

function statusTone(status) {
  if (["delivered", "read", "received"].includes(status)) return "ok";
  if (["failed", "undelivered", "canceled"].includes(status)) return "bad";
  return "pending";
}

function sourceLabel(source) {
  return { external: "external", import: "imported" }[source] || null;
}

function initials(name) {
  const letters = (name || "").split(/\s+/).filter((w) => /^\p{L}/u.test(w)).map((w) => w[0]);
  return letters.slice(0, 2).join("").toUpperCase() || "#";
}

// ---------------------------------------------------------------------------------------
// Contact list: re-fetched on every new message, with at most one request in flight and
// one trailing request queued behind it, however many events arrive in a burst.

const contacts = {
  inFlight: false,
  again: false,
  shown: PAGE_SIZE,
  nextCursor: null,
  lastMessageOf: new Map(), // contact id -> id of its last message (to patch previews)
};

function renderPreview(message) {
  if (!message) return el("span", { class: "contact-preview muted" }, "No messages yet");
  const state = bodyState(message);
  const prefix = message.direction === "outbound" ? "You: " : "";
  if (state === "ready") {
    return el("span", { class: "contact-preview" }, prefix + message.body);
  }
  const note = state === "empty" && message.num_media > 0
    ? attachmentsText(message.num_media) : BODY_NOTES[state] || "";
  return el("span", { class: "contact-preview muted", "data-body-state": state },
    prefix, el("em", {}, note));
}

function renderContact(item) {
  const isOpen = item.id === openContactId;
  const message = item.last_message;
  return el("li", {
    class: "contact" + (isOpen ? " is-open" : ""),
    "data-contact-id": item.id,
    "data-last-message-id": message ? message.id : null,
  },
  el("a", { href: `/messaging/${item.id}`, "aria-current": isOpen ? "page" : null },
    el("span", { class: "avatar", "aria-hidden": "true" }, initials(item.name)),
    el("span", { class: "contact-main" },
      el("span", { class: "contact-line" },
        el("span", { class: "contact-name" }, item.name || item.phone || "Unknown"),
        timeElement(item.last_contacted_at, { relative: true })),
      renderPreview(message))));
}

function renderContacts(items, { append }) {
  if (!els.contactList) return;
  const nodes = items.map(renderContact);
  if (append) {
    // A contact can move between pages while paging; keep the first copy only.
    const seen = new Set([...els.contactList.children].map((n) => n.dataset.contactId));
    els.contactList.append(...nodes.filter((n) => !seen.has(n.dataset.contactId)));
  } else {
    contacts.lastMessageOf.clear();
    els.contactList.replaceChildren(...nodes);
  }
  for (const item of items) {
    if (item.last_message) contacts.lastMessageOf.set(item.id, item.last_message.id);
  }
  els.contactList.setAttribute("aria-busy", "false");
  els.contactsEmpty.hidden = els.contactList.children.length > 0;
  els.contactsMore.hidden = !contacts.nextCursor;
}

async function fetchContacts() {
  const limit = Math.min(MAX_PAGE, Math.max(PAGE_SIZE, contacts.shown));
  const page = await getJSON(`/api/contacts?limit=${limit}`);
  contacts.nextCursor = page.next_cursor;
  renderContacts(page.items, { append: false });
}

function refreshContacts() {
  if (!els.contactList) return;
  if (contacts.inFlight) {
    contacts.again = true;
    return;
  }
  contacts.inFlight = true;
  fetchContacts()
    .catch(reportError)
    .finally(() => {
      contacts.inFlight = false;
      if (contacts.again) {
        contacts.again = false;
        refreshContacts();
      }
    });
}

async function loadMoreContacts() {
  if (!contacts.nextCursor) return;
  els.contactsMore.disabled = true;
  try {
    const cursor = encodeURIComponent(contacts.nextCursor);
    const page = await getJSON(`/api/contacts?limit=${PAGE_SIZE}&cursor=${cursor}`);
    contacts.nextCursor = page.next_cursor;
    contacts.shown += page.items.length;
    renderContacts(page.items, { append: true });
  } catch (error) {
    reportError(error);
  } finally {
    els.contactsMore.disabled = false;
  }
}

// A body arriving for a contact's latest message updates its preview without a fetch.
// A list already on its way may have been read before this change (a body fetched right
// after the message appeared), and would put the old preview back: fetch once more after it.
function patchContactPreview(message) {
  if (!els.contactList) return;
  if (contacts.inFlight) contacts.again = true;
  if (contacts.lastMessageOf.get(message.contact_id) !== message.id) return;
  const item = els.contactList.querySelector(`[data-contact-id="${message.contact_id}"]`);
  const preview = item?.querySelector(".contact-preview");
  if (preview) preview.replaceWith(renderPreview(message));
}

// ---------------------------------------------------------------------------------------
// Conversation feed

const feed = {
  messages: new Map(), // message id -> message JSON currently shown
  olderCursor: null,
  loaded: false,
};

function sortKey(message) {
  return [Date.parse(message.created_at), message.id];
}

function isBefore(a, b) {
  const [ta, ia] = sortKey(a);
  const [tb, ib] = sortKey(b);
  return ta < tb || (ta === tb && ia < ib);
}

function renderBody(message) {
  const state = bodyState(message);
  if (state === "ready") return el("p", { class: "message-body" }, message.body);
  // A picture sent without words needs no "no text" note: the picture is the message.
  if (state === "empty" && message.num_media > 0) return null;
  const classes = state === "pending" ? "message-body body-placeholder" : "message-body body-note";
  return el("p", { class: classes, "data-body-state": state }, BODY_NOTES[state] || "");
}

function renderMessage(message) {
  const source = sourceLabel(message.source);
  const tone = statusTone(message.status);
  return el("li", {
    class: `message ${message.direction === "outbound" ? "outbound" : "inbound"}`,
    "data-message-id": message.id,
    "data-direction": message.direction,
    "data-status": message.status,
    "data-body-state": bodyState(message),
    "data-source": message.source || "",
  },
  el("div", { class: "bubble" }, renderBody(message), renderMedia(message)),
  el("div", { class: "message-meta" },
    timeElement(message.created_at, { relative: false }),
    source ? el("span", { class: "source-badge", title: sourceTitle(message.source) }, source)
      : null,
    el("span", { class: `status-badge tone-${tone}`, "data-status": message.status },
      isSending(message) ? "sending…" : message.status.replaceAll("_", " ")),
    message.error_code
      ? el("span", { class: "error-code", title: "Twilio error code" }, `error ${message.error_code}`)
      : null),
  sendErrors.has(message.id)
    ? el("p", { class: "send-error", role: "alert" }, sendErrors.get(message.id)) : null);
}

// A reply from the inbox that Twilio has not answered yet (it has no SID).
function isSending(message) {
  return message.direction === "outbound" && message.source === "loquent"
    && !message.external_id && message.status === "queued";
}

function sourceTitle(source) {
  return source === "external"
    ? "Sent outside Loquent (Twilio Console, another tool or a script)"
    : "Imported from the account's message history";
}

function nearBottom() {
  const box = els.feedScroll;
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function scrollToBottom() {
  els.feedScroll.scrollTop = els.feedScroll.scrollHeight;
}

// Show ``message`` in the feed: replace the shown copy if this one is at least as new,
// otherwise insert it in time order. Returns whether the feed changed.
function upsertMessage(message, { fromEvent }) {
  if (!els.feed || message.contact_id !== openContactId) return false;
  const shown = feed.messages.get(message.id);
  if (shown) {
    if (Date.parse(message.updated_at) < Date.parse(shown.updated_at)) return false;
    const node = els.feed.querySelector(`[data-message-id="${message.id}"]`);
    feed.messages.set(message.id, message);
    node?.replaceWith(renderMessage(message));
    loadMedia(message);
    return true;
  }
  // A status event for a message older than everything loaded belongs to a page the user
  // has not opened; it will be fetched with that page.
  const oldest = els.feed.firstElementChild;
  if (fromEvent && feed.olderCursor && oldest) {
    const oldestMessage = feed.messages.get(Number(oldest.dataset.messageId));
    if (oldestMessage && isBefore(message, oldestMessage)) return false;
  }
  feed.messages.set(message.id, message);
  const node = renderMessage(message);
  let after = els.feed.lastElementChild;
  while (after && isBefore(message, feed.messages.get(Number(after.dataset.messageId)))) {
    after = after.previousElementSibling;
  }
  if (after) after.after(node);
  else els.feed.prepend(node);
  loadMedia(message);
  return true;
}

// ---------------------------------------------------------------------------------------
// MMS media. The list exists once the body fetch has stored it, so it is asked for when a
// message with media is no longer pending, once per (message, num_media); until it
// arrives, and whenever it holds nothing, the bubble says "N attachments". Files come
// through the app (/api/messages/{id}/media/{sid}): the browser never talks to Twilio.

const media = {
  shown: new Map(), // message id -> media items last fetched
  asked: new Map(), // message id -> key of the list requested (see mediaKey)
};

function attachmentsText(count) {
  return count === 1 ? "1 attachment" : `${count} attachments`;
}

function mediaKey(message) {
  return `${message.num_media}:${bodyState(message) === "pending" ? "pending" : "settled"}`;
}

// SVG can carry script and is served as a download, so it is never a thumbnail.
function isThumbnail(contentType) {
  return contentType.startsWith("image/") && contentType !== "image/svg+xml";
}

function renderAttachment(item) {
  if (isThumbnail(item.content_type)) {
    return el("a", {
      class: "media-thumb", href: item.url, target: "_blank", rel: "noopener",
      title: "Open the full image", "data-media-sid": item.sid,
    },
    // loading before src: a detached <img> starts its download as soon as it has a src.
    el("img", { loading: "lazy", decoding: "async", alt: "Image attachment", src: item.url }));
  }
  return el("a", {
    class: "media-file", href: item.url, download: "", "data-media-sid": item.sid,
  }, "Download attachment", el("span", { class: "media-type" }, ` (${item.content_type})`));
}

function renderMedia(message) {
  if (!(message.num_media > 0)) return null;
  const items = media.shown.get(message.id);
  if (!items || items.length === 0) {
    return el("p", { class: "message-media", "data-media-state": items ? "none" : "loading" },
      attachmentsText(message.num_media));
  }
  return el("div", { class: "message-media", "data-media-state": "loaded" },
    ...items.map(renderAttachment));
}

function loadMedia(message) {
  if (!(message.num_media > 0) || bodyState(message) === "pending") return;
  const key = mediaKey(message);
  if (media.asked.get(message.id) === key) return; // loaded, or on its way
  media.asked.set(message.id, key);
  getJSON(`/api/messages/${message.id}/media`)
    .then((page) => {
      if (media.asked.get(message.id) !== key) return; // a newer list was asked for
      media.shown.set(message.id, page.items);
      patchMedia(message.id);
    })
    .catch((error) => {
      // Leave the "N attachments" text; the next update of the message asks again.
      if (media.asked.get(message.id) === key) media.asked.delete(message.id);
      if (!(error instanceof Unauthorized)) console.warn("media list not loaded", error);
    });
}

function patchMedia(messageId) {
  const message = feed.messages.get(messageId);
  const node = els.feed?.querySelector(`[data-message-id="${messageId}"] .message-media`);
  if (!message || !node) return;
  const stick = nearBottom();
  node.replaceWith(renderMedia(message));
  if (stick) scrollToBottom();
}

function updateFeedChrome() {
  els.feed.setAttribute("aria-busy", "false");
  els.feedEmpty.hidden = feed.messages.size > 0;
  els.loadOlder.hidden = !feed.olderCursor;
}

// After a resync, the newest page may not reach back to what is shown: the messages in
// between were never loaded, and "Load older" would page back from the old top and skip
// them. Then the feed starts over from this page.
function leavesGap(page) {
  if (!feed.loaded || !page.next_cursor || page.items.length === 0) return false;
  const oldest = page.items[0];
  if (feed.messages.has(oldest.id)) return false;
  const last = els.feed.lastElementChild;
  const newestShown = last && feed.messages.get(Number(last.dataset.messageId));
  return Boolean(newestShown) && isBefore(newestShown, oldest);
}

async function loadFeed() {
  const stick = !feed.loaded || nearBottom();
  const page = await getJSON(`/api/contacts/${openContactId}/messages?limit=${PAGE_SIZE}`);
  const startOver = leavesGap(page);
  if (startOver) {
    feed.messages.clear();
    els.feed.replaceChildren();
  }
  if (!feed.loaded || startOver) feed.olderCursor = page.next_cursor;
  for (const message of page.items) upsertMessage(message, { fromEvent: false });
  feed.loaded = true;
  updateFeedChrome();
  if (stick || startOver) scrollToBottom();
}

async function loadOlder() {
  if (!feed.olderCursor) return;
  els.loadOlder.disabled = true;
  try {
    const cursor = encodeURIComponent(feed.olderCursor);
    const page = await getJSON(
      `/api/contacts/${openContactId}/messages?limit=${PAGE_SIZE}&before=${cursor}`);
    // Keep the message the reader is looking at in place while older ones go above it.
    const box = els.feedScroll;
    const fromBottom = box.scrollHeight - box.scrollTop;
    feed.olderCursor = page.next_cursor;
    for (const message of page.items) upsertMessage(message, { fromEvent: false });
    updateFeedChrome();
    box.scrollTop = box.scrollHeight - fromBottom;
  } catch (error) {
    reportError(error);
  } finally {
    els.loadOlder.disabled = false;
  }
}

function applyToFeed(message) {
  if (!els.feed || message.contact_id !== openContactId) return;
  const stick = nearBottom();
  if (upsertMessage(message, { fromEvent: true })) {
    updateFeedChrome();
    if (stick) scrollToBottom();
  }
}

// ---------------------------------------------------------------------------------------
// Compose box

const sendErrors = new Map(); // message id -> why Twilio refused it (shown under the bubble)

const composer = {
  form: document.getElementById("compose"),
  text: document.getElementById("compose-body"),
  button: document.getElementById("compose-send"),
  line: document.getElementById("compose-line"),
  pendingList: document.getElementById("feed-pending"),
  attempts: [], // sends not yet matched to a stored message, oldest first
};

function composeEnabled() {
  return Boolean(composer.form) && !composer.form.dataset.disabled;
}

function syncComposeButton() {
  if (!composer.button) return;
  composer.button.disabled = !composeEnabled() || !composer.text.value.trim();
}

function autosize() {
  const box = composer.text;
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight + 2, 160)}px`;
}

function renderAttempt(attempt) {
  const failed = Boolean(attempt.error);
  const node = el("li", {
    class: "message outbound is-pending",
    "data-pending-key": attempt.key,
    "data-direction": "outbound",
    "data-status": failed ? "not-sent" : "sending",
  },
  el("div", { class: "bubble" }, el("p", { class: "message-body" }, attempt.body)),
  el("div", { class: "message-meta" },
    el("span", { class: `status-badge tone-${failed ? "bad" : "pending"}` },
      failed ? "not sent" : "sending…")));
  if (failed) {
    const retry = el("button", { type: "button", class: "button button-quiet" }, "Retry");
    retry.addEventListener("click", () => submitAttempt(attempt));
    node.append(el("p", { class: "send-error", role: "alert" }, attempt.error, retry));
  }
  return node;
}

function showAttempt(attempt) {
  const node = renderAttempt(attempt);
  if (attempt.node?.isConnected) attempt.node.replaceWith(node);
  else composer.pendingList.append(node);
  attempt.node = node;
  els.feedEmpty.hidden = true;
}

function settleAttempt(attempt) {
  attempt.node?.remove();
  composer.attempts = composer.attempts.filter((a) => a !== attempt);
}

// A message.new for one of our own replies may beat the answer to the POST: the first
// waiting attempt with the same text is that reply.
function adoptFromEvent(message) {
  if (message.contact_id !== openContactId || message.direction !== "outbound"
    || message.source !== "loquent" || feed.messages.has(message.id)) return;
  const attempt = composer.attempts.find((a) => a.messageId === undefined && !a.error
    && a.body === message.body);
  if (!attempt) return;
  attempt.messageId = message.id;
  settleAttempt(attempt);
}

function restoreText(text) {
  if (composer.text.value.trim()) return; // never overwrite what is being typed
  composer.text.value = text;
  autosize();
  syncComposeButton();
}

async function submitAttempt(attempt) {
  attempt.error = null;
  showAttempt(attempt);
  scrollToBottom();
  const json = { contact_id: openContactId, body: attempt.body };
  if (attempt.lineId) json.phone_number_id = attempt.lineId;
  try {
    const message = await api("/api/messages/send", {
      method: "POST", json, headers: { "Idempotency-Key": attempt.key },
    });
    settleAttempt(attempt);
    applyToFeed(message);
  } catch (error) {
    const stored = error.details?.failed_message;
    if (stored) {
      // Twilio refused it (or could not be reached): the stored row says "failed"; the
      // reason goes under it, and the text back into the box to edit and send again.
      sendErrors.set(stored.id, error.message);
      settleAttempt(attempt);
      const shown = feed.messages.get(stored.id);
      if (shown) {
        feed.messages.delete(stored.id); // re-render even if the event was newer
        els.feed.querySelector(`[data-message-id="${stored.id}"]`)?.remove();
        applyToFeed(Date.parse(shown.updated_at) > Date.parse(stored.updated_at) ? shown : stored);
      } else {
        applyToFeed(stored);
      }
    } else if (attempt.messageId !== undefined) {
      // Stored already (its event arrived), the answer was lost: the feed follows the row.
      showNotice(`The reply may not have been sent: ${error.message}`);
    } else {
      // Nothing stored: keep the bubble with the reason; Retry sends with the same key,
      // so a request that did reach the server is not sent twice.
      attempt.error = error.message;
      showAttempt(attempt);
    }
    restoreText(attempt.body);
  }
}

function sendFromBox() {
  if (!composeEnabled()) return;
  const text = composer.text.value;
  if (!text.trim()) return;
  const attempt = {
    key: crypto.randomUUID(),
    body: text.trim(),
    lineId: composer.line ? Number(composer.line.value) : null,
    error: null,
    node: null,
    messageId: undefined,
  };
  composer.attempts.push(attempt);
  composer.text.value = "";
  autosize();
  syncComposeButton();
  composer.text.focus();
  submitAttempt(attempt);
}

function startCompose() {
  if (!composer.form) return;
  composer.form.addEventListener("submit", (event) => {
    event.preventDefault();
    sendFromBox();
  });
  composer.text.addEventListener("keydown", (event) => {
    // Enter sends; Shift+Enter (and Enter while an input method is composing) is a newline.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendFromBox();
    }
  });
  composer.text.addEventListener("input", () => {
    autosize();
    syncComposeButton();
  });
  syncComposeButton();
}

// ---------------------------------------------------------------------------------------
// Live updates. EventSource reconnects by itself and sends Last-Event-ID; if the server
// refuses the stream (signed out, restarting) the browser gives up, so we check whether
// the session is still valid and reconnect from the last event id we saw.

const live = {
  source: null,
  lastEventId: body.dataset.eventCursor || "0",
  retryMs: 1000,
  retryTimer: null,
};

function setLiveState(state, text) {
  if (!els.liveStatus) return;
  els.liveStatus.hidden = false;
  els.liveStatus.dataset.state = state;
  els.liveStatus.textContent = text;
}

function onLiveEvent(event) {
  if (event.lastEventId) live.lastEventId = event.lastEventId;
  let data;
  try {
    data = JSON.parse(event.data);
  } catch {
    return;
  }
  const message = data.payload;
  if (event.type === EVT_NEW) {
    refreshContacts();
    adoptFromEvent(message);
    applyToFeed(message);
  } else if (event.type === EVT_STATUS) {
    patchContactPreview(message);
    applyToFeed(message);
  }
}

function onResync(event) {
  if (event.lastEventId) live.lastEventId = event.lastEventId;
  resyncAll();
}

function resyncAll() {
  refreshContacts();
  if (openContactId) loadFeed().catch(reportError);
}

function connect() {
  clearTimeout(live.retryTimer);
  const source = new EventSource(`/api/events?after=${encodeURIComponent(live.lastEventId)}`);
  live.source = source;
  source.addEventListener("open", () => {
    live.retryMs = 1000;
    setLiveState("live", "Live");
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      setLiveState("offline", "Offline");
      reconnectLater();
    } else {
      setLiveState("reconnecting", "Reconnecting…");
    }
  });
  source.addEventListener(EVT_NEW, onLiveEvent);
  source.addEventListener(EVT_STATUS, onLiveEvent);
  source.addEventListener(EVT_RESYNC, onResync);
  for (const name of EVT_BULK_RECORDED) source.addEventListener(name, onResync);
}

function reconnectLater() {
  live.source?.close();
  clearTimeout(live.retryTimer);
  live.retryTimer = setTimeout(async () => {
    try {
      await getJSON("/api/contacts?limit=1"); // redirects to /login if the session ended
    } catch (error) {
      if (error instanceof Unauthorized) return;
    }
    live.retryMs = Math.min(live.retryMs * 2, 30000);
    connect();
    resyncAll(); // a closed stream may have missed events the log no longer replays
  }, live.retryMs);
}

// ---------------------------------------------------------------------------------------

function start() {
  if (body.dataset.page !== "messaging") return;
  els.contactsMore?.addEventListener("click", loadMoreContacts);
  els.loadOlder?.addEventListener("click", loadOlder);
  startCompose();
  // Connect first: the stream resumes from the id the page was rendered at, so anything
  // that happens while the list and feed load is still delivered.
  connect();
  refreshContacts();
  if (openContactId) loadFeed().catch(reportError);
  setInterval(refreshRelativeTimes, 30000);
  window.addEventListener("pagehide", () => live.source?.close());
}

start();
