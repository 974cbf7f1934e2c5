"""The one check model of a0ctl: a named verdict with its evidence. ``doctor``, ``smoke``,
``release check`` and ``roadmap`` each report a list of :class:`Check`; :func:`timed`
runs one and turns any failure into a failed line, never a crash."""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel

from services.common.errors import A0Error


class Check(BaseModel):
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    fix: str = ""  # what to do about a failed (or warned) check
    # Works, but not as it should outside development (e.g. tool runs without bounds).
    warning: bool = False


def timed(name: str, run: Callable[[], tuple[bool, str]]) -> Check:
    """Run one check; an a0 error (or any failure) is a failed line, not a crash."""
    started = time.monotonic()
    try:
        ok, detail = run()
    except A0Error as exc:
        ok, detail = False, str(exc)
    except Exception as exc:  # a failed check is a report line
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return Check(name=name, ok=ok, detail=detail[:600], seconds=round(time.monotonic() - started, 2))
