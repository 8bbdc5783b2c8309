// Batch page: upload a CSV, then poll the job's status URL and show progress and row problems.
"use strict";
document.getElementById("batch-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const status = document.getElementById("batch-status");
  const prog = document.getElementById("progress");
  const fd = new FormData();
  fd.append("file", form.file.files[0]);
  if (form.task_id.value) fd.append("task_id", form.task_id.value);
  status.textContent = "Uploading…";
  document.getElementById("download").replaceChildren();
  try {
    const [, job] = await api("POST", "/v1/batch", fd);
    const probs = document.getElementById("problems");
    probs.replaceChildren();
    if (job.problems.length) {
      probs.append(el("h3", {}, job.problems.length + " row(s) with problems (not scored)"),
        el("table", { id: "problems-table" }, el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Line"), el("th", { scope: "col" }, "Field"), el("th", { scope: "col" }, "Problem"))),
          el("tbody", {}, ...job.problems.map(p => el("tr", {}, el("td", {}, String(p.line)), el("td", {}, p.field), el("td", {}, p.error))))));
    }
    for (;;) {
      const [, s] = await api("GET", job.status_url);
      prog.max = Math.max(1, s.total); prog.value = s.done; prog.textContent = s.done + "/" + s.total;
      status.textContent = s.status + ": " + s.done + " of " + s.total + " responses scored";
      if (s.status === "failed") { status.textContent = "Failed: " + s.error; break; }
      if (s.status === "done") {
        document.getElementById("download").replaceChildren(el("a", { href: s.results_url, id: "results-link" }, "Download the results (CSV)"));
        break;
      }
      await new Promise(r => setTimeout(r, 500));
    }
  } catch (e) { status.textContent = "Error: " + e.message; }
});
