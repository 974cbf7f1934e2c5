"""This stack's own policy data for OPA: the loopback and private ``host:port`` names a
credential's base URL may use (``data.a0_local.egress_allowed`` in stack/opa/authz.rego),
and who may call each MCP server's tool, from mcp.yaml (``data.a0_mcp.tools``).

They are the operator's ``A0_EGRESS_ALLOW`` (a local model server: Ollama, vLLM ...) and,
on the local runtime, the stack's own simulator; never a user's choice. ``a0ctl up``
writes them next to the policy it loads; compose's ``opa-data`` service and a Kubernetes
operator write the same file with ``python -m a0ctl.runtime.opa_data PATH``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

from services.common import mcp_servers
from services.common.settings import Settings, load_settings


def egress_data(settings: Settings, also: Iterable[str] = ()) -> dict[str, object]:
    """The document OPA loads: ``A0_EGRESS_ALLOW``'s names plus ``also``, lower-cased, and
    the MCP tools' users and roles (an invalid mcp.yaml stops here, with its problems)."""
    names = {*settings.egress.allowed, *(name.lower() for name in also)}
    return {"a0_local": {"egress_allowed": sorted(names)}, **mcp_servers.load(settings).opa_data()}


def write_egress_data(settings: Settings, path: Path, also: Iterable[str] = ()) -> Path:
    path.write_text(json.dumps(egress_data(settings, also)))
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m a0ctl.runtime.opa_data PATH  (names from A0_EGRESS_ALLOW)", file=sys.stderr)
        return 2
    path = write_egress_data(load_settings(), Path(argv[0]))
    print(f"{path}: {path.read_text()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
