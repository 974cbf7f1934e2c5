// Signing in and out: the development sign-in (POST /v1/auth/dev-login) or a pasted
// bearer token, the session kept in the tab (session.js), and `api`, the gateway's HTTP
// client with this session's token, which signs out when the token is refused (401).

import { $, show } from "./dom.js";
import { request } from "./api.js";
import { EXPIRES_KEY, STORAGE, TOKEN_KEY, USER_KEY, storedSession } from "./session.js";
import { state } from "./state.js";

// Set by wireSignin: what happens once signed in, and what is dropped on signing out.
const hooks = { enter: async () => {}, leave: () => {} };

export async function api(method, path, body, { signOutOn401 = true } = {}) {
  try {
    return await request(method, path, body, state.token);
  } catch (failure) {
    if (failure.status === 401 && signOutOn401 && state.token) {
      signOut("Your session has expired. Please sign in again.");
    }
    throw failure;
  }
}

/** Take the session of this tab, if there is one still valid. */
export function loadSession() {
  const session = storedSession();
  if (!session) {
    clearSession();
    return false;
  }
  state.token = session.token;
  state.user = session.user;
  return true;
}

function saveSession(token, user, expiresIn) {
  state.token = token;
  state.user = user;
  STORAGE.setItem(TOKEN_KEY, token);
  STORAGE.setItem(USER_KEY, user);
  if (expiresIn) STORAGE.setItem(EXPIRES_KEY, String(Date.now() + Number(expiresIn) * 1000));
  else STORAGE.removeItem(EXPIRES_KEY);
}

function clearSession() {
  for (const key of [TOKEN_KEY, USER_KEY, EXPIRES_KEY]) STORAGE.removeItem(key);
  state.token = null;
  state.user = null;
}

function subjectOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    return claims.name || claims.preferred_username || claims.sub || "";
  } catch {
    return "";
  }
}

export function showSignin(message = "") {
  show($("app"), false);
  show($("signin"));
  const error = $("signin-error");
  error.textContent = message;
  show(error, Boolean(message));
  const tokenMode = !$("token-form").hidden;
  (tokenMode ? $("signin-token") : $("signin-user")).focus();
}

function showTokenForm(message) {
  show($("signin-form"), false);
  show($("token-form"));
  if (message) $("token-hint").textContent = message;
  $("signin-token").focus();
}

async function onDevLogin(event) {
  event.preventDefault();
  const user = $("signin-user").value.trim();
  if (!user) {
    showSignin("Enter a user name.");
    return;
  }
  const button = event.submitter || $("signin-form").querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const answer = await api("POST", "/v1/auth/dev-login", { user }, { signOutOn401: false });
    saveSession(answer.token, user, answer.expires_in);
    await hooks.enter();
  } catch (error) {
    if (error.status === 404) {
      showSignin();
      showTokenForm();
    } else if (error.code === "invalid_request") {
      showSignin("Use letters, digits, “.”, “_”, “@” or “-” (at most 64), starting with a letter or digit.");
    } else {
      showSignin(error.message);
    }
  } finally {
    button.disabled = false;
  }
}

async function onTokenLogin(event) {
  event.preventDefault();
  const token = $("signin-token").value.trim().replace(/^Bearer\s+/i, "");
  if (!token) {
    showSignin("Paste a bearer token.");
    return;
  }
  state.token = token;
  try {
    await api("GET", "/v1/conversations", undefined, { signOutOn401: false });
  } catch (error) {
    state.token = null;
    showSignin(error.status === 401 ? "That token was not accepted (expired or invalid)." : error.message);
    return;
  }
  saveSession(token, subjectOf(token) || "token user", null);
  await hooks.enter();
}

export function signOut(message = "") {
  hooks.leave();
  clearSession();
  history.replaceState(null, "", location.pathname + location.search);
  showSignin(message);
}

/**
 * The sign-in forms and the Sign out button. `enter` opens the app once signed in;
 * `leave` drops what the signed-out user must no longer see (the stream, the transcript…).
 */
export function wireSignin({ enter, leave }) {
  hooks.enter = enter;
  hooks.leave = leave;
  $("signin-form").addEventListener("submit", onDevLogin);
  $("token-form").addEventListener("submit", onTokenLogin);
  $("use-token").addEventListener("click", () => showTokenForm());
  $("sign-out").addEventListener("click", () => signOut());
}
