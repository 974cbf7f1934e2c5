"""What the local runtime asks of this machine: whether a process is alive (and since
when), whether a port is taken, which processes a supervisord started, stopping a
process group, and keeping the state directory private to its user."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from a0ctl.runtime.service import LocalService, allow_traversal
from services.common.retry import WaitTimeout, wait_until


def process_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) in parentheses: state is
    # field 3, starttime field 22. A zombie has exited: it only awaits its parent's wait().
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def process_alive(pid: int) -> bool:
    return process_start_time(pid) is not None


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """What this process creates in the block is its user's alone (umask 077): the
    generated configs hold passwords and tokens."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def make_private(state: Path, services: Iterable[LocalService]) -> None:
    """Close the state directory to other local users: every file 0600 and directory 0700
    at most (a stack made before is repaired; new files are private by supervisord's
    umask). A server that runs as its own user (PostgreSQL, Redis) is then given search
    permission (o+x: no listing, no reading) on the ancestors of its own directories."""
    for path in (state, *state.rglob("*")):
        try:
            mode = path.lstat()
        except FileNotFoundError:
            continue  # removed while we walked (a rotated log, a finished segment)
        if stat.S_ISLNK(mode.st_mode) or stat.S_ISSOCK(mode.st_mode):
            continue
        current = stat.S_IMODE(mode.st_mode)
        if current & 0o077:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, current & ~0o077)
    for service in services:
        for path in service.reaches:
            if path.exists():
                allow_traversal(path, service.user, service.name)


def listeners(port: int) -> list[int]:
    """The processes with a TCP socket listening on ``port``, as this network namespace's
    ``/proc/net/tcp{,6}`` and each process's open files show them (those of every user
    when run as root, else this user's)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                sockets.add(f"socket:[{fields[9]}]")
    found = []
    for entry in Path("/proc").iterdir() if sockets else ():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in sockets for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


SUPERVISOR_URL = b"SUPERVISOR_SERVER_URL="


def _environ(pid: int) -> list[bytes]:
    """The environment ``pid`` was started with; raises OSError when it is gone or another user's."""
    return (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")


def supervised_by(socket_path: Path) -> dict[str, int]:
    """Process-group leaders started by the supervisord of ``socket_path``, by name, also
    after that supervisord died: it puts its URL and the program's name in each child's
    environment."""
    marker = SUPERVISOR_URL + f"unix://{socket_path}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getpgid(pid) != pid:
                continue
            environ = _environ(pid)
        except OSError:  # gone meanwhile, or another user's
            continue
        if marker in environ:
            name = next((e[24:].decode() for e in environ if e.startswith(b"SUPERVISOR_PROCESS_NAME=")), "")
            found[name] = pid
    return found


def supervised_elsewhere(pid: int, socket_path: Path) -> bool:
    """True when ``pid`` was started by a supervisord other than that of ``socket_path``:
    a process of another stack, even one running the same command on the same port."""
    try:
        environ = _environ(pid)
    except OSError:
        return False
    ours = SUPERVISOR_URL + f"unix://{socket_path}".encode()
    return any(e.startswith(SUPERVISOR_URL) and e != ours for e in environ)


def own_pid(pidfile: Path) -> int | None:
    """The pid on the first line of a server's own pid file, if that process runs, leads
    its process group (as supervisord starts it) and names the file's directory on its
    command line (a pid left by a killed server may be another program's by now)."""
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
        if not process_alive(pid) or os.getpgid(pid) != pid:
            return None
        cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(pidfile.parent).encode() in cmdline else None


def port_free(host: str, port: int) -> bool:
    return not port_in_use(host, port)


def stop_group(pid: int, signum: int, grace_s: float) -> None:
    """Send ``signum`` to a process group, then SIGKILL after ``grace_s`` seconds."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return

    def gone() -> bool:
        reap(pid)
        return not process_alive(pid)

    with contextlib.suppress(WaitTimeout):  # killed below
        wait_until(gone, timeout=grace_s, describe=f"process group {pid} to exit")
    if process_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        reap(pid)


def reap(pid: int) -> None:
    """Collect a child's exit status so it does not linger as a zombie in this process."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
