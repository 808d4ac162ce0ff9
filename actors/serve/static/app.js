// The browser page of `streampro serve`: plays a local video file and streams one frame per
// second of video time to the /v1 API (the same API as the Python client and the evaluator).
// Chunk k covers [k, k+1) s; its frame is the one on screen when playback reaches k+1 s, as
// in training. Frames are drawn on a canvas at most BUDGET pixels a side and sent as PNG.
"use strict";
const BUDGET = 256;
const $ = (id) => document.getElementById(id);
const api = new URL(".", new URL("..", document.baseURI)).href; // the app root, above /ui/
let session = null;   // session id
let next = 1;         // end time (s) of the next chunk to send
let sending = false;  // a request is in flight: chunks wait their turn (in order)
let queue = [];
let timer = null;
const state = { decisions: 0, responses: 0, errors: 0 };
window.streampro = state; // read by the browser test

function headers() {
  const h = { "Content-Type": "application/json" };
  const t = $("token").value.trim();
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

async function call(method, path, body) {
  const r = await fetch(api + path, { method, headers: headers(),
    body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 204) return null;
  const j = await r.json();
  if (!r.ok) throw new Error(`${r.status} ${j.error ? j.error.code + ": " + j.error.message : ""}`);
  return j;
}

function status(text) { $("status").textContent = text; }

function grab(start, end) {
  const v = $("video"), c = $("canvas");
  const scale = Math.min(1, BUDGET / Math.max(v.videoWidth, v.videoHeight));
  c.width = Math.max(4, Math.round(v.videoWidth * scale));
  c.height = Math.max(4, Math.round(v.videoHeight * scale));
  c.getContext("2d").drawImage(v, 0, 0, c.width, c.height);
  const image = c.toDataURL("image/png").split(",")[1];
  return { start, end, image };
}

function show(d) {
  state.decisions += 1;
  if (d.decision === "response") state.responses += 1;
  const dur = $("video").duration || 1;
  const tick = document.createElement("div");
  tick.className = "tick " + d.decision;
  tick.style.left = `${Math.min(100, (100 * d.time) / dur)}%`;
  tick.title = `${d.time}s ${d.decision} ${d.text}`;
  $("timeline").appendChild(tick);
  const li = document.createElement("li");
  li.className = d.decision;
  li.textContent = `${d.time.toFixed(1)} s: ` + (d.decision === "response" ? d.text : `(${d.decision})`);
  $("transcript").appendChild(li);
}

async function pump() {
  if (sending || !queue.length || !session) return;
  sending = true;
  const chunks = queue; queue = [];
  try {
    const out = await call("POST", `v1/sessions/${session}/chunks`, { chunks });
    out.decisions.forEach(show);
    status(`session ${session.slice(0, 8)}: ${state.decisions} decisions, ${state.responses} responses`);
  } catch (e) {
    state.errors += 1;
    status("error: " + e.message);
  } finally {
    sending = false;
    pump();
  }
}

function tick() {
  const v = $("video");
  // every whole second of video time that has passed gets its chunk (1 fps)
  while (session && v.currentTime >= next) {
    queue.push(grab(next - 1, next));
    next += 1;
  }
  pump();
  if (v.ended) stop();
}

async function start(ev) {
  ev.preventDefault();
  const v = $("video");
  try {
    const s = await call("POST", "v1/sessions", { question: $("question").value, query_time: 0 });
    session = s.session_id;
  } catch (e) { status("error: " + e.message); state.errors += 1; return; }
  next = 1; queue = [];
  $("timeline").replaceChildren(); $("transcript").replaceChildren();
  $("start").disabled = true; $("stop").disabled = false;
  v.currentTime = 0;
  v.playbackRate = Number($("rate").value) || 1; // still 1 frame per second of video time
  await v.play();
  timer = setInterval(tick, 100);
  status(`session ${session.slice(0, 8)} open`);
}

async function stop() {
  clearInterval(timer); timer = null;
  $("video").pause();
  const sid = session;
  if (!sid) return;
  while (sending || queue.length) { pump(); await new Promise((r) => setTimeout(r, 50)); }
  session = null;
  try { await call("DELETE", `v1/sessions/${sid}`); } catch (e) { status("error: " + e.message); }
  state.done = true;
  $("start").disabled = false; $("stop").disabled = true;
  status(`done: ${state.decisions} decisions, ${state.responses} responses`);
}

$("file").addEventListener("change", () => {
  const f = $("file").files[0];
  if (!f) return;
  $("video").src = URL.createObjectURL(f);
  $("start").disabled = false;
  status(`${f.name} loaded`);
});
$("setup").addEventListener("submit", start);
$("stop").addEventListener("click", stop);
