// The page's frame around the transcript: the conversation's title (and the tab's), the
// sidebar drawer of narrow windows, the banner and the connection badge.

import { $, show } from "./dom.js";

export function setTitle(title) {
  $("conversation-title").textContent = title;
  document.title = title && title !== "New chat" ? `${title} · a0 chat` : "a0 chat";
}

export function openSidebar() {
  $("app").classList.add("sidebar-open");
  $("sidebar-toggle").setAttribute("aria-expanded", "true");
  $("sidebar-toggle").setAttribute("aria-label", "Hide conversations");
}

export function closeSidebar() {
  $("app").classList.remove("sidebar-open");
  $("sidebar-toggle").setAttribute("aria-expanded", "false");
  $("sidebar-toggle").setAttribute("aria-label", "Show conversations");
}

export function showBanner(message) {
  $("banner-text").textContent = message;
  show($("banner"), Boolean(message));
}

export function setConnection(text) {
  const badge = $("connection-status");
  badge.textContent = text || "";
  show(badge, Boolean(text));
}

/** The drawer's toggle, its scrim and Escape; the banner's close button. */
export function wireShell() {
  $("sidebar-toggle").addEventListener("click", () =>
    $("app").classList.contains("sidebar-open") ? closeSidebar() : openSidebar(),
  );
  $("scrim").addEventListener("click", closeSidebar);
  $("banner-close").addEventListener("click", () => showBanner(""));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && $("app").classList.contains("sidebar-open")) closeSidebar();
  });
}
