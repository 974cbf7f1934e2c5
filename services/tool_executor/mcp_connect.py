"""How the executor reaches an MCP server. A stdio server is started inside a bubblewrap
sandbox as the executor's unprivileged user: new namespaces, no network unless mcp.yaml
grants it, a read-only ``/usr``, the reference servers' installs, a private ``/tmp`` and
only the paths the file binds, in its cgroup, under rlimits and a seccomp filter. An HTTP
server is reached at its URL over connections pinned to the addresses the egress policy
checked.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
from pathlib import Path
from typing import Any

import httpx2

from services.common.egress import pinned
from services.common.logging import register_secret
from services.common.mcp_servers import SERVERS_DIR, McpConfig, StdioServer, expand, resolve_command
from services.common.settings import Settings
from services.tool_executor.cgroups import RunCgroup
from services.tool_executor.confinement import SECCOMP_GENERATOR_PYTHON, seccomp_program
from services.tool_executor.sandbox_limits import FILE_SIZE_BYTES, UNBOUNDED_MAX_PROCESSES

# The first process of a stdio server, run by the system interpreter as the tools user:
# it joins the server's cgroup (so bwrap and everything the server forks are born
# inside), sets the rlimits, opens the seccomp filter for bwrap (``--seccomp``, loaded
# into every process of the sandbox) and becomes bwrap. Its one argument is JSON.
_LAUNCH = """\
import json, os, resource, sys
spec = json.loads(sys.argv[1])
for directory in spec["cgroups"]:
    with open(directory + "/cgroup.procs", "w") as procs:
        procs.write(str(os.getpid()))
for name, value in spec["rlimits"].items():
    which = getattr(resource, name)
    hard = resource.getrlimit(which)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, value))
fd = os.open(spec["seccomp"], os.O_RDONLY)
os.set_inheritable(fd, True)
argv = [str(fd) if arg == "{seccomp_fd}" else arg for arg in spec["argv"]]
os.execvp(argv[0], argv)
"""


def rlimits(bounded: bool) -> dict[str, int]:
    """Each process's limits: no core files, files at most the size a run may write and,
    without a cgroup, a bound on the tools user's processes. No address-space limit:
    Node reserves far more than it uses; the cgroup bounds the memory used."""
    limits = {"RLIMIT_CORE": 0, "RLIMIT_FSIZE": FILE_SIZE_BYTES, "RLIMIT_NOFILE": 4096}
    if not bounded:
        limits["RLIMIT_NPROC"] = UNBOUNDED_MAX_PROCESSES
    return limits


def launch_argv(sandbox: list[str], cgroup: RunCgroup | None, seccomp_file: str) -> list[str]:
    """The command starting ``sandbox`` (bwrap's command line) in the server's cgroup,
    under rlimits and the seccomp filter at ``seccomp_file``."""
    bwrap = [sandbox[0], "--seccomp", "{seccomp_fd}", *sandbox[1:]]
    spec = {
        "cgroups": [str(d) for d in cgroup.dirs] if cgroup is not None else [],
        "rlimits": rlimits(cgroup is not None),
        "seccomp": seccomp_file,
        "argv": bwrap,
    }
    return [SECCOMP_GENERATOR_PYTHON, "-I", "-c", _LAUNCH, json.dumps(spec)]


@functools.cache
def server_filter(network: bool) -> bytes:
    """The sandbox's seccomp filter for a server (sockets of any family if it has a network)."""
    return seccomp_program(allow_network=network)


class PinnedTransport(httpx2.AsyncHTTPTransport):
    """Connects only to the addresses the egress policy checked (in turn, IPv4 first),
    with the URL's host as Host header and TLS server name: a second DNS answer is never
    asked for, so a name rebound after the check cannot redirect a request."""

    def __init__(self, addresses: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.addresses = sorted(addresses, key=lambda address: ":" in address)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not self.addresses:
            raise httpx2.ConnectError("the host has no address the egress policy checked", request=request)
        failure: httpx2.ConnectError | None = None
        for address in self.addresses:
            url, host, extensions = pinned(str(request.url), address)
            aimed = httpx2.Request(
                request.method,
                url,
                headers=[
                    *((k, v) for k, v in request.headers.multi_items() if k.lower() != "host"),
                    *host.items(),
                ],
                stream=request.stream,
                extensions={**request.extensions, **(extensions if request.url.scheme == "https" else {})},
            )
            try:
                return await super().handle_async_request(aimed)
            except httpx2.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure


def sandbox_argv(spec: StdioServer, settings: Settings) -> list[str]:
    """bwrap's command line running ``spec``'s command in its sandbox."""
    command = resolve_command(spec.command, settings) or spec.command
    argv = [
        "bwrap",
        "--unshare-all",
        *(["--share-net"] if spec.network else []),
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):  # merged /usr: links; otherwise bound
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for path in ("/etc/ssl", "/etc/ca-certificates", "/etc/localtime", "/etc/hosts", "/etc/nsswitch.conf"):
        argv += ["--ro-bind-try", path, path]
    if spec.network:
        argv += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/tmp"]
    # The reference servers' installs (links into the cache, scripts/vendor-mcp.sh): seen
    # at their link's place and their own (a virtual environment's scripts name the latter).
    servers = settings.stack.resolve(SERVERS_DIR)
    for installed in ("node_modules", ".venv"):
        link = servers / installed
        if link.exists():
            real = link.resolve()
            argv += ["--ro-bind", str(real), str(real)]
            if real != link:
                argv += ["--ro-bind", str(real), str(link)]
    for bind in spec.binds:
        bound = Path(expand(bind.path, settings))
        argv += ["--bind" if bind.writable else "--ro-bind", str(bound), str(bound)]
    return [*argv, "--", command, *(expand(arg, settings) for arg in spec.args)]


def prepare_binds(config: McpConfig, settings: Settings) -> None:
    """Make the bound directories that do not exist yet (empty), owned by the tools user
    (run while the executor is still root: the tools user cannot make them in the state
    directory)."""
    for spec in config.servers.values():
        if not isinstance(spec, StdioServer):
            continue
        for bind in spec.binds:
            path = Path(expand(bind.path, settings))
            if not path.exists():
                path.mkdir(parents=True)
                if os.geteuid() == 0:
                    entry = pwd.getpwnam(settings.tools.run_as)
                    os.chown(path, entry.pw_uid, entry.pw_gid)


def sandbox_env(spec: StdioServer) -> dict[str, str]:
    """The server's environment: a PATH, a HOME and the variables mcp.yaml names (passed in
    bwrap's environment, never on its command line)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    for name, source in spec.env.items():
        if source in os.environ:
            env[name] = os.environ[source]
            register_secret(env[name])  # a token, likely: never in a log line or a state
    return env
