// The sidebar's conversation list: newest first, searched by title on the gateway
// (GET /v1/conversations?q=), renamed in place (PATCH) and deleted after a confirmation
// (DELETE: the history is gone from the server).
//
// Keyboard: the list is one tab stop (roving tabindex). ↑/↓, Home/End move between
// conversations, Enter opens one, F2 renames it, Delete asks to delete it. In the rename
// box Enter saves and Escape gives up.

import { el, show } from "./dom.js";

const SEARCH_DELAY_MS = 200;

function newestFirst(a, b) {
  return String(b.updated_at || b.created_at || "").localeCompare(String(a.updated_at || a.created_at || ""));
}

function formatWhen(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { month: "short", day: "numeric" });
}

/**
 * hooks: api(method, path, body), currentId(), open(id), deleted(id), renamed(id, title),
 * banner(message).
 */
export function initConversationList(hooks) {
  const list = document.getElementById("conversation-list");
  const empty = document.getElementById("conversation-empty");
  const search = document.getElementById("conversation-search");
  const confirm = document.getElementById("confirm-delete");
  let conversations = [];
  let query = "";
  let activeId = null; // the row that holds the list's tab stop
  let searchTimer = null;
  let pendingDelete = null;

  const titleOf = (conversation) => conversation.title || "New chat";
  const rows = () => [...list.querySelectorAll("[data-testid=conversation-row]")];
  const rowOf = (id) => rows().find((row) => row.dataset.conversationId === id) || null;

  async function refresh() {
    const path = query ? `/v1/conversations?q=${encodeURIComponent(query)}` : "/v1/conversations";
    let answer;
    try {
      answer = await hooks.api("GET", path);
    } catch (error) {
      if (error.status !== 401) hooks.banner(error.message);
      return;
    }
    conversations = (answer && answer.conversations) || [];
    render();
  }

  function setActive(id, focus = false) {
    activeId = id;
    for (const row of rows()) {
      const active = row.dataset.conversationId === id;
      for (const button of row.querySelectorAll("button")) button.tabIndex = active ? 0 : -1;
    }
    if (focus) {
      const row = rowOf(id);
      if (row) row.querySelector("[data-testid=conversation-item]").focus();
    }
  }

  function row(conversation) {
    const title = titleOf(conversation);
    const current = conversation.id === hooks.currentId();
    return el(
      "li",
      { class: "conversation-row", "data-testid": "conversation-row", "data-conversation-id": conversation.id },
      el(
        "button",
        {
          type: "button",
          class: "conversation-item",
          "data-testid": "conversation-item",
          "data-conversation-id": conversation.id,
          "aria-current": current ? "true" : "false",
          "aria-keyshortcuts": "F2 Delete",
          title,
          onclick: () => {
            setActive(conversation.id);
            hooks.open(conversation.id);
          },
          onfocus: () => setActive(conversation.id),
        },
        el("span", { class: "conversation-item-title", "data-testid": "conversation-title-text", text: title }),
        el("span", { class: "when", text: formatWhen(conversation.updated_at || conversation.created_at) }),
      ),
      el("button", {
        type: "button",
        class: "icon-button row-action",
        "data-testid": "conversation-rename",
        "aria-label": `Rename “${title}”`,
        title: "Rename (F2)",
        text: "✎",
        onclick: () => startRename(conversation.id),
      }),
      el("button", {
        type: "button",
        class: "icon-button row-action",
        "data-testid": "conversation-delete",
        "aria-label": `Delete “${title}”`,
        title: "Delete",
        text: "✕",
        onclick: () => askDelete(conversation.id),
      }),
    );
  }

  function render() {
    const focused = list.contains(document.activeElement)
      ? document.activeElement.closest("[data-testid=conversation-row]")?.dataset.conversationId
      : null;
    const items = [...conversations].sort(newestFirst);
    list.replaceChildren(...items.map(row));
    empty.textContent = query ? "No conversation title matches." : "No conversations yet.";
    show(empty, items.length === 0);
    const ids = items.map((c) => c.id);
    const keepFocus = Boolean(focused) && ids.includes(focused);
    const keep = [activeId, hooks.currentId()].find((id) => id && ids.includes(id)) || ids[0] || null;
    setActive(keepFocus ? focused : keep, keepFocus);
  }

  function markCurrent() {
    for (const item of list.querySelectorAll("[data-testid=conversation-item]")) {
      item.setAttribute("aria-current", item.dataset.conversationId === hooks.currentId() ? "true" : "false");
    }
  }

  // --- rename ---------------------------------------------------------------------------

  function startRename(id) {
    const conversation = conversations.find((c) => c.id === id);
    const target = rowOf(id);
    if (!conversation || !target) return;
    const input = el("input", {
      type: "text",
      class: "rename-input",
      "data-testid": "conversation-rename-input",
      "aria-label": "New title",
      maxlength: "200",
      value: conversation.title || "",
    });
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title && title !== conversation.title) {
        try {
          const updated = await hooks.api("PATCH", `/v1/conversations/${encodeURIComponent(id)}`, { title });
          Object.assign(conversation, updated);
          hooks.renamed(id, updated.title);
        } catch (error) {
          hooks.banner(error.message);
        }
      }
      render();
      setActive(id, true);
    };
    input.addEventListener("keydown", (event) => {
      event.stopPropagation(); // arrows and Delete edit the text here, they do not move in the list
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
    target.replaceChildren(input);
    input.focus();
    input.select();
  }

  // --- delete ---------------------------------------------------------------------------

  function askDelete(id) {
    const conversation = conversations.find((c) => c.id === id);
    if (!conversation) return;
    pendingDelete = id;
    document.getElementById("confirm-delete-text").textContent =
      `Delete “${titleOf(conversation)}”? Its messages are removed from the server for good.`;
    confirm.showModal();
    document.getElementById("confirm-delete-cancel").focus();
  }

  async function doDelete() {
    const id = pendingDelete;
    pendingDelete = null;
    confirm.close();
    if (!id) return;
    const index = rows().findIndex((r) => r.dataset.conversationId === id);
    try {
      await hooks.api("DELETE", `/v1/conversations/${encodeURIComponent(id)}`);
    } catch (error) {
      if (error.status !== 404) {
        hooks.banner(error.message);
        return;
      }
    }
    conversations = conversations.filter((c) => c.id !== id);
    if (activeId === id) activeId = null;
    hooks.deleted(id);
    render();
    const remaining = rows();
    if (remaining.length) {
      const next = remaining[Math.min(Math.max(index, 0), remaining.length - 1)];
      setActive(next.dataset.conversationId, true);
    } else {
      document.getElementById("new-chat").focus();
    }
  }

  // --- wiring ---------------------------------------------------------------------------

  list.addEventListener("keydown", (event) => {
    const current = rows();
    if (!current.length) return;
    const at = Math.max(
      current.findIndex((r) => r.dataset.conversationId === activeId),
      0,
    );
    let next = null;
    if (event.key === "ArrowDown") next = Math.min(at + 1, current.length - 1);
    else if (event.key === "ArrowUp") next = Math.max(at - 1, 0);
    else if (event.key === "Home") next = 0;
    else if (event.key === "End") next = current.length - 1;
    else if (event.key === "F2") {
      event.preventDefault();
      startRename(current[at].dataset.conversationId);
      return;
    } else if (event.key === "Delete") {
      event.preventDefault();
      askDelete(current[at].dataset.conversationId);
      return;
    } else return;
    event.preventDefault();
    setActive(current[next].dataset.conversationId, true);
  });

  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      query = search.value.trim();
      refresh();
    }, SEARCH_DELAY_MS);
  });
  search.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && search.value) {
      event.preventDefault();
      search.value = "";
      query = "";
      refresh();
    } else if (event.key === "ArrowDown" && rows().length) {
      event.preventDefault();
      setActive(activeId || rows()[0].dataset.conversationId, true);
    }
  });
  document.getElementById("confirm-delete-ok").addEventListener("click", doDelete);
  document.getElementById("confirm-delete-cancel").addEventListener("click", () => {
    pendingDelete = null;
    confirm.close();
  });
  confirm.addEventListener("close", () => {
    if (pendingDelete) setActive(pendingDelete, true);
    pendingDelete = null;
  });

  return {
    refresh,
    render,
    markCurrent,
    find: (id) => conversations.find((c) => c.id === id) || null,
    upsert(conversation) {
      conversations = [conversation, ...conversations.filter((c) => c.id !== conversation.id)];
      render();
    },
    clear() {
      conversations = [];
      query = "";
      search.value = "";
      list.replaceChildren();
    },
  };
}
