"""What a tool run writes is neither executable nor unbounded: its only writable places
are sized ``noexec`` tmpfs mounts under a read-only root.

The attack is a real turn of ``mallory`` with the audit hook disarmed.
"""

from __future__ import annotations

import textwrap

import httpx
import pytest

from services.common.settings import Settings
from tests.support.gateway import auth, create_conversation, send_and_collect
from tests.support.sandbox import DISARM

pytestmark = pytest.mark.hostile


async def test_programs_written_by_a_run_cannot_be_executed(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # A copy of the interpreter is a native binary the run can write anywhere it may write;
    # run directly, or mapped by the dynamic loader (which bypasses the exec check alone).
    loader = "/lib64/ld-linux-x86-64.so.2"
    code = textwrap.dedent(f"""\
        import shutil
        for place in ("/tmp", "/scratch", "/dev/shm"):
            copy = place + "/python"
            shutil.copy(sys.executable, copy)
            os.chmod(copy, 0o755)
            for argv in ([copy], [{loader!r}, copy]):
                pid = os.fork()
                if pid == 0:
                    try:
                        os.execv(argv[0], [*argv, "-c", "print('RAN')"])
                    except OSError as exc:
                        print(place, len(argv), errno.errorcode[exc.errno], flush=True)
                    os._exit(0)
                os.waitpid(pid, 0)
        """)
    headers = auth(settings, "mallory")
    conversation_id = await create_conversation(client, headers)
    events = await send_and_collect(client, headers, conversation_id, "run python:\n" + DISARM + code)
    result = next(e["payload"] for e in events if e["type"] == "tool.result")
    out = result.get("output", "")
    assert "RAN" not in out, result
    for place in ("/tmp", "/scratch", "/dev/shm"):
        assert f"{place} 1 EACCES" in out, out
