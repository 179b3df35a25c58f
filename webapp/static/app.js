// htmx settings, set once from a static file so the Content-Security-Policy can forbid inline script.
htmx.config.includeIndicatorStyles = false;
htmx.config.allowEval = false;
htmx.config.allowScriptTags = false;
htmx.config.responseHandling = [
  { code: "204", swap: false },
  { code: "[23]..", swap: true },
  { code: "409", swap: true, error: false },  // a stale edit, shown beside the form
  { code: "422", swap: true, error: false },  // a form with errors, re-rendered
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
    : `The server could not do this (error ${status}). Try again, or reload the page.`);
});
document.addEventListener("htmx:sendError", () => showProblem("Mailroom did not answer. Check your connection and try again."));
