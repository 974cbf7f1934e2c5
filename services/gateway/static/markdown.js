// Answers as markdown, made safe: marked turns the text into HTML, DOMPurify keeps only
// inert markup (no scripts, no event handlers, no javascript: or other unsafe URLs, no
// inline styles or forms), then code blocks get a language label and a copy button and
// links open in a new tab with rel="noopener noreferrer". Both libraries are pinned and
// served by the gateway (vendor/, see scripts/vendor-js.sh); the page's Content-Security-
// Policy forbids inline script as a second line of defence.

import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";

const marked = new Marked({ gfm: true, breaks: true, async: false });

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "iframe", "dialog"],
  FORBID_ATTR: ["style", "id", "name", "tabindex", "autofocus"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    if (node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    } else {
      node.removeAttribute("target");
    }
  }
});

// Only a code element's "language-…" class survives: it names the block's language.
const LANGUAGE_CLASS = /^language-([\w+#.-]{1,32})$/;

DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
  if (data.attrName === "class") data.keepAttr = node.tagName === "CODE" && LANGUAGE_CLASS.test(data.attrValue);
});

async function copyText(button, text) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}

function decorateCodeBlock(pre) {
  const code = pre.querySelector("code");
  const match = code ? LANGUAGE_CLASS.exec(code.className) : null;
  const language = match ? match[1] : "";
  const frame = document.createElement("div");
  frame.className = "code-block";
  frame.dataset.testid = "code-block";
  if (language) frame.dataset.language = language;
  const head = document.createElement("div");
  head.className = "code-head";
  const label = document.createElement("span");
  label.className = "code-language";
  label.dataset.testid = "code-language";
  label.textContent = language || "text";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "code-copy";
  copy.dataset.testid = "code-copy";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", `Copy the ${language || "text"} code`);
  copy.addEventListener("click", () => copyText(copy, (code || pre).textContent));
  head.append(label, copy);
  pre.replaceWith(frame);
  frame.append(head, pre);
  pre.tabIndex = 0; // a scrollable region must be reachable by keyboard
}

/** A sanitized DOM fragment of ``text`` rendered as markdown. */
export function renderMarkdown(text) {
  const fragment = DOMPurify.sanitize(marked.parse(text || "").trim(), PURIFY);
  fragment.querySelectorAll("pre").forEach(decorateCodeBlock);
  for (const table of fragment.querySelectorAll("table")) {
    // Wide tables scroll inside the bubble instead of widening it.
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    wrap.tabIndex = 0;
    table.replaceWith(wrap);
    wrap.append(table);
  }
  return fragment;
}

/**
 * Renders into ``node`` at most once per animation frame: a streamed answer is redrawn
 * from its whole text (partial markdown included) in one DOM replacement, so nothing
 * blinks between two deltas.
 */
export function markdownView(node) {
  let text = "";
  let frame = 0;
  const draw = () => {
    frame = 0;
    node.replaceChildren(renderMarkdown(text));
  };
  return {
    get text() {
      return text;
    },
    set(value, { now = false } = {}) {
      text = value;
      if (now) {
        if (frame) cancelAnimationFrame(frame);
        draw();
      } else if (!frame) {
        frame = requestAnimationFrame(draw);
      }
    },
    append(piece) {
      this.set(text + piece);
    },
  };
}
