// Tool blocks of the transcript: a call (the function and its arguments) and its result.
// Each is a <details> element, so it opens and closes by mouse or keyboard; arguments
// and JSON results are pretty-printed; a long output shows its first lines and a button
// that unfolds the rest. Everything is put in as text, never as HTML.

import { el } from "./dom.js";

const FOLD_LINES = 12;
const FOLD_CHARS = 1500;

function parseJson(value) {
  if (typeof value !== "string") return { ok: true, value };
  try {
    return { ok: true, value: JSON.parse(value) };
  } catch {
    return { ok: false, value };
  }
}

/** ``calculator(6*7)``: one line that names the call (a lone argument shown bare). */
function signature(name, args) {
  const parsed = parseJson(args);
  let shown;
  if (!parsed.ok) shown = String(args ?? "");
  else if (parsed.value && typeof parsed.value === "object" && !Array.isArray(parsed.value)) {
    const values = Object.values(parsed.value);
    if (values.length === 0) shown = "";
    else if (values.length === 1 && typeof values[0] !== "object") shown = String(values[0]);
    else shown = JSON.stringify(parsed.value);
  } else shown = JSON.stringify(parsed.value ?? "");
  const line = shown.split("\n")[0];
  const cut = line.length > 80 ? `${line.slice(0, 79)}…` : `${line}${line !== shown ? "…" : ""}`;
  return `${name || "tool"}(${cut})`;
}

/** Pretty text of a value: JSON indented, other text as it is. */
export function formatValue(value) {
  const parsed = parseJson(value);
  if (parsed.ok && parsed.value !== null && typeof parsed.value === "object") {
    return JSON.stringify(parsed.value, null, 2);
  }
  return typeof parsed.value === "string" ? parsed.value : JSON.stringify(parsed.value ?? "");
}

/** A <pre> with ``text``; past FOLD_LINES lines or FOLD_CHARS characters, folded. */
function outputBody(text, testid) {
  const pre = el("pre", { class: "tool-output", "data-testid": testid, tabindex: "0" });
  const lines = text.split("\n");
  const long = lines.length > FOLD_LINES || text.length > FOLD_CHARS;
  if (!long) {
    pre.textContent = text;
    return pre;
  }
  let preview = lines.slice(0, FOLD_LINES).join("\n");
  if (preview.length > FOLD_CHARS) preview = preview.slice(0, FOLD_CHARS);
  pre.textContent = `${preview}\n…`;
  pre.dataset.folded = "true";
  const more = el("button", {
    type: "button",
    class: "tool-unfold",
    "data-testid": "tool-output-unfold",
    "aria-expanded": "false",
    text: `Show all ${lines.length} lines (${text.length.toLocaleString()} characters)`,
  });
  more.addEventListener("click", () => {
    const folded = pre.dataset.folded === "true";
    pre.textContent = folded ? text : `${preview}\n…`;
    pre.dataset.folded = folded ? "false" : "true";
    more.setAttribute("aria-expanded", folded ? "true" : "false");
    more.textContent = folded ? "Show less" : `Show all ${lines.length} lines (${text.length.toLocaleString()} characters)`;
  });
  return el("div", { class: "tool-output-wrap" }, pre, more);
}

export function toolCallBlock(callId, name, args) {
  const formatted = formatValue(args ?? "");
  return el(
    "details",
    {
      class: "tool call",
      "data-testid": "tool-call",
      "data-call-id": callId || undefined,
      "data-tool-name": name || undefined,
    },
    el(
      "summary",
      { class: "tool-summary", "data-testid": "tool-toggle" },
      el("span", { class: "tool-label", text: "Tool call" }),
      el("code", { class: "tool-signature", text: signature(name, args) }),
    ),
    el("div", { class: "tool-body" }, el("span", { class: "tool-label", text: "Arguments" }), outputBody(formatted || "(none)", "tool-arguments")),
  );
}

// Images of a result (an MCP server's), shown inline: raster types only, base64 checked,
// as a data: URL the page's Content-Security-Policy allows for images and nothing else.
const IMAGE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const MAX_IMAGE_CHARS = 400000;

function resultImages(images) {
  if (!Array.isArray(images)) return [];
  return images
    .filter(
      (image) =>
        image &&
        IMAGE_TYPES.has(image.mime_type) &&
        typeof image.data === "string" &&
        image.data.length <= MAX_IMAGE_CHARS &&
        BASE64.test(image.data),
    )
    .map((image, index) =>
      el("img", {
        class: "tool-image",
        "data-testid": "tool-image",
        src: `data:${image.mime_type};base64,${image.data}`,
        alt: `image ${index + 1} of the tool's result (${image.mime_type})`,
      }),
    );
}

/** Progress reported by a running tool, shown in its call's block until the result. */
function toolProgressLine(payload) {
  const progress = Number(payload.progress);
  const total = Number(payload.total);
  const share = Number.isFinite(total) && total > 0 ? ` ${Math.round((100 * progress) / total)}%` : "";
  const counts = Number.isFinite(total) && total > 0 ? `${progress}/${total}` : `${progress}`;
  const message = typeof payload.message === "string" ? ` · ${payload.message.slice(0, 200)}` : "";
  return el("p", {
    class: "tool-progress muted",
    "data-testid": "tool-progress",
    role: "status",
    text: `Progress${share} (${counts})${message}`,
  });
}

/** Show ``payload`` (a tool.progress event) in the block of its call, replacing the last. */
export function showToolProgress(container, payload) {
  const calls = [...container.querySelectorAll('[data-testid="tool-call"]')];
  const call = calls.find((node) => node.dataset.callId === payload.call_id) || calls.at(-1);
  if (!call) return;
  call.open = true;
  const line = toolProgressLine(payload);
  const previous = call.querySelector('[data-testid="tool-progress"]');
  if (previous) previous.replaceWith(line);
  else call.append(line);
}

export function toolResultBlock(payload) {
  const failed = Boolean(payload.error);
  let text;
  if (failed) {
    const error = typeof payload.error === "object" ? payload.error : { message: String(payload.error) };
    text = `⚠ ${error.message || "The tool failed."}${error.code ? ` (${error.code})` : ""}`;
  } else {
    text = formatValue(payload.output ?? "");
  }
  const lines = text.split("\n").length;
  return el(
    "details",
    {
      class: "tool result",
      "data-testid": "tool-result",
      "data-call-id": payload.call_id || undefined,
      "data-tool-name": payload.name || undefined,
      "data-status": failed ? "error" : "ok",
      open: true,
    },
    el(
      "summary",
      { class: "tool-summary", "data-testid": "tool-toggle" },
      el("span", { class: "tool-label", text: `${failed ? "Tool error" : "Result"} · ${payload.name || "tool"}` }),
      el("span", { class: "tool-size muted", text: lines > 1 ? `${lines} lines` : "" }),
    ),
    el("div", { class: "tool-body" }, outputBody(text, "tool-output"), ...resultImages(payload.images)),
  );
}
