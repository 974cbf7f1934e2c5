"""A fault under load: a few dozen chat sessions run through the gateway while a process
is killed or a service restarted, and nobody types a command to repair it. After it,
every accepted message was answered exactly once at the client (no gap, no repeated
seq) and no turn is left open.

Each fault's figures go to ``test-artifacts/faults.json``: how long until the service
ran healthy again, how long until answers flowed again, and the turns slowed, lost or
shown twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import psycopg

from a0ctl.load import LoadReport, run_load
from a0ctl.runtime.local import LocalRuntime
from services.common.settings import Settings
from tests.conftest import ROOT
from tests.support.waiting import eventually

SESSIONS = 24
WARM_UP_ANSWERS = 2 * SESSIONS
LOAD_S = 20.0
# A turn slower than this was held up by the fault.
AFFECTED_S = 1.5
RESULTS = ROOT / "test-artifacts" / "faults.json"


async def service_back(stack: LocalRuntime, name: str, old_pid: int | None) -> bool:
    statuses = await asyncio.to_thread(stack.status)
    status = next(s for s in statuses if s.name == name)
    return status.state == "running" and status.healthy and status.pid not in (None, old_pid)


async def restarted(stack: LocalRuntime, name: str, timeout: float = 90) -> None:
    """Restart ``name`` and wait until it runs healthy again as a new process."""
    old_pid = stack.pid(name)
    await asyncio.to_thread(stack.restart, name)

    async def back() -> bool:
        return await service_back(stack, name, old_pid)

    await eventually(back, timeout, f"{name} running and healthy again")


async def open_turns(settings: Settings) -> int:
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:
        row = await (
            await conn.execute("SELECT count(*) FROM turns WHERE status IN ('queued', 'running')")
        ).fetchone()
    return int(row[0]) if row else -1


def record(result: dict[str, object]) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[str(result["fault"])] = result
    RESULTS.write_text(json.dumps(results, indent=2))


async def under_load(
    settings: Settings,
    stack: LocalRuntime,
    fault_name: str,
    service: str | None,
    fault: Callable[[], Awaitable[None]],
) -> LoadReport:
    answers: list[tuple[float, float]] = []  # (sent at, response time)
    load = asyncio.create_task(
        run_load(
            settings,
            sessions=SESSIONS,
            duration_s=LOAD_S,
            think_s=0.3,
            prompt="compute 6*7",
            turn_timeout_s=120,
            on_answer=lambda sent, took: answers.append((sent, took)),
        )
    )

    async def warmed_up() -> bool:
        assert not load.done(), load.result()
        return len(answers) >= WARM_UP_ANSWERS

    await eventually(warmed_up, 60, "the load's first answers")
    old_pid = stack.pid(service) if service else None
    struck = time.monotonic()
    await fault()

    async def back() -> bool:
        return service is None or await service_back(stack, service, old_pid)

    await eventually(back, 90, f"{service} running and healthy again")
    service_s = time.monotonic() - struck

    async def answering() -> bool:
        return any(sent > struck for sent, _ in answers)

    await eventually(answering, 120, "an answer to a message sent after the fault")
    # When the first message sent after the fault was answered.
    answers_s = min(sent + took for sent, took in answers if sent > struck) - struck
    report = await load

    async def all_closed() -> bool:
        return await open_turns(settings) == 0

    await eventually(all_closed, 30, "every turn closed")
    result = {
        "fault": fault_name,
        "service_running_again_s": round(service_s, 1),
        "answers_again_s": round(answers_s, 1),
        "accepted": report.accepted,
        "answered": report.completed,
        # Requests refused while a service was down (503 "nothing was accepted, try again").
        "refused": report.failed,
        "failed_sessions": report.failed_sessions,
        "reconnects": report.reconnects,
        "affected": sum(1 for sent, took in answers if took > AFFECTED_S and sent + took >= struck),
        "lost": report.lost,
        "duplicated": report.duplicate_events,
        "missing": report.missing_events,
        "causes": report.causes,
    }
    record(result)
    assert report.accepted > WARM_UP_ANSWERS, result
    assert report.lost == 0 and report.duplicate_events == 0 and report.missing_events == 0, result
    # Every accepted message answered, none with an error; every session went on.
    assert report.completed == report.accepted and report.failed_sessions == 0, result
    return report


def sigkill(stack: LocalRuntime, service: str) -> Callable[[], Awaitable[None]]:
    async def fault() -> None:
        assert await asyncio.to_thread(stack.kill_service, service) is not None

    return fault


def restart(stack: LocalRuntime, service: str) -> Callable[[], Awaitable[None]]:
    async def fault() -> None:
        await asyncio.to_thread(stack.restart, service)

    return fault
