"""LLM credentials: encrypted at rest, masked on the way out, used at once, never logged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from a0ctl.runtime.local import LocalRuntime
from services.common.settings import Settings
from tests.support.cli import a0ctl
from tests.support.gateway import auth, create_conversation, send_and_collect
from tests.support.processes import SimProcess, running_sim

pytestmark = pytest.mark.integration


@pytest.fixture
def sim(tmp_path: Path, stack: LocalRuntime) -> Iterator[SimProcess]:
    with running_sim(tmp_path) as process:
        yield process


async def turn(client: httpx.AsyncClient, headers: dict[str, str], content: str) -> list[dict]:
    return await send_and_collect(client, headers, await create_conversation(client, headers), content)


@pytest.mark.milestone("M3")
async def test_key_set_through_the_api_is_used_at_once_and_never_shown_or_logged(
    settings: Settings, client: httpx.AsyncClient, sim: SimProcess, stack: LocalRuntime
) -> None:
    headers = auth(settings, "carol")
    body = {"base_url": sim.base_url, "model": "a0-sim-1", "api_key": sim.api_key}
    saved = await client.put("/v1/settings/credentials/openai", json=body, headers=headers)
    assert saved.status_code == 200, saved.text
    assert saved.json()["key_masked"] == f"{sim.api_key[:3]}…{sim.api_key[-4:]}"
    listed = (await client.get("/v1/settings/credentials", headers=headers)).json()["credentials"]
    assert [c["provider"] for c in listed] == ["openai"] and sim.api_key not in str(listed)

    events = await turn(client, headers, "hello from carol")
    assert events[-1]["type"] == "message.completed", events[-1]
    assert "Echo: hello from carol" in events[-1]["payload"]["content"]

    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:
        row = await (
            await conn.execute("SELECT ciphertext, key_masked FROM credentials WHERE owner_id = 'carol'")
        ).fetchone()
        audit = await (
            await conn.execute(
                "SELECT action, outcome, detail FROM credential_audit WHERE owner_id = 'carol'"
            )
        ).fetchall()
    assert row is not None and sim.api_key.encode() not in bytes(row[0]) and sim.api_key not in row[1]
    assert ("set", "ok") in [(a, o) for a, o, _ in audit] and ("use", "ok") in [(a, o) for a, o, _ in audit]
    assert sim.api_key not in str(audit)

    logs = list((stack.state / "logs").glob("*.log")) + [sim.log]
    assert logs
    for log in logs:
        assert sim.api_key not in log.read_text(errors="replace"), f"key found in {log}"


async def test_a_key_the_provider_refuses_is_not_saved(
    settings: Settings, client: httpx.AsyncClient, sim: SimProcess
) -> None:
    headers = auth(settings, "dave")
    body = {"base_url": sim.base_url, "model": "a0-sim-1", "api_key": "sk-wrong-key-123456"}
    response = await client.put("/v1/settings/credentials/openai", json=body, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "credential_rejected" and "refused this API key" in error["message"]
    assert "sk-wrong-key-123456" not in response.text
    assert (await client.get("/v1/settings/credentials", headers=headers)).json()["credentials"] == []


async def test_changed_key_is_picked_up_without_restart(
    settings: Settings, client: httpx.AsyncClient, tmp_path: Path, stack: LocalRuntime
) -> None:
    headers = auth(settings, "erin")
    worker_pid = stack.pid("conversation-worker")
    with running_sim(tmp_path) as first:
        body = {"base_url": first.base_url, "model": "a0-sim-1", "api_key": first.api_key}
        assert (
            await client.put("/v1/settings/credentials/openai", json=body, headers=headers)
        ).status_code == 200
        assert (await turn(client, headers, "one"))[-1]["type"] == "message.completed"
    # The first provider is gone; the worker must not keep using it.
    with running_sim(tmp_path) as second:
        body = {"base_url": second.base_url, "model": "a0-sim-1", "api_key": second.api_key}
        assert (
            await client.put("/v1/settings/credentials/openai", json=body, headers=headers)
        ).status_code == 200
        events = await turn(client, headers, "two")
        assert events[-1]["type"] == "message.completed", events[-1]
    assert stack.pid("conversation-worker") == worker_pid  # same process: no restart


@pytest.mark.milestone("M3")
async def test_rotate_key_keeps_every_credential_readable(
    settings: Settings, client: httpx.AsyncClient, sim: SimProcess
) -> None:
    headers = auth(settings, "frank")
    body = {"base_url": sim.base_url, "model": "a0-sim-1", "api_key": sim.api_key}
    assert (
        await client.put("/v1/settings/credentials/openai", json=body, headers=headers)
    ).status_code == 200
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:
        before = await (await conn.execute("SELECT kek_id, ciphertext FROM credentials")).fetchall()
    result = await asyncio.to_thread(a0ctl, "creds", "rotate-key")
    assert result.returncode == 0, result.stderr
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:
        after = await (await conn.execute("SELECT kek_id, ciphertext FROM credentials")).fetchall()
    assert len(after) == len(before) and {k for k, _ in after}.isdisjoint({k for k, _ in before})
    # The worker still decrypts it: a turn through the rotated credential answers.
    events = await turn(client, headers, "after rotation")
    assert events[-1]["type"] == "message.completed", events[-1]
    listed = await asyncio.to_thread(a0ctl, "creds", "list", "--user", "frank", "--json")
    assert listed.returncode == 0 and sim.api_key[-4:] in listed.stdout and sim.api_key not in listed.stdout


def test_creds_cli_reads_the_key_from_stdin_and_shows_it_masked(sim: SimProcess) -> None:
    args = ["creds", "set", "openai", "--user", "gina", "--base-url", sim.base_url, "--model", "a0-sim-1"]
    stored = a0ctl(*args, input_text=sim.api_key + "\n")
    assert stored.returncode == 0, stored.stderr
    assert sim.api_key[-4:] in stored.stdout and sim.api_key not in stored.stdout + stored.stderr
    refused = a0ctl(*args, input_text="sk-not-the-right-key-1234\n")
    assert refused.returncode == 1 and "refused this API key" in refused.stderr
    assert "sk-not-the-right-key-1234" not in refused.stdout + refused.stderr
    listed = a0ctl("creds", "list", "--user", "gina", "--json")
    assert '"provider": "openai"' in listed.stdout and sim.api_key not in listed.stdout
    assert a0ctl("creds", "rm", "openai", "--user", "gina").returncode == 0
    gone = a0ctl("creds", "rm", "openai", "--user", "gina")
    assert gone.returncode == 1 and "has no openai credential" in gone.stderr


async def test_a_failed_rotation_keeps_every_credential_readable_and_a_second_run_finishes_it(
    settings: Settings, client: httpx.AsyncClient, sim: SimProcess
) -> None:
    """docs/rollback.md, key rotation: a rotation that fails changes no row; once the cause
    is fixed, running it again finishes it with the keys the rows are sealed with."""
    headers = auth(settings, "hana")
    body = {"base_url": sim.base_url, "model": "a0-sim-1", "api_key": sim.api_key}
    assert (
        await client.put("/v1/settings/credentials/openai", json=body, headers=headers)
    ).status_code == 200
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as conn:
        before = await (await conn.execute("SELECT owner_id, kek_id FROM credentials ORDER BY 1")).fetchall()
        # A row no key of this stack opens (copied in from elsewhere): the rotation must stop.
        await conn.execute(
            "INSERT INTO credentials (owner_id, provider, base_url, model, key_masked, nonce, ciphertext, kek_id) "
            "VALUES ('stranger', 'openai', 'https://x.test/v1', 'm', 'sk-…abcd', '\\x00', '\\x01', 'not-ours')"
        )
    failed = await asyncio.to_thread(a0ctl, "creds", "rotate-key")
    assert failed.returncode == 1 and "sealed with an unknown key not-ours" in failed.stderr
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as conn:
        unchanged = await (
            await conn.execute(
                "SELECT owner_id, kek_id FROM credentials WHERE owner_id <> 'stranger' ORDER BY 1"
            )
        ).fetchall()
        assert unchanged == before
        await conn.execute("DELETE FROM credentials WHERE owner_id = 'stranger'")
    events = await turn(client, headers, "while the rotation is unfinished")
    assert events[-1]["type"] == "message.completed", events[-1]

    finished = await asyncio.to_thread(a0ctl, "creds", "rotate-key")
    assert finished.returncode == 0, finished.stderr
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:
        after = await (await conn.execute("SELECT owner_id, kek_id FROM credentials ORDER BY 1")).fetchall()
    assert [o for o, _ in after] == [o for o, _ in before]
    assert {k for _, k in after}.isdisjoint({k for _, k in before}) and len({k for _, k in after}) == 1
    assert "A0_CREDENTIALS_KEK_PREVIOUS" not in (settings.stack.conf_path / "secrets.env").read_text()
    events = await turn(client, headers, "after the rotation")
    assert events[-1]["type"] == "message.completed", events[-1]
