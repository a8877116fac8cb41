// The msjoe page: plain JavaScript against the service's /api, no framework, no build step, no CDN.
// User and model text is only ever written with textContent; explain views go into a sandboxed srcdoc frame.
"use strict";

const $ = (id) => document.getElementById(id);
let polling = null;

function token() {
  return sessionStorage.getItem("msjoe-token") || "";
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  const type = response.headers.get("content-type") || "";
  return type.includes("application/json") ? response.json() : response.text();
}

function showError(error) {
  const box = $("error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

function formatTime(seconds) {
  const minutes = Math.floor(seconds / 60);
  const rest = (seconds - 60 * minutes).toFixed(1).padStart(4, "0");
  const hours = Math.floor(minutes / 60);
  return hours ? `${hours}:${String(minutes % 60).padStart(2, "0")}:${rest}` : `${minutes}:${rest}`;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

async function loadHealth() {
  const health = await api("/health");
  $("health").textContent = `MLLM ${health.models.mllm} · encoder ${health.models.clip} · ` +
    `queue ${health.queue.pending}/${health.queue.capacity}`;
  $("token-box").hidden = !health.auth;
  const sampler = $("sampler");
  if (!sampler.options.length) {
    for (const name of health.samplers) {
      const option = element("option", name);
      option.value = name;
      option.selected = name === health.sampler;
      sampler.append(option);
    }
    $("k").value = health.k;
  }
}

async function loadRoots() {
  const roots = await api("/api/roots");
  const select = $("root-files");
  select.replaceChildren();
  for (const root of roots) {
    for (const file of root.files) {
      const option = element("option", `${root.name}/${file}`);
      option.value = JSON.stringify({ root: root.name, path: file });
      select.append(option);
    }
  }
  $("roots-box").hidden = !select.options.length;
}

async function loadVideos() {
  const videos = await api("/api/videos");
  const list = $("videos");
  const choice = $("ask-video");
  const chosen = choice.value;
  list.replaceChildren();
  choice.replaceChildren();
  let busy = false;
  for (const video of videos) {
    const item = element("li");
    item.dataset.videoId = video.id;
    item.dataset.state = video.state;
    item.append(element("span", video.name), element("span", video.state, `state ${video.state}`));
    if (video.state === "queued" || video.state === "indexing") {
      busy = true;
      const bar = element("progress");
      bar.max = 1;
      bar.value = video.progress ? video.progress.fraction : 0;
      item.append(bar);
    }
    if (video.duration) item.append(element("span", ` ${formatTime(video.duration)}`, "muted"));
    if (video.error) item.append(element("div", video.error, "muted"));
    list.append(item);
    if (video.state === "indexed") {
      const option = element("option", video.name);
      option.value = video.id;
      choice.append(option);
    }
  }
  if (chosen) choice.value = chosen;
  if (!choice.value && choice.options.length) choice.value = choice.options[choice.options.length - 1].value;
  clearTimeout(polling);
  if (busy) polling = setTimeout(() => loadVideos().catch(showError), 700);
}

async function loadAnswers() {
  const answers = await api("/api/answers?limit=20");
  const list = $("answers");
  list.replaceChildren();
  for (const answer of answers) {
    const item = element("li");
    item.append(element("strong", answer.letter || `<${answer.status}>`), element("span", ` ${answer.question} · ${answer.video}`));
    const show = element("button", "show");
    show.type = "button";
    show.addEventListener("click", () => showAnswer(answer.id).catch(showError));
    item.append(show);
    list.append(item);
  }
}

async function register() {
  const choice = $("root-files").value;
  if (!choice) return;
  await api("/api/videos", { method: "POST", headers: { "Content-Type": "application/json" }, body: choice });
  await loadVideos();
}

function upload() {
  const file = $("upload-file").files[0];
  if (!file) return Promise.resolve();
  const bar = $("upload-progress");
  bar.hidden = false;
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", "/api/videos/upload?filename=" + encodeURIComponent(file.name));
    if (token()) request.setRequestHeader("Authorization", "Bearer " + token());
    request.setRequestHeader("Content-Type", "application/octet-stream");
    request.upload.onprogress = (event) => { if (event.lengthComputable) bar.value = event.loaded / event.total; };
    request.onload = () => {
      bar.hidden = true;
      if (request.status < 300) return resolve(loadVideos());
      let detail = request.statusText;
      try { detail = JSON.parse(request.responseText).detail; } catch (_) { /* not JSON */ }
      reject(new Error(`${request.status}: ${detail}`));
    };
    request.onerror = () => { bar.hidden = true; reject(new Error("upload failed: connection error")); };
    request.send(file);
  });
}

function renderAnswer(answer) {
  $("answer-letter").textContent = answer.letter || (answer.options.length ? `none (${answer.status})` : "free-form");
  $("answer-reply").textContent = answer.reply;
  $("answer-queries").textContent = answer.queries.length ? answer.queries.join(" · ") : "none";
  $("answer-frames").textContent = answer.chosen_timestamps.map(formatTime).join(", ");
  $("answer").hidden = false;
}

async function showExplain(answer) {
  const panel = $("explain-panel");
  if (!answer.explain_url) { panel.hidden = true; return; }
  const frame = $("explain-frame");
  frame.srcdoc = await api(answer.explain_url);
  panel.hidden = false;
}

// The frame may be read (sandbox allow-same-origin; it runs no script: no allow-scripts, and its own CSP forbids
// them), so it can take the height of its page instead of scrolling inside the page.
function fitFrame() {
  const frame = $("explain-frame");
  const body = frame.contentDocument && frame.contentDocument.documentElement;
  if (body) frame.style.height = body.scrollHeight + 20 + "px";
}

async function showAnswer(answerId) {
  const answer = await api(`/api/answers/${encodeURIComponent(answerId)}`);
  renderAnswer(answer);
  await showExplain(answer);
}

async function ask(event) {
  event.preventDefault();
  const button = $("ask-button");
  const options = $("options").value.split("\n").map((line) => line.trim()).filter(Boolean);
  const body = {
    video_id: $("ask-video").value,
    question: $("question").value,
    options,
    k: Number($("k").value) || null,
    sampler: $("sampler").value || null,
  };
  button.disabled = true;
  $("ask-status").textContent = "answering…";
  $("answer").hidden = true;
  try {
    const answer = await api("/api/ask", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    renderAnswer(answer);
    $("ask-status").textContent = `answered in ${Object.values(answer.timings).reduce((a, b) => a + b, 0).toFixed(1)} s`;
    await showExplain(answer);
    await loadAnswers();
  } finally {
    button.disabled = false;
    if ($("ask-status").textContent === "answering…") $("ask-status").textContent = "";
  }
}

function guarded(action) {
  return (event) => { showError(null); Promise.resolve(action(event)).catch(showError); };
}

async function refresh() {
  await loadHealth();
  await Promise.all([loadRoots(), loadVideos(), loadAnswers()]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = token();
  $("token").addEventListener("change", guarded(() => {
    sessionStorage.setItem("msjoe-token", $("token").value);
    return refresh();
  }));
  $("add-video").addEventListener("click", guarded(register));
  $("upload-button").addEventListener("click", guarded(upload));
  $("ask-form").addEventListener("submit", guarded(ask));
  $("explain-frame").addEventListener("load", fitFrame);
  refresh().catch(showError);
});
