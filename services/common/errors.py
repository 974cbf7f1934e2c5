"""The exception hierarchy of a0. Each error carries a message a user can act on."""

from __future__ import annotations


class A0Error(Exception):
    """Base of every a0 error; ``str(err)`` is meant for a person to read."""

    code = "a0_error"
    status = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(A0Error):
    code = "config_error"


class StackError(A0Error):
    """A service of the stack could not be started, found or reached."""

    code = "stack_error"

    def __init__(self, message: str, *, service: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.service = service


class TopicPlanError(A0Error):
    code = "topic_plan_error"


class TopicsFileError(A0Error):
    code = "topics_file_error"


class PolicyDenied(A0Error):
    code = "forbidden"
    status = 403


class CredentialError(A0Error):
    code = "credential_error"
    status = 400
