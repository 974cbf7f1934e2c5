// A server-sent events stream read with fetch, so the token travels in the Authorization
// header: EventSource cannot set headers, and a token in the URL ends up in access logs,
// traces and the browser's history. It parses the text/event-stream format of the HTML
// standard (event, data, id; comments ignored) and does not reconnect by itself: the
// caller decides, with the last id it saw.

const DECODER_OPTIONS = { stream: true };

// Splits a chunked body into SSE events; `emit` receives {type, data, lastEventId}.
export class EventStreamParser {
  constructor(emit) {
    this.emit = emit;
    this.buffer = "";
    this.lastEventId = "";
    this.reset();
  }

  reset() {
    this.type = "";
    this.data = [];
  }

  push(text) {
    this.buffer += text;
    // Lines end with CRLF, LF or CR; a CR at the very end may be half of a CRLF.
    const pattern = /\r\n|\n|\r(?!$)/g;
    let start = 0;
    let match;
    while ((match = pattern.exec(this.buffer)) !== null) {
      this.line(this.buffer.slice(start, match.index));
      start = match.index + match[0].length;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(text) {
    if (text === "") {
      if (this.data.length) {
        this.emit({ type: this.type || "message", data: this.data.join("\n"), lastEventId: this.lastEventId });
      }
      this.reset();
      return;
    }
    if (text.startsWith(":")) return; // a comment (keep-alive)
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
  }
}

// Opens the stream; returns {close()}. `onOpen()` once the gateway answered 200,
// `onEvent(message)` per event, `onClose({status})` once when it ends for any reason but
// close() (status 0: the connection failed or ended).
export function openEventStream(url, { headers = {}, onOpen, onEvent, onClose }) {
  const controller = new AbortController();
  let closed = false;
  const finish = (status) => {
    if (closed) return;
    closed = true;
    onClose({ status });
  };
  (async () => {
    let response;
    try {
      response = await fetch(url, {
        headers: { Accept: "text/event-stream", ...headers },
        cache: "no-store",
        signal: controller.signal,
      });
    } catch {
      finish(0);
      return;
    }
    if (!response.ok || !response.body) {
      finish(response.status);
      return;
    }
    onOpen();
    const parser = new EventStreamParser((message) => {
      if (!closed) onEvent(message);
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(decoder.decode(value, DECODER_OPTIONS));
      }
    } catch {
      // aborted by close(), or the connection broke: either way the stream is over
    }
    finish(0);
  })();
  return {
    close() {
      closed = true;
      controller.abort();
    },
  };
}
