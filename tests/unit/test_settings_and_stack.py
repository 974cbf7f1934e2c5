"""Settings, status rendering and the stack's error messages, without services."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from rich.console import Console

from a0ctl.commands.stack import status_table
from a0ctl.errors import StackError
from a0ctl.runtime.base import ServiceStatus
from a0ctl.runtime.local import LocalRuntime
from a0ctl.runtime.local_services import build_services
from bench.conversations import PORT_OFFSET
from services.common.secrets_env import ensure_generated_secrets, read_generated_secret
from services.common.settings import load_settings
from tests.conftest import TEST_ENV
from tests.support.ports import stack_ports

pytestmark = pytest.mark.unit


def test_settings_read_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("A0_KAFKA_PORT", "39092")
    monkeypatch.setenv("A0_REDIS_URL", "redis://example:1/0")
    monkeypatch.setenv("A0_REDIS_PASSWORD", "p@ss/word")
    settings = load_settings()
    assert settings.kafka_bootstrap == "127.0.0.1:39092"
    # The URL keeps the address, the password comes from its own setting (a secret).
    assert settings.redis_url == "redis://:p%40ss%2Fword@example:1/0"
    monkeypatch.setenv("A0_REDIS_URL", "redis://:given@example:1/0")
    assert load_settings().redis_url == "redis://:given@example:1/0"


def test_llm_defaults_to_local_simulator_until_a_provider_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().llm_base_url.endswith(f":{load_settings().llm_sim.port}/v1")
    monkeypatch.setenv("A0_LLM_BASE_URL", "https://llm.example/v1")
    assert load_settings().llm_base_url == "https://llm.example/v1"


def test_generated_secrets_are_private_and_stable(tmp_path: Path) -> None:
    path = ensure_generated_secrets(tmp_path / "conf")
    assert path.stat().st_mode & 0o777 == 0o600
    first = read_generated_secret(tmp_path / "conf", "A0_GATEWAY_JWT_SECRET")
    ensure_generated_secrets(tmp_path / "conf")
    assert first and read_generated_secret(tmp_path / "conf", "A0_GATEWAY_JWT_SECRET") == first


def test_status_table_shows_each_service_and_its_health() -> None:
    statuses = [
        ServiceStatus(
            name="kafka", runtime="local", state="running", healthy=True, endpoint="127.0.0.1:1", pid=5
        ),
        ServiceStatus(
            name="redis",
            runtime="local",
            state="unhealthy",
            healthy=False,
            endpoint="127.0.0.1:2",
            pid=6,
            detail="ConnectionError",
        ),
    ]
    console = Console(width=200, record=True)
    console.print(status_table(statuses))
    text = console.export_text()
    assert "kafka" in text and "healthy" in text and "127.0.0.1:1" in text
    assert "ConnectionError" in text


def test_port_taken_by_another_process_names_service_and_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        monkeypatch.setenv("A0_REDIS_PORT", str(port))
        monkeypatch.setenv("A0_STATE_DIR", str(tmp_path / "state"))
        runtime = LocalRuntime(load_settings())
        with pytest.raises(StackError) as info:
            runtime.up(services=("redis",))
    assert info.value.service == "redis"
    assert f"port {port}" in info.value.message and "already in use" in info.value.message
    # The process that holds it is named: here, this test's own.
    assert f"pid {os.getpid()} (" in info.value.message


def test_corrupt_postgres_data_dir_is_reported_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "data" / "postgres").mkdir(parents=True)
    (tmp_path / "data" / "postgres" / "garbage").write_text("x")
    services = build_services(load_settings(), tmp_path)
    with pytest.raises(StackError) as info:
        services["postgres"].prepare()
    assert "corrupt" in info.value.message and "a0ctl down --purge" in str(info.value)


def test_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    services = build_services(load_settings(), tmp_path)
    with pytest.raises(StackError) as info:
        services["redis"].command()
    assert "redis-server not found" in info.value.message and "apt-get install redis-server" in str(
        info.value
    )


def test_compose_runtime_without_engine_says_what_to_do() -> None:
    from a0ctl.runtime import docker_engine_answers, get_runtime

    if docker_engine_answers():  # with an engine, compose is what the user gets
        assert get_runtime(load_settings(), "compose").name == "compose"
        return
    with pytest.raises(StackError) as info:
        get_runtime(load_settings(), "compose")
    assert "needs a Docker engine" in info.value.message and "--runtime local" in str(info.value)


def test_every_setting_is_documented() -> None:
    from pydantic_settings import BaseSettings

    from services.common import settings as module
    from tests.conftest import ROOT

    documented = (ROOT / "docs" / "settings.md").read_text()
    groups = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, BaseSettings)]
    missing = [
        f"{group.model_config['env_prefix']}{name.upper()}"
        for group in groups
        if group is not BaseSettings
        for name in group.model_fields
        if f"`{group.model_config['env_prefix']}{name.upper()}`" not in documented
    ]
    assert not missing, f"add to docs/settings.md: {missing}"


def test_postgres_user_can_reach_a_state_dir_under_a_private_directory(tmp_path: Path) -> None:
    import os
    import pwd

    from a0ctl.runtime.service import allow_traversal

    # Debian's postgresql package (installed by scripts/bootstrap.sh) creates the user,
    # and the test commands run as root (see the README).
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("no postgres user: run scripts/bootstrap.sh (it installs postgresql)")
    assert os.geteuid() == 0, (
        "run the tests as root, as the README says: only root hands PostgreSQL to another user"
    )
    private = tmp_path / "private"
    (private / "state" / "data").mkdir(parents=True)
    private.chmod(0o700)
    allow_traversal(private / "state" / "data", "postgres", "postgres")
    assert private.stat().st_mode & 0o777 == 0o701  # search added, nothing else


def test_service_connections_plan_prepared_statements_once_and_keep_a_urls_own_options() -> None:
    from services.common.db import _with_generic_plans

    generic = "-c plan_cache_mode=force_generic_plan"
    assert _with_generic_plans("postgresql://a0:pw@127.0.0.1:15432/a0") == generic
    with_own = "postgresql://a0:pw@db:5432/a0?options=-c%20search_path%3Dagents"
    assert _with_generic_plans(with_own) == f"-c search_path=agents {generic}"


def test_the_bench_stack_binds_no_port_an_outgoing_connection_may_hold_or_the_test_stack_uses() -> None:
    low, _high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = set(stack_ports(PORT_OFFSET).values())
    assert max(ports) < low, sorted(ports)
    assert not ports & {int(value) for key, value in TEST_ENV.items() if key.endswith("_PORT")}
