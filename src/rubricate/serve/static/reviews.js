// Review queue: accept or override; the rater id is remembered in this browser.
"use strict";
const rater = document.getElementById("rater");
rater.value = localStorage.getItem("rubricate-rater") || "";
rater.addEventListener("change", () => localStorage.setItem("rubricate-rater", rater.value.trim()));
for (const form of document.querySelectorAll("form.decide")) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const choice = ev.submitter ? ev.submitter.value : "accept";
    const action = choice === "override" ? "override" : "accept";
    const status = form.querySelector(".status");
    if (!rater.value.trim()) { status.textContent = "Enter your rater id first."; rater.focus(); return; }
    const body = { action, rater_id: rater.value.trim(), comment: form.comment.value,
                   source: choice === "accept-agents" ? "agents" : "student" };
    if (action === "override") {
      body.scores = {};
      for (const sel of form.querySelectorAll("select")) body.scores[sel.name] = parseInt(sel.value, 10);
    }
    try {
      const [, r] = await api("POST", "/v1/reviews/" + form.dataset.review, body);
      status.textContent = "Saved: " + r.status + " " + JSON.stringify(r.final_scores);
      form.closest("article").querySelector(".rv-status").textContent = r.status;
    } catch (e) { status.textContent = "Error: " + e.message; }
  });
}
