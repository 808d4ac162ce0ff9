// The browser page of `streampro serve`: plays a local video file, or the user's camera
// (getUserMedia), and streams one frame per second to the /v1 API (the same API as the
// Python client and the evaluator). Chunk k covers [k, k+1) s; its frame is the one on
// screen when the stream reaches k+1 s (video time for a file, wall time since Start for the
// camera), as in training. Frames are drawn on a canvas at most BUDGET pixels a side, as PNG.
// A threshold-decoded policy answers each decision's calibrated P(</Response>): the SVG plot
// draws them over stream time against the served threshold (sample mode sends no p).
"use strict";
const BUDGET = 256;
const SVG = "http://www.w3.org/2000/svg";
const PLOT_W = 1000, PLOT_TOP = 10, PLOT_H = 100; // the plot's viewBox: p = 0 at y = 110
const $ = (id) => document.getElementById(id);
const api = new URL(".", new URL("..", document.baseURI)).href; // the app root, above /ui/
let session = null;   // session id
let next = 1;         // end time (s) of the next chunk to send
let sending = false;  // a request is in flight: chunks wait their turn (in order)
let queue = [];
let timer = null;
let camera = null;    // the camera's MediaStream while it is the source (else a file plays)
let started = 0;      // performance.now() at Start: the camera's clock
// read by the browser tests: chunks sent, every decision back (in order), the session
const state = { decisions: 0, responses: 0, errors: 0, sent: 0, log: [], session: null,
  threshold: null };
window.streampro = state;

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

// the seconds the timeline spans: the video's length, or for the camera a minute at least
function span(t) {
  const dur = $("video").duration;
  return Number.isFinite(dur) && dur > 0 ? dur : Math.max(60, t);
}

function place(tick, dur) {
  tick.style.left = `${Math.min(100, (100 * Number(tick.dataset.time)) / dur)}%`;
}

// y of a probability (or, integrate-and-fire, a threshold above 1: the axis stretches to it)
function plotY(p) {
  const top = Math.max(1, state.threshold || 0);
  return PLOT_TOP + PLOT_H * (1 - Math.min(p, top) / top);
}

function drawPlot(dur) {
  const pts = [];
  $("pplot").querySelectorAll("circle.p").forEach((c) => {
    const x = (PLOT_W * Math.min(dur, Number(c.dataset.time))) / dur;
    const y = plotY(Number(c.dataset.p));
    c.setAttribute("cx", x.toFixed(2)); c.setAttribute("cy", y.toFixed(2));
    pts.push(`${x.toFixed(2)},${y.toFixed(2)}`);
  });
  $("pline").setAttribute("points", pts.join(" "));
  const line = $("pthreshold");
  const on = state.threshold !== null && state.threshold !== undefined;
  line.setAttribute("visibility", on ? "visible" : "hidden");
  if (!on) return;
  const y = plotY(state.threshold).toFixed(2);
  line.setAttribute("y1", y); line.setAttribute("y2", y);
  line.dataset.threshold = state.threshold;
}

function plot(d, dur) {
  if (d.p_response === null || d.p_response === undefined) return; // sample mode
  if (d.threshold !== null && d.threshold !== undefined) state.threshold = d.threshold;
  const c = document.createElementNS(SVG, "circle");
  c.setAttribute("class", "p " + d.decision);
  c.setAttribute("r", "4");
  c.dataset.time = d.time; c.dataset.p = d.p_response;
  const title = document.createElementNS(SVG, "title");
  title.textContent = `${d.time}s p=${d.p_response.toFixed(3)} ${d.decision}`;
  c.appendChild(title);
  $("pplot").appendChild(c);
  drawPlot(dur);
}

function show(d) {
  state.decisions += 1;
  state.log.push(d);
  if (d.decision === "response") state.responses += 1;
  const dur = span(d.time);
  if (camera) $("timeline").querySelectorAll(".tick").forEach((t) => place(t, dur));
  const tick = document.createElement("div");
  tick.className = "tick " + d.decision;
  tick.dataset.time = d.time;
  place(tick, dur);
  tick.title = `${d.time}s ${d.decision} ${d.text}`;
  $("timeline").appendChild(tick);
  plot(d, dur);
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

function clock() {
  return camera ? (performance.now() - started) / 1000 : $("video").currentTime;
}

function tick() {
  const v = $("video");
  // every whole second of stream time that has passed gets its chunk (1 fps)
  while (session && clock() >= next) {
    queue.push(grab(next - 1, next));
    state.sent += 1;
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
  let threshold = null; // the served decoder's threshold, drawn before the first decision
  try { threshold = ((await call("GET", "healthz")).decode || {}).threshold ?? null; } catch (e) {}
  next = 1; queue = [];
  Object.assign(state, { decisions: 0, responses: 0, sent: 0, log: [], session, done: false,
    threshold });
  $("timeline").replaceChildren(); $("transcript").replaceChildren();
  $("pplot").querySelectorAll("circle.p").forEach((c) => c.remove());
  drawPlot(span(1));
  $("start").disabled = true; $("stop").disabled = false;
  if (!camera) {
    v.currentTime = 0;
    v.playbackRate = Number($("rate").value) || 1; // still 1 frame per second of video time
  }
  await v.play();
  started = performance.now();
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

function closeCamera() {
  if (camera) camera.getTracks().forEach((t) => t.stop());
  camera = null;
  $("video").srcObject = null;
}

async function openCamera() {
  try {
    const s = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    closeCamera();
    camera = s;
    $("video").srcObject = s;
    $("start").disabled = false;
    status(`camera ${s.getVideoTracks()[0].label || ""} on: press Start`);
  } catch (e) {
    state.errors += 1;
    status("camera: " + e.message);
  }
}

$("camera").addEventListener("click", openCamera);
$("file").addEventListener("change", () => {
  const f = $("file").files[0];
  if (!f) return;
  closeCamera();
  $("video").src = URL.createObjectURL(f);
  $("start").disabled = false;
  status(`${f.name} loaded`);
});
$("setup").addEventListener("submit", start);
$("stop").addEventListener("click", stop);
