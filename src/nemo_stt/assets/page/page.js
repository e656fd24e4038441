// The page's logic: uploads to /v1/audio/transcriptions, and the microphone streamed to the websocket mode
// with LinTO's protocol. Plain JavaScript, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);

// From /page/config.json: the stream URL set by PAGE_WEBSOCKET_URL (or null), STREAMING_PORT, and whether
// the server wants a key.
let config = { websocket_url: null, websocket_port: 80, api_key_required: false };

// ----------------------------------------------------------------------------------------------- API key

function apiKey() {
  return $("api-key").value.trim();
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showError(element, message) {
  element.textContent = message;
  element.hidden = !message;
}

async function errorMessage(response) {
  // The API's error bodies: OpenAI's {"error": {"message"}} under /v1, FastAPI's {"detail"} elsewhere.
  let detail;
  try {
    const body = await response.clone().json();
    detail = body?.error?.message ?? body?.detail;
    if (typeof detail !== "string") detail = JSON.stringify(detail ?? body);
  } catch {
    detail = (await response.text()).trim();
  }
  return `${response.status}${response.statusText ? " " + response.statusText : ""}${detail ? ": " + detail : ""}`;
}

async function showModel() {
  const hint = $("key-hint");
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (response.ok) {
      $("model").textContent = (await response.json()).data.map((model) => model.id).join(", ");
      hint.textContent = "";
      return;
    }
    $("model").textContent = "unknown";
    if (response.status === 401) {
      hint.textContent = apiKey() ? "the server does not accept this key" : "the server needs an API key";
    }
  } catch {
    $("model").textContent = "unknown (the server does not answer)";
  }
}

// ------------------------------------------------------------------------------------------------ Upload

function seconds(value) {
  return value.toFixed(3);
}

// SRT and WebVTT cues from verbose_json's segments: the segments the server's own srt and vtt formats show,
// written as results.py writes them, so one request gives the transcript, its words and both subtitles.
function timestamp(value, separator) {
  let millis = Math.max(0, Math.round(value * 1000));
  const hours = Math.floor(millis / 3_600_000);
  millis -= hours * 3_600_000;
  const minutes = Math.floor(millis / 60_000);
  millis -= minutes * 60_000;
  const secs = Math.floor(millis / 1000);
  millis -= secs * 1000;
  const pad = (number, width) => String(number).padStart(width, "0");
  return `${pad(hours, 2)}:${pad(minutes, 2)}:${pad(secs, 2)}${separator}${pad(millis, 3)}`;
}

function toSrt(segments) {
  return segments
    .map((s, i) => `${i + 1}\n${timestamp(s.start, ",")} --> ${timestamp(s.end, ",")}\n${s.text}\n`)
    .join("\n");
}

function toVtt(segments) {
  const cues = segments.map((s) => `${timestamp(s.start, ".")} --> ${timestamp(s.end, ".")}\n${s.text}\n`);
  return "WEBVTT\n\n" + cues.join("\n");
}

function setDownload(link, text, type, filename) {
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = filename;
}

function wordSpan(word) {
  const span = document.createElement("span");
  span.textContent = word.word;
  span.title = `${seconds(word.start)} – ${seconds(word.end)} s`;
  return span;
}

function showTranscript(result, filename) {
  const words = result.words ?? [];
  const transcript = $("transcript");
  transcript.replaceChildren();
  if (words.length && words.map((w) => w.word).join(" ") === result.text) {
    // Each word of the text shows its times on hover.
    words.forEach((word, index) => transcript.append(...(index ? [" "] : []), wordSpan(word)));
  } else {
    transcript.textContent = result.text || "(no speech)";
  }
  const rows = words.map((word) => {
    const row = document.createElement("tr");
    for (const cell of [word.word, seconds(word.start), seconds(word.end)]) {
      const td = document.createElement("td");
      td.textContent = cell;
      row.append(td);
    }
    return row;
  });
  $("words").tBodies[0].replaceChildren(...rows);
  const base = filename.replace(/\.[^.]*$/, "") || "transcript";
  const segments = result.segments ?? [];
  setDownload($("download-srt"), toSrt(segments), "application/x-subrip", `${base}.srt`);
  setDownload($("download-vtt"), toVtt(segments), "text/vtt", `${base}.vtt`);
  $("upload-result").hidden = false;
}

async function transcribe(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const status = $("upload-status");
  const fail = (message) => {
    status.textContent = "";
    showError($("upload-error"), message);
  };
  showError($("upload-error"), "");
  $("upload-result").hidden = true;
  $("transcribe").disabled = true;
  status.textContent = `Transcribing ${file.name}…`;
  const form = new FormData();
  form.append("file", file);
  form.append("response_format", "verbose_json");
  form.append("timestamp_granularities[]", "word");
  form.append("timestamp_granularities[]", "segment");
  const started = performance.now();
  try {
    let response;
    try {
      response = await fetch("/v1/audio/transcriptions", { method: "POST", headers: authHeaders(), body: form });
    } catch (error) {
      fail(`The server does not answer: ${error.message}`);
      return;
    }
    if (!response.ok) {
      fail(await errorMessage(response));
      return;
    }
    const result = await response.json();
    showTranscript(result, file.name);
    const took = ((performance.now() - started) / 1000).toFixed(1);
    status.textContent = `${file.name}: ${result.duration} s of audio, transcribed in ${took} s.`;
  } finally {
    $("transcribe").disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------- Microphone

let capture = null; // the stream in progress: {socket, media, context, source, node}

function defaultWebsocketUrl() {
  if (config.websocket_url) return config.websocket_url;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.hostname}:${config.websocket_port}/streaming`;
}

function streamUrl() {
  const url = new URL($("ws-url").value.trim());
  if (url.protocol !== "ws:" && url.protocol !== "wss:") throw new Error("it must start with ws:// or wss://");
  const key = apiKey();
  if (key) url.searchParams.set("api_key", key); // browsers cannot set headers on a websocket
  return url.href;
}

function openSocket(url) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => resolve(socket);
    socket.onclose = (event) => reject(new Error(`Could not connect to ${$("ws-url").value} (code ${event.code}).`));
  });
}

function toPcm16(samples) {
  const view = new DataView(new ArrayBuffer(samples.length * 2));
  samples.forEach((value, i) => {
    const sample = Math.max(-1, Math.min(1, value));
    view.setInt16(i * 2, sample < 0 ? sample * 0x8000 : sample * 0x7fff, true);
  });
  return view.buffer;
}

async function captureNode(context, send) {
  if (context.audioWorklet) {
    await context.audioWorklet.addModule("/page/pcm-worklet.js");
    const frameSamples = Math.round(context.sampleRate / 10);
    const node = new AudioWorkletNode(context, "pcm16-capture", { processorOptions: { frameSamples } });
    node.port.onmessage = (event) => send(event.data);
    return node;
  }
  // Browsers without AudioWorklet: the older ScriptProcessorNode, which runs on the page's thread.
  const node = context.createScriptProcessor(4096, 1, 1);
  node.onaudioprocess = (event) => send(toPcm16(event.inputBuffer.getChannelData(0)));
  return node;
}

function stopAudio(session) {
  session.node?.disconnect();
  session.source?.disconnect();
  session.media?.getTracks().forEach((track) => track.stop());
  if (session.context && session.context.state !== "closed") session.context.close();
  session.node = session.source = session.media = session.context = null;
}

function addFinal(message) {
  if (!message.text) return; // a final without words (silence)
  const item = document.createElement("li");
  const times = document.createElement("span");
  times.className = "times";
  times.textContent = `${message.start.toFixed(1)}–${message.end.toFixed(1)} s`;
  const text = document.createElement("span");
  text.className = "final";
  const words = message.words ?? [];
  if (words.length && words.map((w) => w.word).join(" ") === message.text) {
    words.forEach((word, index) => text.append(...(index ? [" "] : []), wordSpan(word)));
  } else {
    text.textContent = message.text;
  }
  item.append(times, text);
  $("finals").append(item);
}

function streamEnded(session, event) {
  stopAudio(session);
  if (capture === session) capture = null;
  $("partial").textContent = "";
  $("start").disabled = false;
  $("stop").disabled = true;
  if (event.code === 1000) {
    $("mic-status").textContent = "Stream ended.";
    return;
  }
  $("mic-status").textContent = "";
  const why = event.reason || (event.code === 1006 ? "the connection was lost" : "no reason given");
  showError($("mic-error"), `The server closed the stream (code ${event.code}): ${why}`);
}

async function startStreaming() {
  const error = $("mic-error");
  const status = $("mic-status");
  showError(error, "");
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    showError(error, "Browsers give the microphone only to pages on https:// or on localhost: open this page " +
                     "that way (for example through an SSH tunnel to the server).");
    return;
  }
  let url;
  try {
    url = streamUrl();
  } catch (problem) {
    showError(error, `Invalid WebSocket URL: ${problem.message}`);
    return;
  }
  $("start").disabled = true;
  status.textContent = "Opening the microphone…";
  const session = {};
  capture = session;
  try {
    // Raw audio, as in a file: the browser's voice processing would change what the model hears.
    session.media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    session.context = new AudioContext();
    status.textContent = "Connecting…";
    session.socket = await openSocket(url);
    // The context's own rate is announced, and the server resamples: some browsers cannot feed a
    // microphone into a context of another rate.
    const rate = session.context.sampleRate;
    session.socket.send(JSON.stringify({ config: { sample_rate: rate } }));
    session.socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (typeof message.partial === "string") {
        $("partial").textContent = message.partial;
      } else if (typeof message.text === "string") {
        $("partial").textContent = "";
        addFinal(message);
      }
    };
    session.socket.onclose = (event) => streamEnded(session, event);
    const node = await captureNode(session.context, (frame) => {
      if (session.socket.readyState === WebSocket.OPEN) session.socket.send(frame);
    });
    if (capture !== session) return; // the server closed the stream meanwhile (a refused key): shown
    session.node = node;
    session.source = session.context.createMediaStreamSource(session.media);
    session.source.connect(session.node);
    session.node.connect(session.context.destination); // it outputs silence; connected, the graph runs it
    $("stop").disabled = false;
    status.textContent = `Streaming at ${rate} Hz… (Stop sends the end of the stream.)`;
  } catch (problem) {
    if (capture !== session) return; // the server closed the stream meanwhile, and its reason is shown
    stopAudio(session);
    session.socket?.close();
    capture = null;
    $("start").disabled = false;
    status.textContent = "";
    showError(error, problem.message || String(problem)); // NotAllowedError: the microphone was refused
  }
}

function stopStreaming() {
  const session = capture;
  if (!session) return;
  $("stop").disabled = true;
  stopAudio(session);
  if (session.socket?.readyState === WebSocket.OPEN) session.socket.send(JSON.stringify({ eof: 1 }));
  $("mic-status").textContent = "Finishing: waiting for the last final…";
}

// ----------------------------------------------------------------------------------------------- Start-up

async function init() {
  try {
    const response = await fetch("/page/config.json");
    if (response.ok) config = await response.json();
  } catch {
    // the defaults above
  }
  $("ws-url").value = defaultWebsocketUrl();
  if (config.api_key_required) $("key-hint").textContent = "the server needs an API key";
  $("api-key").addEventListener("change", showModel);
  $("upload-form").addEventListener("submit", transcribe);
  $("start").addEventListener("click", startStreaming);
  $("stop").addEventListener("click", stopStreaming);
  await showModel();
}

init();
