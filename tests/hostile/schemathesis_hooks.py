"""The gateway's intended answers that a Schemathesis check would report as failures,
each with its reason. Loaded by ``schemathesis.toml`` (``hooks``): the test runs every
check (``--checks all``, which no per-operation setting can narrow), and drops here only
the failures written down below, matched as narrowly as the answer allows.
"""

from __future__ import annotations

import json

import schemathesis
from schemathesis import Case, HookContext, Response
from schemathesis.core.failures import Failure

CANCEL = "POST /v1/conversations/{conversation_id}/cancel"


def _error_message(response: Response) -> str:
    try:
        return str(json.loads(response.content)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return ""


def cancel_of_a_turn_the_conversation_never_had(failure: Failure, case: Case, response: Response) -> bool:
    """ST302 "Created resource not found" on a cancel answering 404 "no turn … in
    conversation …".

    A cancel names a turn. For a turn id the conversation never had, the turn is what is
    not found, not the conversation the stateful phase has just created, which is what it
    takes the 404 to mean. A cancel that silently succeeded would hide a client's wrong
    turn id; the conversation itself is found (a cancel without a turn id is 202)."""
    return (
        failure.code == "ST302"
        and case.operation.label == CANCEL
        and response.status_code == 404
        and _error_message(response).startswith("no turn ")
    )


INTENDED = (cancel_of_a_turn_the_conversation_never_had,)


@schemathesis.hook
def filter_failure(context: HookContext, failure: Failure, case: Case, response: Response) -> bool:
    """Keep every failure but the intended answers above."""
    return not any(intended(failure, case, response) for intended in INTENDED)
