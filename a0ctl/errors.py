"""The CLI's own errors: a stack that cannot start, a topics file or plan that cannot be
used. They derive from the one base of a0 (:class:`services.common.errors.A0Error`), so
the CLI renders them like every other a0 error."""

from __future__ import annotations

from services.common.errors import A0Error


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
