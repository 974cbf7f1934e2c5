"""The upstream LLM's failures, phrased for the user: an HTTP status mapped the way the
openai SDK maps it to its exception classes, an unreadable answer, an error met while
preparing a call. The provider's own text is never echoed (it may quote the key).
"""

from __future__ import annotations

from services.common.errors import A0Error, CredentialError, PolicyDenied


class LLMError(A0Error):
    """An upstream failure, phrased for the user; ``code`` goes into the error event.
    ``retriable`` ones are retried within the call; a turn fails on any that is left."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retriable: bool = False,
        retry_after_s: float | None = None,
        finish_reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable
        self.retry_after_s = retry_after_s
        self.finish_reason = finish_reason  # as the provider sent it, when it sent one


def bad_response(reason: str) -> LLMError:
    """An answer a0 cannot read; the reason is a0's own words, never the provider's text."""
    return LLMError("llm_bad_response", f"The LLM provider sent an answer that cannot be read ({reason}).")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def status_error(status: int, retry_after: str | None = None) -> LLMError:
    """An HTTP error status from the provider, in words for the user. The provider's own
    text is never echoed: it may quote the key."""
    if status == 401:
        return LLMError("llm_auth", "The LLM provider rejected the API key. Update it in Settings.")
    if status == 403:
        return LLMError("llm_forbidden", "The LLM provider refused this request for this key.")
    if status == 404:
        return LLMError(
            "llm_model", "The LLM provider does not know this model. Check the model in Settings."
        )
    if status == 429:
        return LLMError(
            "llm_rate_limited",
            "The LLM provider is rate limiting; try again shortly.",
            retriable=True,
            retry_after_s=_retry_after(retry_after),
        )
    if status >= 500 or status in (408, 409):
        return LLMError("llm_unavailable", "The LLM provider could not be reached.", retriable=True)
    if status in (400, 422):
        return LLMError("llm_bad_request", "The LLM provider rejected the request.")
    return LLMError("llm_error", f"The LLM call failed (HTTP {status}).")


def classify(exc: Exception) -> LLMError:
    """An error met while preparing a call (the stored key, the policy), for the user."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, PolicyDenied):
        return LLMError("llm_forbidden", f"Using the stored LLM key is not allowed ({exc.message}).")
    if isinstance(exc, CredentialError):
        return LLMError("llm_credential", "The stored LLM key cannot be read; save it again in Settings.")
    return LLMError("llm_error", f"The LLM call failed ({type(exc).__name__}).")
