"""The exception hierarchy of a0, and the one rule that decides retry or give up.

Every a0 error derives from :class:`A0Error`: ``str(err)`` is a message a person can act
on, and ``retriable`` says whether the same work may succeed if done again later (a
dependency briefly down) or never will (bad input, a bug). :func:`is_transient` applies
that rule to any exception, a0's own and those of the clients a0 uses (Kafka,
PostgreSQL, Redis, HTTP, the OS), so the consumer loop's retries, the gateway's 503s
and the WebSocket's ``unavailable`` errors all decide alike.
"""

from __future__ import annotations

import functools


class A0Error(Exception):
    """Base of every a0 error; ``str(err)`` is meant for a person to read."""

    code = "a0_error"
    status = 500
    retriable = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class TransientError(A0Error):
    """Worth retrying with backoff (a dependency briefly unavailable)."""

    code = "unavailable"
    status = 503
    retriable = True


class PoisonRecord(A0Error):
    """A record that can never be handled: it goes to the dead-letter topic with this reason."""

    code = "poison_record"


class ConfigError(A0Error):
    code = "config_error"


class SchemaError(A0Error):
    """The database schema cannot be read or migrated (services/common/schema.py)."""

    code = "schema_error"


class PolicyDenied(A0Error):
    code = "forbidden"
    status = 403


class PolicyUnavailable(TransientError):
    """OPA could not be asked; callers fail closed."""


class CredentialError(A0Error):
    code = "credential_error"
    status = 400


@functools.cache
def transient_types() -> tuple[type[Exception], ...]:
    """Third-party failures that mean "down or restarting", not "wrong". Imported on
    first use: the CLI imports this module and needs none of these clients."""
    import aiohttp
    import httpx
    import psycopg
    import redis.exceptions
    from aiokafka.errors import KafkaError

    return (
        KafkaError,  # every broker error: a restarting broker raises many kinds
        OSError,  # refused or reset connections, and TimeoutError
        psycopg.OperationalError,  # includes psycopg_pool.PoolTimeout
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        httpx.TransportError,
        aiohttp.ClientConnectionError,  # refused, reset, and the server's timeouts
    )


@functools.cache
def http_call_failures() -> tuple[type[Exception], ...]:
    """What an HTTP call raises when its server could not be asked or gave no usable
    answer (refused, reset, timed out, an error status raised): the caller's own
    error, usually a transient one, says which dependency it was."""
    import aiohttp

    return (OSError, aiohttp.ClientError)  # OSError includes TimeoutError


def is_transient(exc: BaseException) -> bool:
    """True when the work that raised ``exc`` is worth doing again after a backoff."""
    if isinstance(exc, A0Error):
        return exc.retriable
    return isinstance(exc, transient_types())


class DeadLetterError(A0Error):
    """A dead letter that cannot be replayed or discarded as asked (services.common.dlq)."""

    code = "dead_letter_error"
    status = 409


class DeadLetterNotFound(DeadLetterError):
    """No dead letter by that id, or no such dead-letter topic."""

    code = "not_found"
    status = 404


class KafkaUnavailable(TransientError):
    """The broker does not answer a client that needs it now."""

    def __init__(self, message: str, *, hint: str | None = "is the stack up? run `a0ctl up`") -> None:
        super().__init__(message, hint=hint)
