"""Extra a0 service processes for a test — a second upstream simulator with a key only
the test knows, a second gateway with its own settings — started as users run them."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.common.settings import load_settings
from tests.conftest import ROOT
from tests.support.waiting import wait_until


@dataclass
class SimProcess:
    base_url: str
    api_key: str
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_service(service: str, env: dict[str, str], health_url: str, log: Path) -> Iterator[None]:
    """``a0ctl run SERVICE`` with extra settings in ``env``, until the block ends."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "a0ctl", "run", service],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{service} exited: {log.read_text()[-2000:]}")
        try:
            return httpx.get(health_url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, 30, f"{service} answering {health_url} (log: {log})")
        yield
    finally:
        process.terminate()
        process.wait(20)


@contextmanager
def running_sim(log_dir: Path) -> Iterator[SimProcess]:
    port = free_port()
    api_key = "sk-test-" + secrets.token_urlsafe(24)
    log = log_dir / f"llm-sim-{port}.log"
    env = {"A0_LLM_SIM_PORT": str(port), "A0_LLM_SIM_API_KEY": api_key}
    with (
        running_service("llm-sim", env, f"http://127.0.0.1:{port}/health", log),
        allow_listed(f"127.0.0.1:{port}"),
    ):
        yield SimProcess(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, log=log)


@contextmanager
def allow_listed(name: str) -> Iterator[None]:
    """Let credentials point at ``host:port`` (a loopback simulator) while the block runs,
    through OPA's data API: the policy allows loopback only for allow-listed names."""
    settings = load_settings()
    url = settings.opa_url + "/v1/data/a0_local/egress_allowed"
    # Only a0ctl's token may change OPA's data (stack/opa/system/authz.rego).
    admin = {"Authorization": f"Bearer {settings.opa.admin_token.get_secret_value()}"}
    before = httpx.get(url, headers=admin, timeout=5).json().get("result") or []
    httpx.put(url, json=sorted({*before, name}), headers=admin, timeout=5).raise_for_status()
    try:
        yield
    finally:
        now = httpx.get(url, headers=admin, timeout=5).json().get("result") or []
        httpx.put(url, json=[n for n in now if n != name], headers=admin, timeout=5).raise_for_status()


@contextmanager
def running_gateway(log_dir: Path, **settings: str) -> Iterator[str]:
    """A further gateway replica on a free port; yields its base URL."""
    port = free_port()
    env = {"A0_GATEWAY_PORT": str(port), **settings}
    with running_service("gateway", env, f"http://127.0.0.1:{port}/health", log_dir / f"gateway-{port}.log"):
        yield f"http://127.0.0.1:{port}"
