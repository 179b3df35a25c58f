// htmx settings, set once from a static file so the Content-Security-Policy can forbid inline script.
htmx.config.includeIndicatorStyles = false;
htmx.config.allowEval = false;
htmx.config.allowScriptTags = false;
htmx.config.responseHandling = [
  { code: "204", swap: false },
  { code: "[23]..", swap: true },
  { code: "409", swap: true, error: false },  // a stale edit, shown beside the form
  { code: "422", swap: true, error: false },  // a form with errors, re-rendered
  { code: "429", swap: true, error: false },  // busy or rate-limited: the answer says so in place
  { code: "[45]..", swap: false, error: true },
  { code: "...", swap: false },
];

function showProblem(text) {
  const box = document.getElementById("messages");
  if (!box) return;
  const p = document.createElement("p");
  p.className = "flash error";
  p.setAttribute("role", "alert");
  p.textContent = text;
  box.replaceChildren(p);
}

document.addEventListener("htmx:responseError", (event) => {
  const status = event.detail.xhr.status;
  showProblem(status === 400 ? "The page expired: reload it and try again."
    : status === 403 ? "Your role does not allow this."
    : status === 429 ? "Too many attempts: wait a moment, then try again."
    : status === 503 ? "Mailroom cannot write to its database right now: try again in a moment."
    : `The server could not do this (error ${status}). Try again, or reload the page.`);
});
document.addEventListener("htmx:sendError", () => showProblem("Mailroom did not answer. Check your connection and try again."));

// A refusal the server rendered for a place it names (HX-Retarget, e.g. why a consent cannot
// start) is shown there whatever its status, instead of the generic words above.
document.addEventListener("htmx:beforeSwap", (event) => {
  const xhr = event.detail.xhr;
  if (xhr.status >= 400 && xhr.getResponseHeader("HX-Retarget")) {
    event.detail.shouldSwap = true;
    event.detail.isError = false;
  }
});

// Typed passwords survive the parts of a form that htmx replaces (a section swap, a form
// re-rendered with errors): the server never writes a password back into the page, so
// they are kept here, in memory only, and put back into the new fields of the same name.
const typedSecrets = new Map();

document.addEventListener("htmx:beforeSwap", (event) => {
  const target = event.detail.target;
  if (!target) return;  // a history restore swaps the whole page
  const form = target.closest("form") || target.querySelector("form");
  if (!form) return;
  for (const input of form.querySelectorAll('input[type="password"]')) {
    if (input.value) typedSecrets.set(input.name, input.value);
    else typedSecrets.delete(input.name);  // emptied on purpose: do not bring an older one back
  }
});

document.addEventListener("htmx:afterSettle", (event) => {
  const target = event.detail.target;  // none after a history restore (back to an htmx-pushed address)
  const scope = target && target.isConnected ? target : document;
  for (const input of scope.querySelectorAll('input[type="password"]')) {
    if (!input.value && typedSecrets.has(input.name)) {
      input.value = typedSecrets.get(input.name);
      const note = document.getElementById(`${input.id}-help`);
      if (note && note.classList.contains("retype")) {  // "type it again" no longer applies
        note.remove();
        input.removeAttribute("aria-describedby");
      }
    }
  }
});

// Leaving the page (saved, cancelled) forgets them.
window.addEventListener("pagehide", () => typedSecrets.clear());

// A "Copy" button copies the value of the field its data-copy names (the redirect URI, a consent link).
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const field = document.querySelector(button.dataset.copy);
  if (!field) return;
  field.select();
  const done = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 2000); };
  if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(field.value).then(done, () => {});
  else { document.execCommand("copy"); done(); }
});
