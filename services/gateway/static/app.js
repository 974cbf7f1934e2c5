// a0 chat: the browser client of the a0 gateway. Plain ES modules, no build step; the
// only third-party code is the pinned markdown renderer and sanitizer (markdown.js).
// This is its entry point: it wires the modules together and starts the page.
//
//   signin.js     sign-in and out, the session's token, `api` (signs out on 401)
//   router.js     which conversation is open (#/c/<id>), its history, the sidebar's list
//   live.js       the open conversation's live stream and its reconnection
//   transcript.js the one renderer of events, history or live, and the turns on screen
//   composer.js   the message box: send (creating the conversation), Stop
//   shell.js      title, sidebar drawer, banner, connection badge
//   settings.js   the LLM provider's credential; conversations.js the list itself
//
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

import { $, show } from "./dom.js";
import { initSettings } from "./settings.js";
import { closeSidebar, wireShell } from "./shell.js";
import { api, loadSession, showSignin, wireSignin } from "./signin.js";
import { closeStream, openStream, streamIsOpen } from "./live.js";
import { conversationIdFromHash, refreshConversations, route, sidebar, startNewChat } from "./router.js";
import { resetTranscript, wireTranscript } from "./transcript.js";
import { wireComposer } from "./composer.js";
import { state } from "./state.js";

const settingsDialog = initSettings({ api });
const openSettings = () => settingsDialog.open();

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

// What a signed-out user must no longer see.
function leaveApp() {
  closeStream();
  resetTranscript();
  state.convId = null;
  sidebar.clear();
  if ($("settings").open) $("settings").close();
}

function wire() {
  wireSignin({ enter: enterApp, leave: leaveApp });
  wireTranscript({ settled: refreshConversations, openSettings });
  $("new-chat").addEventListener("click", () => {
    if (conversationIdFromHash()) location.hash = "";
    startNewChat();
  });
  wireComposer();
  $("open-settings").addEventListener("click", () => {
    closeSidebar();
    openSettings();
  });
  wireShell();
  window.addEventListener("hashchange", route);
  window.addEventListener("online", () => {
    if (state.convId && !streamIsOpen()) openStream();
  });
}

async function main() {
  wire();
  if (loadSession()) await enterApp();
  else showSignin();
}

main();
