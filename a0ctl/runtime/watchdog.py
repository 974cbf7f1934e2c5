"""The health watchdog: a supervisord event listener that restarts a service which runs
but has stopped answering its health check for ``A0_WATCHDOG_UNHEALTHY_S``, counts each
service's starts (``run/restarts.json``, shown by ``a0ctl status``) and keeps the
``run/NAME.pid`` files current. Its checks share one event loop and kept connections,
so an idle stack stays asleep. Behaviour and settings: docs/runbook.md, "Supervision".
Run by supervisord as ``python -m a0ctl.runtime.watchdog`` (stdout is supervisord's
event protocol; the log goes to stderr).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import TextIO

from a0ctl.runtime import health
from a0ctl.runtime.local import RESTARTS_FILE, LocalRuntime
from services.common.logging import setup_logging
from services.common.settings import Settings, load_settings

log = logging.getLogger("a0.watchdog")

# A hung service never answers; one working through a burst of load answers late. Only
# the first is restarted: restarting the second would drop every client it serves (a
# gateway's open streams) and start the burst again.
PROBE_TIMEOUT_S = 10.0


def parse_tokens(text: str) -> dict[str, str]:
    """supervisord's ``key:value key:value`` header and payload lines."""
    return dict(token.split(":", 1) for token in text.split() if ":" in token)


class Watchdog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime = LocalRuntime(settings)
        self.limit_s = settings.stack.watchdog_unhealthy_s
        self.probe_s = settings.stack.watchdog_probe_s
        self.starts = self.runtime.starts()
        # Per service: (pid, when its health check started failing).
        self.failing: dict[str, tuple[int, float]] = {}
        self.last_round = 0.0  # time.monotonic() of the last check of every service
        self.loop = asyncio.Runner()  # one loop for every check: the kept connections live on it
        self.kept = health.KeptConnections()

    def handle(self, event: str, payload: str) -> None:
        if event == "TICK_5":
            self.tick()
        elif event.startswith("PROCESS_STATE_"):
            self.process_state(event.removeprefix("PROCESS_STATE_"), parse_tokens(payload.split("\n", 1)[0]))

    def process_state(self, state: str, fields: dict[str, str]) -> None:
        name = fields.get("processname", "")
        if not name or name == "watchdog":
            return
        if state == "STARTING":
            self.starts[name] = self.starts.get(name, 0) + 1
            path = self.runtime.state / "run" / RESTARTS_FILE
            path.with_suffix(".tmp").write_text(json.dumps(self.starts))
            path.with_suffix(".tmp").replace(path)
            if self.starts[name] > 1:
                log.info(
                    "%s starting again (start %d, from %s)", name, self.starts[name], fields.get("from_state")
                )
        elif state == "RUNNING":
            self.runtime.record_pids({name: self.runtime.supervisor.process(name)})
        elif state == "FATAL":
            log.error("%s given up: it exited too quickly, too many times", name)

    def tick(self) -> None:
        due = time.monotonic() - self.last_round >= self.probe_s - 1  # ticks come every 5 s, give or take
        if not due and not self.failing:
            return
        processes = self.runtime.supervisor.processes()
        self.runtime.record_pids(processes)
        if self.limit_s <= 0:
            self.last_round = time.monotonic()
            return
        # Replicas added with `a0ctl scale` since the watchdog started.
        self.runtime.services = self.runtime.services | LocalRuntime(self.settings).services
        now = time.time()
        candidates = {
            name: info
            for name, info in processes.items()
            if info.statename == "RUNNING"
            and name in self.runtime.services
            and now - info.start >= self.runtime.services[name].start_s
            # Between rounds, only the services whose last check failed.
            and (due or name in self.failing)
        }
        if due:
            self.last_round = time.monotonic()

        async def probe_all() -> list[tuple[bool, str]]:
            async with health.kept_connections(self.kept):
                return list(
                    await asyncio.gather(
                        *(
                            health.check(
                                self.runtime.services[name].probe, self.settings, timeout=PROBE_TIMEOUT_S
                            )
                            for name in candidates
                        )
                    )
                )

        results = self.loop.run(probe_all())
        for (name, info), (ok, detail) in zip(candidates.items(), results, strict=True):
            if ok:
                self.failing.pop(name, None)
                continue
            pid, since = self.failing.get(name, (info.pid, now))
            if pid != info.pid:  # a new process: its own clock
                since = now
            self.failing[name] = (info.pid, since)
            if now - since >= self.limit_s:
                log.warning(
                    "restarting %s (pid %d): health check failing for %.0f s: %s",
                    name,
                    info.pid,
                    now - since,
                    detail,
                )
                self.failing.pop(name, None)
                self.runtime.supervisor.stop(name)
                self.runtime.supervisor.start(name)

    def close(self) -> None:
        self.loop.run(self.kept.aclose())
        self.loop.close()


def serve(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    watchdog = Watchdog(load_settings())
    log.info(
        "watching; services checked every %.0f s, one unhealthy for %.0f s is restarted",
        watchdog.probe_s,
        watchdog.limit_s,
    )
    try:
        _serve(watchdog, stdin, stdout)
    finally:
        watchdog.close()


def _serve(watchdog: Watchdog, stdin: TextIO, stdout: TextIO) -> None:
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:  # supervisord is gone
            return
        headers = parse_tokens(line)
        payload = stdin.read(int(headers["len"]))
        try:
            watchdog.handle(headers.get("eventname", ""), payload)
        except Exception:  # one bad tick must not stop the watchdog
            log.exception("handling %s", headers.get("eventname"))
        stdout.write("RESULT 2\nOK")
        stdout.flush()


if __name__ == "__main__":
    setup_logging("watchdog")  # JSON lines on stderr, through the redaction filter
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    serve()
