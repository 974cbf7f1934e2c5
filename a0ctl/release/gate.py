"""The checks of the release gate. Each calls the code of its own command (doctor,
``db status``, ``topics plan``, smoke, ``load`` with SLA limits) and returns a
:class:`Check`; none raises. ``a0ctl roadmap`` runs the same functions."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from pydantic import BaseModel, computed_field

from a0ctl.checks import Check, timed
from a0ctl.doctor import run_doctor
from a0ctl.load import SAMPLE_S, LoadReport, run_load
from a0ctl.smoke.checks import run_smoke
from a0ctl.topics.apply import plan_topics
from services.common.settings import Settings


class LoadLimits(BaseModel):
    """The load run of the gate: by default the seed's shape (500 concurrent sessions,
    ``--think 10``, 60 s) with the SLA of docs/runbook.md (mean < 0.5 s, p99 < 1.5 s).
    Anything lighter is a shorter profile, and says so wherever the run is reported."""

    sessions: int = 500
    duration_s: float = 60.0
    think_s: float = 10.0
    prompt: str = "compute 6*7"  # a tool turn: the whole path, worker and tool executor
    sla_mean_s: float | None = 0.5
    sla_p99_s: float | None = 1.5

    @computed_field  # type: ignore[prop-decorator]
    @property
    def profile(self) -> str:
        """``seed``, or what makes this run shorter than the seed's."""
        if (
            self.sessions >= SEED.sessions
            and self.duration_s >= SEED.duration_s
            and self.think_s <= SEED.think_s
        ):
            return "seed"
        return (
            f"shorter than the seed's ({SEED.sessions} sessions, --think {SEED.think_s:g}, "
            f"{SEED.duration_s:g} s)"
        )

    def describe(self) -> str:
        """The profile and its shape, as a report's first words."""
        shape = f"{self.sessions} sessions, --think {self.think_s:g}, {self.duration_s:g} s"
        return f"{self.profile} profile: {shape}" if self.profile == "seed" else f"{shape}: {self.profile}"


class _Seed(NamedTuple):
    sessions: int
    think_s: float
    duration_s: float


# The seed's gate: what a release is measured at unless a shorter profile is named.
SEED = _Seed(sessions=500, think_s=10.0, duration_s=60.0)


def doctor_check(settings: Settings) -> Check:
    def run() -> tuple[bool, str]:
        checks = run_doctor(settings).checks
        failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
        return not failed, "; ".join(failed) if failed else f"{len(checks)} prerequisites present"

    return timed("doctor", run)


def migrations_check(settings: Settings) -> Check:
    def run() -> tuple[bool, str]:
        from services.common.schema import schema_status  # alembic only when it runs

        status = schema_status(settings)
        if status.at_head:
            return True, f"schema at head {status.head}"
        pending = ", ".join(r.revision for r in status.pending)
        return (
            False,
            f"schema at {status.current or 'no revision'}, pending {pending}: run `a0ctl db migrate`",
        )

    return timed("migrations at head", run)


def topics_check(settings: Settings) -> Check:
    def run() -> tuple[bool, str]:
        plan = asyncio.run(plan_topics(settings))
        if plan.has_changes:
            drift = "; ".join(f"{c.topic}: {c.action} {c.detail}" for c in plan.changes)
            return False, f"drift from topics.yaml ({plan.env}): {drift}; run `a0ctl topics plan`"
        return True, f"{len(plan.unchanged)} topics match topics.yaml ({plan.env}), no drift"

    return timed("topics plan", run)


def smoke_check(settings: Settings) -> Check:
    def run() -> tuple[bool, str]:
        report = asyncio.run(run_smoke(settings))
        failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
        if failed:
            return False, "; ".join(failed)
        return True, f"{len(report.checks)} smoke checks passed, " + next(
            (c.detail for c in report.checks if c.name == "end-to-end roundtrip"), ""
        )

    return timed("smoke", run)


def load_summary(report: LoadReport) -> str:
    r = report.response_s
    text = (
        f"{report.sessions} sessions {report.duration_s:g} s: {report.completed} answered, "
        f"{report.failed} failed, {report.lost} lost, {report.duplicate_events} duplicated, "
        f"{report.shed} shed; response mean {r.mean} s p99 {r.p99} s; "
        f"max consumer lag {report.max_consumer_lag_s} s"
    )
    cpu = report.host_cpu
    if cpu.mean is not None:
        text += f"; this host's CPU {cpu.mean:.0%} busy" + (
            f" (busiest {SAMPLE_S:g} s: {cpu.max:.0%})" if cpu.max is not None else ""
        )
    limits = []
    if report.sla.mean_s is not None:
        limits.append(f"mean < {report.sla.mean_s} s")
    if report.sla.p99_s is not None:
        limits.append(f"p99 < {report.sla.p99_s} s")
    if limits:
        text += f"; SLA {', '.join(limits)}: " + ("met" if report.sla.met else "; ".join(report.sla.misses))
    return text


def judge_load(report: LoadReport, limits: LoadLimits) -> tuple[bool, str]:
    """A load run's verdict against ``limits``' SLA: ok, and the report's summary
    prefixed with its profile (a run shorter than the seed's is named so)."""
    judged = report.check_sla(limits.sla_mean_s, limits.sla_p99_s)
    return judged.ok, f"{limits.describe()}; {load_summary(judged)}"


def load_check(settings: Settings, limits: LoadLimits) -> tuple[Check, LoadReport | None]:
    reports: list[LoadReport] = []

    def run() -> tuple[bool, str]:
        report = asyncio.run(
            run_load(
                settings,
                sessions=limits.sessions,
                duration_s=limits.duration_s,
                think_s=limits.think_s,
                prompt=limits.prompt,
            )
        )
        reports.append(report.check_sla(limits.sla_mean_s, limits.sla_p99_s))
        return judge_load(report, limits)

    return timed("load with SLA", run), (reports[0] if reports else None)
