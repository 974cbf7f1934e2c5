"""How many requests of each kind (Produce, Fetch, OffsetCommit ...) the local broker has
served: its own ``kafka.network:type=RequestMetrics,name=RequestsPerSec`` counters.

The broker publishes them only over JMX, and a JMX port would let anyone on the machine
who reaches it run code in the broker. Instead this loads a tiny Java agent into the
running broker through HotSpot's attach mechanism — a Unix socket only the broker's own
user (or root) may open, the same trust as reading its ``/proc`` — and the agent writes
the counts to a file under the stack's ``run/`` directory. No port is opened, no JVM is
started: the agent is built once with ``javac``/``jar`` (a JDK is on the machine for
the broker already), and each reading costs the broker a class call and a small file.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

from a0ctl import subprocesses
from services.common.errors import A0Error
from services.common.retry import WaitTimeout, wait_until

AGENT_CLASS = "A0KafkaRequestCounts"
AGENT_SOURCE = """\
import java.lang.instrument.Instrumentation;
import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.Map;
import java.util.TreeMap;
import javax.management.MBeanServer;
import javax.management.ObjectName;

/** Writes the broker's request counts, by request kind, to the file named by its argument. */
public final class A0KafkaRequestCounts {
    public static void agentmain(String target, Instrumentation instrumentation) throws Exception {
        MBeanServer server = ManagementFactory.getPlatformMBeanServer();
        ObjectName pattern = new ObjectName("kafka.network:type=RequestMetrics,name=RequestsPerSec,*");
        Map<String, Long> counts = new TreeMap<>();
        for (ObjectName name : server.queryNames(pattern, null)) {
            Number count = (Number) server.getAttribute(name, "Count");
            counts.merge(name.getKeyProperty("request"), count.longValue(), Long::sum);
        }
        StringBuilder text = new StringBuilder();
        for (Map.Entry<String, Long> entry : counts.entrySet()) {
            text.append(entry.getKey()).append(' ').append(entry.getValue()).append('\\n');
        }
        Path path = Paths.get(target);
        Path staging = path.resolveSibling(path.getFileName() + ".tmp");
        Files.writeString(staging, text.toString());
        Files.move(staging, path, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }
}
"""
ATTACH_WAIT_S = 5.0


class KafkaRequestsUnavailable(A0Error):
    """The broker's request counts cannot be read; the message says why."""


def build_agent(directory: Path) -> Path:
    """The agent's jar under ``directory``, built on first use."""
    jar = directory / "a0-kafka-request-counts.jar"
    if jar.exists():
        return jar
    javac, jar_tool = shutil.which("javac"), shutil.which("jar")
    if not javac or not jar_tool:
        raise KafkaRequestsUnavailable("no JDK (javac, jar) to build the request-count agent")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as work:
        source = Path(work) / f"{AGENT_CLASS}.java"
        source.write_text(AGENT_SOURCE)
        manifest = Path(work) / "manifest.txt"
        manifest.write_text(f"Agent-Class: {AGENT_CLASS}\n")
        for argv in (
            [javac, "--release", "11", "-d", work, str(source)],
            [jar_tool, "--create", "--file", f"{jar}.tmp", "--manifest", str(manifest), "-C", work, "."],
        ):
            try:
                subprocesses.run(argv, what="building the request-count agent")
            except subprocesses.CommandError as exc:
                raise KafkaRequestsUnavailable(exc.message[-400:]) from None
        Path(f"{jar}.tmp").replace(jar)
    return jar


def _attach_socket(pid: int) -> socket.socket:
    """A connection to the JVM's attach listener, started first if it is not running:
    an ``.attach_pid`` file in its working directory, then SIGQUIT (with the file there,
    the JVM opens the listener instead of printing a thread dump)."""
    path = Path(f"/proc/{pid}/root/tmp/.java_pid{pid}")
    if not path.exists():
        trigger = Path(f"/proc/{pid}/cwd/.attach_pid{pid}")
        trigger.touch()
        try:
            os.kill(pid, signal.SIGQUIT)
            wait_until(path.exists, timeout=ATTACH_WAIT_S, interval=0.05, describe="the attach socket")
        except WaitTimeout:
            raise KafkaRequestsUnavailable(f"the broker (pid {pid}) did not open its attach socket") from None
        finally:
            trigger.unlink(missing_ok=True)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(ATTACH_WAIT_S)
    try:
        connection.connect(str(path))
    except OSError as exc:
        connection.close()
        raise KafkaRequestsUnavailable(f"cannot attach to the broker (pid {pid}): {exc}") from exc
    return connection


def read_request_counts(pid: int, run_dir: Path) -> dict[str, int]:
    """The broker's request counts since it started, by request kind (Produce, Fetch ...)."""
    jar = build_agent(run_dir / "agents")
    target = run_dir / "kafka-request-counts.txt"
    target.unlink(missing_ok=True)
    with _attach_socket(pid) as connection:
        # Protocol 1: the version, the command and three arguments, each NUL-terminated.
        arguments = ["1", "load", "instrument", "false", f"{jar}={target}"]
        connection.sendall(b"".join(argument.encode() + b"\0" for argument in arguments))
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
    code, _, detail = answer.decode(errors="replace").partition("\n")
    if code.strip() != "0" or detail.strip() not in ("", "0", "return code: 0"):
        raise KafkaRequestsUnavailable(f"the broker refused the request-count agent: {answer[:200]!r}")
    try:
        lines = target.read_text().splitlines()
    except OSError as exc:
        raise KafkaRequestsUnavailable(f"the request-count agent wrote nothing: {exc}") from exc
    counts = {}
    for line in lines:
        kind, _, count = line.partition(" ")
        counts[kind] = int(count)
    return counts
