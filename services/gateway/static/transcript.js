// The transcript: one renderer of a conversation's events, whether they come from the
// history or from the live stream, deduplicated by their sequence number. It owns the
// turns on screen (the user's message, the streamed markdown answer, tool blocks from
// tools.js, an error or a cancellation), the Stop button's visibility and the scrolling.

import { markdownView } from "./markdown.js";
import { showToolProgress, toolCallBlock, toolResultBlock } from "./tools.js";
import { $, el, show } from "./dom.js";
import { SETTINGS_CODES, friendlyError } from "./errors.js";
import { showBanner } from "./shell.js";
import { state } from "./state.js";

// Set by wireTranscript: what runs when the last running turn ends, and Settings' opener.
const hooks = { settled: () => {}, openSettings: () => {} };
let wasRunning = false;

export function wireTranscript({ settled, openSettings }) {
  hooks.settled = settled;
  hooks.openSettings = openSettings;
}

export function resetTranscript() {
  state.turns = new Map();
  state.pending = [];
  state.lastSeq = 0;
  $("transcript").replaceChildren();
  show($("welcome"), true);
  updateRunning();
}

export function newTurnElement(turnId) {
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

export function userBubble(content, messageId) {
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
        onclick: () => hooks.openSettings(),
      }),
    );
  }
  return node;
}

function cancelledMarker(reason) {
  const label = reason && !/cancel|^user$/i.test(reason) ? `Cancelled (${reason})` : "Cancelled";
  return el("div", { class: "cancelled-marker", "data-testid": "cancelled-marker", text: `■ ${label}` });
}

/** Adopt a message drawn optimistically (before the gateway confirmed it) for this turn. */
export function adoptPending(turnId, messageId, content) {
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

/** Draw the history of a conversation (GET /v1/conversations/{id}). */
export function renderHistory(conversation) {
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

/** Draw one event (of the history or the live stream); one seen already is ignored. */
export function applyEvent(event) {
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

export function runningTurn() {
  let running = null;
  for (const turn of state.turns.values()) {
    if (!turn.ended && turn.id) running = turn;
  }
  return running;
}

/** Show the Stop button while a turn runs; when the last one ends, call `settled`. */
export function updateRunning() {
  const running = runningTurn();
  const cancel = $("cancel-button");
  show(cancel, Boolean(running));
  if (!running) cancel.disabled = false;
  $("transcript").dataset.running = running ? "true" : "false";
  const before = wasRunning;
  wasRunning = Boolean(running);
  if (before && !running) hooks.settled();
}

export function nearBottom() {
  const scroller = $("transcript-scroll");
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
}

export function scrollToBottom(stick) {
  if (!stick) return;
  const scroller = $("transcript-scroll");
  scroller.scrollTop = scroller.scrollHeight;
}
