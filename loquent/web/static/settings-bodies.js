// Settings: message bodies that could not be fetched, and the owner's retry.
import { api } from "./api.js";

const retry = document.getElementById("bodies-retry");
const result = document.getElementById("bodies-retry-result");
const pending = document.getElementById("bodies-pending");
const failed = document.getElementById("bodies-failed");

function show(counts) {
  pending.textContent = String(counts.pending);
  failed.textContent = String(counts.failed);
  failed.classList.toggle("pill-bad", counts.failed > 0);
  failed.classList.toggle("pill-ok", counts.failed === 0);
  if (retry) retry.disabled = counts.failed === 0;
}

async function refresh() {
  const view = await api("/api/settings");
  show(view.bodies);
}

if (retry) {
  retry.addEventListener("click", async () => {
    retry.disabled = true;
    result.textContent = "";
    try {
      const { requeued } = await api("/api/messages/bodies/retry", { method: "POST" });
      result.textContent = requeued === 1 ? "1 text queued again." : `${requeued} texts queued again.`;
      await refresh();
    } catch (err) {
      result.textContent = err.message;
      retry.disabled = false;
    }
  });
}
