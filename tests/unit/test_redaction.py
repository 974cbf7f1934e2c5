"""The redaction filter every service installs: secrets never reach a log line."""

from __future__ import annotations

import io
import logging

import pytest

from services.common.logging import JsonFormatter, RedactionFilter, register_secret

pytestmark = pytest.mark.unit


@pytest.fixture
def log_output() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    handler.addFilter(RedactionFilter())
    logger = logging.getLogger("a0.test.redaction")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_bearer_tokens_jwts_and_api_keys_are_masked(log_output) -> None:
    logger, stream = log_output
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl"
    logger.info("calling with Authorization: Bearer %s", "abcdefghijklmnop")
    logger.info("token %s and key %s", jwt, "sk-live-0123456789abcdef")
    logger.info("config api_key=%s", "hunter2hunter2")
    text = stream.getvalue()
    for secret in ("abcdefghijklmnop", jwt, "sk-live-0123456789abcdef", "hunter2hunter2"):
        assert secret not in text
    assert "***" in text


def test_registered_secret_is_masked_in_messages_and_tracebacks(log_output) -> None:
    logger, stream = log_output
    secret = "plain-looking-secret-value-42"
    register_secret(secret)
    try:
        raise RuntimeError(f"upstream said: bad key {secret}")
    except RuntimeError:
        logger.exception("call failed for %s", secret)
    text = stream.getvalue()
    assert secret not in text
    assert "RuntimeError" in text and "call failed" in text
