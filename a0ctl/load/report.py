"""What a load run reports: response, acceptance and delivery percentiles, this host's
CPU, the run's timeline by window, the SLA it was held to (``a0ctl load`` renders it)."""

from __future__ import annotations

import os
import statistics

from pydantic import BaseModel, Field, computed_field

from a0ctl.load.account import Account


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None

    @classmethod
    def of(cls, values: list[float], scale: float = 1.0, digits: int = 3) -> Percentiles:
        if not values:
            return cls(p50=None, p95=None, p99=None, mean=None)
        return cls(
            p50=round(percentile(values, 50) * scale, digits),
            p95=round(percentile(values, 95) * scale, digits),
            p99=round(percentile(values, 99) * scale, digits),
            mean=round(statistics.fmean(values) * scale, digits),
        )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class HostCpu(BaseModel):
    """How busy this host's CPUs were while the load ran, as a fraction of all its cores
    (``/proc/stat``; None where there is none): over the whole run, and in its busiest
    window. Time stolen by a hypervisor counts as busy: no a0 process could use it."""

    cores: int = Field(default_factory=lambda: os.cpu_count() or 1)
    mean: float | None = None
    max: float | None = None


def cpu_times(stat: str) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from the text of ``/proc/stat``."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            # user nice system idle iowait irq softirq steal (guest time is within user)
            ticks = [int(value) for value in fields[1:9]]
            idle = ticks[3] + ticks[4]
            return sum(ticks) - idle, sum(ticks)
    return None


def busy_between(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total > 0 else None


class Window(BaseModel):
    """The turns sent in one stretch of the run (``start_s`` to ``end_s`` after it began):
    how many were answered, their response times and acceptance, and how busy this host's
    CPUs were meanwhile. The first windows are the ramp, where sessions arrive."""

    start_s: float
    end_s: float
    answered: int
    response_mean_s: float | None
    response_p99_s: float | None
    accept_mean_s: float | None
    host_cpu: float | None


# A run's timeline: this many windows of equal length (at least MIN_WINDOW_S each).
TIMELINE_WINDOWS = 6
MIN_WINDOW_S = 5.0


def timeline(
    duration_s: float,
    answered: list[tuple[float, float]],
    accepted: list[tuple[float, float]],
    cpu: list[tuple[float, tuple[int, int]]],
) -> list[Window]:
    """Windows over ``duration_s`` of (sent at, seconds) pairs of answered and accepted
    turns, and of (at, :func:`cpu_times`) readings; a turn sent after the last window's end
    (a retry at the end of the run) counts in the last."""
    count = max(1, min(TIMELINE_WINDOWS, int(duration_s // MIN_WINDOW_S)))
    width = duration_s / count

    def index(at: float) -> int:
        return min(count - 1, max(0, int(at // width)))

    responses: list[list[float]] = [[] for _ in range(count)]
    accepts: list[list[float]] = [[] for _ in range(count)]
    for at, seconds in answered:
        responses[index(at)].append(seconds)
    for at, seconds in accepted:
        accepts[index(at)].append(seconds)
    windows = []
    for i in range(count):
        start, end = i * width, (i + 1) * width
        inside = [times for at, times in cpu if start <= at <= end]
        busy = busy_between(inside[0], inside[-1]) if len(inside) > 1 else None
        windows.append(
            Window(
                start_s=round(start, 1),
                end_s=round(end, 1),
                answered=len(responses[i]),
                response_mean_s=round(statistics.fmean(responses[i]), 3) if responses[i] else None,
                response_p99_s=round(percentile(responses[i], 99), 3) if responses[i] else None,
                accept_mean_s=round(statistics.fmean(accepts[i]), 3) if accepts[i] else None,
                host_cpu=busy,
            )
        )
    return windows


class Sla(BaseModel):
    """Limits a run must meet (``--sla-mean``, ``--sla-p99``), and whether it did."""

    mean_s: float | None = None
    p99_s: float | None = None
    met: bool = True
    misses: list[str] = []


class LoadReport(BaseModel):
    sessions: int
    duration_s: float
    ramp_s: float
    prompt: str
    sent: int
    accepted: int
    rejected: int  # refused with 429 (shed); kept under its first name
    shed: int  # messages refused with 429
    shed_sign_ins: int = 0  # conversations refused with 429 (a busy gateway), then retried
    stream_retries: int = 0  # streams (re)opened with 429 or 503 (busy or recovering), then retried
    reconnects: int = 0  # requests and streams tried again after a connection error, with backoff
    shed_sessions: int = 0  # sessions whose every sign-in was shed until the run ended
    completed: int
    failed: int  # turns that ended in an error, or a request answered with another failure
    failed_sessions: int  # sessions that could not go on (no conversation, broken stream)
    lost: int
    duplicate_events: int
    missing_events: int
    throughput_per_s: float
    response_s: Percentiles
    ttft_s: Percentiles  # POST to the turn's first text (or its end, when it has none)
    accept_s: Percentiles  # POST to its 202: the gateway's part of the response
    delivery_ms: Percentiles
    max_consumer_lag_s: float
    max_consumer_lag_records: int
    host_cpu: HostCpu = Field(default_factory=HostCpu)
    timeline: list[Window] = []  # by when the message was sent
    causes: dict[str, int]  # every failure, by cause
    errors: list[str]
    sla: Sla = Sla()
    account: Account | None = None  # what each answered turn cost the stack (a0ctl.load.account)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """Every session to the end; nothing failed, lost or shown twice; the SLA met."""
        return (
            self.sent > 0
            and self.lost == 0
            and self.duplicate_events == 0
            and self.missing_events == 0
            and self.failed == 0
            and self.failed_sessions == 0
            and self.sla.met
        )

    def check_sla(self, mean_s: float | None, p99_s: float | None) -> LoadReport:
        misses = []
        if mean_s is not None and (self.response_s.mean is None or self.response_s.mean > mean_s):
            misses.append(f"mean response {self.response_s.mean} s > {mean_s} s")
        if p99_s is not None and (self.response_s.p99 is None or self.response_s.p99 > p99_s):
            misses.append(f"p99 response {self.response_s.p99} s > {p99_s} s")
        return self.model_copy(update={"sla": Sla(mean_s=mean_s, p99_s=p99_s, met=not misses, misses=misses)})
