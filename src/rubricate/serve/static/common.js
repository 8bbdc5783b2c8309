// Small helpers shared by the pages: DOM building with textContent only (no HTML injection), JSON fetch.
"use strict";
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v; else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
async function api(method, url, body) {
  const opts = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const res = await fetch(url, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    if (data && Array.isArray(data.detail)) msg = data.detail.map(d => (d.loc || []).join(".") + ": " + d.msg).join("; ");
    else if (data && data.detail) msg = String(data.detail);
    const err = new Error(msg); err.status = res.status; throw err;
  }
  return [res.status, data];
}
function pct(p) { return (100 * p).toFixed(1) + "%"; }
function bar(p) {
  return el("span", { class: "bar-wrap", "aria-hidden": "true" }, el("span", { class: "bar", style: "width:" + (100 * p).toFixed(1) + "%" }));
}
