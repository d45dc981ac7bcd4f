// cxr.app's page: plain JavaScript, no build step, nothing fetched from elsewhere.
"use strict";

const state = { identity: null, point: null, items: [] };  // items: {file, card, result}
const $ = (selector, root = document) => root.querySelector(selector);

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) { window.location.assign("/"); throw new Error("a token is required"); }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return response;
}

function fmt(value, digits = 3) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function addRow(list, term, value, href) {
  if (value === null || value === undefined || value === "") return;
  const dt = document.createElement("dt"); dt.textContent = term;
  const dd = document.createElement("dd");
  if (href) { const a = document.createElement("a"); a.href = href; a.textContent = value; a.target = "_blank"; dd.append(a); }
  else dd.textContent = value;
  list.append(dt, dd);
}

function auc(numbers) {
  if (!numbers) return null;
  const interval = numbers.ci_low !== undefined ? ` [${fmt(numbers.ci_low)}, ${fmt(numbers.ci_high)}]` : "";
  return `${fmt(numbers.auc_mean)}${interval}`;
}

function showIdentity(m) {
  const list = $("#identity"); list.replaceChildren();
  $("#model-title").textContent = m.name ? `· ${m.name}` : "";
  addRow(list, "model", m.name || m.uri);
  addRow(list, "version", m.version);
  addRow(list, "aliases", (m.aliases || []).join(", "));
  addRow(list, "kind", m.kind + (m.members.length > 1 ? ` of ${m.members.length}` : ""));
  addRow(list, "validation mean AUC", auc(m.metrics.val));
  addRow(list, "test mean AUC", auc(m.metrics.test));
  for (const [key, value] of Object.entries(m.data || {})) addRow(list, key, value);
  addRow(list, "input size", m.image_sizes.map((s) => `${s} px`).join(", "));
  for (const [i, member] of (m.kind === "ensemble" ? m.members : []).entries()) {
    const parts = Object.entries(member).map(([k, v]) => `${k} ${typeof v === "number" ? fmt(v) : v}`);
    addRow(list, `member ${i + 1}`, parts.join(", "));
  }
  addRow(list, "MLflow run", m.run_name || m.run_id, m.run_url);
  if (m.report_card) addRow(list, "report card", "open", "/report");
  addRow(list, "model URI", m.uri);
  const select = $("#operating-point"); select.replaceChildren();
  for (const name of Object.keys(m.operating_points)) {
    const option = document.createElement("option"); option.value = option.textContent = name;
    select.append(option);
  }
  select.value = state.point = m.default_operating_point;
}

function ordered(result) {
  // the positive findings first, each group by probability (the API's order)
  const thresholds = state.identity.operating_points[state.point];
  const rows = result.ranked.map((r) => {
    const t = thresholds[r.finding];
    return { ...r, threshold: t, positive: t !== null && t !== undefined && r.probability >= t };
  });
  return [...rows.filter((r) => r.positive), ...rows.filter((r) => !r.positive)];
}

function renderTable(item) {
  const body = $("tbody", item.card); body.replaceChildren();
  for (const row of ordered(item.result)) {
    const tr = document.createElement("tr");
    tr.className = row.positive ? "positive" : "";
    tr.dataset.finding = row.finding;
    tr.tabIndex = 0;
    const cells = [row.finding, fmt(row.probability), fmt(row.threshold), row.positive ? "above" : "below"];
    for (const text of cells) { const td = document.createElement("td"); td.textContent = text; tr.append(td); }
    tr.addEventListener("click", () => showHeatmap(item, row.finding));
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter") showHeatmap(item, row.finding); });
    body.append(tr);
  }
}

async function showHeatmap(item, finding) {
  const caption = $(".caption", item.card);
  caption.textContent = `Grad-CAM for ${finding}: computing…`;
  for (const tr of item.card.querySelectorAll("tbody tr")) tr.classList.toggle("selected", tr.dataset.finding === finding);
  const form = new FormData(); form.append("file", item.file); form.append("finding", finding);
  try {
    const blob = await (await api("/api/gradcam", { method: "POST", body: form })).blob();
    const heat = $(".heat", item.card);
    if (heat.src) URL.revokeObjectURL(heat.src);
    heat.onload = () => { heat.classList.add("loaded"); caption.textContent = `Grad-CAM for ${finding}`; };
    heat.src = URL.createObjectURL(blob);
    heat.style.opacity = $("#opacity").value;
    item.finding = finding;
    $(".png", item.card).disabled = false;
  } catch (err) {
    caption.textContent = `Grad-CAM for ${finding} failed: ${err.message}`;
  }
}

function download(name, blob) {
  const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = name;
  document.body.append(a); a.click(); a.remove(); setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function overlayPng(item) {
  const xray = $(".xray", item.card), heat = $(".heat", item.card);
  const canvas = document.createElement("canvas");
  canvas.width = heat.naturalWidth; canvas.height = heat.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(xray, 0, 0, canvas.width, canvas.height);
  context.globalAlpha = Number($("#opacity").value);
  context.drawImage(heat, 0, 0);
  const stem = item.file.name.replace(/\.[^.]*$/, "");
  canvas.toBlob((blob) => download(`${stem}_${item.finding}.png`, blob), "image/png");
}

function csv() {
  const names = state.identity.pathologies;
  const quote = (s) => `"${String(s).replaceAll('"', '""')}"`;
  const lines = [["image", "findings", ...names].join(",")];
  for (const item of state.items.filter((i) => i.result)) {
    const findings = ordered(item.result).filter((r) => r.positive).map((r) => r.finding).join("|");
    const values = names.map((n) => item.result.probabilities[n].toFixed(6));
    lines.push([quote(item.file.name), quote(findings), ...values].join(","));
  }
  download("predictions.csv", new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
}

async function predict(file) {
  const card = $("#card").content.firstElementChild.cloneNode(true);
  const item = { file, card, result: null, finding: null };
  state.items.push(item);
  $(".file", card).textContent = file.name;
  $(".status", card).textContent = "reading…";
  $(".png", card).addEventListener("click", () => overlayPng(item));
  $("#results").prepend(card);
  const form = new FormData(); form.append("file", file);
  const query = new URLSearchParams({ preview_image: "true", operating_point: state.point });
  try {
    const answer = await (await api(`/api/predict?${query}`, { method: "POST", body: form })).json();
    item.result = answer.results[0];
    $(".xray", card).src = item.result.preview;
    $(".status", card).textContent = `${item.result.kind}, ${item.result.width} × ${item.result.height} px`;
    card.classList.add("done");
    renderTable(item);
    $("#csv").disabled = false;
  } catch (err) {
    card.classList.add("failed");
    $(".status", card).textContent = err.message;
  }
}

function take(files) { for (const file of files) predict(file); }

async function start() {
  state.identity = await (await api("/api/model")).json();
  showIdentity(state.identity);
  const drop = $("#drop");
  $("#files").addEventListener("change", (e) => { take(e.target.files); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); take(e.dataTransfer.files); });
  $("#opacity").addEventListener("input", (e) => {
    for (const img of document.querySelectorAll(".heat")) img.style.opacity = e.target.value;
  });
  $("#operating-point").addEventListener("change", (e) => {
    state.point = e.target.value;
    for (const item of state.items.filter((i) => i.result)) renderTable(item);
  });
  $("#csv").addEventListener("click", csv);
}

document.addEventListener("DOMContentLoaded", start);
