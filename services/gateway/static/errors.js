// What a person reads for each error code the gateway or the worker may send: the chat's
// plain words for an API error or a turn's error event.

export const SETTINGS_CODES = new Set([
  "llm_auth",
  "llm_model",
  "llm_forbidden",
  "llm_model_not_found",
  "model_not_found",
  "no_credentials",
  "credential_missing",
  "credential_error",
]);

// What a person should read for each error code the worker or gateway may send.
const ERROR_TEXT = {
  llm_auth: "The LLM provider rejected your API key. Open Settings to fix it.",
  llm_model: "The LLM provider does not know the model set in Settings. Open Settings to fix it.",
  llm_forbidden: "The LLM provider refused this request for your API key. Open Settings to check it.",
  llm_model_not_found: "The model set in Settings does not exist at the LLM provider. Open Settings to fix it.",
  model_not_found: "The model set in Settings does not exist at the LLM provider. Open Settings to fix it.",
  no_credentials: "No LLM provider is set up yet. Open Settings to add an API key.",
  credential_missing: "No LLM provider is set up yet. Open Settings to add an API key.",
  credential_error: "The stored API key could not be used. Open Settings to enter it again.",
  llm_rate_limited: "The LLM provider is limiting requests right now. Wait a moment and try again.",
  llm_unavailable: "The LLM provider cannot be reached right now. Try again in a moment.",
  llm_timeout: "The LLM provider took too long to answer. Try again.",
  llm_bad_request: "The LLM provider refused the request.",
  llm_error: "The LLM provider returned an error.",
  llm_interrupted: "The connection to the LLM provider broke off in the middle of the answer, so it is incomplete. Try again.",
  llm_incomplete: "The LLM provider's answer stopped before its end. Try again.",
  llm_truncated: "The LLM provider cut the answer off at its length limit in the middle of a tool call. Try again with a shorter request.",
  llm_content_filter: "The LLM provider's content filter stopped this answer.",
  llm_bad_response: "The LLM provider sent an answer that could not be read.",
  tool_denied: "A tool call was blocked by policy.",
  policy_denied: "This was blocked by policy.",
  forbidden: "You are not allowed to do this.",
  tool_rounds_exceeded: "The assistant called tools too many times in a row and was stopped.",
  max_tool_rounds: "The assistant called tools too many times in a row and was stopped.",
  tool_error: "A tool failed.",
  tool_timeout: "A tool took too long and was stopped.",
  timeout: "The answer took too long and was stopped.",
  overloaded: "The service is busy right now. Try again in a moment.",
  internal: "Something went wrong on the server. Try again.",
  internal_error: "Something went wrong on the server. Try again.",
};

export function friendlyError(code, message) {
  if (code === "rate_limited" || code === "too_many_requests") return rateLimitText(null, message);
  const text = ERROR_TEXT[code];
  if (!text) return message || `Something went wrong (${code || "unknown error"}).`;
  // Add the provider's or tool's own words where ours are generic.
  const generic = !SETTINGS_CODES.has(code) && !text.includes("Try again") && message && message !== text;
  return generic ? `${text} ${message}` : text;
}

export function rateLimitText(seconds, message) {
  if (!seconds && message) {
    const match = /(\d+)\s*(?:s\b|sec|second)/i.exec(message);
    if (match) seconds = Number(match[1]);
  }
  return seconds ? `Too many messages, wait ${seconds} s.` : "Too many messages, wait a moment.";
}
