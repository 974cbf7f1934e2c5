"""mcp.yaml: its model, ``a0ctl tools check``'s errors, the policy data it becomes, the
simulator's ``call TOOL {json}`` and how a call's result reaches the model."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

import mcp.types as types
import pytest

from a0ctl import tools
from services.common import mcp_servers
from services.common.settings import Settings, load_settings
from services.llm_sim import replies
from services.tool_executor.mcp_connect import sandbox_argv
from services.tool_executor.mcp_results import MAX_IMAGE_BYTES, to_output
from tests.support.cli import a0ctl

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
version: 1
servers:
  time:
    transport: stdio
    command: mcp-server-time
    tools: {get_current_time: {timeout_s: 5}}
    allow: {roles: [user]}
"""


def _config(body: str) -> str:
    return "version: 1\nservers:\n" + body


def _problems(text: str, settings: Settings) -> list[str]:
    import asyncio

    return asyncio.run(tools.check(settings, text=text)).problems


@pytest.fixture
def settings() -> Settings:
    return load_settings()


def test_the_repository_file_and_the_test_file_are_valid(settings: Settings) -> None:
    for path in (ROOT / "mcp.yaml", ROOT / "tests/support/mcp.yaml"):
        config = mcp_servers.parse(path.read_text(), path.name)
        assert config.servers and mcp_servers.local_problems(config, settings) == [], path
    names = mcp_servers.parse((ROOT / "mcp.yaml").read_text()).tools()
    assert {"time__get_current_time", "everything__echo", "files__read_text_file"} <= set(names)


def test_unknown_fields_and_missing_allow_lists_are_named_with_their_place() -> None:
    text = _config("  x:\n    transport: stdio\n    command: ls\n    colour: red\n    allow: {}\n")
    with pytest.raises(mcp_servers.McpConfigError) as raised:
        mcp_servers.parse(text)
    message = raised.value.message
    assert "mcp.yaml: servers.x.colour: unknown field" in message
    assert "servers.x.tools: Field required" in message  # no implicit "all tools"
    assert "servers.x.allow: name at least one user or role" in message


@pytest.mark.parametrize(
    ("server", "tool", "why"),
    [
        ("time", "get.time", "the model cannot take the name 'time__get.time'"),
        ("time", "t" * 60, "at most 64 characters"),
        ("Time", "now", "a server name is lower-case"),
        ("my__server", "now", "a server name is lower-case"),
    ],
)
def test_a_name_the_model_cannot_take_is_refused(server: str, tool: str, why: str) -> None:
    text = _config(
        f"  {server}:\n    transport: stdio\n    command: ls\n    tools: {{'{tool}': {{}}}}\n    allow: {{roles: [user]}}\n"
    )
    with pytest.raises(mcp_servers.McpConfigError, match="servers") as raised:
        mcp_servers.parse(text)
    assert why in raised.value.message


def test_an_environment_value_inline_is_refused() -> None:
    text = _config(
        "  gh:\n    transport: stdio\n    command: ls\n    env: {GITHUB_TOKEN: ghp_0123456789abcdef}\n"
        "    tools: {x: {}}\n    allow: {roles: [user]}\n"
    )
    with pytest.raises(mcp_servers.McpConfigError) as raised:
        mcp_servers.parse(text)
    assert "never a value" in raised.value.message
    assert "ghp_0123456789abcdef" not in raised.value.message


def test_check_reports_a_command_that_is_not_there(settings: Settings) -> None:
    text = _config(
        "  gone:\n    transport: stdio\n    command: no-such-mcp-server\n    tools: {x: }\n    allow: {users: [alice]}\n"
    )
    assert any("servers.gone.command: 'no-such-mcp-server' not found" in p for p in _problems(text, settings))
    assert _problems(GOOD, settings) == []


def test_check_reports_an_unreachable_url(settings: Settings) -> None:
    # A public https host that does not resolve: the egress policy refuses it ("no
    # address") when OPA is up; then an address-level check never gets a connection.
    text = _config(
        "  remote:\n    transport: http\n    url: https://mcp.invalid/mcp\n    tools: {x: }\n    allow: {roles: [user]}\n"
    )
    problems = _problems(text, settings)
    assert any(p.startswith("servers.remote.url:") for p in problems), problems
    assert any("unreachable" in p or "has no address" in p for p in problems), problems


def test_check_reports_a_url_nothing_listens_at(settings: Settings) -> None:
    with socket.socket() as probe:  # a free port, then closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = _config(
        f"  local:\n    transport: http\n    url: http://127.0.0.1:{port}/mcp\n    tools: {{x: }}\n    allow: {{roles: [user]}}\n"
    )
    problems = _problems(text, settings)
    # Either OPA answers (loopback http is refused by the egress policy) or it is not up
    # (then the URL is tried, and nothing answers).
    assert any(
        "not allowed" in p or "unreachable" in p for p in problems if p.startswith("servers.local.url:")
    ), problems


def test_a0ctl_tools_check_exits_1_with_the_errors(tmp_path: Path) -> None:
    bad = tmp_path / "mcp.yaml"
    bad.write_text(
        _config(
            "  x:\n    transport: stdio\n    command: no-such-mcp-server\n    tools: {y: }\n    allow: {roles: [user]}\n"
        )
    )
    result = a0ctl("tools", "check", env={"A0_TOOLS_MCP_FILE": str(bad)})
    assert result.returncode == 1
    assert "servers.x.command: 'no-such-mcp-server' not found" in result.stderr
    good = a0ctl("tools", "check", env={"A0_TOOLS_MCP_FILE": "mcp.yaml"})  # the repository's
    assert good.returncode == 0 and "servers" in good.stdout, good.stderr


def test_policy_data_names_who_may_call_each_tool() -> None:
    config = mcp_servers.parse(GOOD)
    assert config.opa_data() == {
        "a0_mcp": {"tools": {"time__get_current_time": {"server": "time", "users": [], "roles": ["user"]}}}
    }


def _stdio(config: mcp_servers.McpConfig, name: str) -> mcp_servers.StdioServer:
    spec = config.servers[name]
    assert isinstance(spec, mcp_servers.StdioServer)
    return spec


def test_the_sandbox_has_no_network_unless_granted_and_only_the_bound_paths(settings: Settings) -> None:
    config = mcp_servers.parse((ROOT / "tests/support/mcp.yaml").read_text())
    argv = sandbox_argv(_stdio(config, "files"), settings)
    assert "--unshare-all" in argv and "--share-net" not in argv
    files = str(settings.stack.state_path / "mcp-files")
    assert argv[argv.index(files) - 1] == "--ro-bind"
    installs = [str(p.resolve()) for p in (ROOT / "stack/mcp-servers").glob("*") if p.is_symlink()]
    allowed = (files, "/usr", "/etc/", str(ROOT / "stack/mcp-servers"), *installs)
    bound = [
        arg
        for arg in argv[: argv.index("--")]
        if arg.startswith("/") and not arg.startswith(("/proc", "/dev", "/tmp"))
    ]
    assert bound and all(
        arg.startswith(allowed) or arg in ("/bin", "/lib", "/lib64", "/sbin") for arg in bound
    ), bound
    writable = sandbox_argv(_stdio(config, "files-write"), settings)
    assert writable[writable.index(files) - 1] == "--bind"


def test_the_simulator_calls_any_tool_by_name() -> None:
    reply = replies.decide(
        [{"role": "user", "content": 'call time__get_current_time {"timezone": "UTC"}'}], []
    )
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [
        ("time__get_current_time", {"timezone": "UTC"})
    ]
    bare = replies.decide([{"role": "user", "content": "call everything__echo"}], [])
    assert bare.tool_calls[0].arguments == "{}"
    wrong = replies.decide([{"role": "user", "content": "call x [1, 2]"}], [])
    assert wrong.content == "I cannot call x: its arguments must be a JSON object."
    chat = replies.decide([{"role": "user", "content": "please call me later"}], [])
    assert chat.content is not None and chat.content.startswith(replies.ECHO_PREFIX)


def test_results_map_text_structured_content_images_and_resources() -> None:
    png = base64.b64encode(b"\x89PNG" + b"0" * 100).decode()
    big = base64.b64encode(b"0" * (MAX_IMAGE_BYTES + 1)).decode()
    result = types.CallToolResult(
        content=[
            types.TextContent(text="<script>alert(1)</script>"),
            types.ImageContent(data=png, mime_type="image/png"),
            types.ImageContent(data=big, mime_type="image/png"),
            types.EmbeddedResource(
                resource=types.TextResourceContents(uri="demo://r/1", text="resource text")
            ),
        ],
    )
    output, images = to_output(result)
    assert output.startswith("<script>alert(1)</script>")  # text as it is: the UI escapes it
    assert images == [{"mime_type": "image/png", "data": png}]
    assert "too large to show" in output and "[resource demo://r/1]\nresource text" in output
    structured = types.CallToolResult(content=[], structured_content={"temperature": 21})
    assert to_output(structured) == ('{"temperature": 21}', [])
