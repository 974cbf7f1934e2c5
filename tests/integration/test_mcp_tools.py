"""MCP servers' tools over the whole stack: the reference servers of the protocol
(mcp-server-time from PyPI, server-everything and server-filesystem from npm, as
scripts/vendor-mcp.sh installs them) declared in tests/support/mcp.yaml, started by the
tool executor in its sandbox, called by the simulator through Kafka, OPA deciding."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from a0ctl import tools
from a0ctl.runtime.local import LocalRuntime
from services.common.auth import mint_token
from services.common.settings import Settings
from services.tool_executor.cgroups import (
    RunBounds,
    parent_name,
    prepare,
    remove_stack_parents,
    stack_parents,
)
from tests.support.cli import a0ctl, a0ctl_json
from tests.support.gateway import (
    auth,
    collect_turn,
    create_conversation,
    post_message,
    read_until,
    send_and_collect,
    sse_events,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def mcp_ready(stack: LocalRuntime, settings: Settings) -> None:
    """Every server of the test file listed by the executor (it starts them at its start),
    but `inward`, which the egress policy keeps out."""

    async def offered() -> bool:
        listing = await tools.list_tools(settings, "alice")
        return all(row.state == "ready" for row in listing.tools if row.source != "MCP server inward")

    await eventually(offered, 60, "every MCP server's tools are offered", poll_s=1)


def _files(settings: Settings) -> Path:
    return settings.stack.state_path / "mcp-files"


def _tool_result(events: list[dict]) -> dict:
    return next(e for e in events if e["type"] == "tool.result")["payload"]


async def test_a_turn_calls_the_time_server_and_answers_with_its_output(
    settings: Settings, client, mcp_ready: None
) -> None:
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    prompt = 'call time__get_current_time {"timezone": "Asia/Tokyo"}'
    events = await send_and_collect(client, headers, conversation_id, prompt)
    call = next(e for e in events if e["type"] == "tool.call")["payload"]
    assert call["name"] == "time__get_current_time"
    result = _tool_result(events)
    assert "error" not in result, result
    output = json.loads(result["output"])  # the server's own answer, a JSON text
    assert output["timezone"] == "Asia/Tokyo" and output["datetime"].endswith("+09:00")
    assert events[-1]["type"] == "message.completed"
    assert "Asia/Tokyo" in events[-1]["payload"]["content"]


async def test_an_error_result_reaches_the_model_as_a_tool_error(
    settings: Settings, client, mcp_ready: None
) -> None:
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    # The filesystem server answers isError for a file that is not there.
    events = await send_and_collect(
        client,
        headers,
        conversation_id,
        f'call files__read_text_file {{"path": "{_files(settings)}/missing.txt"}}',
    )
    result = _tool_result(events)
    assert result["error"]["code"] == "tool_error"
    assert "ENOENT" in result["error"]["message"] or "no such file" in result["error"]["message"].lower()
    assert events[-1]["type"] == "message.completed"
    assert events[-1]["payload"]["content"].startswith("The tool failed:")


async def test_images_structured_content_and_resources_are_mapped(
    settings: Settings, client, mcp_ready: None
) -> None:
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    image = _tool_result(
        await send_and_collect(client, headers, conversation_id, "call everything__get-tiny-image")
    )
    assert image["images"][0]["mime_type"] == "image/png" and len(image["images"][0]["data"]) > 100
    assert "[image image/png" in image["output"]  # what the model reads of it
    structured = _tool_result(
        await send_and_collect(
            client,
            headers,
            conversation_id,
            'call everything__get-structured-content {"location": "Chicago"}',
        )
    )
    assert "temperature" in json.loads(structured["output"])
    resource = _tool_result(
        await send_and_collect(
            client,
            headers,
            conversation_id,
            'call everything__get-resource-reference {"resourceType": "Text", "resourceId": 3}',
        )
    )
    assert "[resource demo://resource/" in resource["output"]
    # The history the chat UI draws on a reload keeps the image (the same renderer shows it).
    history = (await client.get(f"/v1/conversations/{conversation_id}", headers=headers)).json()["events"]
    stored = next(e for e in history if e["type"] == "tool.result" and e["payload"].get("images"))
    assert stored["payload"]["images"] == image["images"]


async def test_the_filesystem_server_reads_inside_its_binding_and_refuses_outside(
    settings: Settings, client, mcp_ready: None
) -> None:
    inside = _files(settings) / "note.txt"
    inside.write_text("the note inside the binding\n")
    inside.chmod(0o644)
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    read = _tool_result(
        await send_and_collect(
            client, headers, conversation_id, f'call files__read_text_file {{"path": "{inside}"}}'
        )
    )
    assert read.get("output") == "the note inside the binding\n", read
    outside = _tool_result(
        await send_and_collect(
            client, headers, conversation_id, 'call files__read_text_file {"path": "/etc/hostname"}'
        )
    )
    assert outside["error"]["code"] == "tool_error"
    assert "outside allowed directories" in outside["error"]["message"]
    # Past the server's own check, the sandbox: a path outside the binding is not there at
    # all (the server is told to allow / but only sees what mcp.yaml binds).
    hosts = _tool_result(
        await send_and_collect(
            client,
            headers,
            conversation_id,
            f'call files__read_text_file {{"path": "{_files(settings)}/../../pyproject.toml"}}',
        )
    )
    assert "error" in hosts


async def test_a_user_the_policy_refuses_gets_a_reason_and_the_server_is_never_called(
    settings: Settings, client, mcp_ready: None
) -> None:
    target = _files(settings) / "written-by-mallory.txt"
    target.unlink(missing_ok=True)
    headers = auth(settings, "mallory")
    conversation_id = await create_conversation(client, headers)
    prompt = f'call files-write__write_file {{"path": "{target}", "content": "pwned"}}'
    events = await send_and_collect(client, headers, conversation_id, prompt)
    result = _tool_result(events)
    assert result["error"]["code"] == "denied"
    assert "user mallory may not call files-write__write_file" in result["error"]["message"]
    assert "users [mcp-writer]" in result["error"]["message"]
    assert not target.exists()  # the server never ran the call
    # The one user mcp.yaml names may.
    writer = auth(settings, "mcp-writer")
    allowed = await send_and_collect(
        client, writer, await create_conversation(client, writer), prompt.replace("pwned", "ok")
    )
    assert "error" not in _tool_result(allowed), _tool_result(allowed)
    assert target.read_text() == "ok"


async def test_a_tool_offered_to_a_role_follows_the_roles_of_the_token_that_sent_the_turn(
    settings: Settings, client, mcp_ready: None
) -> None:
    """files-write is offered to role mcp-admin: the roles travel from the token through
    the turn's message.user and each tool.request to the executor's policy decision."""
    user = f"role-{uuid.uuid4().hex[:8]}"
    target = _files(settings) / f"written-by-{user}.txt"
    target.unlink(missing_ok=True)
    prompt = f'call files-write__write_file {{"path": "{target}", "content": "by role"}}'
    plain = {"Authorization": f"Bearer {mint_token(settings, user, ['user'])}"}
    denied = _tool_result(
        await send_and_collect(client, plain, await create_conversation(client, plain), prompt)
    )
    assert denied["error"]["code"] == "denied"
    assert f"user {user} may not call files-write__write_file" in denied["error"]["message"]
    assert "roles [mcp-admin]" in denied["error"]["message"]
    assert not target.exists()  # the server never ran the call
    admin = {"Authorization": f"Bearer {mint_token(settings, user, ['mcp-admin'])}"}
    allowed = _tool_result(
        await send_and_collect(client, admin, await create_conversation(client, admin), prompt)
    )
    assert "error" not in allowed, allowed
    assert target.read_text() == "by role"


def _server_pids(settings: Settings, needle: str) -> list[int]:
    """This stack's server processes (the server's own, not the bwrap processes that
    started them): in a cgroup of this stack's executor, whose command line has ``needle``."""
    parent = parent_name(settings.stack.state_path, settings.tools.metrics_port)
    out = subprocess.run(["pgrep", "-f", needle], capture_output=True, text=True, check=False).stdout
    pids = []
    for pid in out.split():
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            cgroups = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        if not argv0.endswith(b"bwrap") and f"/{parent}/mcp-" in cgroups:
            pids.append(int(pid))
    return pids


def _cgroup_file(pid: int, controller: str, v1_name: str, v2_name: str) -> Path:
    """The file of ``pid``'s cgroup where ``controller``'s limit is written (v1 or v2)."""
    mounts: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        fstype, _, options = rest.split()[:3]
        if fstype == "cgroup":
            for option in options.split(","):
                mounts.setdefault(option, Path(fields.split()[4]))
        elif fstype == "cgroup2":
            mounts.setdefault("", Path(fields.split()[4]))
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return mounts[controller] / path.lstrip("/") / v1_name
    v2 = next(line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if line.startswith("0::"))
    return mounts[""] / v2.split(":", 2)[2].lstrip("/") / v2_name


async def test_progress_of_a_long_running_tool_streams_before_its_result(
    settings: Settings, client, mcp_ready: None
) -> None:
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    prompt = 'call everything__trigger-long-running-operation {"duration": 3, "steps": 3}'
    events = await send_and_collect(client, headers, conversation_id, prompt)
    types = [e["type"] for e in events]
    progress = [e["payload"] for e in events if e["type"] == "tool.progress"]
    assert len(progress) >= 2, types
    assert types.index("tool.call") < types.index("tool.progress") < types.index("tool.result")
    assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)
    assert progress[-1] == {**progress[-1], "total": 3, "progress": 3}
    assert "error" not in _tool_result(events) and events[-1]["type"] == "message.completed"
    # Stored like every event: a client that comes back later reads the same progress.
    history = (await client.get(f"/v1/conversations/{conversation_id}", headers=headers)).json()["events"]
    assert [e["payload"] for e in history if e["type"] == "tool.progress"] == progress


async def test_cancel_mid_run_ends_the_turn_cancelled_and_the_server_still_answers(
    settings: Settings, client, mcp_ready: None
) -> None:
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    events = sse_events(client, headers, conversation_id)
    accepted = await post_message(
        client,
        headers,
        conversation_id,
        'call everything__trigger-long-running-operation {"duration": 30, "steps": 30}',
    )
    seen = await read_until(events, "tool.progress")  # the server is running it
    progress = seen[-1]["payload"]
    assert progress["name"] == "everything__trigger-long-running-operation" and progress["total"] == 30
    response = await client.post(
        f"/v1/conversations/{conversation_id}/cancel", json={"turn_id": accepted["turn_id"]}, headers=headers
    )
    assert response.status_code == 202
    rest = await asyncio.wait_for(collect_turn(events, accepted["turn_id"]), 15)
    await events.aclose()
    assert rest[-1]["type"] == "cancelled"
    echo = await send_and_collect(
        client, headers, conversation_id, 'call everything__echo {"message": "still here"}'
    )
    assert "still here" in _tool_result(echo)["output"]


async def test_a_server_killed_mid_call_restarts_and_the_turn_ends_with_a_clear_error(
    settings: Settings, client, mcp_ready: None
) -> None:
    needle = "server-everything/dist/index.js"
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    events = sse_events(client, headers, conversation_id)
    accepted = await post_message(
        client,
        headers,
        conversation_id,
        'call everything__trigger-long-running-operation {"duration": 20, "steps": 20}',
    )
    await read_until(events, "tool.progress")
    pids = _server_pids(settings, needle)
    assert pids, "the server's process is running"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    rest = await asyncio.wait_for(collect_turn(events, accepted["turn_id"]), 30)
    await events.aclose()
    results = [e for e in rest if e["type"] == "tool.result"]
    assert len(results) == 1  # answered once
    assert results[0]["payload"]["error"]["code"] == "unavailable"
    assert "stopped during the call" in results[0]["payload"]["error"]["message"]
    assert rest[-1]["type"] == "message.completed" and "failed" in rest[-1]["payload"]["content"]

    # Restarted: its tools answer again.
    async def answers() -> bool:
        echo = await send_and_collect(
            client, headers, conversation_id, 'call everything__echo {"message": "back"}'
        )
        return "back" in _tool_result(echo).get("output", "")

    await eventually(answers, 60, "the restarted server answers")
    history = (await client.get(f"/v1/conversations/{conversation_id}", headers=headers)).json()["events"]
    killed_turn = [e for e in history if e["turn_id"] == accepted["turn_id"] and e["type"] == "tool.result"]
    assert len(killed_turn) == 1


async def test_an_http_server_the_egress_policy_refuses_is_never_connected(
    settings: Settings, client, mcp_ready: None
) -> None:
    async def refused() -> dict[str, object] | None:
        listing = await tools.list_tools(settings, "alice")
        inward = next((s for s in listing.servers if s.get("name") == "inward"), None)
        return inward if inward and "not allowed" in str(inward.get("detail")) else None

    await eventually(refused, 30, "the executor reports the refusal", poll_s=0.5)
    inward = await refused()
    assert inward is not None and inward["state"] == "restarting"
    assert "loopback, private or reserved" in str(inward["detail"])
    headers = auth(settings, "alice")
    events = await send_and_collect(
        client, headers, await create_conversation(client, headers), "call inward__echo"
    )
    error = _tool_result(events)["error"]
    assert error["code"] == "unavailable" and "inward" in error["message"]


def test_a0ctl_tools_check_asks_the_egress_policy(stack: LocalRuntime, tmp_path: Path) -> None:
    declared = tmp_path / "mcp.yaml"
    declared.write_text(
        "version: 1\nservers:\n  inward:\n    transport: http\n    url: https://127.0.0.1:9/mcp\n"
        "    tools: {x: }\n    allow: {roles: [user]}\n"
    )
    result = a0ctl("tools", "check", env={"A0_TOOLS_MCP_FILE": str(declared)})
    assert result.returncode == 1
    assert "servers.inward.url: this URL is not allowed" in result.stderr
    assert "loopback, private or reserved" in result.stderr


def test_a0ctl_tools_list_and_call_through_the_executor(stack: LocalRuntime, mcp_ready: None) -> None:
    listing = a0ctl_json("tools", "list", "--user", "mallory")
    rows = {row["name"]: row for row in listing["tools"]}
    assert rows["calculator"]["source"] == "built-in"
    assert rows["time__get_current_time"]["source"] == "MCP server time"
    assert rows["time__get_current_time"]["state"] == "ready"
    assert rows["files-write__write_file"]["policy"].startswith("denied: user mallory may not call")
    called = a0ctl("tools", "call", "everything__echo", "--user", "alice", "--args", '{"message": "hi"}')
    assert called.returncode == 0 and "hi" in called.stdout, called.stderr
    refused = a0ctl(
        "tools",
        "call",
        "files-write__write_file",
        "--user",
        "mallory",
        "--args",
        '{"path": "/tmp/x", "content": "x"}',
    )
    assert refused.returncode == 1 and "denied" in refused.stderr


def test_a_server_runs_in_its_own_cgroup_under_rlimits_and_seccomp(
    settings: Settings, mcp_ready: None
) -> None:
    (probe,) = _server_pids(settings, "mcp_probe_server.py")  # limits declared in mcp.yaml
    assert (
        int(_cgroup_file(probe, "memory", "memory.limit_in_bytes", "memory.max").read_text()) == 160 * 2**20
    )
    assert _cgroup_file(probe, "pids", "pids.max", "pids.max").read_text().strip() == "32"
    cpu = _cgroup_file(probe, "cpu", "cpu.cfs_quota_us", "cpu.max").read_text().split()[0]
    assert cpu == "50000"  # half a core of each 100 ms
    node = _server_pids(settings, "server-everything/dist/index.js")
    assert node, "the everything server runs in a cgroup of its own"
    # No limits in mcp.yaml: the defaults (512 MiB).
    assert (
        int(_cgroup_file(node[0], "memory", "memory.limit_in_bytes", "memory.max").read_text()) == 512 * 2**20
    )
    for pid in (probe, node[0]):
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert any(
            line.startswith("Max core file size") and line.split()[4] == "0" for line in limits.splitlines()
        )


async def test_a_server_over_its_memory_limit_is_killed_and_restarted(
    settings: Settings, client, mcp_ready: None
) -> None:
    (before,) = _server_pids(settings, "mcp_probe_server.py")
    cgroup = _cgroup_file(before, "memory", "memory.limit_in_bytes", "memory.max").parent
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    small = _tool_result(
        await send_and_collect(client, headers, conversation_id, 'call probe__allocate {"mib": 16}')
    )
    assert small.get("output") == "allocated 16 MiB", small
    large = _tool_result(
        await send_and_collect(client, headers, conversation_id, 'call probe__allocate {"mib": 400}')
    )
    assert large["error"]["code"] == "unavailable", large  # the kernel killed it at 160 MiB
    await eventually(lambda: not cgroup.exists(), 15, "the killed server's cgroup removed")

    async def answers() -> bool:
        again = await send_and_collect(client, headers, conversation_id, 'call probe__allocate {"mib": 8}')
        return _tool_result(again).get("output") == "allocated 8 MiB"

    await eventually(answers, 60, "the restarted server answers")
    listing = await tools.list_tools(settings, "alice")
    probe = next(s for s in listing.servers if s.get("name") == "probe")
    assert int(probe["restarts"]) >= 1


async def test_a_cancelled_call_reaches_the_server(settings: Settings, client, mcp_ready: None) -> None:
    marks = settings.stack.state_path / "mcp-marks"
    token = uuid.uuid4().hex
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    events = sse_events(client, headers, conversation_id)
    accepted = await post_message(
        client, headers, conversation_id, f'call probe__wait {{"seconds": 60, "token": "{token}"}}'
    )
    await eventually(lambda: (marks / f"started-{token}").exists(), 30, "the server runs the call")
    assert not (marks / f"cancelled-{token}").exists()
    response = await client.post(
        f"/v1/conversations/{conversation_id}/cancel", json={"turn_id": accepted["turn_id"]}, headers=headers
    )
    assert response.status_code == 202
    rest = await asyncio.wait_for(collect_turn(events, accepted["turn_id"]), 15)
    await events.aclose()
    assert rest[-1]["type"] == "cancelled"
    # notifications/cancelled: the SDK cancelled the handler, which left its mark.
    await eventually(lambda: (marks / f"cancelled-{token}").exists(), 10, "the server saw the cancellation")


def test_down_leaves_no_parent_cgroup_of_the_stack(tmp_path: Path) -> None:
    """What `a0ctl down` does after the executors stopped: their parent cgroups, and any
    empty run or server cgroup in them, are removed."""
    cgroups = prepare(parent_name(tmp_path, 1), move_self=False)
    for kind in ("run", "mcp"):
        made = cgroups.create(RunBounds(memory_bytes=64 * 2**20, processes=8, cpu_cores=0.5), kind)
        assert all(directory.is_dir() for directory in made.dirs)
    assert stack_parents(tmp_path)
    assert remove_stack_parents(tmp_path) == []
    assert stack_parents(tmp_path) == []
