"""Another user of the same machine, with no a0 credential: a system user the test creates
tries every file of the stack's state and every port it listens on. Nothing is readable or
writable, and every service that holds something refuses it; those that hold nothing
secret (Jaeger, Prometheus, the services' metrics) listen on loopback only.

The probe runs as that user with the system interpreter and the standard library alone,
so it needs nothing from the checkout."""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.settings import Settings

pytestmark = pytest.mark.hostile

INTRUDER = "a0-intruder"

PROBE = r"""
import http.client, json, os, socket, struct, sys

args = json.loads(sys.argv[1])
host = args["host"]
found = {"readable": [], "writable": [], "listable": [], "answered": {}}

for path in args["files"]:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        found["readable"].append(path)
    except OSError:
        pass
    try:
        with open(path, "ab"):
            pass
        found["writable"].append(path)
    except OSError:
        pass
for path in args["dirs"]:
    try:
        os.listdir(path)
        found["listable"].append(path)
    except OSError:
        pass
    try:
        probe = os.path.join(path, ".intruder")
        with open(probe, "wb"):
            pass
        os.unlink(probe)
        found["writable"].append(path)
    except OSError:
        pass


def exchange(port, data, size=512):
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(data)
        try:
            return conn.recv(size)
        except (ConnectionResetError, socket.timeout):
            return b""


def http_status(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status


def kafka_metadata(port):
    # Metadata v0 for every topic, without authenticating first.
    client = b"intruder"
    body = struct.pack(">hhih", 3, 0, 7, len(client)) + client + struct.pack(">i", 0)
    return exchange(port, struct.pack(">i", len(body)) + body).hex()


def postgres_startup(port, user, database):
    params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
    body = struct.pack(">i", 196608) + params
    answer = exchange(port, struct.pack(">i", len(body) + 4) + body)
    # 'R' + length + auth code: 0 would be "trusted, you are in".
    return [answer[:1].decode(errors="replace"), struct.unpack(">i", answer[5:9])[0] if len(answer) >= 9 else None]


answered = found["answered"]
for name, port in args["kafka"].items():
    answered[name] = kafka_metadata(port)
answered["redis"] = exchange(args["redis"], b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n").decode(errors="replace")
answered["postgres"] = postgres_startup(args["postgres"], args["pg_user"], args["pg_database"])
answered["postgres-admin"] = postgres_startup(args["postgres"], args["pg_admin"], "postgres")
opa = args["opa"]
answered["opa-decide"] = http_status(opa, "POST", "/v1/data/a0/authz/decision", body='{"input": {}}')
answered["opa-read-data"] = http_status(opa, "GET", "/v1/data")
answered["opa-write-policy"] = http_status(opa, "PUT", "/v1/policies/x", body="package x\nallow := true\n")
answered["opa-write-data"] = http_status(opa, "PUT", "/v1/data/a0_local/egress_allowed", body='["10.0.0.1:80"]')
answered["gateway"] = http_status(args["gateway"], "GET", "/v1/conversations")
answered["llm-sim"] = http_status(
    args["llm_sim"], "POST", "/v1/chat/completions", body='{"model": "x", "messages": []}',
    headers={"Content-Type": "application/json"},
)
for path in args["sockets"]:
    unix = socket.socket(socket.AF_UNIX)
    try:
        unix.connect(path)
        answered["socket " + path] = "connected"
    except OSError as exc:
        answered["socket " + path] = type(exc).__name__
    finally:
        unix.close()
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def intruder() -> Iterator[str]:
    """A system user with no home and no login, created for this test and removed after."""
    assert os.geteuid() == 0, "run the tests as root, as the README says: the test creates a user"
    created = False
    try:
        pwd.getpwnam(INTRUDER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", INTRUDER], check=True
        )
        created = True
    try:
        yield INTRUDER
    finally:
        if created:
            subprocess.run(["userdel", INTRUDER], check=False)


def _listening(port: int) -> list[str]:
    """The local addresses something listens on at ``port`` (/proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.append(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.append(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_another_local_user_reads_nothing_and_every_service_refuses(
    stack: None, settings: Settings, intruder: str
) -> None:
    state = settings.stack.state_path
    conf = settings.stack.conf_path
    files: list[str] = []
    dirs: list[str] = []
    sockets: list[str] = []
    for root in (state, conf):
        for path in (root, *root.rglob("*")):
            mode = path.lstat().st_mode
            if stat.S_ISSOCK(mode):
                sockets.append(str(path))
            elif stat.S_ISDIR(mode):
                dirs.append(str(path))
            elif stat.S_ISREG(mode):
                files.append(str(path))
    assert len(files) > 50 and any("kafka" in f for f in files) and any("appendonly" in f for f in files)
    kafka = {f"kafka-{node}": port for node, port, _ in settings.kafka_nodes}
    kafka |= {f"kafka-controller-{node}": port for node, _, port in settings.kafka_nodes}
    args = {
        "host": settings.stack.host,
        "files": files,
        "dirs": dirs,
        "sockets": sockets,
        "kafka": kafka,
        "redis": settings.redis.port,
        "postgres": settings.postgres.port,
        "pg_user": settings.postgres.user,
        "pg_database": settings.postgres.database,
        "pg_admin": settings.postgres.admin_user,
        "opa": settings.opa.port,
        "gateway": settings.gateway.port,
        "llm_sim": settings.llm_sim.port,
    }
    entry = pwd.getpwnam(intruder)
    result = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", PROBE, json.dumps(args)],
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)

    assert found["readable"] == []
    assert found["writable"] == []
    assert found["listable"] == []
    answered = found["answered"]
    for name in kafka:
        assert answered[name] == "", f"{name} answered a metadata request without SASL: {answered[name]}"
    assert answered["redis"].startswith("-NOAUTH"), answered["redis"]
    for role in ("postgres", "postgres-admin"):
        message, code = answered[role]
        assert message == "R" and code == 10, (
            f"{role}: expected a SCRAM challenge (R, 10), got {message} {code}"
        )
    for call in ("opa-decide", "opa-read-data", "opa-write-policy", "opa-write-data", "gateway", "llm-sim"):
        assert answered[call] == 401, f"{call} answered {answered[call]} without credentials"
    for unix in sockets:
        assert answered[f"socket {unix}"] == "PermissionError", (unix, answered[f"socket {unix}"])

    # What holds nothing secret answers, but on loopback only.
    open_ports = {
        "jaeger-query": settings.telemetry.jaeger_query_port,
        "jaeger-otlp": settings.telemetry.jaeger_otlp_port,
        "jaeger-grpc": settings.telemetry.jaeger_grpc_port,
        "prometheus": settings.prometheus.port,
        "worker-metrics": settings.worker.metrics_port,
        "tools-metrics": settings.tools.metrics_port,
    }
    for name, port in open_ports.items():
        addresses = _listening(port)
        assert addresses, f"nothing listens on {name}'s port {port}"
        assert set(addresses) <= {"127.0.0.1", "::1"}, f"{name} listens on {addresses}"
