// "Score an answer": task picker with question and rubric, student result, optional agents' evidence.
"use strict";
const TASKS = JSON.parse(document.getElementById("tasks-data").textContent);
const byId = Object.fromEntries(TASKS.map(t => [t.id, t]));
const taskSel = document.getElementById("task");

// Where the student's scores of a task come from (the checkpoint's task_sources; server: score_source).
const SOURCE_LABEL = { trained: "trained head", few_shot: "few-shot", zero_shot: "zero-shot" };
const SOURCE_TEXT = {
  zero_shot: "The student scores this item zero-shot: from its question, reference answers and rubric, with no scored answers of it.",
  few_shot: "The student scores this item few-shot: from its text and a handful of scored answers.",
};
function sourceBadge(t) {
  if (!t.source) return [];
  return [el("span", { class: "badge source " + t.source }, SOURCE_LABEL[t.source] || t.source)];
}

function showTask() {
  const t = byId[taskSel.value];
  const box = document.getElementById("task-info");
  box.replaceChildren();
  if (!t) return;
  box.append(el("h3", {}, t.title, " ", ...sourceBadge(t)));
  if (t.source === "zero_shot" || t.source === "few_shot")
    box.append(el("p", { class: "meta", id: "source-note" }, SOURCE_TEXT[t.source] + " Answers below confidence " +
      t.review_threshold + " go to the review queue."));
  // question_html is Markdown rendered by the server with raw HTML escaped (tables show as tables)
  const q = el("div", { class: "question md" });
  q.innerHTML = t.question_html;
  box.append(q);
  if (t.context) {
    const c = el("div", { class: "question md" });
    c.innerHTML = t.context_html;
    box.append(el("details", {}, el("summary", {}, "Context"), c));
  }
  const r = t.rubric;
  if (r.criteria.length) {
    box.append(el("h4", {}, "Criteria"));
    box.append(el("ul", {}, ...r.criteria.map(c => el("li", {}, el("strong", {}, c.id + ": "), c.description))));
  }
  for (const s of r.scales) {
    box.append(el("h4", {}, (s.name || s.id) + " (" + s.min + "–" + s.max + ")"));
    box.append(el("ul", {}, ...s.levels.map(l => el("li", {}, el("strong", {}, l.score + ": "), l.description))));
  }
  if (!t.student) box.append(el("p", { class: "error" }, "The loaded student model does not score this task."));
}
taskSel.addEventListener("change", showTask);
showTask();

function labelDescription(task, name) {
  const c = task.rubric.criteria.find(x => x.id === name);
  if (c) return c.description;
  const m = name.match(/^(.*)>=(-?\d+)$/);
  if (m) { const s = task.rubric.scales.find(x => x.id === m[1]); return (s ? (s.name || s.id) : m[1]) + " at least " + m[2]; }
  return "";
}

function renderStudent(task, r) {
  const out = [];
  const scaleIds = task.rubric.scales.map(s => s.id);
  const main = scaleIds.length ? r.scores[scaleIds[0]] : null;
  out.push(el("p", {}, main !== null ? el("span", { class: "score-big", id: "decoded-score" }, String(main)) : "",
    main !== null ? " decoded " + scaleIds[0] + "  " : "",
    el("span", { class: "badge " + (r.needs_review ? "review" : "ok"), id: "review-flag" },
      r.needs_review ? "needs review" : "confident"), " ", ...sourceBadge(task),
    " confidence " + r.confidence.toFixed(3)));
  const scoreRows = Object.entries(r.scores).map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, String(v))));
  out.push(el("h3", {}, "Scores"), el("table", { id: "scores-table" }, el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Criterion / scale"), el("th", { scope: "col" }, "Score"))), el("tbody", {}, ...scoreRows)));
  const probRows = Object.entries(r.probs).map(([k, p]) => el("tr", {}, el("th", { scope: "row" }, k),
    el("td", {}, labelDescription(task, k)), el("td", {}, bar(p), pct(p))));
  out.push(el("h3", {}, "Per-criterion probabilities"), el("table", { id: "probs-table" }, el("thead", {}, el("tr", {},
    el("th", { scope: "col" }, "Label"), el("th", { scope: "col" }, "Meaning"), el("th", { scope: "col" }, "Probability"))), el("tbody", {}, ...probRows)));
  for (const [sid, dist] of Object.entries(r.score_distribution || {})) {
    const s = task.rubric.scales.find(x => x.id === sid);
    const lo = s ? s.min : 0;
    out.push(el("h4", {}, "Distribution of " + sid), el("table", {}, el("tbody", {}, ...dist.map((p, i) =>
      el("tr", {}, el("th", { scope: "row" }, String(lo + i)), el("td", {}, bar(p), pct(p)))))));
  }
  if (r.gate_weights && r.gate_weights.length) {
    const m = r.gate_weights[0].length;
    const head = el("tr", {}, el("th", { scope: "col" }, "MoE layer"), ...Array.from({ length: m }, (_, j) => el("th", { scope: "col" }, "Expert " + (j + 1))));
    const rows = r.gate_weights.map((layer, i) => el("tr", {}, el("th", { scope: "row" }, String(i + 1)), ...layer.map(w => el("td", {}, bar(w), w.toFixed(2)))));
    out.push(el("h3", {}, "Gate weights"), el("table", { id: "gates-table" }, el("thead", {}, head), el("tbody", {}, ...rows)));
  }
  out.push(el("p", { class: "meta" }, "Model " + r.model_id + " " + r.model_version + " · response " + r.response_id +
    (r.review_id ? " · queued for review #" + r.review_id : "")));
  return out;
}

function highlight(text, quotes) {
  // Mark every occurrence of each evidence quote (case-insensitive); built with text nodes only.
  const spans = [];
  const low = text.toLowerCase();
  for (const q of quotes) {
    const needle = q.trim().toLowerCase();
    if (!needle) continue;
    let i = low.indexOf(needle);
    while (i >= 0) { spans.push([i, i + needle.length]); i = low.indexOf(needle, i + needle.length); }
  }
  spans.sort((a, b) => a[0] - b[0]);
  const node = el("div", { class: "highlighted", id: "evidence-text" });
  let pos = 0;
  for (const [a, b] of spans) {
    if (a < pos) continue;
    node.append(text.slice(pos, a), el("mark", {}, text.slice(a, b)));
    pos = b;
  }
  node.append(text.slice(pos));
  return node;
}

function renderAgents(text, a) {
  const out = [el("h3", {}, "LLM agents")];
  if (a.status !== "ok") { out.push(el("p", { class: "error" }, "The agents failed: " + (a.error || "unknown error"))); return out; }
  out.push(el("p", {}, "Agents' score: ", el("strong", {}, String(a.score)),
    a.grounding_rate !== null && a.grounding_rate !== undefined ? " · evidence grounded " + pct(a.grounding_rate) : ""));
  const quotes = [];
  const rows = Object.entries(a.components || {}).map(([cid, c]) => {
    (c.evidence || []).forEach(q => quotes.push(q));
    return el("tr", {}, el("th", { scope: "row" }, cid), el("td", {}, JSON.stringify(c.value)), el("td", {}, (c.evidence || []).map(q => "“" + q + "”").join("  ")));
  });
  if (rows.length) out.push(el("table", {}, el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Component"), el("th", { scope: "col" }, "Value"), el("th", { scope: "col" }, "Evidence"))), el("tbody", {}, ...rows)));
  out.push(el("h4", {}, "Evidence in the response"), highlight(text, quotes));
  if (a.feedback) out.push(el("p", {}, el("strong", {}, "Feedback: "), a.feedback));
  if (a.review_ids && a.review_ids.length) out.push(el("p", { class: "meta" }, "In the review queue: #" + a.review_ids.join(", #")));
  return out;
}

async function pollJob(url, status) {
  for (;;) {
    const [, job] = await api("GET", url);
    if (job.status === "done" || job.status === "failed") return job;
    status.textContent = "Agents running… " + job.done + "/" + job.total;
    await new Promise(r => setTimeout(r, 700));
  }
}

document.getElementById("score-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = document.getElementById("status");
  const btn = document.getElementById("score-btn");
  const task = byId[taskSel.value];
  const text = document.getElementById("text").value;
  const rid = document.getElementById("response_id").value.trim();
  const item = { task_id: task.id, text };
  if (rid) item.response_id = rid;
  const body = document.getElementById("result-body");
  btn.disabled = true; status.textContent = "Scoring…";
  try {
    const parts = [];
    let responseId = rid;
    if (task.student) {
      const [, data] = await api("POST", "/v1/score", { items: [item] });
      const r = data.results[0];
      responseId = r.response_id;
      parts.push(...renderStudent(task, r));
    }
    if (document.getElementById("agents").checked) {
      status.textContent = "Running the agents…";
      const [code, job0] = await api("POST", "/v1/agents/score", { items: [{ ...item, response_id: responseId || undefined }], with_student: task.student });
      const job = code === 202 ? await pollJob(job0.status_url, status) : job0;
      if (job.status === "failed") parts.push(el("p", { class: "error" }, "Agents job failed: " + job.error));
      else parts.push(...renderAgents(text, job.results[0]));
    }
    body.replaceChildren(...parts);
    document.getElementById("results").hidden = false;
    status.textContent = "Done.";
  } catch (e) {
    status.textContent = "";
    body.replaceChildren(el("p", { class: "error", role: "alert" }, e.message));
    document.getElementById("results").hidden = false;
  } finally { btn.disabled = false; }
});
