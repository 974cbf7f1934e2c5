// The message box and its buttons: sending (Enter, or Send; Shift+Enter adds a line),
// the conversation created on a first message, the message drawn at once and confirmed
// later by the gateway's message.accepted event, a failed send put back in the box, and
// Stop, which cancels the running turn.

import { $, el } from "./dom.js";
import { friendlyError, rateLimitText } from "./errors.js";
import { setTitle, showBanner } from "./shell.js";
import { openStream } from "./live.js";
import { refreshConversations, sidebar } from "./router.js";
import { adoptPending, newTurnElement, runningTurn, scrollToBottom, updateRunning, userBubble } from "./transcript.js";
import { api } from "./signin.js";
import { state } from "./state.js";

let sending = false;

async function ensureConversation() {
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
  if (!text.trim() || sending) return;
  sending = true;
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
    const id = await ensureConversation();
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
    sending = false;
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

/** The message box (Enter sends), Send and Stop. */
export function wireComposer() {
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
}
