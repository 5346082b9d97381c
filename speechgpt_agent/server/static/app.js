// The voice page of `speechgpt-agent serve`: hold to talk, hear the answer as it is generated.
//
// One turn: the question (a recording made here as 16-bit wav, a dropped file, or text) goes
// to POST /v1/chat/completions with stream: true, modalities ["text", "audio"] and
// audio.format "pcm16"; the server-sent events carry delta.input_transcript (what the model
// heard), delta.audio.transcript (the answer's text), delta.audio.data (base64 pcm16, mono,
// 24 kHz) and delta.tool_calls. Audio pieces are scheduled back to back on one AudioContext,
// so they play without gaps while the model still generates. The page keeps the history:
// earlier spoken questions go back as their transcript, earlier spoken answers as
// {role: "assistant", audio: {id}} while the server still holds them (else as their text).
// Asking again while an answer plays stops its audio and aborts its request, which makes
// the server cancel the generation.
//
// For tests and curious users, window.voicePage exposes the state: stats.playedSamples
// (24 kHz samples that have played, also body[data-played-samples]), turns, history.

const PCM_RATE = 24000; // Hz of the server's pcm16 pieces
const LEAD_S = 0.08; // scheduling lead of the first piece (and after an underrun)
const MAX_RECORD_S = 60; // the server's default --max-audio-seconds
const MIN_RECORD_S = 0.25;
const MAX_TOOL_ROUNDS = 3;
const STORE = { key: "speechgpt-agent.apiKey", settings: "speechgpt-agent.settings" };

const $ = (id) => document.getElementById(id);
const ui = {
  body: document.body, log: $("log"), empty: $("empty"), notice: $("notice"),
  noticeText: $("notice-text"), server: $("server"), serverText: $("server-text"),
  talk: $("talk"), hint: $("talk-hint"), wave: $("wave"), form: $("ask-form"),
  text: $("ask-text"), file: $("file"), drop: $("drop"), settings: $("settings"),
  apiKey: $("api-key"), apiKeyHelp: $("api-key-help"), temperature: $("temperature"),
  calculator: $("tool-calculator"),
};

const stats = { playedSamples: 0, scheduledSamples: 0, receivedSamples: 0, underruns: 0, turns: 0, inputPeakLevel: 0 };
const state = {
  model: null, history: [], turns: [], current: null, recording: null, pendingRetry: null,
  ctx: null, worklet: null, player: null, online: null,
};

// --- small helpers --------------------------------------------------------------------------

class PageError extends Error {
  /** kind: "offline" | "auth" | "server" | "mic-refused" | "mic-missing" | "unsupported" | "input" */
  constructor(kind, message, code = null) {
    super(message);
    this.kind = kind;
    this.code = code; // the server's error.code, if it sent one
  }
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function seconds(ms) {
  return `${(ms / 1000).toFixed(2)} s`;
}

function loadSettings() {
  try {
    return { temperature: 0, calculator: false, ...JSON.parse(localStorage.getItem(STORE.settings) || "{}") };
  } catch {
    return { temperature: 0, calculator: false };
  }
}

function saveSettings(settings) {
  localStorage.setItem(STORE.settings, JSON.stringify(settings));
}

function apiKey() {
  return localStorage.getItem(STORE.key) || "";
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey()) h.Authorization = `Bearer ${apiKey()}`;
  return h;
}

function base64FromBytes(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    out += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(out);
}

function bytesFromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/** 16-bit PCM mono wav of float32 samples. */
function encodeWav(samples, rate) {
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const v = new DataView(buffer);
  const text = (at, s) => [...s].forEach((c, i) => v.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF"); v.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, rate, true); v.setUint32(28, rate * 2, true); v.setUint16(32, 2, true);
  v.setUint16(34, 16, true); text(36, "data"); v.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    v.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Uint8Array(buffer);
}

// --- messages to the user ---------------------------------------------------------------------

function notify(kind, message) {
  ui.notice.hidden = false;
  ui.notice.dataset.kind = kind;
  ui.noticeText.textContent = message;
}

function clearNotice(kind) {
  if (!kind || ui.notice.dataset.kind === kind) {
    ui.notice.hidden = true;
    delete ui.notice.dataset.kind;
  }
}

function missingFeatures() {
  const missing = [];
  if (!window.fetch || !window.ReadableStream || !("body" in Response.prototype)) missing.push("streamed fetch");
  if (!window.AbortController) missing.push("AbortController");
  if (!window.AudioContext && !window.webkitAudioContext) missing.push("Web Audio");
  if (!window.TextDecoder) missing.push("TextDecoder");
  return missing;
}

function microphoneProblem() {
  if (!window.isSecureContext) {
    return new PageError("unsupported", `The microphone only works on https:// pages or on localhost; this page is ${location.origin}. Open it as http://localhost:PORT (an SSH tunnel works), or drop an audio file or type instead.`);
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.AudioWorkletNode) {
    return new PageError("unsupported", "This browser cannot record from the microphone here (no getUserMedia or AudioWorklet). Use a current Chrome, Edge, Firefox or Safari, or drop an audio file or type instead.");
  }
  return null;
}

// --- audio output: gapless pcm16 ----------------------------------------------------------

function audioContext() {
  if (!state.ctx) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    state.ctx = new Ctx({ latencyHint: "interactive" });
    state.player = new Player(state.ctx);
  }
  if (state.ctx.state === "suspended") state.ctx.resume().catch(() => {});
  return state.ctx;
}

/** The browser keeps sound off until the user interacts with the page: say so, resume on a click. */
function checkSound() {
  const ctx = state.ctx;
  if (!ctx || ctx.state !== "suspended" || ui.notice.dataset.kind === "sound") return;
  notify("sound", "The browser holds the answer's sound until you interact with this page: click anywhere to hear it.");
  const resume = () => {
    ctx.resume().then(() => clearNotice("sound")).catch(() => {});
    window.removeEventListener("pointerdown", resume);
  };
  window.addEventListener("pointerdown", resume);
}

class Player {
  constructor(ctx) {
    this.ctx = ctx;
    this.out = ctx.createGain();
    this.out.connect(ctx.destination);
    this.entries = new Set();
    this.nextTime = 0;
  }

  /** Schedule int16 samples (24 kHz) right after what is already scheduled; returns the
   * AudioContext time at which they start. */
  play(int16, turn) {
    const ctx = this.ctx;
    const floats = new Float32Array(int16.length);
    for (let i = 0; i < int16.length; i++) floats[i] = int16[i] / 32768;
    const buffer = ctx.createBuffer(1, floats.length, PCM_RATE);
    buffer.copyToChannel(floats, 0);
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.out);
    const now = ctx.currentTime;
    if (this.nextTime < now + 0.005) {
      if (this.entries.size > 0) stats.underruns += 1;
      this.nextTime = now + LEAD_S;
    }
    const entry = { source, start: this.nextTime, samples: floats.length, turn, counted: false };
    source.onended = () => this.finish(entry, entry.samples);
    source.start(entry.start);
    this.entries.add(entry);
    this.nextTime += buffer.duration;
    stats.scheduledSamples += floats.length;
    turn.scheduledSamples += floats.length;
    publish();
    return entry.start;
  }

  finish(entry, played) {
    if (entry.counted) return;
    entry.counted = true;
    this.entries.delete(entry);
    stats.playedSamples += played;
    entry.turn.playedSamples += played;
    if (played < entry.samples) entry.turn.playbackStopped = true;
    if (![...this.entries].some((e) => e.turn === entry.turn)) {
      entry.turn.playbackEndMs = performance.now() - entry.turn.t0;
    }
    publish();
    if (this.entries.size === 0) onPlaybackIdle();
  }

  /** Stop everything scheduled; what had already played is counted. */
  stop() {
    const now = this.ctx.currentTime;
    for (const turn of new Set([...this.entries].map((e) => e.turn))) {
      if (turn.status === "done") setStatus(turn, "done", "answered · stopped playing");
    }
    for (const entry of [...this.entries]) {
      entry.source.onended = null;
      try { entry.source.stop(); } catch { /* not started */ }
      const played = Math.round(Math.min(entry.samples, Math.max(0, (now - entry.start) * PCM_RATE)));
      this.finish(entry, played);
    }
    this.nextTime = 0;
  }

  get busy() {
    return this.entries.size > 0;
  }
}

function onPlaybackIdle() {
  if (!state.current && !state.recording) setBodyState("idle");
}

// --- audio input: hold to talk --------------------------------------------------------------

async function startRecording(trigger) {
  if (state.recording) return;
  const problem = microphoneProblem();
  if (problem) {
    notify(problem.kind, problem.message);
    return;
  }
  const ctx = audioContext();
  interrupt();
  const rec = { trigger, chunks: [], frames: 0, started: performance.now(), stopping: false, levels: [] };
  state.recording = rec;
  setBodyState("recording");
  ui.talk.classList.add("active");
  ui.hint.textContent = "Opening the microphone…";
  try {
    rec.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
    if (!state.worklet) state.worklet = ctx.audioWorklet.addModule("static/capture-worklet.js");
    await state.worklet;
  } catch (err) {
    stopTracks(rec);
    resetTalk();
    state.recording = null;
    setBodyState("idle");
    const name = err && err.name;
    if (name === "NotAllowedError" || name === "SecurityError") {
      notify("mic-refused", "Microphone access was refused. Allow it for this page (the icon at the left of the address bar), then hold the button again, or drop an audio file or type instead.");
    } else if (name === "NotFoundError" || name === "OverconstrainedError") {
      notify("mic-missing", "No microphone was found. Plug one in, or drop an audio file or type instead.");
    } else {
      notify("mic-refused", `The microphone could not be opened (${name || "error"}: ${err && err.message}).`);
    }
    return;
  }
  if (state.recording !== rec) { // released (or cancelled) while the microphone opened
    stopTracks(rec);
    if (performance.now() - rec.started > 1500) { // the browser asked for permission meanwhile
      notify("input", "The microphone is ready: now hold the button (or Space) while you speak.");
    }
    return;
  }
  ui.hint.textContent = "Listening… release to send";
  clearNotice("mic-refused");
  clearNotice("mic-missing");
  rec.rate = ctx.sampleRate;
  rec.source = ctx.createMediaStreamSource(rec.stream);
  rec.node = new AudioWorkletNode(ctx, "pcm-capture", { numberOfOutputs: 1, outputChannelCount: [1] });
  rec.mute = ctx.createGain();
  rec.mute.gain.value = 0;
  rec.source.connect(rec.node).connect(rec.mute).connect(ctx.destination);
  rec.finished = new Promise((resolve) => {
    rec.node.port.onmessage = (event) => {
      if (event.data.done) { resolve(); return; }
      const block = event.data.samples;
      rec.chunks.push(block);
      rec.frames += block.length;
      let sum = 0;
      for (let i = 0; i < block.length; i++) sum += block[i] * block[i];
      const level = Math.min(1, Math.sqrt(sum / block.length) * 4);
      rec.levels.push(level);
      stats.inputPeakLevel = Math.max(stats.inputPeakLevel, level);
      ui.talk.style.setProperty("--level", level.toFixed(3));
      drawWave(rec.levels);
      if (rec.frames / rec.rate >= MAX_RECORD_S) stopRecording(rec.trigger);
    };
  });
}

function stopTracks(rec) {
  if (rec.stream) rec.stream.getTracks().forEach((t) => t.stop());
}

function resetTalk() {
  ui.talk.classList.remove("active");
  ui.talk.style.setProperty("--level", "0");
  ui.hint.innerHTML = "Hold to talk · <kbd>Space</kbd>";
  drawWave([]);
}

async function stopRecording(trigger, { cancel = false } = {}) {
  const rec = state.recording;
  if (!rec || rec.stopping || (trigger && rec.trigger !== trigger)) return;
  rec.stopping = true;
  state.recording = null;
  resetTalk();
  if (!rec.node) { // still opening the microphone: it is closed when it opens
    setBodyState(state.current ? "answering" : "idle");
    return;
  }
  rec.node.port.postMessage("stop");
  await rec.finished;
  rec.source.disconnect();
  rec.node.disconnect();
  rec.mute.disconnect();
  stopTracks(rec);
  const duration = rec.frames / rec.rate;
  if (cancel) { setBodyState("idle"); return; }
  if (duration < MIN_RECORD_S) {
    setBodyState("idle");
    notify("input", "That was too short: hold the button (or Space) while you speak, and let go when you are done.");
    return;
  }
  const samples = new Float32Array(rec.frames);
  let at = 0;
  for (const chunk of rec.chunks) { samples.set(chunk, at); at += chunk.length; }
  const wav = encodeWav(samples, rec.rate);
  clearNotice("input");
  ask({ kind: "audio", data: base64FromBytes(wav), format: "wav", seconds: duration, label: "spoken",
        blob: new Blob([wav], { type: "audio/wav" }) });
}

/** The level meter: the newest levels next to the button, older ones further out, mirrored. */
function drawWave(levels) {
  const c = ui.wave;
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const bar = 6;
  const inner = 62; // half the button and its ring
  const n = Math.floor((c.width / 2 - inner) / bar);
  const shown = levels.slice(-n).reverse();
  g.fillStyle = getComputedStyle(document.body).getPropertyValue("--accent").trim() || "#6ee7b7";
  shown.forEach((level, i) => {
    const h = Math.max(2, level * (c.height - 4));
    g.globalAlpha = 1 - (0.75 * i) / n;
    for (const x of [c.width / 2 + inner + i * bar, c.width / 2 - inner - (i + 1) * bar]) {
      g.fillRect(x + 1, (c.height - h) / 2, bar - 2, h);
    }
  });
  g.globalAlpha = 1;
}

// --- dropped and chosen files ------------------------------------------------------------------

const SENT_AS_IS = { wav: "wav", wave: "wav", mp3: "mp3", mpeg: "mp3", flac: "flac", ogg: "ogg" };

async function askFile(file) {
  if (!file) return;
  audioContext();
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  const mime = (file.type.split("/")[1] || "").toLowerCase().replace("x-", "");
  let format = SENT_AS_IS[ext] || SENT_AS_IS[mime];
  let bytes = new Uint8Array(await file.arrayBuffer());
  let secondsLong = null;
  if (!format) { // another container (m4a, webm, opus...): decode here, send as wav
    try {
      const decoded = await audioContext().decodeAudioData(bytes.buffer.slice(0));
      const mono = new Float32Array(decoded.length);
      for (let c = 0; c < decoded.numberOfChannels; c++) {
        const ch = decoded.getChannelData(c);
        for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / decoded.numberOfChannels;
      }
      bytes = encodeWav(mono, decoded.sampleRate);
      format = "wav";
      secondsLong = decoded.duration;
    } catch {
      notify("input", `${file.name}: this browser cannot decode it, and the server takes wav, mp3, flac or ogg. Convert it to one of those.`);
      return;
    }
  }
  clearNotice("input");
  ask({ kind: "audio", data: base64FromBytes(bytes), format, seconds: secondsLong, label: file.name,
        blob: new Blob([bytes], { type: file.type || "audio/wav" }) });
}

// --- the conversation ---------------------------------------------------------------------------

function newTurnView(question) {
  ui.empty.hidden = true;
  const article = el("article", "turn");
  const user = el("div", "msg user");
  user.append(el("div", "who", "You"));
  const transcript = el("p", "transcript");
  if (question.kind === "text") transcript.textContent = question.text;
  else transcript.classList.add("pending");
  user.append(transcript);
  const userMeta = el("div", "meta");
  if (question.kind === "audio") {
    const label = question.label === "spoken" ? "spoken" : `file ${question.label}`;
    userMeta.append(el("span", "", question.seconds ? `${label} · ${question.seconds.toFixed(1)} s` : label));
    if (question.blob) {
      const replay = el("button", "link replay", "▶ replay");
      replay.type = "button";
      const url = URL.createObjectURL(question.blob);
      replay.addEventListener("click", () => new Audio(url).play());
      userMeta.append(replay);
    }
  } else {
    userMeta.append(el("span", "", "typed"));
  }
  user.append(userMeta);
  const tools = el("div", "tools");
  const bot = el("div", "msg assistant");
  bot.append(el("div", "who", "SpeechGPT"));
  const answer = el("p", "answer pending");
  bot.append(answer);
  const meta = el("div", "meta");
  const status = el("span", "status", "waiting…");
  const timing = el("span", "timing");
  meta.append(status, timing);
  bot.append(meta);
  article.append(user, tools, bot);
  ui.log.append(article);
  ui.log.scrollTop = ui.log.scrollHeight;
  return { article, transcript, answer, tools, status, timing };
}

function newTurn(question) {
  const turn = {
    index: state.turns.length, question: question.kind === "text" ? question.text : null,
    kind: question.kind, transcript: question.kind === "text" ? question.text : "", answer: "",
    toolCalls: [], status: "waiting", error: null, audioId: null, expiresAt: null,
    receivedSamples: 0, scheduledSamples: 0, playedSamples: 0, firstAudioMs: null, totalMs: null,
    playbackStartMs: null, playbackEndMs: null, playbackStopped: false,
    streamComplete: false, aborted: false, requests: 0,
  };
  Object.defineProperty(turn, "view", { value: newTurnView(question), enumerable: false });
  turn.view.article.dataset.turn = String(turn.index);
  state.turns.push(turn);
  stats.turns = state.turns.length;
  return turn;
}

function setStatus(turn, status, text) {
  turn.status = status;
  turn.view.article.dataset.status = status;
  turn.view.status.textContent = text;
}

function renderTiming(turn) {
  const parts = [];
  if (turn.firstAudioMs !== null) parts.push(`first audio ${seconds(turn.firstAudioMs)}`);
  if (turn.totalMs !== null) parts.push(`total ${seconds(turn.totalMs)}`);
  if (turn.receivedSamples) parts.push(`${(turn.receivedSamples / PCM_RATE).toFixed(1)} s of speech`);
  turn.view.timing.textContent = parts.join(" · ");
  follow();
}

/** Keep the newest exchange in view while it grows, unless the user scrolled up. */
function follow() {
  const log = ui.log;
  if (log.scrollHeight - log.scrollTop - log.clientHeight < 160) log.scrollTop = log.scrollHeight;
}

function publish() {
  ui.body.dataset.playedSamples = String(stats.playedSamples);
}

function setBodyState(s) {
  ui.body.dataset.state = s;
}

/** The user's message of a question, as sent in this turn. */
function userMessage(question) {
  if (question.kind === "text") return { role: "user", content: question.text };
  return { role: "user", content: [{ type: "input_audio", input_audio: { data: question.data, format: question.format } }] };
}

/** Earlier turns as the server reads them (see the module comment). */
function historyMessages() {
  const now = Date.now() / 1000;
  return state.history.map((m) => {
    if (m.role === "assistant" && m.audio) {
      if (m.expiresAt && m.expiresAt > now + 30) return { role: "assistant", audio: { id: m.audio.id } };
      return { role: "assistant", content: m.text };
    }
    return m;
  });
}

function requestBody(messages) {
  const settings = loadSettings();
  const body = {
    model: state.model || "demo", stream: true, modalities: ["text", "audio"],
    audio: { voice: "default", format: "pcm16" }, messages,
  };
  if (Number.isFinite(settings.temperature)) body.temperature = settings.temperature;
  if (settings.calculator) body.tools = [CALCULATOR_SPEC];
  return body;
}

/** Stop the answer that plays and abort its request (the server cancels its generation). */
function interrupt() {
  if (state.player) state.player.stop();
  const current = state.current;
  if (current) {
    current.turn.aborted = !current.turn.streamComplete;
    current.controller.abort();
    state.current = null;
  }
}

async function ask(question) {
  audioContext();
  interrupt();
  const turn = newTurn(question);
  state.lastQuestion = question;
  const controller = new AbortController();
  const current = { turn, controller };
  state.current = current;
  setBodyState("answering");
  const t0 = performance.now();
  turn.t0 = t0;
  const messages = [...historyMessages(), userMessage(question)];
  const added = [];
  try {
    let result;
    for (let round = 0; ; round++) {
      try {
        result = await streamTurn(requestBody([...messages, ...added]), turn, controller.signal);
      } catch (err) {
        if (!(err instanceof PageError && err.code === "audio_not_found" && state.history.some((m) => m.expiresAt))) throw err;
        for (const m of state.history) if (m.expiresAt) m.expiresAt = 0; // resend those answers as text
        messages.splice(0, messages.length, ...historyMessages(), userMessage(question));
        result = await streamTurn(requestBody([...messages, ...added]), turn, controller.signal);
      }
      if (!result.toolCalls.length || round >= MAX_TOOL_ROUNDS) break;
      added.push({ role: "assistant", content: result.text || null, tool_calls: result.toolCalls });
      for (const call of result.toolCalls) {
        const output = runTool(call);
        showTool(turn, call, output);
        added.push({ role: "tool", tool_call_id: call.id, content: output });
      }
    }
    turn.totalMs = performance.now() - t0;
    turn.streamComplete = true;
    renderTiming(turn);
    const spoken = question.kind === "audio";
    if (spoken && !turn.transcript) turn.view.transcript.textContent = "(not understood)";
    turn.view.transcript.classList.remove("pending");
    turn.view.answer.classList.remove("pending");
    if (!turn.answer && !result.audioId) turn.view.answer.textContent = "(no answer)";
    setStatus(turn, "done", "answered");
    state.history.push(
      spoken && turn.transcript ? { role: "user", content: turn.transcript } : userMessage(question),
      ...added,
      result.audioId
        ? { role: "assistant", audio: { id: result.audioId }, expiresAt: result.expiresAt, text: turn.answer }
        : { role: "assistant", content: turn.answer },
    );
    clearNotice("offline");
    clearNotice("server");
    state.pendingRetry = null;
  } catch (err) {
    turn.view.transcript.classList.remove("pending");
    turn.view.answer.classList.remove("pending");
    if (err.name === "AbortError" || controller.signal.aborted) {
      setStatus(turn, "interrupted", turn.streamComplete ? "interrupted" : "interrupted · generation cancelled");
      turn.totalMs = null;
      renderTiming(turn);
      return;
    }
    const kind = err instanceof PageError ? err.kind : "server";
    const message = err instanceof PageError ? err.message : `Unexpected error: ${err && err.message}`;
    turn.error = message;
    setStatus(turn, "error", kind === "auth" ? "needs the API key" : "failed");
    turn.view.answer.textContent = "";
    notify(kind, message);
    if (kind === "auth") {
      state.pendingRetry = question;
      openSettings(message);
    }
    if (kind === "offline") setOnline(false);
  } finally {
    if (state.current === current) state.current = null;
    if (!state.recording && !(state.player && state.player.busy)) setBodyState("idle");
  }
}

async function errorOf(res) {
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) return { message: body.error.message, code: body.error.code };
    return { message: JSON.stringify(body), code: null };
  } catch {
    return { message: `${res.status} ${res.statusText}`, code: null };
  }
}

async function errorMessage(res) {
  return (await errorOf(res)).message;
}

function authMessage(serverMessage) {
  return apiKey()
    ? `The server refused the API key (${serverMessage}). Enter the key it was started with (--api-key) in Settings.`
    : `This server needs an API key (${serverMessage}). Enter the key it was started with (--api-key) in Settings; it is kept in this browser.`;
}

async function post(body, signal) {
  let res;
  try {
    res = await fetch("v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  } catch (err) {
    if (signal.aborted) throw err;
    throw new PageError("offline", `Cannot reach the server at ${location.origin}: is speechgpt-agent serve still running? (${err.message})`);
  }
  if (res.status === 401) throw new PageError("auth", authMessage(await errorMessage(res)));
  if (!res.ok) {
    const { message, code } = await errorOf(res);
    throw new PageError("server", `The server could not answer (${res.status}): ${message}`, code);
  }
  return res;
}

/** One streamed request; fills `turn` as the deltas arrive. */
async function streamTurn(body, turn, signal) {
  const res = await post(body, signal);
  turn.requests += 1;
  const result = { text: "", audioId: null, expiresAt: null, toolCalls: [], finish: null, done: false };
  const calls = [];
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  let carry = null; // an odd byte of pcm16 left by a piece
  setStatus(turn, "streaming", "listening…");

  const onAudio = (b64) => {
    let bytes = bytesFromBase64(b64);
    if (carry) { const joined = new Uint8Array(bytes.length + 1); joined[0] = carry[0]; joined.set(bytes, 1); bytes = joined; carry = null; }
    if (bytes.length % 2) { carry = bytes.slice(-1); bytes = bytes.subarray(0, bytes.length - 1); }
    if (!bytes.length) return;
    const samples = new Int16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2);
    stats.receivedSamples += samples.length;
    turn.receivedSamples += samples.length;
    const start = state.player.play(samples, turn);
    checkSound();
    if (turn.firstAudioMs === null) {
      turn.firstAudioMs = performance.now() - turn.t0;
      turn.playbackStartMs = turn.firstAudioMs + Math.max(0, start - state.ctx.currentTime) * 1000;
      setStatus(turn, "streaming", "speaking…");
    }
    renderTiming(turn);
  };

  const onEvent = (data) => {
    if (data === "[DONE]") { result.done = true; return; }
    let chunk;
    try { chunk = JSON.parse(data); } catch { throw new PageError("server", `The server sent something that is not JSON: ${data.slice(0, 80)}`); }
    if (chunk.error) throw new PageError("server", `The server failed during the answer: ${chunk.error.message}`);
    const choice = chunk.choices && chunk.choices[0];
    if (!choice) return;
    const delta = choice.delta || {};
    if (delta.input_transcript) {
      turn.transcript += delta.input_transcript;
      turn.view.transcript.textContent = turn.transcript;
      turn.view.transcript.classList.remove("pending");
    }
    const text = (delta.audio && delta.audio.transcript) || delta.content;
    if (text) {
      result.text += text;
      turn.answer += text;
      turn.view.answer.textContent = turn.answer;
      turn.view.answer.classList.remove("pending");
      if (turn.firstAudioMs === null) setStatus(turn, "streaming", "answering…");
      follow();
    }
    if (delta.audio) {
      if (delta.audio.id) { result.audioId = delta.audio.id; turn.audioId = delta.audio.id; }
      if (delta.audio.expires_at) { result.expiresAt = delta.audio.expires_at; turn.expiresAt = delta.audio.expires_at; }
      if (delta.audio.data) onAudio(delta.audio.data);
    }
    for (const tc of delta.tool_calls || []) {
      const at = tc.index || 0;
      calls[at] = calls[at] || { id: "", type: "function", function: { name: "", arguments: "" } };
      if (tc.id) calls[at].id = tc.id;
      if (tc.function && tc.function.name) calls[at].function.name += tc.function.name;
      if (tc.function && tc.function.arguments) calls[at].function.arguments += tc.function.arguments;
    }
    if (choice.finish_reason) result.finish = choice.finish_reason;
  };

  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      if (signal.aborted) throw err;
      throw new PageError("offline", `The connection to the server was lost during the answer: is speechgpt-agent serve still running? (${err.message})`);
    }
    const { value, done } = chunk;
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffered.indexOf("\n\n")) >= 0) {
      const block = buffered.slice(0, cut);
      buffered = buffered.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) onEvent(data);
    }
  }
  if (!result.done) throw new PageError("server", "The answer stopped before it was complete: the server closed the stream (see its log).");
  result.toolCalls = calls.filter(Boolean);
  return result;
}

// --- the calculator tool (run by the page) ------------------------------------------------------

const CALCULATOR_SPEC = {
  type: "function",
  function: {
    name: "calculator",
    description: "Evaluate an arithmetic expression on numbers, such as 1234 * 5678.",
    parameters: { type: "object", properties: { expression: { type: "string" } }, required: ["expression"] },
  },
};

/** Arithmetic of numbers, + - * / // % ** and parentheses, parsed (never eval-ed), as the
 * Python calculator tool of speechgpt_agent. */
function evaluateExpression(expression) {
  const tokens = expression.match(/\d+\.?\d*(?:e[+-]?\d+)?|\.\d+|\*\*|\/\/|[-+*/%()]|\S/gi) || [];
  let at = 0;
  const peek = () => tokens[at];
  const take = () => tokens[at++];
  const fail = () => { throw new Error(`not an arithmetic expression: ${JSON.stringify(expression)}`); };
  function atom() {
    const t = take();
    if (t === "(") { const v = sum(); if (take() !== ")") fail(); return v; }
    if (t === "-") return -power();
    if (t === "+") return +power();
    if (t !== undefined && /^[\d.]/.test(t)) return Number(t);
    return fail();
  }
  function power() {
    const base = atom();
    if (peek() === "**") {
      take();
      const exp = unary();
      if (Math.abs(exp) > 64) throw new Error(`exponent ${exp} is too large (at most 64).`);
      return base ** exp;
    }
    return base;
  }
  function unary() { return power(); }
  function product() {
    let v = unary();
    while (["*", "/", "//", "%"].includes(peek())) {
      const op = take();
      const r = unary();
      if ((op !== "*") && r === 0) throw new Error("division by zero");
      if (op === "*") v *= r;
      else if (op === "/") v /= r;
      else if (op === "//") v = Math.floor(v / r);
      else v = v - r * Math.floor(v / r);
    }
    return v;
  }
  function sum() {
    let v = product();
    while (peek() === "+" || peek() === "-") v = take() === "+" ? v + product() : v - product();
    return v;
  }
  const value = sum();
  if (at !== tokens.length || !Number.isFinite(value)) fail();
  return value;
}

function runTool(call) {
  if (call.function.name !== "calculator") return `Error: this page has no tool named ${JSON.stringify(call.function.name)}.`;
  try {
    const args = JSON.parse(call.function.arguments || "{}");
    const value = evaluateExpression(String(args.expression ?? ""));
    return Number.isInteger(value) ? BigInt(value).toString() : String(value);
  } catch (err) {
    return `Error: ${err.message}`;
  }
}

function showTool(turn, call, output) {
  const card = el("div", "tool");
  card.append(el("span", "tool-name", call.function.name));
  let args = call.function.arguments;
  try { args = Object.values(JSON.parse(args)).join(", "); } catch { /* shown raw */ }
  card.append(el("code", "tool-args", args), el("span", "arrow", "→"), el("code", "tool-result", output));
  turn.view.tools.append(card);
  follow();
  turn.toolCalls.push({ name: call.function.name, arguments: call.function.arguments, result: output });
}

// --- the server and its key -----------------------------------------------------------------------

function setOnline(online, text) {
  state.online = online;
  ui.server.dataset.online = online ? "yes" : "no";
  ui.serverText.textContent = text || (online ? "online" : "server offline");
}

async function pollHealth() {
  try {
    const res = await fetch("health", { cache: "no-store", signal: AbortSignal.timeout ? AbortSignal.timeout(4000) : undefined });
    const health = await res.json();
    state.model = health.model;
    const busy = health.active_turns ? ` · ${health.active_turns} generating` : "";
    setOnline(true, `${health.model}${health.engine ? ` · ${health.engine}` : ""}${busy}`);
    if (ui.notice.dataset.kind === "offline" && !state.current) clearNotice("offline");
    return true;
  } catch {
    setOnline(false);
    return false;
  }
}

/** Whether the stored key (or none) is accepted; opens the settings when it is not. */
async function checkKey() {
  let res;
  try {
    res = await fetch("v1/models", { headers: headers(), cache: "no-store" });
  } catch {
    return null;
  }
  if (res.status === 401) {
    const message = authMessage(await errorMessage(res));
    notify("auth", message);
    openSettings(message);
    return false;
  }
  clearNotice("auth");
  return true;
}

function openSettings(reason) {
  const settings = loadSettings();
  ui.apiKey.value = apiKey();
  ui.temperature.value = String(settings.temperature);
  ui.calculator.checked = Boolean(settings.calculator);
  ui.apiKeyHelp.dataset.reason = reason ? "auth" : "";
  if (!ui.settings.open) ui.settings.showModal();
  if (reason) ui.apiKey.focus();
}

async function saveFromSettings() {
  const key = ui.apiKey.value.trim();
  if (key) localStorage.setItem(STORE.key, key);
  else localStorage.removeItem(STORE.key);
  const temperature = Number.parseFloat(ui.temperature.value);
  saveSettings({ temperature: Number.isFinite(temperature) ? temperature : 0, calculator: ui.calculator.checked });
  const ok = await checkKey();
  if (ok && state.pendingRetry) {
    const question = state.pendingRetry;
    state.pendingRetry = null;
    ask(question);
  }
}

// --- wiring -------------------------------------------------------------------------------------

function typing(target) {
  return target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || ui.settings.open;
}

function wire() {
  ui.talk.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    ui.talk.setPointerCapture(e.pointerId);
    startRecording("pointer");
  });
  const release = () => stopRecording("pointer");
  ui.talk.addEventListener("pointerup", release);
  ui.talk.addEventListener("pointercancel", release);
  ui.talk.addEventListener("contextmenu", (e) => e.preventDefault());
  ui.talk.addEventListener("keydown", (e) => { if (e.code === "Enter") e.preventDefault(); });

  window.addEventListener("keydown", (e) => {
    if (e.code === "Space" && !typing(e.target)) {
      e.preventDefault();
      if (!e.repeat) startRecording("space");
    } else if (e.code === "Escape" && state.recording) {
      stopRecording(null, { cancel: true });
    }
  });
  window.addEventListener("keyup", (e) => {
    if (e.code === "Space" && !typing(e.target)) {
      e.preventDefault();
      stopRecording("space");
    }
  });
  window.addEventListener("blur", () => stopRecording(null));

  ui.form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = ui.text.value.trim();
    if (!text) return;
    ui.text.value = "";
    ask({ kind: "text", text });
  });
  ui.file.addEventListener("change", () => { askFile(ui.file.files[0]); ui.file.value = ""; });

  let depth = 0;
  window.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; ui.drop.hidden = false; });
  window.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) ui.drop.hidden = true; });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    ui.drop.hidden = true;
    askFile(e.dataTransfer && e.dataTransfer.files[0]);
  });

  $("notice-close").addEventListener("click", () => clearNotice());
  $("settings-button").addEventListener("click", () => openSettings());
  $("settings-form").addEventListener("submit", () => { saveFromSettings(); });
  $("new-conversation").addEventListener("click", () => {
    interrupt();
    state.history = [];
    for (const node of ui.log.querySelectorAll(".turn")) node.remove();
    ui.empty.hidden = false;
    ui.settings.close();
  });
}

function main() {
  window.voicePage = {
    stats, state,
    get turns() { return state.turns; },
    get history() { return state.history; },
    ask: (text) => ask({ kind: "text", text }),
    interrupt,
    evaluateExpression,
  };
  const missing = missingFeatures();
  if (missing.length) {
    ui.talk.disabled = true;
    setBodyState("unsupported");
    notify("unsupported", `This browser lacks ${missing.join(", ")}, which this page needs to stream spoken answers. Use a current Chrome, Edge, Firefox or Safari.`);
    pollHealth();
    return;
  }
  wire();
  const mic = microphoneProblem();
  if (mic) {
    ui.talk.classList.add("unavailable");
    ui.hint.textContent = "No microphone here: drop a file or type";
  }
  pollHealth().then((online) => {
    if (online) checkKey();
    else notify("offline", `Cannot reach the server at ${location.origin}: is speechgpt-agent serve still running?`);
  });
  setInterval(pollHealth, 5000);
  drawWave([]);
}

main();
