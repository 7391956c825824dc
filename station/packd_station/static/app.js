// The operator's page: lines and live verdicts (server-sent events), changeover, calibration, feedback, history.
// Plain JavaScript, no build step. Actions send the token from the box above as "Authorization: Bearer".
"use strict";

const NEAR = 0.10;  // an OK within 10 % of the threshold is shown as near it (packd_runtime.threshold.NEAR)
const LIVE = 30;    // verdicts kept on the page per line
const lines = new Map();  // name -> {el, status, oldest}

const $ = (root, sel) => root.querySelector(sel);
const tokenBox = document.getElementById("token");
const operatorBox = document.getElementById("operator");
tokenBox.value = sessionStorage.getItem("packd-token") || "";
operatorBox.value = localStorage.getItem("packd-operator") || "";
tokenBox.addEventListener("change", () => sessionStorage.setItem("packd-token", tokenBox.value.trim()));
operatorBox.addEventListener("change", () => localStorage.setItem("packd-operator", operatorBox.value.trim()));

function headers() {
  const h = {"Authorization": "Bearer " + tokenBox.value.trim()};
  if (operatorBox.value.trim()) h["X-Operator"] = operatorBox.value.trim();
  return h;
}

function fmt(x) { return x === null || x === undefined ? "–" : Number(x).toPrecision(6); }

function judge(r) {
  if (r.verdict !== "ok" && r.verdict !== "defect") return {cls: "uncalibrated", word: "UNCALIBRATED", margin: null};
  const margin = (r.score - r.threshold) / Math.abs(r.threshold);
  if (r.verdict === "defect") return {cls: "defect", word: "DEFECT", margin};
  return -margin < NEAR ? {cls: "near", word: "OK, near threshold", margin} : {cls: "ok", word: "OK", margin};
}

function pct(m) { return m === null ? "" : (m >= 0 ? "+" : "") + (100 * m).toFixed(1) + " %"; }

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error((body && body.error) || response.statusText);
  return body;
}

function say(line, text, error = false) {
  const m = $(line.el, ".message");
  m.textContent = text;
  m.classList.toggle("error", error);
}

function verdictItem(line, r) {
  const j = judge(r);
  const li = document.createElement("li");
  li.className = "verdict " + j.cls;
  li.dataset.id = r.id;
  const ratio = r.threshold ? Math.min(1, (r.score / r.threshold) * (2 / 3)) : 0;
  li.innerHTML = `<span class="word"></span><span><span class="src"></span> · score ${fmt(r.score)} ·
    threshold ${fmt(r.threshold)} <b>${pct(j.margin)}</b><div class="bar ${j.cls}"><span></span></div></span>
    <span class="actions"></span>`;
  $(li, ".word").textContent = j.word;
  $(li, ".src").textContent = r.source;
  $(li, ".bar span").style.width = (100 * ratio).toFixed(1) + "%";
  const actions = $(li, ".actions");
  if (r.feedback) {
    actions.textContent = r.feedback.replace("_", " ");
  } else if (r.verdict === "defect" || r.verdict === "ok") {
    const kind = r.verdict === "defect" ? "false_alarm" : "missed_defect";
    const b = document.createElement("button");
    b.textContent = kind === "false_alarm" ? "False alarm" : "Missed defect";
    b.className = kind.replace("_", "-");
    b.addEventListener("click", () => feedback(line, r, kind, b));
    actions.append(b);
  }
  if (r.verdict !== "defect" && line.status.recent_ok.includes(r.id)) {
    const tick = document.createElement("input");
    tick.type = "checkbox";
    tick.className = "pick";
    tick.value = r.id;
    tick.title = "use for a changeover";
    actions.append(tick);
  }
  if (r.has_overlay) {
    const img = document.createElement("img");
    img.src = `/api/results/${r.id}/overlay.jpg`;
    img.alt = `overlay of ${r.source}`;
    li.append(img);
  }
  return li;
}

async function feedback(line, r, kind, button) {
  const what = kind === "false_alarm" ? "a false alarm: the part is good" : "a missed defect: the part is bad";
  if (!confirm(`Record ${r.source} as ${what}?`)) return;
  try {
    const out = await api(`/api/lines/${line.status.name}/feedback`, {method: "POST",
      headers: {...headers(), "Content-Type": "application/json"}, body: JSON.stringify({result: r.id, kind})});
    button.replaceWith(document.createTextNode(kind.replace("_", " ")));
    say(line, `Recorded: ${r.source} is ${kind.replace("_", " ")}` +
      (out.pooled ? " (added to the product's normal pool)" : ""));
    refresh();
  } catch (e) { say(line, e.message, true); }
}

function showStatus(line) {
  const s = line.status, el = line.el;
  $(el, ".line-name").textContent = s.name;
  $(el, ".product").textContent = "product: " + (s.product || "none (change over)");
  $(el, ".threshold").textContent = "threshold: " + (s.threshold === null ? "not calibrated" : fmt(s.threshold));
  $(el, ".source").textContent = `source: ${s.source} (${s.source_state})`;
  const c = s.counts;
  $(el, ".counts").innerHTML = ["recorded", "ok", "defect", "uncalibrated", "dropped", "corrupt"].map(
    k => `<tr><th>${k}</th><td class="count-${k}">${c[k]}</td></tr>`).join("") + `<tr><th>queued</th>
    <td>${s.queued}</td></tr>` + Object.entries(s.sinks).map(([n, v]) =>
    `<tr><th>${n}</th><td>${v.state.startsWith("up") ? "up" : "down"}, ${v.unsent} unsent</td></tr>`).join("");
  $(el, ".confusion").innerHTML = `<tr><th></th><th>judged defect</th><th>judged OK</th></tr>
    <tr><th>bad part</th><td class="true-defect">${c.true_defect}</td><td class="missed">${c.missed_defect}</td></tr>
    <tr><th>good part</th><td class="false-alarm">${c.false_alarm}</td><td class="true-ok">${c.true_ok}</td></tr>`;
  const d = s.drift;
  $(el, ".drift").innerHTML = d.calibration === null ? "no calibration yet" :
    `window ${d.scores}/${d.window} · mean ${fmt(d.mean)} · median ${fmt(d.q50)} · 90 % ${fmt(d.q90)}<br>
     calibration mean ${fmt(d.calibration.mean)} ± ${fmt(d.calibration.std)} (${d.calibration.n} images)<br>
     z ${d.z === null ? "– (needs 30 OK frames)" : d.z.toFixed(2)} · limit ${d.limit}`;
  const alarm = $(el, ".alarm");
  alarm.classList.toggle("hidden", !d.alarm);
  alarm.textContent = d.alarm ? `Drift: normal scores moved (z ${d.z.toFixed(2)}, limit ${d.limit}). ` +
    "Check the camera and the product; re-calibrate from good parts if the change is wanted." : "";
  $(el, ".csv").href = `/api/lines/${s.name}/results.csv`;
}

function addLine(s) {
  const el = document.getElementById("line-template").content.firstElementChild.cloneNode(true);
  el.id = "line-" + s.name;
  document.getElementById("lines").append(el);
  const line = {el, status: s};
  lines.set(s.name, line);
  const form = (sel, path, extra) => $(el, sel).addEventListener("submit", async ev => {
    ev.preventDefault();
    const data = new FormData(ev.target);
    if (extra) extra(data);
    await act(line, path, data);
  });
  form(".changeover", "changeover");
  form(".calibrate", "calibrate");
  $(el, ".use-recent").addEventListener("click", () => {
    const ids = [...el.querySelectorAll(".pick:checked")].map(x => x.value);
    const data = new FormData();
    data.set("product", $(el, ".changeover [name=product]").value);
    data.set("recent", ids.join(","));
    act(line, "changeover", data);
  });
  $(el, ".use-pool").addEventListener("click", () => { const d = new FormData(); d.set("pool", "1");
    act(line, "calibrate", d); });
  $(el, ".use-pool-changeover").addEventListener("click", () => { const d = new FormData(); d.set("pool", "1");
    d.set("product", $(el, ".changeover [name=product]").value); act(line, "changeover", d); });
  $(el, ".search").addEventListener("submit", ev => { ev.preventDefault(); history(line, true); });
  $(el, ".older").addEventListener("click", () => history(line, false));
  $(el, ".history-box").addEventListener("toggle", () => history(line, true));
  $(el, ".audit-box").addEventListener("toggle", () => audit(line));
  return line;
}

async function act(line, path, data) {
  say(line, path === "changeover" ? "Changing over…" : "Calibrating…");
  try {
    const out = await api(`/api/lines/${line.status.name}/${path}`, {method: "POST", headers: headers(), body: data});
    say(line, path === "changeover" ? `Product ${out.product} from ${out.shots} images: now calibrate it` :
      `Calibrated ${out.product}: threshold ${fmt(out.threshold)} from ${out.images} images`);
    refresh();
  } catch (e) { say(line, e.message, true); }
}

async function history(line, fresh) {
  const form = $(line.el, ".search");
  const q = new URLSearchParams({limit: 25, source: form.source.value, verdict: form.verdict.value});
  if (!fresh && line.oldest) q.set("before", line.oldest);
  const rows = await api(`/api/lines/${line.status.name}/results?${q}`);
  const body = $(line.el, ".history tbody");
  if (fresh) body.innerHTML = "";
  for (const r of rows) {
    const j = judge(r);
    const tr = document.createElement("tr");
    tr.className = j.cls;
    for (const v of [r.id, new Date(r.time * 1000).toLocaleString(), r.source, r.product || "–", j.word,
      fmt(r.score), pct(j.margin), r.feedback ? r.feedback.replace("_", " ") : ""]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    body.append(tr);
  }
  if (rows.length) line.oldest = rows[rows.length - 1].id;
}

async function audit(line) {
  const rows = await api(`/api/lines/${line.status.name}/audit`);
  $(line.el, ".audit").innerHTML = "";
  for (const a of rows) {
    const li = document.createElement("li");
    li.textContent = `${new Date(a.time * 1000).toLocaleString()} · ${a.action} by ${a.who} · ` +
      JSON.stringify(a.detail);
    $(line.el, ".audit").append(li);
  }
}

function showResult(r) {
  const line = lines.get(r.line);
  if (!line) return;
  const list = $(line.el, ".verdicts");
  list.prepend(verdictItem(line, r));
  while (list.children.length > LIVE) list.lastElementChild.remove();
}

async function refresh() {
  for (const s of await api("/api/lines")) {
    const line = lines.get(s.name) || addLine(s);
    line.status = s;
    showStatus(line);
  }
}

let pending = null;
function soon() {  // counts and drift after a burst of verdicts: one refresh, not one per frame
  if (pending === null) pending = setTimeout(() => { pending = null; refresh(); }, 300);
}

async function start() {
  await refresh();
  for (const line of lines.values()) {
    const rows = await api(`/api/lines/${line.status.name}/results?limit=${LIVE}`);
    for (const r of rows.reverse()) showResult(r);
  }
  const events = new EventSource("/api/events");
  const pill = document.getElementById("stream");
  events.onopen = () => { pill.textContent = "live"; pill.classList.add("live"); };
  events.onerror = () => { pill.textContent = "reconnecting…"; pill.classList.remove("live"); };
  events.addEventListener("result", ev => { showResult(JSON.parse(ev.data)); soon(); });
  events.addEventListener("line", () => refresh());
  setInterval(refresh, 3000);
}

start();
