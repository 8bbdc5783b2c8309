// Review queue: accept or override; the rater id is remembered in this browser.
// Keyboard: Tab reaches each pending card; Enter on the card accepts its proposed scores.
"use strict";
const rater = document.getElementById("rater");
rater.value = localStorage.getItem("rubricate-rater") || "";
rater.addEventListener("change", () => localStorage.setItem("rubricate-rater", rater.value.trim()));

function lockCard(form, r) {
  // A decided card is read-only: its controls are disabled and its buttons removed.
  const card = form.closest("article");
  card.querySelector(".rv-status").textContent = r.status;
  card.dataset.status = r.status;
  card.removeAttribute("tabindex");
  for (const c of form.querySelectorAll("select, textarea")) c.disabled = true;
  form.querySelector(".buttons").remove();
  const hint = card.querySelector(".hint");
  if (hint) hint.remove();
}

for (const form of document.querySelectorAll("form.decide")) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const choice = ev.submitter ? ev.submitter.value : "accept";
    const action = choice === "override" ? "override" : "accept";
    const status = form.querySelector(".status");
    if (!rater.value.trim()) { status.textContent = "Enter your rater id first."; rater.focus(); return; }
    localStorage.setItem("rubricate-rater", rater.value.trim());
    const body = { action, rater_id: rater.value.trim(), comment: form.comment.value,
                   source: choice === "accept-agents" ? "agents" : "student" };
    if (action === "override") {
      body.scores = {};
      for (const sel of form.querySelectorAll("select")) body.scores[sel.name] = parseInt(sel.value, 10);
    }
    try {
      const [, r] = await api("POST", "/v1/reviews/" + form.dataset.review, body);
      status.textContent = "Saved: " + r.status + " " + JSON.stringify(r.final_scores);
      lockCard(form, r);
    } catch (e) { status.textContent = "Error: " + e.message; }
  });
  const card = form.closest("article");
  card.addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter" || ev.target !== card || !form.querySelector(".buttons")) return;
    ev.preventDefault();
    form.requestSubmit(form.querySelector("button[value=accept]"));
  });
}
