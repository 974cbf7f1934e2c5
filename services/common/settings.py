"""The one settings model of a0.

Every port, data directory, version and credential location is read here, from
environment variables (``A0_*``) and an optional ``.env`` file, with pydantic-settings.
Each concern has its own prefix; :func:`load_settings` builds them all once and the
result is passed down — nothing deeper reads ``os.environ``.

Longer than other modules on purpose: one class per concern, each a flat list of fields
with their descriptions, so every setting is found in one place (a unit test checks that
``docs/settings.md`` names each of them).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_FILE = ".env"
# Turns one core carries with answers still fast (see docs/messaging.md): the default
# floor of the budget of turns in flight, which holds until the rate turns end at is known.
TURNS_PER_CORE = 20


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=ENV_FILE, extra="ignore")


class StackSettings(BaseSettings):
    """Where the stack lives and how it is run."""

    model_config = _config("A0_")

    home: Path = Field(default=Path("."), description="Project root; relative paths resolve from here.")
    state_dir: Path = Field(
        default=Path(".a0"), description="Data, logs and supervisord files of the local runtime."
    )
    conf_dir: Path = Field(
        default=Path("conf/env"), description="Generated secrets (mode 0600, never committed)."
    )
    cache_dir: Path = Field(default=Path.home() / ".cache" / "a0", description="Downloaded artifacts.")
    runtime: str = Field(default="auto", description="auto, local or compose")
    env: str = Field(default="local", description="Environment selected in topics.yaml.")
    profile: Literal["single", "cluster"] = Field(
        default="single",
        description="single: one Kafka node; cluster: three KRaft nodes (local runtime), topics as "
        "topics.yaml's staging section has them (replication 3, min.insync.replicas 2).",
    )
    host: str = "127.0.0.1"
    startup_timeout_s: float = 90.0
    restart_retries: int = Field(
        default=3, ge=0, description="Quick exits in a row after which a service is given up (FATAL)."
    )
    watchdog_unhealthy_s: float = Field(
        default=30.0,
        ge=0,
        description="A running service failing its health check this long is restarted (0: never).",
    )
    watchdog_probe_s: float = Field(
        default=10.0,
        ge=5,
        description="How often the watchdog checks each service's health (one whose check failed: "
        "every 5 s until it passes).",
    )
    log_max_bytes: int = Field(
        default=10 * 1024 * 1024, ge=0, description="A service log is rotated at this size."
    )
    log_backups: int = Field(default=3, ge=0, description="Rotated logs kept per service.")

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.home / path).resolve()

    @property
    def state_path(self) -> Path:
        return self.resolve(self.state_dir)

    @property
    def conf_path(self) -> Path:
        return self.resolve(self.conf_dir)

    @property
    def topics_file(self) -> Path:
        return self.resolve(Path("topics.yaml"))

    @property
    def topics_env(self) -> str:
        """The section of topics.yaml applied: a local cluster is shaped as staging."""
        return "staging" if self.profile == "cluster" and self.env == "local" else self.env


# a0ctl's Kafka principal, and the brokers' own: the one super user.
KAFKA_ADMIN = "a0-admin"


class KafkaSettings(BaseSettings):
    model_config = _config("A0_KAFKA_")

    port: int = 19092
    controller_port: int = 19093
    cluster_port: int = Field(
        default=19140,
        description="With A0_PROFILE=cluster, node n (2, 3) listens on this + 2*(n-2), its controller on the next port.",
    )
    version: str = "4.2.1"
    cluster_id: str = "YTAtbG9jYWwta3JhZnQtMQ"  # base64 of 16 bytes, as KRaft requires
    heap: str = Field(
        default="256m",
        description="The broker's largest Java heap (-Xmx); it starts at 32m and grows as needed.",
    )
    bootstrap_servers: str | None = None
    security_protocol: Literal["SASL_PLAINTEXT", "PLAINTEXT"] = Field(
        default="SASL_PLAINTEXT",
        description="SASL_PLAINTEXT: every client authenticates (SCRAM) as its own principal and the "
        "broker enforces the ACLs of topics.yaml; PLAINTEXT: no authentication, no ACLs.",
    )
    sasl_mechanism: str = "SCRAM-SHA-512"
    fetch_max_wait_ms: int = Field(
        default=3000,
        ge=100,
        le=30_000,
        description="How long a consumer's fetch waits at the broker for records; one arriving "
        "answers it at once, so longer only means fewer requests from an idle consumer.",
    )
    sasl_username: str = Field(
        default=KAFKA_ADMIN,
        description="The principal this process connects as: a0ctl's own (a super user) unless a "
        "service sets its own (the local runtime does).",
    )
    sasl_password: SecretStr = Field(
        default=SecretStr(""), description="Generated in conf/env for each principal when unset."
    )
    ops_username: str = Field(
        default="ops",
        description="The principal the gateway acts as for an admin of its ops page (topics.yaml's "
        "ops: describes topics and groups, reads and replays dead letters).",
    )
    ops_password: SecretStr = Field(
        default=SecretStr(""), description="The ops principal's password; generated in conf/env when unset."
    )


class RedisSettings(BaseSettings):
    model_config = _config("A0_REDIS_")

    port: int = 16379
    url: str | None = None
    password: SecretStr = Field(
        default=SecretStr(""),
        description="Redis' password (requirepass); generated into conf/env when unset.",
    )

    def dsn(self, host: str) -> str:
        """``url`` (or the local server's), with the password when the URL names none: a
        deployment keeps the address in its config and the password in its secrets."""
        url = self.url or f"redis://{host}:{self.port}/0"
        password = self.password.get_secret_value()
        scheme, sep, rest = url.partition("://")
        if password and sep and "@" not in rest.split("/", 1)[0]:
            url = f"{scheme}://:{quote(password, safe='')}@{rest}"
        return url


class PostgresSettings(BaseSettings):
    model_config = _config("A0_POSTGRES_")

    port: int = 15432
    # The role a0's services use: owns a0's database and tables, nothing more.
    user: str = "a0"
    database: str = "a0"
    password: SecretStr = SecretStr("")
    # The superuser only a0ctl uses, to create and maintain that role (local runtime).
    admin_user: str = "a0_admin"
    admin_password: SecretStr = SecretStr("")
    url: str | None = None

    def dsn(self, host: str) -> str:
        if self.url:
            return self.url
        auth = self.user
        if self.password.get_secret_value():
            auth += ":" + self.password.get_secret_value()
        return f"postgresql://{auth}@{host}:{self.port}/{self.database}"


class OpaSettings(BaseSettings):
    model_config = _config("A0_OPA_")

    port: int = 18181
    version: str = "v1.22.3"
    url: str | None = None
    decision_cache_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a decision is reused for the same input; a policy change takes "
        "effect within this time (0: ask OPA every time).",
    )
    connections: int = Field(default=32, ge=1, description="Keep-alive connections to OPA per process.")
    timeout_s: float = Field(
        default=5.0, description="A decision not answered in this time fails closed (503)."
    )
    token: SecretStr = Field(
        default=SecretStr(""),
        description="The bearer token a0's services ask for decisions with; generated into conf/env.",
    )
    admin_token: SecretStr = Field(
        default=SecretStr(""),
        description="The bearer token that may read and change OPA's policies and data (a0ctl, "
        "tests); generated into conf/env.",
    )

    def base_url(self, host: str) -> str:
        return self.url or f"http://{host}:{self.port}"


class GatewaySettings(BaseSettings):
    model_config = _config("A0_GATEWAY_")

    port: int = 18080
    jwt_secret: SecretStr = SecretStr("")
    jwt_issuer: str = "a0"
    token_ttl_s: int = 12 * 3600
    # Development sign-in (a token for any user name): only with A0_ENV=local and the
    # gateway on a loopback address; elsewhere the gateway refuses to start with it on.
    dev_login: bool = True
    # Tokens of an external issuer (RS256/ES256): its public key (PEM text or a file) or
    # its JWKS URL, and the `iss` and `aud` its tokens must carry.
    auth_issuer: str = ""
    auth_audience: str = ""
    auth_public_key: str = ""
    auth_jwks_url: str = ""
    # /metrics answers loopback clients, and others only with this bearer token (if set).
    metrics_token: SecretStr = SecretStr("")
    max_body_bytes: int = 64 * 1024
    max_message_chars: int = 16_000
    max_inflight_turns: int = Field(
        default_factory=lambda: TURNS_PER_CORE * (os.cpu_count() or 1),
        ge=1,
        description="Turns accepted and not yet answered, across replicas, always allowed; past "
        "it, and past what the stack ends in A0_GATEWAY_SHED_TURN_S at its measured rate, new "
        "messages are shed with 429 + Retry-After. Default: 20 per core.",
    )
    shed_turn_s: float = Field(
        default=1.0,
        gt=0,
        description="The mean time a turn may stay open before new messages are shed: the budget "
        "of open turns is the turns the stack ended in the last 3 s, per second, times this "
        "(never below A0_GATEWAY_MAX_INFLIGHT_TURNS).",
    )
    max_pending_writes: int = Field(
        default=128,
        ge=1,
        description="Writes (POST, PUT, PATCH, DELETE under /v1) one gateway process works on at "
        "once, until their answer starts; past it a new write is shed with 429 + Retry-After "
        "(2 s, longer while many are shed) before any sign-in, policy or database work.",
    )
    workers: int = Field(
        default_factory=lambda: min(8, max(1, (os.cpu_count() or 1) // 2)),
        ge=1,
        le=32,
        description="Gateway processes sharing the port. Default: one per two cores, at most 8 "
        "(the conversation worker needs the rest).",
    )
    rate_per_user_per_min: int = 600
    replica: str = "gw-1"
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Host names the gateway answers to (the Host header, port aside), comma-separated; "
        "'*.example.com' takes every subdomain. Unset: only loopback names (localhost, 127.0.0.1, "
        "::1) while development sign-in is on, any name when it is off. With development sign-in "
        "on, names given here are answered besides the loopback ones.",
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="Largest request head (request line and headers) the gateway reads; past it the "
        "request is refused with 431 before it is parsed further.",
    )
    max_headers: int = Field(
        default=100, ge=8, description="Most header fields in one request; past it, 431."
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value


class WorkerSettings(BaseSettings):
    model_config = _config("A0_WORKER_")

    replicas: int = Field(default=1, ge=1, le=16, description="Worker processes the local runtime runs.")
    max_inflight: int = 256
    max_tool_rounds: int = 4
    metrics_port: int = Field(default=19101, description="Replica i (from 0) serves metrics on this + 10*i.")
    llm_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest silence (no byte at all) in an upstream LLM stream."
    )
    llm_first_content_s: float = Field(
        default=60.0,
        gt=0,
        description="An LLM round with no text or tool call from the provider in this time fails "
        "with llm_timeout (keep-alive comments do not count). Local models on a CPU may need more.",
    )
    llm_round_s: float = Field(
        default=300.0,
        gt=0,
        description="An LLM round (its retries included) not finished in this time fails with llm_timeout.",
    )
    delta_window_ms: int = Field(
        default=30,
        ge=0,
        le=1000,
        description="Answer text is sent to clients at most once per window, and waits at most one "
        "window (the first text too); 0: each piece at once.",
    )
    transcript_cache_mb: int = Field(
        default=16,
        ge=0,
        description="Transcripts a worker keeps of the conversations it owns, so a turn reads only "
        "what was stored since the last (least recently used out first; 0: read each whole). "
        "Counted as the rows' JSON: the worker holds about four times that as Python objects "
        "(measured with short messages).",
    )
    transcript_idle_s: float = Field(
        default=60.0,
        gt=0,
        description="A kept transcript is let go once its conversation has had no turn for this "
        "long; the next turn reads it whole, once.",
    )


class ToolSettings(BaseSettings):
    model_config = _config("A0_TOOLS_")

    replicas: int = Field(
        default=1, ge=1, le=16, description="Tool executor processes the local runtime runs."
    )
    max_inflight: int = 16
    metrics_port: int = Field(default=19102, description="Replica i (from 0) serves metrics on this + 10*i.")
    cpu_seconds: int = Field(
        default=5, ge=1, description="CPU time of one run, all its processes together (and each one)."
    )
    memory_mb: int = Field(
        default=256,
        ge=32,
        description="Memory of one run, all its processes and its tmpfs files together (and each "
        "process's address space).",
    )
    wall_seconds: float = 10.0
    output_bytes: int = 16_384
    max_processes: int = Field(
        default=64, ge=8, description="Processes of one run at once (its cgroup): stops a fork bomb."
    )
    cpu_cores: float = Field(default=1.0, gt=0, description="Cores one run may use at once (its cgroup).")
    tmpfs_mb: int = Field(
        default=64, ge=1, description="Size of each of a run's noexec tmpfs mounts: /tmp, /scratch, /dev/shm."
    )
    allow_unbounded: bool = Field(
        default=False,
        description="Development only: start the tool executor where no cgroup can bound runs (each "
        "process keeps its rlimits; a warning at start and in a0ctl doctor). Otherwise it refuses to start.",
    )
    # The interpreter tool code runs with; only it and its stdlib are in the sandbox.
    sandbox_python: str = "/usr/bin/python3"
    # The unprivileged user the executor drops to when started as root, and bwrap runs as.
    run_as: str = "a0-tools"
    mcp_file: Path = Field(
        default=Path("mcp.yaml"),
        description="The MCP servers whose tools are offered (relative to A0_HOME); see docs/tools.md.",
    )
    mcp_restart_max_s: float = Field(
        default=30.0, gt=0, description="The longest wait before restarting a crashed MCP server."
    )


class LLMSettings(BaseSettings):
    """The upstream OpenAI-compatible provider used when no stored credential overrides it."""

    model_config = _config("A0_LLM_")

    base_url: str | None = None
    model: str = "a0-sim-1"
    api_key: SecretStr | None = None


class EgressSettings(BaseSettings):
    """Where the operator lets credentials' base URLs point besides public HTTPS."""

    model_config = _config("A0_EGRESS_")

    allow: str = Field(
        default="",
        description="Comma-separated host:port names on loopback or private networks that a "
        "credential's base URL may use (a local model server), e.g. 127.0.0.1:11434,10.0.0.5:8000. "
        "Written to OPA's data when the stack starts; users cannot change it.",
    )

    @property
    def allowed(self) -> list[str]:
        """The names, lower-cased, as the policy compares them (``host:port``)."""
        return sorted({name.strip().lower() for name in self.allow.split(",") if name.strip()})


class LLMSimSettings(BaseSettings):
    model_config = _config("A0_LLM_SIM_")

    port: int = 18000
    api_key: SecretStr = SecretStr("")
    latency_ms: int = 20
    tokens_per_s: float = 400.0
    model: str = "a0-sim-1"


class TelemetrySettings(BaseSettings):
    """Traces: where services export them (OTLP/HTTP), and the local runtime's Jaeger."""

    model_config = _config("A0_OTEL_")

    exporter_otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP endpoint services export spans to; unset with Jaeger off: no tracing.",
    )
    service_namespace: str = "a0"
    traces_per_s: float = Field(
        default=1.0,
        ge=0,
        description="New traces each process starts per second, at most (a turn is one trace, followed "
        "across every hop): all of them on a quiet stack, a sample under load. 0: every one.",
    )
    jaeger: bool = Field(
        default=True, description="The local runtime runs Jaeger and services export their spans to it."
    )
    jaeger_version: str = "v1.76.0"
    jaeger_otlp_port: int = Field(default=14318, description="Jaeger's OTLP/HTTP receiver.")
    jaeger_query_port: int = Field(default=16686, description="Jaeger's UI and query API.")
    jaeger_grpc_port: int = Field(default=16685, description="Jaeger's gRPC query API.")
    jaeger_max_traces: int = Field(
        default=2_000,
        ge=100,
        description="Traces Jaeger keeps in memory (oldest dropped first): at the default sampling, "
        "several minutes of a busy stack.",
    )
    jaeger_url: str | None = Field(default=None, description="Jaeger's query API (default: the local one).")

    def endpoint(self, host: str) -> str | None:
        """Where services export: the configured endpoint, else the local Jaeger if it runs."""
        if self.exporter_otlp_endpoint:
            return self.exporter_otlp_endpoint
        return f"http://{host}:{self.jaeger_otlp_port}" if self.jaeger else None

    def query_url(self, host: str) -> str:
        return self.jaeger_url or f"http://{host}:{self.jaeger_query_port}"


class PrometheusSettings(BaseSettings):
    """The local runtime's Prometheus (Debian's package), scraping every a0 service."""

    model_config = _config("A0_PROMETHEUS_")

    enabled: bool = Field(default=True, description="The local runtime runs Prometheus.")
    port: int = 19090
    scrape_interval_s: int = Field(
        default=10,
        ge=1,
        le=60,
        description="How often every service is scraped (a0ctl top rates over 30 s: three scrapes).",
    )
    retention: str = Field(default="2d", description="How long samples are kept.")
    url: str | None = Field(default=None, description="Prometheus's HTTP API (default: the local one).")

    def base_url(self, host: str) -> str:
        return self.url or f"http://{host}:{self.port}"


class KubernetesSettings(BaseSettings):
    """What ``a0ctl deploy validate`` checks deploy/kubernetes with, all pinned."""

    model_config = _config("A0_K8S_")

    version: str = Field(
        default="1.33.0", description="Kubernetes version whose schemas the manifests must fit."
    )
    kubeconform_version: str = "v0.8.0"
    kustomize_version: str = "v5.8.0"
    strimzi_version: str = Field(
        default="0.45.0", description="Strimzi operator release of the Kafka resources."
    )
    keda_version: str = Field(default="v2.18.0", description="KEDA release of the ScaledObject resources.")


class Settings(BaseModel):
    """All of a0's settings, built once per process by :func:`load_settings`."""

    stack: StackSettings
    kafka: KafkaSettings
    redis: RedisSettings
    postgres: PostgresSettings
    opa: OpaSettings
    gateway: GatewaySettings
    worker: WorkerSettings
    tools: ToolSettings
    llm: LLMSettings
    llm_sim: LLMSimSettings
    telemetry: TelemetrySettings
    egress: EgressSettings = Field(default_factory=EgressSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    prometheus: PrometheusSettings = Field(default_factory=PrometheusSettings)

    model_config = {"arbitrary_types_allowed": True}

    @cached_property
    def kafka_nodes(self) -> list[tuple[int, int, int]]:
        """``(node id, port, controller port)`` of each Kafka node the local runtime runs."""
        nodes = [(1, self.kafka.port, self.kafka.controller_port)]
        if self.stack.profile == "cluster":
            nodes += [
                (n, self.kafka.cluster_port + 2 * (n - 2), self.kafka.cluster_port + 2 * (n - 2) + 1)
                for n in (2, 3)
            ]
        return nodes

    @cached_property
    def kafka_bootstrap(self) -> str:
        if self.kafka.bootstrap_servers:
            return self.kafka.bootstrap_servers
        # Every node: a client starting while one is down still finds the cluster.
        return ",".join(f"{self.stack.host}:{port}" for _, port, _ in self.kafka_nodes)

    @cached_property
    def redis_url(self) -> str:
        return self.redis.dsn(self.stack.host)

    @cached_property
    def postgres_dsn(self) -> str:
        return self.postgres.dsn(self.stack.host)

    @cached_property
    def opa_url(self) -> str:
        return self.opa.base_url(self.stack.host)

    @cached_property
    def gateway_url(self) -> str:
        return f"http://{self.stack.host}:{self.gateway.port}"

    @cached_property
    def llm_sim_url(self) -> str:
        return f"http://{self.stack.host}:{self.llm_sim.port}/v1"

    @property
    def llm_base_url(self) -> str:
        """The configured provider, or the local simulator when none is configured."""
        return self.llm.base_url or self.llm_sim_url


def load_settings() -> Settings:
    """Read every settings group, then fill generated secrets from ``conf/env``."""
    from services.common.secrets_env import apply_generated_secrets

    settings = Settings(
        stack=StackSettings(),
        kafka=KafkaSettings(),
        redis=RedisSettings(),
        postgres=PostgresSettings(),
        opa=OpaSettings(),
        gateway=GatewaySettings(),
        worker=WorkerSettings(),
        tools=ToolSettings(),
        llm=LLMSettings(),
        llm_sim=LLMSimSettings(),
        telemetry=TelemetrySettings(),
        egress=EgressSettings(),
        kubernetes=KubernetesSettings(),
        prometheus=PrometheusSettings(),
    )
    return apply_generated_secrets(settings)
