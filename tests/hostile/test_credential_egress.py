"""A credential's base URL is a request the stack makes for a user: it may not point at
the stack itself, private networks, or plain HTTP elsewhere, and the answer must not
tell whether a port is open."""

from __future__ import annotations

import json
import re

import httpx
import psycopg
import pytest

from services.common.settings import Settings
from tests.support.cli import a0ctl
from tests.support.gateway import auth, create_conversation, send_and_collect

pytestmark = pytest.mark.hostile


def _targets(settings: Settings) -> list[str]:
    host = settings.stack.host
    ports = [
        settings.opa.port,  # OPA: its data API would tell the policy
        settings.tools.metrics_port,
        settings.worker.metrics_port,
        settings.gateway.port,
        settings.redis.port,
        settings.postgres.port,
        1,  # closed
    ]
    return [
        *(f"http://{host}:{port}/v1" for port in ports),
        f"http://localhost:{settings.opa.port}/v1",
        f"https://localhost:{settings.opa.port}/v1",
        f"http://[::1]:{settings.opa.port}/v1",
        "http://169.254.169.254/latest",  # cloud metadata
        "http://10.0.0.1/v1",
        "http://192.168.1.1/v1",
        "http://0.0.0.0:8181/v1",
        "http://127.1:8181/v1",
        "https://api.openai.com.invalid/v1",  # does not resolve
    ]


async def test_base_urls_into_the_stack_or_private_ranges_are_refused_alike(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    headers = auth(settings, "mallory")
    answers = []
    for base_url in _targets(settings):
        body = {"base_url": base_url, "model": "m", "api_key": "sk-probe-1234567890"}
        response = await client.put("/v1/settings/credentials/openai", json=body, headers=headers)
        assert response.status_code == 400, (base_url, response.text)
        error = response.json()["error"]
        assert error["code"] == "credential_rejected"
        assert "not allowed" in error["message"], (base_url, error)
        answers.append(error["message"])
    # Open and closed ports of the same host get the very same answer but for the port in
    # the setting that would allow it (typed by the user): no port oracle.
    setting = re.compile(r"A0_EGRESS_ALLOW=\S+")
    assert setting.sub("", answers[0]) == setting.sub("", answers[6])
    assert f"A0_EGRESS_ALLOW={settings.stack.host}:{settings.opa.port}" in answers[0]
    listed = await client.get("/v1/settings/credentials", headers=headers)
    assert listed.json()["credentials"] == []


async def test_the_stacks_own_simulator_is_allowed(settings: Settings, client: httpx.AsyncClient) -> None:
    headers = auth(settings, "mallory")
    body = {
        "base_url": settings.llm_sim_url,
        "model": "a0-sim-1",
        "api_key": settings.llm_sim.api_key.get_secret_value(),
    }
    response = await client.put("/v1/settings/credentials/openai", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert (await client.delete("/v1/settings/credentials/openai", headers=headers)).status_code in (200, 204)


async def test_a_stored_base_url_into_the_stack_is_refused_on_use(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    # A row stored before the policy existed, or edited behind the API: the worker checks
    # the base URL again before its first call, and the turn ends with a clear error.
    headers = auth(settings, "trudy")
    body = {
        "base_url": settings.llm_sim_url,
        "model": "a0-sim-1",
        "api_key": settings.llm_sim.api_key.get_secret_value(),
    }
    assert (
        await client.put("/v1/settings/credentials/openai", json=body, headers=headers)
    ).status_code == 200
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as conn:
        await conn.execute(
            "UPDATE credentials SET base_url = %s WHERE owner_id = 'trudy'",
            (f"http://{settings.stack.host}:{settings.opa.port}/v1",),
        )
    conversation_id = await create_conversation(client, headers)
    events = await send_and_collect(client, headers, conversation_id, "hello")
    last = events[-1]
    assert last["type"] == "error", last
    assert "not allowed" in json.dumps(last["payload"]), last


async def test_a_refused_local_model_server_names_the_operators_setting(settings: Settings) -> None:
    # Nothing needs to listen there: the refusal comes before any connection.
    refused = a0ctl(
        "creds",
        "set",
        "openai",
        "--user",
        "lola",
        "--base-url",
        "http://127.0.0.1:11434/v1",
        "--model",
        "llama3.1",
        input_text="local\n",
    )
    assert refused.returncode != 0
    output = " ".join((refused.stdout + refused.stderr).split())
    assert "not allowed" in output and "A0_EGRESS_ALLOW=127.0.0.1:11434" in output, output
