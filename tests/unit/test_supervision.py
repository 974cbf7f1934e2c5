"""The supervisord config the local runtime generates, and the watchdog's event parsing,
without starting anything."""

from __future__ import annotations

import configparser
import os
from collections.abc import Generator
from functools import partial
from pathlib import Path

import pytest

from a0ctl.runtime.local import LocalRuntime
from a0ctl.runtime.local_services import build_services
from a0ctl.runtime.supervisor import SupervisorPaths, render_config
from a0ctl.runtime.watchdog import parse_tokens
from services.common.settings import load_settings
from tests.support.cli import a0ctl

pytestmark = pytest.mark.unit


def fake_command(name: str) -> list[str]:
    return [f"/bin/{name}", "--flag", "50%"]


def generated_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str
) -> configparser.RawConfigParser:
    monkeypatch.setenv("A0_STATE_DIR", str(tmp_path / "state"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime = LocalRuntime(load_settings())
    # Commands need binaries and artifacts; the config's shape does not.
    for service in runtime.services.values():
        service.command = partial(fake_command, service.name)
    text = render_config(
        runtime._programs(),
        runtime.paths,
        home=tmp_path,
        watchdog=["python", "-m", "a0ctl.runtime.watchdog"],
        log_max_bytes=runtime.settings.stack.log_max_bytes,
        log_backups=runtime.settings.stack.log_backups,
    )
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def test_every_service_restarts_with_back_off_and_gives_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = generated_config(monkeypatch, tmp_path, A0_RESTART_RETRIES="4")
    programs = [s for s in config.sections() if s.startswith("program:")]
    assert [p.removeprefix("program:") for p in programs] == list(build_services(load_settings(), tmp_path))
    for section in programs:
        assert config[section]["autorestart"] == "true"
        assert config[section]["startretries"] == "4"
        assert config[section]["autostart"] == "false"  # `up` starts them in order
        assert config[section]["stopasgroup"] == config[section]["killasgroup"] == "true"
    assert config["program:kafka"]["command"] == "/bin/kafka --flag 50%%"


def test_kafka_and_postgres_stop_with_their_own_signal_and_grace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = generated_config(monkeypatch, tmp_path)
    assert config["program:kafka"]["stopsignal"] == "TERM"
    assert int(config["program:kafka"]["stopwaitsecs"]) >= 60  # controlled shutdown
    assert config["program:postgres"]["stopsignal"] == "INT"  # fast shutdown
    if os.geteuid() == 0:
        assert config["program:postgres"]["user"] == "postgres"
    assert int(config["program:gateway"]["priority"]) > int(config["program:kafka"]["priority"])


def test_logs_rotate_at_the_paths_a0ctl_logs_reads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = generated_config(monkeypatch, tmp_path, A0_LOG_MAX_BYTES="1000", A0_LOG_BACKUPS="2")
    section = config["program:redis"]
    assert section["stdout_logfile"] == str(tmp_path / "state" / "logs" / "redis.log")
    assert (section["stdout_logfile_maxbytes"], section["stdout_logfile_backups"]) == ("1000", "2")
    assert section["redirect_stderr"] == "true"
    watchdog = config["eventlistener:watchdog"]
    assert "TICK_5" in watchdog["events"] and "PROCESS_STATE" in watchdog["events"]


def test_replicas_are_programs_with_their_own_metrics_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = generated_config(monkeypatch, tmp_path, A0_WORKER_REPLICAS="3", A0_TOOLS_REPLICAS="2")
    settings = load_settings()
    assert (
        f'A0_WORKER_METRICS_PORT="{settings.worker.metrics_port + 20}"'
        in config["program:conversation-worker-3"]["environment"]
    )
    assert (
        f'A0_TOOLS_METRICS_PORT="{settings.tools.metrics_port + 10}"'
        in config["program:tool-executor-2"]["environment"]
    )
    # Replicas share their service's priority: scaling never redefines another program.
    assert (
        config["program:conversation-worker"]["priority"]
        == config["program:conversation-worker-3"]["priority"]
    )


def test_scaled_replicas_override_the_settings(tmp_path: Path) -> None:
    services = build_services(load_settings(), tmp_path, {"conversation-worker": 2, "tool-executor": 3})
    assert [n for n in services if n.startswith(("conversation-worker", "tool-executor"))] == [
        "tool-executor",
        "tool-executor-2",
        "tool-executor-3",
        "conversation-worker",
        "conversation-worker-2",
    ]


def test_socket_path_too_long_for_unix_sockets_moves_to_a_short_one(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    assert len(str(SupervisorPaths.under(deep).socket)) < 100
    assert SupervisorPaths.under(deep).socket == SupervisorPaths.under(deep).socket


def test_watchdog_reads_supervisord_event_tokens() -> None:
    header = "ver:3.0 server:supervisor serial:21 pool:watchdog poolserial:10 eventname:PROCESS_STATE_RUNNING len:58"
    assert (
        parse_tokens(header)["eventname"] == "PROCESS_STATE_RUNNING" and parse_tokens(header)["len"] == "58"
    )
    assert parse_tokens("processname:kafka groupname:kafka from_state:STARTING pid:42")["pid"] == "42"


def test_scale_names_what_can_be_scaled_and_the_expected_form() -> None:
    unknown = a0ctl("scale", "gateway=2")
    assert unknown.returncode == 1 and "gateway cannot be scaled" in unknown.stderr
    assert "A0_GATEWAY_WORKERS" in unknown.stderr
    malformed = a0ctl("scale", "conversation-worker")
    assert malformed.returncode == 1 and "SERVICE=N" in malformed.stderr


def test_restart_without_a_running_stack_says_how_to_start_it() -> None:
    result = a0ctl("restart", "kafka")
    assert result.returncode == 1 and "a0ctl up" in result.stderr


def test_logs_follow_a_service_log_across_its_rotation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("A0_STATE_DIR", str(tmp_path))
    log = tmp_path / "logs" / "redis.log"
    log.parent.mkdir()
    log.write_text("before\n")
    lines = LocalRuntime(load_settings()).logs("redis", lines=5, follow=True)
    assert isinstance(lines, Generator)  # following ends when it is closed
    assert next(lines) == "before\n"
    log.rename(log.with_name("redis.log.1"))  # what supervisord does at the size limit
    log.write_text("after\n")
    assert next(lines) == "after\n"
    lines.close()
