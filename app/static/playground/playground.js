// The Atenea playground: a client of the public OpenAI API of the server that serves this page.
// Plain browser JavaScript, no build step. Every request goes through `api()`, which adds the API key
// when one is entered, exactly as an SDK would.
"use strict";

const API_ROOT = `${location.origin}/v1`;
const KEY_STORAGE = "atenea.apiKey";
const $ = (id) => document.getElementById(id);

const state = { messages: [], controller: null };

function apiKey() {
  return $("api-key").value.trim();
}

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
  const response = await fetch(`${API_ROOT}${path}`, { ...options, headers });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response;
}

// The server answers errors in OpenAI's envelope: show its message, not the raw body.
async function errorMessage(response) {
  const text = await response.text();
  try {
    const error = JSON.parse(text).error;
    if (error && error.message) return `${response.status}: ${error.message}`;
  } catch (_) { /* not JSON: fall through to the text */ }
  return `${response.status}: ${text.slice(0, 200)}`;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadModels() {
  try {
    const listing = await (await api("/models")).json();
    const cards = listing.data || [];
    // /v1/models lists language and image models alike (OpenAI's model object names no kind): both
    // pickers offer all of them. The server lists its language model first, and the image tab
    // leaves the choice to the server unless one is picked.
    fillSelect($("chat-model"), cards, null);
    fillSelect($("image-model"), cards, "server default");
    setStatus(`${cards.length} model(s) available`);
  } catch (error) {
    setStatus(`Cannot list models: ${error.message}`, true);
  }
}

function fillSelect(select, cards, defaultLabel) {
  const previous = select.value;
  select.replaceChildren();
  if (defaultLabel !== null) select.append(new Option(defaultLabel, ""));
  for (const card of cards) select.append(new Option(card.id, card.id));
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
}

// Server-sent events: yields each `data:` payload, parsed, until [DONE].
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = events.pop();
    for (const event of events) {
      for (const line of event.split(/\r?\n/)) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new Error(parsed.error.message || "generation failed");
        yield parsed;
      }
    }
  }
}

function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text;
  item.append(label, content);
  $("messages").append(item);
  return content;
}

function numberOrNull(id) {
  const raw = $(id).value.trim();
  return raw === "" ? null : Number(raw);
}

function chatRequest() {
  const system = $("system-prompt").value.trim();
  const body = {
    model: $("chat-model").value,
    messages: [...(system ? [{ role: "system", content: system }] : []), ...state.messages],
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_tokens: numberOrNull("max-tokens"),
    stream: true,
    stream_options: { include_usage: true },
  };
  const seed = numberOrNull("seed");
  if (seed !== null) body.seed = seed;
  const stop = $("stop").value.split(",").map((s) => s.trim()).filter(Boolean).slice(0, 4);
  if (stop.length) body.stop = stop;
  return body;
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text || state.controller) return;
  $("chat-input").value = "";
  state.messages.push({ role: "user", content: text });
  addMessage("user", text);
  const output = addMessage("assistant", "");
  state.controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  let reply = "";
  try {
    const response = await api("/chat/completions", {
      method: "POST",
      body: JSON.stringify(chatRequest()),
      signal: state.controller.signal,
    });
    for await (const chunk of sseEvents(response)) {
      for (const choice of chunk.choices || []) reply += (choice.delta && choice.delta.content) || "";
      output.textContent = reply;
      if (chunk.usage) {
        const seconds = (performance.now() - started) / 1000;
        setStatus(`${chunk.usage.completion_tokens} tokens in ${seconds.toFixed(1)} s`);
      }
    }
    state.messages.push({ role: "assistant", content: reply });
  } catch (error) {
    if (error.name === "AbortError") {
      state.messages.push({ role: "assistant", content: reply }); // keep what was shown
      setStatus("stopped");
    } else {
      state.messages.pop(); // the turn failed: do not resend it
      output.parentElement.classList.add("error");
      output.textContent = error.message;
      setStatus(error.message, true);
    }
  } finally {
    state.controller = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop-generation").disabled = !busy;
}

// Served images may need the API key too, which an <img src> cannot send: fetch them as blobs.
async function imageSource(item) {
  if (item.b64_json) {
    const type = item.b64_json.startsWith("/9j/") ? "jpeg" : item.b64_json.startsWith("UklGR") ? "webp" : "png";
    return `data:image/${type};base64,${item.b64_json}`;
  }
  const headers = apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {};
  const response = await fetch(new URL(item.url, location.origin), { headers });
  if (!response.ok) throw new Error(await errorMessage(response));
  return URL.createObjectURL(await response.blob());
}

async function generateImage(event) {
  event.preventDefault();
  const prompt = $("image-prompt").value.trim();
  if (!prompt) return;
  const body = { prompt, n: numberOrNull("image-n") || 1, response_format: $("image-format").value };
  if ($("image-model").value) body.model = $("image-model").value;
  if ($("image-size").value) body.size = $("image-size").value;
  const seed = numberOrNull("image-seed");
  if (seed !== null) body.seed = seed;
  $("generate").disabled = true;
  setStatus("generating...");
  const started = performance.now();
  try {
    const result = await (await api("/images/generations", { method: "POST", body: JSON.stringify(body) })).json();
    for (const item of result.data || []) {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.alt = prompt;
      img.src = await imageSource(item);
      const caption = document.createElement("figcaption");
      caption.textContent = item.revised_prompt || prompt;
      figure.append(img, caption);
      $("gallery").prepend(figure);
    }
    setStatus(`${(result.data || []).length} image(s) in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    $("generate").disabled = false;
  }
}

function showTab(tab) {
  for (const other of document.querySelectorAll('[role="tab"]')) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    $(other.dataset.panel).hidden = !selected;
  }
}

function init() {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem(KEY_STORAGE, apiKey());
    loadModels();
  });
  for (const [input, output] of [["temperature", "temperature-value"], ["top-p", "top-p-value"]]) {
    $(input).addEventListener("input", () => { $(output).textContent = $(input).value; });
  }
  for (const tab of document.querySelectorAll('[role="tab"]')) tab.addEventListener("click", () => showTab(tab));
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) sendChat(event);
  });
  $("stop-generation").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", () => {
    state.messages = [];
    $("messages").replaceChildren();
  });
  $("image-form").addEventListener("submit", generateImage);
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
