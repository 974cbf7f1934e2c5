// The gateway's HTTP API as the browser calls it: a bearer token, JSON in and out, and
// every failure as an ApiError in the gateway's one error shape. Used by the chat (signin.js)
// and the ops page (ops.js).

export class ApiError extends Error {
  constructor(status, code, message, requestId = null, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
    this.retryAfter = retryAfter;
  }
}

const STATUS_TEXT = {
  400: "The request was not accepted.",
  401: "Your session has expired. Please sign in again.",
  403: "You are not allowed to do this.",
  404: "Not found.",
  413: "That message is too long.",
  429: "Too many requests. Wait a moment.",
  500: "Something went wrong on the server. Try again.",
  502: "The gateway could not reach a service behind it. Try again in a moment.",
  503: "The service is not available right now. Try again in a moment.",
};

/** One request: the parsed JSON answer (null for none), or an ApiError. */
export async function request(method, path, body, token) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "network", "Cannot reach the a0 gateway. Check your connection and try again.");
  }
  const text = response.status === 204 ? "" : await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (response.ok) return data;

  const error = (data && typeof data.error === "object" && data.error) || {};
  let message = error.message;
  if (!message && data && typeof data.detail === "string") message = data.detail;
  if (!message) message = STATUS_TEXT[response.status] || `The gateway answered ${response.status}.`;
  const header = Number(response.headers.get("Retry-After"));
  const retryAfter = Number.isFinite(header) && header > 0 ? Math.ceil(header) : error.retry_after_s || null;
  throw new ApiError(
    response.status,
    error.code || `http_${response.status}`,
    message,
    error.request_id || null,
    retryAfter,
  );
}
