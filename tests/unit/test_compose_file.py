"""Static checks of stack/docker-compose.yaml (there is no Docker engine in CI)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

import services.common.settings as settings_module

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "stack"
COMPOSE_FILE = STACK / "docker-compose.yaml"

INFRA_SERVICES = ("kafka", "redis", "postgres", "opa")
APP_SERVICES = ("gateway", "conversation-worker", "tool-executor", "llm-sim")
REQUIRED_SERVICES = {*INFRA_SERVICES, *APP_SERVICES}

# Bind-mounted paths that do not live in the repository but are generated at runtime
# (``a0ctl up`` writes the secrets of StackSettings.conf_dir; it is git-ignored).
GENERATED_PATHS = {
    (REPO / settings_module.StackSettings.model_fields["conf_dir"].default).resolve(),
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert COMPOSE_FILE.is_file(), "stack/docker-compose.yaml is missing"
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose.get("services")
    assert isinstance(svcs, dict) and svcs, "no services in compose file"
    return svcs


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _settings_env_vars() -> dict[str, str]:
    """Every environment variable the settings model reads -> "Class.field"."""
    names: dict[str, str] = {}
    for _, cls in inspect.getmembers(settings_module, inspect.isclass):
        if not issubclass(cls, BaseSettings) or cls is BaseSettings:
            continue
        prefix = cls.model_config.get("env_prefix", "")
        for field in cls.model_fields:
            names[f"{prefix}{field}".upper()] = f"{cls.__name__}.{field}"
    return names


def _image_tag(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


# --- the file ----------------------------------------------------------------------


@pytest.mark.milestone("M0")
def test_compose_file_parses(compose: dict[str, Any]) -> None:
    assert "services" in compose


@pytest.mark.milestone("M0")
def test_required_services_exist_with_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    missing = REQUIRED_SERVICES - services.keys()
    assert not missing, f"missing services: {sorted(missing)}"
    for name in sorted(REQUIRED_SERVICES):
        check = services[name].get("healthcheck")
        assert isinstance(check, dict) and check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        image = svc.get("image")
        if image is None:
            assert "build" in svc, f"{name} has neither image nor build"
            continue
        if "build" in svc:
            continue  # locally built image
        tag = _image_tag(image)
        assert tag and tag != "latest", f"{name} image {image!r} is not pinned"


# --- kafka ------------------------------------------------------------------------


def test_kafka_is_pinned_cp_kafka_in_kraft_mode(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    image = kafka["image"]
    assert image.split(":", 1)[0] == "confluentinc/cp-kafka"
    tag = _image_tag(image)
    assert tag and tag != "latest" and re.fullmatch(r"\d+\.\d+\.\d+", tag), f"unpinned tag {tag!r}"

    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@kafka:9093"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert "CONTROLLER://" in env["KAFKA_LISTENERS"]
    assert "BROKER://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "BROKER"
    protocol_map = dict(p.split(":", 1) for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {entry.split("://", 1)[0] for entry in env["KAFKA_LISTENERS"].split(",")}
    assert listeners <= protocol_map.keys()
    assert env["CLUSTER_ID"], "CLUSTER_ID is required in KRaft mode"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].lower() == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert kafka.get("volumes"), "kafka has no data volume"
    assert "kafka-broker-api-versions" in " ".join(kafka["healthcheck"]["test"])


# --- app services ---------------------------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_depends_on_healthy_infrastructure(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    depends = services[name].get("depends_on")
    assert isinstance(depends, dict), f"{name}: depends_on must use the long form with conditions"
    for infra in INFRA_SERVICES:
        assert infra in depends, f"{name} does not depend on {infra}"
        assert depends[infra].get("condition") == "service_healthy", f"{name} -> {infra}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_runs_a0ctl_from_the_shared_image(services: dict[str, dict[str, Any]], name: str) -> None:
    svc = services[name]
    build = svc.get("build")
    assert isinstance(build, dict), f"{name} is not built from stack/Dockerfile"
    assert (STACK / build["context"] / build["dockerfile"]).resolve() == (STACK / "Dockerfile").resolve()
    assert svc.get("command") == ["run", name]
    assert 'ENTRYPOINT ["a0ctl"]' in (STACK / "Dockerfile").read_text()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_env_maps_to_settings(services: dict[str, dict[str, Any]], name: str) -> None:
    known = _settings_env_vars()
    env = _env(services[name])
    assert env, f"{name} has no environment"
    for key in env:
        assert key.startswith("A0_"), f"{name}: {key} is not an A0_ variable"
        assert key in known, f"{name}: {key} matches no field of services.common.settings"


def test_app_services_share_one_environment(services: dict[str, dict[str, Any]]) -> None:
    # Each service that talks to Kafka signs in as its own principal (topics.yaml's).
    principals = _principals()
    envs = []
    for name in APP_SERVICES:
        env = dict(_env(services[name]))
        username = env.pop("A0_KAFKA_SASL_USERNAME", None)
        assert username == (name if name in principals else None), f"{name} signs in to Kafka as {username}"
        # Only the tool executor runs tools, bounded by its container's limits.
        unbounded = env.pop("A0_TOOLS_ALLOW_UNBOUNDED", None)
        assert (unbounded == "true") == (name == "tool-executor"), name
        if unbounded:
            assert {"mem_limit", "pids_limit", "cpus"} <= set(services[name]), (
                "unbounded runs need container limits"
            )
        envs.append(env)
    assert all(env == envs[0] for env in envs), "app services should share the x-a0-env block"
    env = envs[0]
    assert env["A0_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert re.fullmatch(r"redis://:\$\{A0_REDIS_PASSWORD[^}]*\}@redis:6379/0", env["A0_REDIS_URL"])
    assert env["A0_OPA_URL"] == "http://opa:8181"
    assert env["A0_HOST"] == "0.0.0.0"
    assert re.fullmatch(
        r"postgresql://a0:\$\{A0_POSTGRES_PASSWORD[^}]*\}@postgres:5432/a0", env["A0_POSTGRES_URL"]
    )


def test_settings_env_map_is_built_from_the_model() -> None:
    known = _settings_env_vars()
    assert known["A0_KAFKA_BOOTSTRAP_SERVERS"] == "KafkaSettings.bootstrap_servers"
    assert known["A0_HOST"] == "StackSettings.host"
    assert known["A0_CONF_DIR"] == "StackSettings.conf_dir"
    assert known["A0_LLM_SIM_PORT"] == "LLMSimSettings.port"


# --- mounts and ports -----------------------------------------------------------------


def _volume_sources(service: dict[str, Any]) -> list[str]:
    sources = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            sources.append(volume.split(":", 1)[0])
        elif isinstance(volume, dict) and volume.get("type", "bind") == "bind":
            sources.append(str(volume.get("source", "")))
    return sources


def test_relative_volume_paths_exist(services: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for name, svc in services.items():
        for source in _volume_sources(svc):
            if not source.startswith(("./", "../")):
                continue
            path = (STACK / source).resolve()
            if path in GENERATED_PATHS:
                continue
            checked += 1
            assert path.exists(), f"{name}: volume source {source} ({path}) does not exist"
            assert path.is_relative_to(REPO), f"{name}: {source} points outside the repository"
    assert checked, "no repository path is mounted"


def _published(port: Any) -> tuple[str | None, str]:
    """(host_ip, text) of one ``ports`` entry; host_ip None when none is given."""
    if isinstance(port, dict):
        return port.get("host_ip"), str(port)
    text = str(port)
    # Strip ${VAR:-default} interpolations so their ':' do not split the entry.
    plain = re.sub(r"\$\{[^}]*\}", "VAR", text)
    parts = plain.split(":")
    return (parts[0] if len(parts) == 3 else None), text


@pytest.mark.milestone("M1")
def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            host_ip, text = _published(port)
            assert host_ip == "127.0.0.1", f"{name}: port {text} is not bound to 127.0.0.1"


@pytest.mark.milestone("M1")
def test_gateway_port_is_published(services: dict[str, dict[str, Any]]) -> None:
    ports = [str(p) for p in services["gateway"].get("ports") or []]
    assert any(p.startswith("127.0.0.1:") and p.endswith(":8080") for p in ports)


def test_every_required_variable_is_a_generated_secret() -> None:
    # `a0ctl up --runtime compose` passes conf/env/secrets.env to compose: whatever the
    # file requires (${VAR:?...}) must be in it, PostgreSQL's passwords included.
    from services.common.secrets_env import KEYS, kafka_password_key
    from services.common.settings import KAFKA_ADMIN

    required = set(re.findall(r"\$\{(A0_[A-Z0-9_]+):\?", COMPOSE_FILE.read_text()))
    assert {"A0_POSTGRES_PASSWORD", "A0_POSTGRES_ADMIN_PASSWORD", kafka_password_key(KAFKA_ADMIN)} <= required
    generated = {*KEYS, *(kafka_password_key(p) for p in [KAFKA_ADMIN, *_principals()])}
    assert required <= generated, f"not generated: {required - generated}"


def test_postgres_has_no_trust_and_services_use_their_own_role(services: dict[str, dict[str, Any]]) -> None:
    env = services["postgres"]["environment"]
    assert env["POSTGRES_USER"] != "a0"  # the superuser is the admin, not the services' role
    assert "scram-sha-256" in env["POSTGRES_INITDB_ARGS"] and "trust" not in env["POSTGRES_INITDB_ARGS"]
    assert "POSTGRES_HOST_AUTH_METHOD" not in env
    script = (STACK / "postgres" / "init-a0-role.sh").read_text()
    assert "NOSUPERUSER" in script and "OWNER" in script


def test_redis_and_opa_authenticate_and_grafana_has_no_default_password(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    # Redis: a password from a config file (not its command line), used by its health check.
    redis = services["redis"]
    conf = next(c for c in redis["configs"] if c["source"] == "redis-auth")
    assert conf["target"] in redis["command"]
    assert re.fullmatch(
        r"requirepass \$\{A0_REDIS_PASSWORD:\?[^}]*\}\n", compose["configs"]["redis-auth"]["content"]
    )
    assert not any("requirepass" in str(part) for part in redis["command"])
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${A0_REDIS_PASSWORD:?")
    # OPA: token authentication, decided by stack/opa/system/authz.rego on both tokens.
    opa = services["opa"]
    assert {"--authentication=token", "--authorization=basic"} <= set(opa["command"])
    assert (STACK / "opa" / "system" / "authz.rego").is_file()
    assert set(opa["environment"]) == {"A0_OPA_TOKEN", "A0_OPA_ADMIN_TOKEN"}
    # Grafana: the admin password is generated, never a default.
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${A0_GRAFANA_ADMIN_PASSWORD:?"), password


def _principals() -> set[str]:
    from a0ctl.topics.model import load_topics_file

    return set(load_topics_file(REPO / "topics.yaml").principals)


def _broker_properties(env: dict[str, str]) -> dict[str, str]:
    """cp-kafka's rendering of its KAFKA_* variables: lower case, ``___`` → ``-``,
    ``__`` → ``_``, ``_`` → ``.`` (Confluent's image documentation)."""
    properties = {}
    for key, value in env.items():
        if not key.startswith("KAFKA_") or key in ("KAFKA_HEAP_OPTS", "KAFKA_OPTS"):
            continue
        name = key[len("KAFKA_") :].lower()
        name = name.replace("___", "\0").replace("__", "\1").replace("_", ".")
        properties[name.replace("\0", "-").replace("\1", "_")] = " ".join(str(value).split())
    return properties


def test_compose_broker_has_the_local_runtimes_sasl_and_acls(services: dict[str, dict[str, Any]]) -> None:
    from a0ctl.runtime.kafka_local import listener_lines
    from services.common.settings import load_settings

    compose = _broker_properties(_env(services["kafka"]))
    local = dict(
        line.split("=", 1) for line in listener_lines(load_settings(), 1, 2, "${A0_KAFKA_PASSWORD_A0_ADMIN}")
    )
    mechanism = local["sasl.mechanism.inter.broker.protocol"]
    protocols = dict(p.split(":", 1) for p in compose["listener.security.protocol.map"].split(","))
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}, protocols
    for key in (
        "inter.broker.listener.name",
        "sasl.mechanism.inter.broker.protocol",
        "listener.name.broker.sasl.enabled.mechanisms",
        "listener.name.controller.sasl.enabled.mechanisms",
        "sasl.mechanism.controller.protocol",
        "authorizer.class.name",
        "super.users",
        "allow.everyone.if.no.acl.found",
    ):
        assert compose[key] == local[key], key
    # Clients from the host sign in the same way as inside compose's network.
    assert compose["listener.name.host.sasl.enabled.mechanisms"] == mechanism
    jaas = f"listener.name.broker.{mechanism.lower()}.sasl.jaas.config"
    required = "${A0_KAFKA_PASSWORD_A0_ADMIN:?set A0_KAFKA_PASSWORD_A0_ADMIN}"
    for key in (jaas, "listener.name.controller.plain.sasl.jaas.config"):
        assert compose[key] == local[key].replace("${A0_KAFKA_PASSWORD_A0_ADMIN}", required), key
    # The admin's SCRAM credential is written when the storage is formatted.
    command = " ".join(services["kafka"]["command"])
    assert f'--add-scram "{mechanism}=[name=a0-admin,password=$$A0_KAFKA_ADMIN_PASSWORD]"' in command
    assert "--command-config" in " ".join(services["kafka"]["healthcheck"]["test"])


# --- the MCP servers of mcp.yaml in the image ------------------------------------------


def _stages(dockerfile: str) -> dict[str, list[str]]:
    """Each stage of the Dockerfile (by its alias, "" for the final one) → its instructions,
    continuation lines joined."""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in re.sub(r"\\\n\s*", " ", dockerfile).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            words = line.split()
            current = []
            stages[words[3] if len(words) > 3 and words[2].upper() == "AS" else ""] = current
            stages.setdefault("", current)
        current.append(line)
    stages[""] = current  # the last stage is the image
    return stages


def test_the_image_ships_mcp_yaml_and_what_its_servers_need(services: dict[str, dict[str, Any]]) -> None:
    from services.common.mcp_servers import SERVERS_DIR, StdioServer, parse

    stages = _stages((STACK / "Dockerfile").read_text())
    image = stages[""]
    workdir = next(line.split()[1] for line in image if line.startswith("WORKDIR "))
    env = " ".join(line for line in image if line.startswith("ENV "))
    assert f"A0_HOME={workdir}" in env  # mcp.yaml and {repo} are resolved against it
    copies = [line.split()[1:] for line in image if line.startswith("COPY ")]
    assert any("mcp.yam[l]" in words or "mcp.yaml" in words for words in copies), (
        "mcp.yaml is not in the image"
    )

    # Node >= 20 and the npm servers from the lock, both out of a node image's stage.
    npm_stage = next(name for name, lines in stages.items() if any("npm ci" in line for line in lines))
    base = stages[npm_stage][0].split()[1]
    assert base.startswith("node:") and int(base.split(":")[1].split("-")[0].split(".")[0]) >= 20, base
    npm = stages[npm_stage]
    assert any("stack/mcp-servers/package-lock.json" in line for line in npm if line.startswith("COPY "))
    assert any(words[:2] == [f"--from={npm_stage}", "/usr/local/bin/node"] for words in copies)
    node_modules = f"./{SERVERS_DIR}/node_modules"
    assert any(words[0] == f"--from={npm_stage}" and words[-1] == node_modules for words in copies)

    # Every stdio server of mcp.yaml finds its command and its files there.
    shipped_py = {re.split(r"[<>=!~ ]", dep)[0] for dep in _pyproject_dependencies()}
    config = parse((REPO / "mcp.yaml").read_text())
    for name, spec in config.servers.items():
        if not isinstance(spec, StdioServer):
            continue
        if spec.command == "node":
            script = spec.args[0]
            assert script.startswith(f"{{repo}}/{SERVERS_DIR}/node_modules/"), (name, script)
            package = "/".join(script.split("/node_modules/", 1)[1].split("/")[:2])
            lock = (REPO / SERVERS_DIR / "package-lock.json").read_text()
            assert f'"node_modules/{package}"' in lock, (name, package)
        else:
            assert spec.command in shipped_py, f"{name}: {spec.command} is not installed in the image"
    # The tool executor and OPA's data read the image's mcp.yaml (no other path set).
    for service in ("tool-executor", "opa-data"):
        assert "A0_TOOLS_MCP_FILE" not in _env(services[service]), service


def _pyproject_dependencies() -> list[str]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def test_the_image_runs_a0_on_jemalloc_as_the_local_runtime_does() -> None:
    from a0ctl.runtime.local_services import JEMALLOC_CONF

    image = _stages((STACK / "Dockerfile").read_text())[""]
    env = dict(
        word.split("=", 1)
        for line in image
        if line.startswith("ENV ")
        for word in line.split()[1:]
        if "=" in word
    )
    assert env["PYTHONMALLOC"] == "malloc"
    assert env["MALLOC_CONF"] == JEMALLOC_CONF
    preload = env["LD_PRELOAD"]
    runs = " ".join(line for line in image if line.startswith("RUN "))
    assert "libjemalloc2" in runs and runs.index("libjemalloc2") < runs.index(f"{preload}"), (
        f"the image installs libjemalloc2 and links it at {preload}"
    )


def test_jaegers_go_heap_is_kept_as_small_in_compose_as_in_the_local_runtime(
    services: dict[str, dict[str, Any]],
) -> None:
    from a0ctl.runtime.telemetry_services import JAEGER_ENV

    env = _env(services["jaeger"])
    assert {key: env.get(key) for key in JAEGER_ENV} == JAEGER_ENV
