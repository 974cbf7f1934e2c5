// The signed-in session, kept in the tab's sessionStorage: read by the chat (signin.js),
// which signs in and out, and by the ops page (ops.js), which only reads it.

export const STORAGE = window.sessionStorage;
export const TOKEN_KEY = "a0.token";
export const USER_KEY = "a0.user";
export const EXPIRES_KEY = "a0.expires_at";

/** The session's token and user, or null when there is none or it has expired. */
export function storedSession() {
  const token = STORAGE.getItem(TOKEN_KEY);
  const expires = Number(STORAGE.getItem(EXPIRES_KEY) || 0);
  if (!token || (expires && Date.now() > expires)) return null;
  return { token, user: STORAGE.getItem(USER_KEY) || "" };
}
