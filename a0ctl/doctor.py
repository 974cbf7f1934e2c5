"""``a0ctl doctor``: every prerequisite of the local runtime, each with its fix."""

from __future__ import annotations

import os
import pwd
import shutil
import sys

from pydantic import BaseModel, computed_field

from a0ctl import subprocesses
from a0ctl.checks import Check
from a0ctl.errors import StackError
from a0ctl.runtime import artifacts, docker_engine_answers
from services.common import mcp_servers
from services.common.secrets_env import secrets_path
from services.common.settings import Settings
from services.tool_executor.cgroups import CgroupError, RunBounds, probe
from services.tool_executor.confinement import ConfinementError, check

BOOTSTRAP = "run scripts/bootstrap.sh (idempotent), or"


class DoctorReport(BaseModel):
    """What ``a0ctl doctor --json`` prints."""

    checks: list[Check]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def _binary(name: str, fix: str, version_args: tuple[str, ...] = ("--version",)) -> Check:
    path = shutil.which(name)
    if not path:
        return Check(name=name, ok=False, detail="not found on PATH", fix=fix)
    try:
        out = subprocesses.run(
            [path, *version_args], what=f"{name} {' '.join(version_args)}", check=False, timeout=20
        )
    except subprocesses.CommandError as exc:
        return Check(name=name, ok=False, detail=f"{path} does not run: {exc.message}", fix=fix)
    lines = (out.stdout or out.stderr).strip().splitlines()
    first = lines[0].strip() if lines else path
    return Check(name=name, ok=True, detail=first)


def _tool_sandbox(settings: Settings) -> list[Check]:
    """bwrap, the seccomp generator and the tool user: without them run_python fails."""
    fix = f"{BOOTSTRAP} apt-get install bubblewrap python3-seccomp"
    try:
        detail = check(settings.tools.sandbox_python, settings.tools.run_as)
        detail += f" as {settings.tools.run_as}" if os.geteuid() == 0 else ""
        sandbox = Check(name="tool sandbox (bubblewrap + seccomp)", ok=True, detail=detail)
    except ConfinementError as exc:
        sandbox = Check(name="tool sandbox (bubblewrap + seccomp)", ok=False, detail=str(exc), fix=fix)
    user = settings.tools.run_as
    try:
        uid = pwd.getpwnam(user).pw_uid
        tool_user = Check(
            name="tool user", ok=uid != 0, detail=f"{user} (uid {uid})", fix="name a non-root user"
        )
    except KeyError:
        tool_user = Check(
            name="tool user",
            ok=False,
            detail=f"no user {user!r} (A0_TOOLS_RUN_AS)",
            fix=f"{BOOTSTRAP} useradd --system --no-create-home --shell /usr/sbin/nologin {user}",
        )
    return [sandbox, tool_user, _run_bounds(settings)]


def _run_bounds(settings: Settings) -> Check:
    """A cgroup per tool run: without one the tool executor refuses to start."""
    name = "tool run bounds (a cgroup per run)"
    tools = settings.tools
    bounds = RunBounds(
        memory_bytes=tools.memory_mb * 2**20, processes=tools.max_processes, cpu_cores=tools.cpu_cores
    )
    fix = (
        "run `a0ctl up` as root on a machine with the memory, pids and cpu cgroup controllers "
        "(cgroup v2, or v1 hierarchies); A0_TOOLS_ALLOW_UNBOUNDED=true for development only"
    )
    try:
        detail = probe(bounds)
    except CgroupError as exc:
        if tools.allow_unbounded:
            detail = f"UNBOUNDED tool runs (A0_TOOLS_ALLOW_UNBOUNDED=true): {exc}"
            return Check(name=name, ok=True, warning=True, detail=detail, fix=fix)
        return Check(name=name, ok=False, detail=f"{exc}: the tool executor refuses to start", fix=fix)
    limits = f"{tools.memory_mb} MiB, {tools.max_processes} processes, {tools.cpu_cores:g} cores, {tools.cpu_seconds} CPU-s"
    return Check(name=name, ok=True, detail=f"{limits} per run, {detail}")


def _mcp_servers(settings: Settings) -> Check:
    """mcp.yaml valid and its stdio servers installed (URLs are `a0ctl tools check`'s)."""
    name = "MCP servers (mcp.yaml)"
    fix = f"{BOOTSTRAP} fix mcp.yaml; `a0ctl tools check` names each problem"
    try:
        config = mcp_servers.load(settings)
    except mcp_servers.McpConfigError as exc:
        return Check(name=name, ok=False, detail=exc.message.splitlines()[0], fix=fix)
    problems = mcp_servers.local_problems(config, settings)
    if problems:
        return Check(name=name, ok=False, detail="; ".join(problems[:2]), fix=fix)
    detail = (
        f"{len(config.servers)} servers, {len(config.tools())} tools: {', '.join(config.servers) or 'none'}"
    )
    return Check(name=name, ok=True, detail=detail)


def run_doctor(settings: Settings) -> DoctorReport:
    checks = [
        Check(
            name="python",
            ok=sys.version_info >= (3, 11),
            detail=sys.version.split()[0],
            fix="a0 needs Python 3.11 or newer",
        ),
        _binary("java", f"{BOOTSTRAP} apt-get install openjdk-17-jre-headless", ("-version",)),
        _binary("mvn", f"{BOOTSTRAP} apt-get install maven", ("-v",)),
        _binary("redis-server", f"{BOOTSTRAP} apt-get install redis-server"),
    ]
    try:
        from a0ctl.runtime.postgres import pg_bin

        pg = pg_bin("postgres")
        checks.append(Check(name="postgresql", ok=True, detail=pg))
    except StackError as exc:
        checks.append(
            Check(name="postgresql", ok=False, detail=str(exc), fix=f"{BOOTSTRAP} apt-get install postgresql")
        )
    libs = artifacts.kafka_libs(settings)
    kafka_ok = (libs.parent / ".complete").exists()
    checks.append(
        Check(
            name="kafka broker jars",
            ok=kafka_ok,
            detail=str(libs) if kafka_ok else f"Apache Kafka {settings.kafka.version} not resolved yet",
            fix="`a0ctl up` resolves them with mvn from stack/kafka/pom.xml (needs java and mvn)",
        )
    )
    opa = artifacts.opa_path(settings)
    opa_ok = opa.exists() or shutil.which("opa") is not None
    checks.append(
        Check(
            name="opa",
            ok=opa_ok,
            detail=str(opa) if opa.exists() else (shutil.which("opa") or "not built yet"),
            fix=f"`a0ctl up` builds opa {settings.opa.version} with `go install` (needs go)",
        )
    )
    jaeger = artifacts.jaeger_path(settings)
    if settings.telemetry.jaeger:
        checks.append(
            Check(
                name="jaeger (traces)",
                ok=jaeger.exists(),
                detail=str(jaeger) if jaeger.exists() else "not built yet",
                fix=f"`a0ctl up` builds jaeger {settings.telemetry.jaeger_version} with go once (minutes); "
                "A0_OTEL_JAEGER=false runs without traces",
            )
        )
    if settings.prometheus.enabled:
        checks.append(
            _binary("prometheus", f"{BOOTSTRAP} apt-get install prometheus (or A0_PROMETHEUS_ENABLED=false)")
        )
    if not opa_ok or (settings.telemetry.jaeger and not jaeger.exists()):
        checks.append(_binary("go", f"{BOOTSTRAP} apt-get install golang", ("version",)))
    checks.append(
        Check(
            name="generated secrets",
            ok=secrets_path(settings.stack.conf_path).exists(),
            detail=str(secrets_path(settings.stack.conf_path)),
            fix="`a0ctl up` generates them on first start (mode 0600)",
        )
    )
    checks += _tool_sandbox(settings)
    checks.append(_mcp_servers(settings))
    chromium = shutil.which("chromium")
    checks.append(
        Check(
            name="chromium (browser tests)",
            ok=chromium is not None,
            detail=chromium or "not found",
            fix=f"{BOOTSTRAP} apt-get install chromium",
        )
    )
    engine = docker_engine_answers()
    checks.append(
        Check(
            name="docker engine (compose runtime, optional)",
            ok=True,
            detail="answers" if engine else "none: the local runtime is used",
        )
    )
    return DoctorReport(checks=checks)
