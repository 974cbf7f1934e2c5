// Which conversation is open. The URL names it (#/c/<id>), so a reload, a bookmark or the
// back button opens it again; route() follows the hash. Opening one draws its history
// (GET /v1/conversations/{id}), then resumes its live stream after the last event. It
// also holds the sidebar's list (conversations.js), whose hooks reach back here.

import { $ } from "./dom.js";
import { initConversationList } from "./conversations.js";
import { closeSidebar, setTitle, showBanner } from "./shell.js";
import { closeStream, openStream, scheduleReopen } from "./live.js";
import { renderHistory, resetTranscript, scrollToBottom, updateRunning } from "./transcript.js";
import { api } from "./signin.js";
import { state } from "./state.js";

export const sidebar = initConversationList({
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

export const refreshConversations = () => sidebar.refresh();

export function conversationIdFromHash() {
  const match = /^#\/c\/([^/?#]+)/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

/** Open what the hash names (a new chat when it names nothing); on every hashchange. */
export async function route() {
  if (!state.token) return;
  const id = conversationIdFromHash();
  if (id === state.convId && id !== null) return;
  if (id) await openConversation(id);
  else startNewChat();
}

function selectConversation(id) {
  closeSidebar();
  if (id === state.convId) return;
  location.hash = `#/c/${encodeURIComponent(id)}`; // → hashchange → route()
}

export function startNewChat({ focus = true } = {}) {
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
