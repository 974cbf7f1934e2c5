"""The one error model: what is retried and what is given up on, for every kind of error."""

from __future__ import annotations

import aiohttp
import httpx
import psycopg
import psycopg_pool
import pytest
import redis.exceptions
from aiokafka.errors import KafkaConnectionError, NotLeaderForPartitionError

from a0ctl.errors import StackError
from services.common.envelope import EnvelopeError
from services.common.errors import (
    A0Error,
    CredentialError,
    PoisonRecord,
    PolicyDenied,
    PolicyUnavailable,
    TransientError,
    is_transient,
)
from services.conversation_worker.llm_errors import status_error

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "error",
    [
        TransientError("the topic is not available yet"),
        PolicyUnavailable("OPA did not answer"),
        KafkaConnectionError(),
        NotLeaderForPartitionError(),
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        psycopg.OperationalError("the server closed the connection"),
        psycopg_pool.PoolTimeout("no connection within 10 s"),
        redis.exceptions.ConnectionError("reset"),
        redis.exceptions.TimeoutError("no answer"),
        httpx.ConnectError("refused"),
        aiohttp.ServerDisconnectedError(),
        status_error(503),
        status_error(429, "3"),
    ],
    ids=type,
)
def test_a_dependency_that_is_down_is_worth_retrying(error: Exception) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        PoisonRecord("unexpected event type"),
        EnvelopeError("not JSON"),
        PolicyDenied("not allowed"),
        CredentialError("cannot be decrypted"),
        StackError("kafka did not start", service="kafka"),
        status_error(401),
        ValueError("a bug"),
        KeyError("a bug"),
        psycopg.errors.UniqueViolation("duplicate key"),
        redis.exceptions.ResponseError("WRONGTYPE"),
    ],
    ids=type,
)
def test_bad_input_and_bugs_are_not_retried(error: Exception) -> None:
    assert not is_transient(error)


def test_every_error_of_a0_has_a_readable_message_and_says_if_it_is_retriable() -> None:
    error = StackError("kafka did not start", service="kafka", hint="see a0ctl logs kafka")
    assert isinstance(error, A0Error)
    assert str(error) == "kafka did not start (see a0ctl logs kafka)"
    assert error.retriable is False and TransientError("x").retriable is True
