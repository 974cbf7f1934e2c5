// a0 chat: the browser client of the a0 gateway. Plain ES modules, no build step; the
// only third-party code is the pinned markdown renderer and sanitizer (markdown.js).
// Everything it shows comes from the gateway's HTTP API:
//
//   POST /v1/auth/dev-login                      sign in (404: dev sign-in is off → paste a token)
//   GET  /v1/conversations[?q=]                  the sidebar (and its search by title)
//   POST /v1/conversations                       a new conversation (created on the first message)
//   GET  /v1/conversations/{id}                  history: messages and events
//   PATCH/DELETE /v1/conversations/{id}          rename, delete
//   POST /v1/conversations/{id}/messages         send
//   POST /v1/conversations/{id}/cancel           stop the running turn
//   GET  /v1/conversations/{id}/events           the live stream (server-sent events)
//   GET/PUT/DELETE /v1/settings/credentials[...] the LLM provider's key
//   POST /v1/settings/credentials/{p}/test       try a key, list the provider's models
//   GET  /v1/ops/access                          204 for an admin: link the ops page and each turn's trace
//
// The transcript is always drawn from events, by one renderer, whether they come from the
// history or from the live stream; events are deduplicated by their sequence number.

import { markdownView } from "./markdown.js";
import { showToolProgress, toolCallBlock, toolResultBlock } from "./tools.js";
import { el, show } from "./dom.js";
import { initConversationList } from "./conversations.js";
import { initSettings } from "./settings.js";
import { openEventStream } from "./stream.js";
import { EXPIRES_KEY, STORAGE, TOKEN_KEY, USER_KEY, storedSession } from "./session.js";
import { request } from "./api.js";
import { SETTINGS_CODES, friendlyError, rateLimitText } from "./errors.js";

const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 15000;

// ---------------------------------------------------------------------------------------------
// Small helpers

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// The API

async function api(method, path, body, { signOutOn401 = true } = {}) {
  try {
    return await request(method, path, body, state.token);
  } catch (failure) {
    if (failure.status === 401 && signOutOn401 && state.token) {
      signOut("Your session has expired. Please sign in again.");
    }
    throw failure;
  }
}

// ---------------------------------------------------------------------------------------------
// State

const state = {
  token: null,
  user: null,
  convId: null,
  convTitle: null,
  lastSeq: 0,
  loadGen: 0, // bumps on every conversation switch: late answers of an older one are dropped
  source: null,
  streamGen: 0,
  reconnectMs: RECONNECT_MIN_MS,
  reconnectTimer: null,
  turns: new Map(), // turn_id → Turn
  pending: [], // turns sent but not yet confirmed by the gateway (no turn id yet)
  sending: false,
  wasRunning: false,
  admin: false, // the ops page is open to this user: each turn links to its trace there
};

// ---------------------------------------------------------------------------------------------
// Sign-in

function loadSession() {
  const session = storedSession();
  if (!session) {
    clearSession();
    return false;
  }
  state.token = session.token;
  state.user = session.user;
  return true;
}

function saveSession(token, user, expiresIn) {
  state.token = token;
  state.user = user;
  STORAGE.setItem(TOKEN_KEY, token);
  STORAGE.setItem(USER_KEY, user);
  if (expiresIn) STORAGE.setItem(EXPIRES_KEY, String(Date.now() + Number(expiresIn) * 1000));
  else STORAGE.removeItem(EXPIRES_KEY);
}

function clearSession() {
  for (const key of [TOKEN_KEY, USER_KEY, EXPIRES_KEY]) STORAGE.removeItem(key);
  state.token = null;
  state.user = null;
}

function subjectOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    return claims.name || claims.preferred_username || claims.sub || "";
  } catch {
    return "";
  }
}

function showSignin(message = "") {
  show($("app"), false);
  show($("signin"));
  const error = $("signin-error");
  error.textContent = message;
  show(error, Boolean(message));
  const tokenMode = !$("token-form").hidden;
  (tokenMode ? $("signin-token") : $("signin-user")).focus();
}

function showTokenForm(message) {
  show($("signin-form"), false);
  show($("token-form"));
  if (message) $("token-hint").textContent = message;
  $("signin-token").focus();
}

async function onDevLogin(event) {
  event.preventDefault();
  const user = $("signin-user").value.trim();
  if (!user) {
    showSignin("Enter a user name.");
    return;
  }
  const button = event.submitter || $("signin-form").querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const answer = await api("POST", "/v1/auth/dev-login", { user }, { signOutOn401: false });
    saveSession(answer.token, user, answer.expires_in);
    await enterApp();
  } catch (error) {
    if (error.status === 404) {
      showSignin();
      showTokenForm();
    } else if (error.code === "invalid_request") {
      showSignin("Use letters, digits, “.”, “_”, “@” or “-” (at most 64), starting with a letter or digit.");
    } else {
      showSignin(error.message);
    }
  } finally {
    button.disabled = false;
  }
}

async function onTokenLogin(event) {
  event.preventDefault();
  const token = $("signin-token").value.trim().replace(/^Bearer\s+/i, "");
  if (!token) {
    showSignin("Paste a bearer token.");
    return;
  }
  state.token = token;
  try {
    await api("GET", "/v1/conversations", undefined, { signOutOn401: false });
  } catch (error) {
    state.token = null;
    showSignin(error.status === 401 ? "That token was not accepted (expired or invalid)." : error.message);
    return;
  }
  saveSession(token, subjectOf(token) || "token user", null);
  await enterApp();
}

function signOut(message = "") {
  closeStream();
  clearSession();
  resetTranscript();
  state.convId = null;
  sidebar.clear();
  if ($("settings").open) $("settings").close();
  history.replaceState(null, "", location.pathname + location.search);
  showSignin(message);
}

// ---------------------------------------------------------------------------------------------
// The app shell: sidebar, routing

async function enterApp() {
  show($("signin"), false);
  show($("signin-error"), false);
  show($("app"));
  $("user-name").textContent = state.user || "";
  $("user-name").title = state.user || "";
  state.admin = await opsAccess();
  show($("ops-link"), state.admin);
  await refreshConversations();
  await route();
  $("composer-input").focus();
}

// 204 for an admin, 404 for anyone else (the gateway's OPA decides).
async function opsAccess() {
  try {
    await api("GET", "/v1/ops/access", undefined, { signOutOn401: false });
    return true;
  } catch {
    return false;
  }
}

function conversationIdFromHash() {
  const match = /^#\/c\/([^/?#]+)/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

async function route() {
  if (!state.token) return;
  const id = conversationIdFromHash();
  if (id === state.convId && id !== null) return;
  if (id) await openConversation(id);
  else startNewChat();
}

// The sidebar's list (conversations.js); its hooks reach back into the chat.
const sidebar = initConversationList({
  api,
  currentId: () => state.convId,
  open: (id) => selectConversation(id),
  deleted: (id) => {
    if (id === state.convId) startNewChat({ focus: false });
  },
  renamed: (id, title) => {
    if (id === state.convId) {
      state.convTitle = title;
      setTitle(title);
    }
  },
  banner: (message) => showBanner(message),
});

const refreshConversations = () => sidebar.refresh();

function selectConversation(id) {
  closeSidebar();
  if (id === state.convId) return;
  location.hash = `#/c/${encodeURIComponent(id)}`; // → hashchange → route()
}

function startNewChat({ focus = true } = {}) {
  closeStream();
  state.loadGen += 1;
  state.convId = null;
  state.convTitle = null;
  resetTranscript();
  setTitle("New chat");
  sidebar.markCurrent();
  if (conversationIdFromHash()) history.replaceState(null, "", location.pathname + location.search);
  closeSidebar();
  if (focus) $("composer-input").focus();
}

function setTitle(title) {
  $("conversation-title").textContent = title;
  document.title = title && title !== "New chat" ? `${title} · a0 chat` : "a0 chat";
}

function openSidebar() {
  $("app").classList.add("sidebar-open");
  $("sidebar-toggle").setAttribute("aria-expanded", "true");
  $("sidebar-toggle").setAttribute("aria-label", "Hide conversations");
}

function closeSidebar() {
  $("app").classList.remove("sidebar-open");
  $("sidebar-toggle").setAttribute("aria-expanded", "false");
  $("sidebar-toggle").setAttribute("aria-label", "Show conversations");
}

function showBanner(message) {
  $("banner-text").textContent = message;
  show($("banner"), Boolean(message));
}

function setConnection(text) {
  const badge = $("connection-status");
  badge.textContent = text || "";
  show(badge, Boolean(text));
}

// ---------------------------------------------------------------------------------------------
// A conversation: history, then the live stream

async function openConversation(id) {
  closeStream();
  const gen = ++state.loadGen;
  state.convId = id;
  resetTranscript();
  showBanner("");
  sidebar.markCurrent();
  const known = sidebar.find(id);
  setTitle(known ? known.title || "Untitled" : "Loading…");
  $("transcript").setAttribute("aria-busy", "true");
  let conversation;
  try {
    conversation = await api("GET", `/v1/conversations/${encodeURIComponent(id)}`);
  } catch (error) {
    if (gen !== state.loadGen) return;
    $("transcript").setAttribute("aria-busy", "false");
    if (error.status === 401) return;
    if (error.status === 404 || error.status === 403) {
      startNewChat();
      showBanner("That conversation does not exist or is not yours.");
    } else {
      setTitle(known ? known.title || "Untitled" : "Conversation");
      showBanner(error.message);
      scheduleReopen(() => openConversation(id));
    }
    return;
  }
  if (gen !== state.loadGen) return;
  $("transcript").setAttribute("aria-busy", "false");
  state.convTitle = conversation.title || "Untitled";
  setTitle(state.convTitle);
  renderHistory(conversation);
  state.lastSeq = Math.max(state.lastSeq, Number(conversation.last_seq) || 0);
  updateRunning();
  scrollToBottom(true);
  openStream();
}

function renderHistory(conversation) {
  const events = Array.isArray(conversation.events) ? conversation.events : [];
  if (events.length) {
    [...events].sort((a, b) => Number(a.seq) - Number(b.seq)).forEach((event) => applyEvent(event));
  } else if (Array.isArray(conversation.messages) && conversation.messages.length) {
    renderMessages(conversation.messages);
  }
}

// Fallback when a history carries no events: draw the stored messages.
function renderMessages(messages) {
  for (const message of messages) {
    const turn = turnFor(message.turn_id || `m-${Math.random()}`);
    if (message.role === "user") {
      turn.el.prepend(userBubble(message.content || ""));
    } else if (message.role === "assistant") {
      for (const call of message.tool_calls || []) {
        const fn = call.function || call;
        turn.el.append(toolCallBlock(call.id || call.call_id, fn.name, fn.arguments));
      }
      if (message.content) {
        answerBubble(turn);
        setAnswerText(turn, message.content);
        finishAnswer(turn, "complete");
      }
    } else if (message.role === "tool") {
      turn.el.append(toolResultBlock({ call_id: message.tool_call_id, name: message.name, output: message.content }));
    }
    turn.ended = true;
    turn.el.dataset.state = "completed";
  }
}

function openStream() {
  closeStream();
  if (!state.convId || !state.token) return;
  const gen = ++state.streamGen;
  const id = state.convId;
  // The token goes in the Authorization header, never in the URL (see stream.js).
  const url = `/v1/conversations/${encodeURIComponent(id)}/events?after=${encodeURIComponent(state.lastSeq)}`;
  const onEvent = (message) => {
    if (gen !== state.streamGen || id !== state.convId) return;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    if (!event || (event.conversation_id && event.conversation_id !== id)) return;
    if (event.type === undefined) event.type = message.type;
    if (event.seq === undefined && message.lastEventId) event.seq = Number(message.lastEventId);
    const stick = nearBottom();
    applyEvent(event);
    updateRunning();
    scrollToBottom(stick);
  };
  state.source = openEventStream(url, {
    headers: { Authorization: `Bearer ${state.token}` },
    onOpen() {
      if (gen !== state.streamGen) return;
      state.reconnectMs = RECONNECT_MIN_MS;
      setConnection(null);
    },
    onEvent,
    onClose() {
      if (gen !== state.streamGen) return;
      // The stream ended or failed: find out why, then reopen from the last event we have
      // (?after= carries it, as Last-Event-ID would).
      state.source = null;
      setConnection("Reconnecting…");
      checkAfterStreamFailure(id).then((retry) => {
        if (retry && id === state.convId && gen === state.streamGen) scheduleReopen(openStream);
      });
    },
  });
}

async function checkAfterStreamFailure(id) {
  try {
    await api("GET", `/v1/conversations/${encodeURIComponent(id)}`);
    return true;
  } catch (error) {
    if (error.status === 401) return false; // signed out already
    if (error.status === 404 || error.status === 403) {
      setConnection(null);
      showBanner("This conversation is no longer available.");
      return false;
    }
    return true; // network or server trouble: keep trying
  }
}

function scheduleReopen(action) {
  clearTimeout(state.reconnectTimer);
  const delay = state.reconnectMs;
  state.reconnectMs = Math.min(state.reconnectMs * 2, RECONNECT_MAX_MS);
  state.reconnectTimer = setTimeout(action, delay);
}

function closeStream(resetStatus = true) {
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  if (state.source) {
    state.source.close();
    state.source = null;
  }
  state.streamGen += 1;
  if (resetStatus) setConnection(null);
}

// ---------------------------------------------------------------------------------------------
// The renderer: one function for history and live events

function resetTranscript() {
  state.turns = new Map();
  state.pending = [];
  state.lastSeq = 0;
  $("transcript").replaceChildren();
  show($("welcome"), true);
  updateRunning();
}

function newTurnElement(turnId) {
  show($("welcome"), false);
  const node = el("li", {
    class: "turn",
    "data-testid": "turn",
    "data-turn-id": turnId || undefined,
    "data-state": "running",
  });
  $("transcript").append(node);
  return node;
}

function turnFor(turnId) {
  let turn = state.turns.get(turnId);
  if (!turn) {
    turn = { id: turnId, el: newTurnElement(turnId), answer: null, ended: false, userMessageId: null };
    state.turns.set(turnId, turn);
  }
  return turn;
}

function userBubble(content, messageId) {
  return el("div", {
    class: "msg user",
    "data-testid": "user-message",
    "data-message-id": messageId || undefined,
    "data-state": "sent",
    text: content,
  });
}

// An answer is markdown, drawn sanitized (markdown.js); while it streams it is redrawn
// at most once per frame from its whole text.
function answerBubble(turn) {
  if (!turn.answer) {
    const node = el("div", {
      class: "msg assistant markdown",
      "data-testid": "assistant-message",
      "data-state": "streaming",
    });
    turn.el.append(node);
    turn.answer = node;
    turn.view = markdownView(node);
  }
  return turn.answer;
}

function appendAnswerText(turn, text) {
  answerBubble(turn);
  turn.view.append(text);
}

function setAnswerText(turn, text) {
  answerBubble(turn);
  turn.view.set(text, { now: true });
}

function finishAnswer(turn, finalState) {
  if (turn.answer) {
    turn.view.set(turn.view.text, { now: true }); // draw what a pending frame would have
    turn.answer.dataset.state = finalState;
    turn.answer = null;
    turn.view = null;
  }
}

const ANNOUNCE = { completed: "The answer is complete.", cancelled: "The answer was cancelled.", error: "" };

function endTurn(turn, finalState) {
  turn.ended = true;
  turn.el.dataset.state = finalState;
  if (state.admin && turn.id && state.convId && !turn.el.querySelector("[data-testid=trace-link]")) {
    const where = `${encodeURIComponent(state.convId)}/${encodeURIComponent(turn.id)}`;
    turn.el.append(
      el("a", { class: "trace-link", href: `/ops#/trace/${where}`, "data-testid": "trace-link", text: "Trace" }),
    );
  }
  // Screen readers hear one short line per answer, not every streamed word.
  $("sr-status").textContent = ANNOUNCE[finalState] || "";
}

function errorBlock(code, message) {
  const text = friendlyError(code, message);
  const node = el("div", { class: "turn-error", "data-testid": "turn-error", "data-code": code || undefined, role: "alert" });
  node.append(el("span", { text }));
  if (SETTINGS_CODES.has(code)) {
    node.append(
      el("button", {
        type: "button",
        class: "turn-error-action",
        "data-testid": "turn-error-settings",
        text: "Open Settings",
        onclick: openSettings,
      }),
    );
  }
  return node;
}

function cancelledMarker(reason) {
  const label = reason && !/cancel|^user$/i.test(reason) ? `Cancelled (${reason})` : "Cancelled";
  return el("div", { class: "cancelled-marker", "data-testid": "cancelled-marker", text: `■ ${label}` });
}

// Adopt a message we drew optimistically (before the gateway confirmed it) for this turn.
function adoptPending(turnId, messageId, content) {
  const index = state.pending.findIndex(
    (p) => (p.turnId && p.turnId === turnId) || (!p.turnId && p.content === content),
  );
  if (index < 0) return null;
  const [pending] = state.pending.splice(index, 1);
  pending.turn.id = turnId;
  pending.turn.el.dataset.turnId = turnId;
  if (messageId) pending.bubble.dataset.messageId = messageId;
  pending.bubble.dataset.state = "sent";
  state.turns.set(turnId, pending.turn);
  return pending.turn;
}

function applyEvent(event) {
  const seq = event.seq === null || event.seq === undefined ? NaN : Number(event.seq);
  if (Number.isFinite(seq)) {
    if (seq <= state.lastSeq) return; // seen already (replay after a reconnect)
    state.lastSeq = seq;
  }
  const payload = event.payload || {};
  const turnId = event.turn_id;
  if (!turnId) {
    if (event.type === "error") showBanner(friendlyError(payload.code, payload.message));
    return;
  }
  let turn = state.turns.get(turnId);

  switch (event.type) {
    case "message.accepted": {
      if (turn && turn.userMessageId) return;
      turn = turn || adoptPending(turnId, payload.message_id, payload.content) || turnFor(turnId);
      if (!turn.el.querySelector("[data-testid=user-message]")) {
        turn.el.prepend(userBubble(payload.content || "", payload.message_id));
      }
      turn.userMessageId = payload.message_id || true;
      return;
    }
    case "message.delta": {
      turn = turn || turnFor(turnId);
      if (turn.ended || typeof payload.text !== "string") return;
      appendAnswerText(turn, payload.text);
      return;
    }
    case "tool.call": {
      turn = turn || turnFor(turnId);
      if (turn.ended) return;
      finishAnswer(turn, "complete");
      turn.el.append(toolCallBlock(payload.call_id, payload.name, payload.arguments));
      return;
    }
    case "tool.progress": {
      turn = turn || turnFor(turnId);
      if (!turn.ended) showToolProgress(turn.el, payload);
      return;
    }
    case "tool.result": {
      turn = turn || turnFor(turnId);
      if (turn.ended) return;
      turn.el.append(toolResultBlock(payload));
      return;
    }
    case "message.completed": {
      turn = turn || turnFor(turnId);
      if (turn.ended) return;
      const content = typeof payload.content === "string" ? payload.content : "";
      if (payload.finish_reason === "tool_calls") {
        // The model asked for tools; the turn goes on with their results.
        if (content && turn.answer) setAnswerText(turn, content);
        finishAnswer(turn, "complete");
        return;
      }
      if (content) setAnswerText(turn, content);
      else if (!turn.answer && !turn.el.querySelector("[data-testid=assistant-message]")) {
        setAnswerText(turn, "(The model gave an empty answer.)");
      }
      if (turn.answer) {
        turn.answer.dataset.finishReason = payload.finish_reason || "";
      }
      finishAnswer(turn, "complete");
      endTurn(turn, "completed");
      return;
    }
    case "error": {
      turn = turn || turnFor(turnId);
      if (turn.ended) return;
      finishAnswer(turn, "interrupted");
      turn.el.append(errorBlock(payload.code, payload.message));
      endTurn(turn, "error");
      return;
    }
    case "cancelled": {
      turn = turn || turnFor(turnId);
      if (turn.ended) return;
      finishAnswer(turn, "cancelled");
      turn.el.append(cancelledMarker(payload.reason));
      endTurn(turn, "cancelled");
      return;
    }
    default:
      return; // a type this client does not know: nothing to draw
  }
}

function runningTurn() {
  let running = null;
  for (const turn of state.turns.values()) {
    if (!turn.ended && turn.id) running = turn;
  }
  return running;
}

function updateRunning() {
  const running = runningTurn();
  const cancel = $("cancel-button");
  show(cancel, Boolean(running));
  if (!running) cancel.disabled = false;
  $("transcript").dataset.running = running ? "true" : "false";
  const wasRunning = state.wasRunning;
  state.wasRunning = Boolean(running);
  if (wasRunning && !running) refreshConversations();
}

function nearBottom() {
  const scroller = $("transcript-scroll");
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
}

function scrollToBottom(stick) {
  if (!stick) return;
  const scroller = $("transcript-scroll");
  scroller.scrollTop = scroller.scrollHeight;
}

// ---------------------------------------------------------------------------------------------
// Sending and cancelling

async function ensureConversation(text) {
  if (state.convId) return state.convId;
  // Untitled: the gateway names it after this first message.
  const created = await api("POST", "/v1/conversations", {});
  state.loadGen += 1;
  state.convId = created.id;
  state.convTitle = created.title || "New chat";
  state.lastSeq = 0;
  setTitle(state.convTitle);
  // The URL names the conversation, so a reload opens it again; route() sees it is current.
  history.replaceState(null, "", `#/c/${encodeURIComponent(created.id)}`);
  sidebar.upsert(created);
  openStream();
  return created.id;
}

async function send(text) {
  if (!text.trim() || state.sending) return;
  state.sending = true;
  showBanner("");
  const input = $("composer-input");
  input.value = "";
  autoGrow();

  // Show the message at once; the gateway's message.accepted event confirms it.
  const turn = { id: null, el: newTurnElement(null), answer: null, ended: false, userMessageId: null };
  const bubble = userBubble(text);
  bubble.dataset.state = "sending";
  turn.el.append(bubble);
  const pending = { turn, bubble, content: text, turnId: null };
  state.pending.push(pending);
  scrollToBottom(true);

  try {
    const id = await ensureConversation(text);
    const answer = await api("POST", `/v1/conversations/${encodeURIComponent(id)}/messages`, { content: text });
    if (id !== state.convId) return;
    if (state.pending.includes(pending)) {
      const other = state.turns.get(answer.turn_id);
      if (other && other !== turn) {
        // The live stream drew this turn already: keep that one.
        state.pending.splice(state.pending.indexOf(pending), 1);
        turn.el.remove();
      } else {
        adoptPending(answer.turn_id, answer.message_id, text);
      }
    }
    updateRunning();
    if (!state.convTitle || state.convTitle === "New chat") {
      // The gateway titled the conversation after this message: show that title.
      await refreshConversations();
      const named = sidebar.find(id);
      if (named && named.title && id === state.convId) {
        state.convTitle = named.title;
        setTitle(named.title);
      }
    }
  } catch (error) {
    const index = state.pending.indexOf(pending);
    if (index >= 0) state.pending.splice(index, 1);
    bubble.dataset.state = "failed";
    turn.ended = true;
    turn.el.dataset.state = "failed";
    let message = friendlyError(error.code, error.message);
    if (error.code === "overloaded") {
      message = `The service is busy right now. Try again${error.retryAfter ? ` in ${error.retryAfter} s` : " in a moment"}.`;
    } else if (error.status === 429) {
      message = rateLimitText(error.retryAfter, error.message);
    }
    turn.el.append(
      el("div", { class: "turn-error", "data-testid": "send-error", "data-code": error.code, role: "alert", text: message }),
    );
    if (!input.value) {
      input.value = text; // nothing is lost: the text is back in the composer
      autoGrow();
    }
    scrollToBottom(true);
  } finally {
    state.sending = false;
  }
}

async function cancelRunning() {
  const turn = runningTurn();
  if (!turn || !state.convId) return;
  const button = $("cancel-button");
  button.disabled = true;
  try {
    await api("POST", `/v1/conversations/${encodeURIComponent(state.convId)}/cancel`, { turn_id: turn.id });
    // The "cancelled" event ends the turn on screen.
  } catch (error) {
    button.disabled = false;
    if (error.status !== 409) showBanner(error.message);
  }
}

function autoGrow() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight + 2, window.innerHeight * 0.4)}px`;
}

// ---------------------------------------------------------------------------------------------
// Settings: the LLM provider's credential (settings.js)

const settingsDialog = initSettings({ api });
const openSettings = () => settingsDialog.open();

// ---------------------------------------------------------------------------------------------
// Wiring

function wire() {
  $("signin-form").addEventListener("submit", onDevLogin);
  $("token-form").addEventListener("submit", onTokenLogin);
  $("use-token").addEventListener("click", () => showTokenForm());
  $("sign-out").addEventListener("click", () => signOut());
  $("new-chat").addEventListener("click", () => {
    if (conversationIdFromHash()) location.hash = "";
    startNewChat();
  });
  $("sidebar-toggle").addEventListener("click", () =>
    $("app").classList.contains("sidebar-open") ? closeSidebar() : openSidebar(),
  );
  $("scrim").addEventListener("click", closeSidebar);
  $("banner-close").addEventListener("click", () => showBanner(""));

  const input = $("composer-input");
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send(input.value);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send(input.value);
    }
  });
  input.addEventListener("input", autoGrow);
  $("cancel-button").addEventListener("click", cancelRunning);

  $("open-settings").addEventListener("click", () => {
    closeSidebar();
    openSettings();
  });

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && $("app").classList.contains("sidebar-open")) closeSidebar();
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("online", () => {
    if (state.convId && !state.source) openStream();
  });
}

async function main() {
  wire();
  if (loadSession()) await enterApp();
  else showSignin();
}

main();
