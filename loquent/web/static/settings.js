// Settings: the Twilio connection, phone numbers and the event sink (owner actions).
// The page is rendered by the server from the same view as GET /api/settings; after an
// action changes the connection it simply reloads. Errors are shown inline, with the API's
// own message.
import { api } from "./api.js";

const $ = (id) => document.getElementById(id);

function showError(element, error) {
  if (!element) return;
  element.textContent = error ? error.message : "";
  element.hidden = !error;
}

// Disable a button while its request runs, so a second click cannot start a second one.
async function busy(button, work) {
  if (button) button.disabled = true;
  try {
    return await work();
  } finally {
    if (button) button.disabled = false;
  }
}

// --- connection --------------------------------------------------------------------------

const connectForm = $("connect-form");
if (connectForm) {
  connectForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const errorBox = $("connect-error");
    showError(errorBox, null);
    const account_sid = connectForm.elements.account_sid.value.trim();
    const auth_token = connectForm.elements.auth_token.value;
    try {
      await busy($("connect-submit"), () =>
        api("/api/twilio/connect", { method: "POST", json: { account_sid, auth_token } }),
      );
      connectForm.elements.auth_token.value = "";
      location.reload();
    } catch (error) {
      showError(errorBox, error);
    }
  });
}

const disconnectButton = $("disconnect");
if (disconnectButton) {
  disconnectButton.addEventListener("click", async () => {
    const ok = window.confirm(
      "Disconnect this Twilio account?\n\nThe credentials are removed from Loquent, and the event " +
        "sink it created in your Twilio account is deleted. New texts stop arriving here. " +
        "Conversations already in the inbox stay.",
    );
    if (!ok) return;
    try {
      const result = await busy(disconnectButton, () =>
        api("/api/twilio/disconnect", { method: "POST" }),
      );
      if (result.not_removed && result.not_removed.length) {
        const left = result.not_removed.map((item) => `${item.sid} (${item.reason})`).join(", ");
        window.alert(`Disconnected. These could not be removed from Twilio; delete them in the Twilio Console: ${left}`);
      }
      location.reload();
    } catch (error) {
      showError($("disconnect-error"), error);
    }
  });
}

// --- numbers ------------------------------------------------------------------------------

function numberItem(number) {
  const item = document.createElement("li");
  const label = document.createElement("label");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.name = "number";
  box.value = number.phone_number;
  // Already a line: always included, so a line added by hand gets its Twilio SID and name.
  box.checked = true;
  box.disabled = number.imported;
  label.append(box);
  const code = document.createElement("code");
  code.textContent = number.phone_number;
  label.append(code);
  const name = document.createElement("span");
  name.textContent = number.friendly_name || "";
  label.append(name);
  if (number.imported) {
    label.classList.add("imported");
    const pill = document.createElement("span");
    pill.className = "pill pill-muted";
    pill.textContent = "imported";
    label.append(pill);
  }
  item.dataset.number = number.phone_number;
  item.append(label);
  return item;
}

const fetchNumbersButton = $("fetch-numbers");
if (fetchNumbersButton) {
  fetchNumbersButton.addEventListener("click", async () => {
    const errorBox = $("numbers-error");
    showError(errorBox, null);
    try {
      const data = await busy(fetchNumbersButton, () => api("/api/twilio/numbers"));
      const list = $("account-number-list");
      list.replaceChildren(...data.items.map(numberItem));
      if (!data.items.length) {
        const empty = document.createElement("li");
        empty.className = "pane-note";
        empty.textContent = "This Twilio account has no phone numbers.";
        list.append(empty);
      }
      $("import-numbers").disabled = !data.items.some((n) => !n.imported);
      $("account-numbers").hidden = false;
    } catch (error) {
      showError(errorBox, error);
    }
  });

  $("account-numbers").addEventListener("submit", async (event) => {
    event.preventDefault();
    const errorBox = $("numbers-error");
    showError(errorBox, null);
    const checked = [...event.target.querySelectorAll('input[name="number"]:checked')];
    if (!checked.some((box) => !box.disabled)) {
      showError(errorBox, new Error("Select at least one number to import."));
      return;
    }
    const numbers = checked.map((box) => box.value);
    try {
      await busy($("import-numbers"), () =>
        api("/api/twilio/sync-numbers", { method: "POST", json: { numbers } }),
      );
      location.reload();
    } catch (error) {
      showError(errorBox, error);
    }
  });
}

// --- event sink ---------------------------------------------------------------------------

const setupSinkButton = $("setup-sink");
if (setupSinkButton) {
  setupSinkButton.addEventListener("click", async () => {
    const errorBox = $("sink-error");
    showError(errorBox, null);
    try {
      await busy(setupSinkButton, () => api("/api/twilio/setup-event-sink", { method: "POST" }));
      location.reload();
    } catch (error) {
      showError(errorBox, error);
    }
  });
}

const removeSinkButton = $("remove-sink");
if (removeSinkButton) {
  removeSinkButton.addEventListener("click", async () => {
    const ok = window.confirm(
      "Remove the event sink?\n\nThe sink and subscription Loquent created in your Twilio account " +
        "are deleted; ones that existed before are left alone. Texts stop arriving here live.",
    );
    if (!ok) return;
    try {
      await busy(removeSinkButton, () => api("/api/twilio/remove-event-sink", { method: "POST" }));
      location.reload();
    } catch (error) {
      showError($("sink-error"), error);
    }
  });
}

// A sink set up but not yet verified: Twilio's test event usually arrives within seconds.
// Re-read the settings a few times and show the verification when it lands.
const sinkCard = $("event-sink");
if (sinkCard && sinkCard.dataset.sinkSid && sinkCard.dataset.verified !== "yes") {
  let tries = 0;
  const poll = async () => {
    tries += 1;
    try {
      const view = await api("/api/settings");
      const verifiedAt = view.event_sink.verified_at;
      if (verifiedAt && view.event_sink.sink_sid === sinkCard.dataset.sinkSid) {
        const when = new Date(verifiedAt).toISOString().slice(0, 16).replace("T", " ");
        $("sink-verified").textContent = `verified by Twilio at ${when} UTC`;
        sinkCard.dataset.verified = "yes";
        return;
      }
    } catch (error) {
      // A failed poll changes nothing on the page; the next one may succeed.
    }
    if (tries < 15) setTimeout(poll, Math.min(1000 * tries, 5000));
  };
  setTimeout(poll, 500);
}
