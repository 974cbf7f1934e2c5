// The open conversation's live stream (GET /v1/conversations/{id}/events, read by
// stream.js): opened after the last event drawn, each event handed to the transcript,
// and reopened with a growing delay when it ends or fails while the conversation still
// exists. It owns the "Reconnecting…" badge's comings and goings.

import { openEventStream } from "./stream.js";
import { applyEvent, nearBottom, scrollToBottom, updateRunning } from "./transcript.js";
import { setConnection, showBanner } from "./shell.js";
import { api } from "./signin.js";
import { state } from "./state.js";

const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 15000;

let source = null;
let streamGen = 0; // bumps on every open and close: a closed stream's callbacks do nothing
let reconnectMs = RECONNECT_MIN_MS;
let reconnectTimer = null;

export const streamIsOpen = () => source !== null;

export function openStream() {
  closeStream();
  if (!state.convId || !state.token) return;
  const gen = ++streamGen;
  const id = state.convId;
  // The token goes in the Authorization header, never in the URL (see stream.js).
  const url = `/v1/conversations/${encodeURIComponent(id)}/events?after=${encodeURIComponent(state.lastSeq)}`;
  const onEvent = (message) => {
    if (gen !== streamGen || id !== state.convId) return;
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
  source = openEventStream(url, {
    headers: { Authorization: `Bearer ${state.token}` },
    onOpen() {
      if (gen !== streamGen) return;
      reconnectMs = RECONNECT_MIN_MS;
      setConnection(null);
    },
    onEvent,
    onClose() {
      if (gen !== streamGen) return;
      // The stream ended or failed: find out why, then reopen from the last event we have
      // (?after= carries it, as Last-Event-ID would).
      source = null;
      setConnection("Reconnecting…");
      checkAfterStreamFailure(id).then((retry) => {
        if (retry && id === state.convId && gen === streamGen) scheduleReopen(openStream);
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

/** Run `action` after the current delay, which doubles each time up to 15 s. */
export function scheduleReopen(action) {
  clearTimeout(reconnectTimer);
  const delay = reconnectMs;
  reconnectMs = Math.min(reconnectMs * 2, RECONNECT_MAX_MS);
  reconnectTimer = setTimeout(action, delay);
}

export function closeStream(resetStatus = true) {
  clearTimeout(reconnectTimer);
  reconnectTimer = null;
  if (source) {
    source.close();
    source = null;
  }
  streamGen += 1;
  if (resetStatus) setConnection(null);
}
