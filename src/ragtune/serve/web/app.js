// ragtune's chat page: streams answers from /v1/chat/completions, shows their sources, and sends
// thumbs, comments, corrections and side-by-side preferences to /v1/feedback. No framework, no CDN.
// Model output is only ever set as text (textContent), never as HTML.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const KEY = "ragtune_key";
let history = [];  // the conversation so far, as OpenAI messages

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem(KEY);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(path, body) {
  const r = await fetch(path, body === undefined ? { headers: headers() }
                                                 : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (r.status === 401) { showLogin(); throw new Error("an API key is needed"); }
  const data = await r.json();
  if (!r.ok) throw new Error(data.error ? data.error.message : r.statusText);
  return data;
}

function showLogin() {
  $("#login").hidden = false;
  $("#key").focus();
}

$("#save-key").addEventListener("click", () => {
  const key = $("#key").value.trim();
  localStorage.setItem(KEY, key);
  document.cookie = `${KEY}=${encodeURIComponent(key)}; path=/; SameSite=Strict`;
  location.reload();
});

async function loadModels() {
  const models = await api("/v1/models");
  const select = $("#model");
  for (const m of models.data) select.add(new Option(m.id, m.id));
}

function newAnswer(container) {
  const node = $("#answer-template").content.firstElementChild.cloneNode(true);
  for (const b of node.querySelectorAll(".feedback button")) b.disabled = true;  // until the answer is complete
  container.appendChild(node);
  return node;
}

// Stream one answer into `node`; resolves to {id, text} once the answer is complete.
async function streamAnswer(node, messages, sampling) {
  node.classList.add("streaming");
  const text = $(".text", node);
  const body = { model: $("#model").value, messages, stream: true, stream_options: { include_usage: true }, ...sampling };
  const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (r.status === 401) { showLogin(); throw new Error("an API key is needed"); }
  if (!r.ok) { const e = await r.json(); throw new Error(e.error ? e.error.message : r.statusText); }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", id = null, answer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data:")) continue;
      const data = event.slice(5).trim();
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      id = chunk.id || id;
      if (chunk.usage) $(".meta", node).textContent = `${chunk.usage.completion_tokens} tokens`;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        answer += choice.delta.content;
        text.textContent = answer;
      }
      if (choice.finish_reason) showSources(node, chunk.sources || []);
    }
  }
  node.classList.remove("streaming");
  node.dataset.id = id;
  for (const b of node.querySelectorAll(".feedback button")) b.disabled = false;
  return { id, text: answer.trim() };
}

function showSources(node, sources) {
  const list = $(".sources", node);
  for (const s of sources) {
    const li = document.createElement("li");
    li.value = s.number;
    li.textContent = `${s.title || s.source}${s.heading ? " › " + s.heading : ""} (${s.source}, characters ${s.start}–${s.end})`;
    li.title = s.id;
    list.appendChild(li);
  }
}

// `key` makes a repeated click harmless: the server keeps the first feedback with a key
async function sendFeedback(node, body, key) {
  const status = $(".status", node);
  try {
    await api("/v1/feedback", { ...body, key });
    status.textContent = "thanks: feedback saved";
    status.classList.remove("error");
  } catch (e) {
    status.textContent = e.message;
    status.classList.add("error");
  }
}

function wireThumbs(node) {
  const id = () => node.dataset.id;
  $(".up", node).addEventListener("click", () => {
    $(".up", node).classList.add("on");
    $(".down", node).classList.remove("on");
    $(".detail", node).hidden = true;
    sendFeedback(node, { response_id: id(), thumb: "up" }, `${id()}:up`);
  });
  $(".down", node).addEventListener("click", () => {
    $(".down", node).classList.add("on");
    $(".up", node).classList.remove("on");
    $(".detail", node).hidden = false;  // the thumb is sent with the comment and correction
    $(".comment", node).focus();
  });
  $(".detail", node).addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = { response_id: id(), thumb: "down" };
    const comment = $(".comment", node).value.trim(), correction = $(".correction", node).value.trim();
    if (comment) body.comment = comment;
    if (correction) body.correction = correction;
    $(".detail", node).hidden = true;
    sendFeedback(node, body, `${id()}:down:${Date.now()}`);  // the form hides once sent: no repeated clicks
  });
}

async function ask(question) {
  const chat = $("#chat");
  const q = document.createElement("div");
  q.className = "question";
  q.textContent = question;
  chat.appendChild(q);
  const messages = [...history, { role: "user", content: question }];
  if (!$("#two").checked) {
    const node = newAnswer(chat);
    wireThumbs(node);
    const a = await streamAnswer(node, messages, {});
    history = [...messages, { role: "assistant", content: a.text }];
    return;
  }
  // two answers to the same prompt: the greedy one and a sampled one; the user picks the better
  const pair = document.createElement("div");
  pair.className = "pair";
  chat.appendChild(pair);
  const nodes = [newAnswer(pair), newAnswer(pair)];
  const answers = [];
  answers.push(await streamAnswer(nodes[0], messages, {}));
  answers.push(await streamAnswer(nodes[1], messages, { temperature: 0.9, seed: Math.floor(Math.random() * 1e9) }));
  nodes.forEach((node, i) => {
    $(".up", node).hidden = $(".down", node).hidden = true;
    const prefer = $(".prefer", node);
    prefer.hidden = false;
    prefer.addEventListener("click", () => {
      nodes.forEach((n) => { n.classList.remove("chosen"); $(".prefer", n).disabled = true; });
      node.classList.add("chosen");
      sendFeedback(node, { ranking: [answers[i].id, answers[1 - i].id] }, `${answers[i].id}>${answers[1 - i].id}`);
      history = [...messages, { role: "assistant", content: answers[i].text }];
    });
  });
}

$("#ask").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const question = $("#question").value.trim();
  if (!question) return;
  $("#question").value = "";
  $("#send").disabled = true;
  try {
    await ask(question);
  } catch (e) {
    const err = document.createElement("div");
    err.className = "error";
    err.textContent = e.message;
    $("#chat").appendChild(err);
  } finally {
    $("#send").disabled = false;
  }
});

$("#question").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    if (!$("#send").disabled) $("#ask").requestSubmit();
  }
});

$("#new-chat").addEventListener("click", () => { history = []; $("#chat").replaceChildren(); });

loadModels().catch((e) => { if (!$("#login").hidden) return; $("#chat").textContent = e.message; });
