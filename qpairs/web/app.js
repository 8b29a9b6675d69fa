// qpairs web page: search-as-you-type over the server's question index, and a two-question compare mode.
"use strict";

const $ = (id) => document.getElementById(id);
const pct = (p) => (100 * p).toFixed(p >= 0.995 || p < 0.005 ? 0 : 1) + "%";
let threshold = 0.5;
let hasIndex = false;

async function api(path, body) {
  const res = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || data.detail || `HTTP ${res.status}`);
  return data;
}

function selectTab(name) {
  for (const t of ["search", "compare"]) {
    $("tab-" + t).setAttribute("aria-selected", String(t === name));
    $("panel-" + t).hidden = t !== name;
  }
}

async function loadStatus() {
  try {
    const h = await api("/health");
    threshold = h.model.threshold;
    hasIndex = h.index !== null;
    const bundledDefault = /[\\/]default_model$/.test(h.model.path || "");
    $("about-default").hidden = !bundledDefault;  // the footer's notes on the default model fit it alone
    const idx = hasIndex ? `${h.index.size.toLocaleString()} questions indexed` : "no question index loaded";
    $("status").textContent = `model ${h.model.id} (${h.model.encoder}) · ${idx} · duplicate above ${pct(threshold)}`;
    if (!hasIndex) {
      $("search-status").textContent = "Search needs a question index: start the server with --index INDEX_DIR.";
      $("question").disabled = true;
    }
  } catch (e) {
    $("status").textContent = "server unreachable: " + e.message;
  }
}

function renderHits(hits) {
  const list = $("results");
  list.replaceChildren();
  for (const h of hits) {
    const li = document.createElement("li");
    li.className = "hit" + (h.duplicate ? " duplicate" : "");
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = pct(h.probability);
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = h.text;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = "id " + h.id;
    if (h.duplicate) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = "likely duplicate";
      meta.prepend(badge);
    }
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.style.width = pct(h.probability);
    bar.append(fill);
    li.append(prob, text, meta, bar);
    list.append(li);
  }
}

let searchSeq = 0;
let timer = null;
async function runSearch() {
  const q = $("question").value.trim();
  const seq = ++searchSeq;
  if (!q) { renderHits([]); $("search-status").textContent = ""; return; }
  try {
    const t0 = performance.now();
    const data = await api("/search", { question: q, k: 10 });
    if (seq !== searchSeq) return;  // a newer query is on its way
    renderHits(data.results);
    const dups = data.results.filter((h) => h.duplicate).length;
    $("search-status").textContent = `${dups ? dups + " likely duplicate" + (dups > 1 ? "s" : "") : "no likely duplicates"}`
      + ` among the ${data.results.length} nearest of ${data.index_size.toLocaleString()} questions`
      + ` (${Math.round(performance.now() - t0)} ms)`;
  } catch (e) {
    if (seq === searchSeq) { renderHits([]); $("search-status").textContent = "error: " + e.message; }
  }
}

async function runCompare(event) {
  event.preventDefault();
  $("compare-error").textContent = "";
  try {
    const r = await api("/predict", { q1: $("q1").value, q2: $("q2").value });
    $("compare-prob").textContent = pct(r.probability);
    $("compare-verdict").textContent = r.duplicate ? "likely the same question" : "probably different questions";
    $("compare-bar").style.width = pct(r.probability);
    $("compare-result").classList.toggle("duplicate", r.duplicate);
    $("compare-result").hidden = false;
  } catch (e) {
    $("compare-result").hidden = true;
    $("compare-error").textContent = e.message;
  }
}

$("tab-search").addEventListener("click", () => selectTab("search"));
$("tab-compare").addEventListener("click", () => selectTab("compare"));
$("question").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(runSearch, 150); });
$("question").addEventListener("keydown", (e) => { if (e.key === "Enter") { clearTimeout(timer); runSearch(); } });
$("compare-form").addEventListener("submit", runCompare);
loadStatus();
