"""Artifacts the local runtime needs, resolved once into a cache (``~/.cache/a0``).

- Kafka: Apache Kafka's broker jars from Maven Central, resolved with ``mvn`` from
  ``stack/kafka/pom.xml``.
- OPA: the ``opa`` server binary at a pinned version, from ``go install`` when the
  machine has none of that version.
- kubeconform and kustomize (``a0ctl deploy validate``): ``go install`` at pinned versions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from services.common.errors import StackError
from services.common.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_POM = REPO_ROOT / "stack" / "kafka" / "pom.xml"
KAFKA_LOG4J = REPO_ROOT / "stack" / "kafka" / "log4j2.properties"
OPA_POLICY_DIR = REPO_ROOT / "stack" / "opa"
OPA_MODULE = "github.com/open-policy-agent/opa"


def _require(binary: str, fix: str, service: str) -> str:
    path = shutil.which(binary)
    if not path:
        raise StackError(f"{binary} not found on PATH", service=service, hint=fix)
    return path


def kafka_libs(settings: Settings) -> Path:
    return settings.stack.cache_dir / f"kafka-{settings.kafka.version}" / "libs"


def ensure_kafka(settings: Settings) -> Path:
    """Return the directory holding the broker's jars, resolving them with Maven if needed."""
    libs = kafka_libs(settings)
    marker = libs.parent / ".complete"
    if marker.exists():
        return libs
    mvn = _require("mvn", "install Maven (apt-get install maven) or run scripts/bootstrap.sh", "kafka")
    _require("java", "install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)", "kafka")
    staging = libs.parent / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(KAFKA_POM),
            f"-Dkafka.version={settings.kafka.version}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise StackError(
            f"could not resolve Apache Kafka {settings.kafka.version} with Maven:\n{tail}",
            service="kafka",
            hint="check that Maven Central is reachable and A0_KAFKA_VERSION names a released version",
        )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    marker.write_text(settings.kafka.version)
    return libs


def opa_path(settings: Settings) -> Path:
    return settings.stack.cache_dir / f"opa-{settings.opa.version}" / "opa"


def ensure_opa(settings: Settings) -> Path:
    """Return the pinned ``opa`` binary, building it with ``go install`` when missing."""
    cached = opa_path(settings)
    if cached.exists():
        return cached
    on_path = shutil.which("opa")
    if on_path:
        probe = subprocess.run([on_path, "version"], capture_output=True, text=True)
        if f"Version: {settings.opa.version.lstrip('v')}" in probe.stdout:
            return Path(on_path)
    return go_install(OPA_MODULE, settings.opa.version, cached, service="opa", setting="A0_OPA_VERSION")


def go_install(module: str, version: str, binary: Path, *, service: str, setting: str) -> Path:
    """Build ``module@version`` with ``go install`` into ``binary``'s directory, once."""
    if binary.exists():
        return binary
    go = _require(
        "go", f"install Go (apt-get install golang; scripts/bootstrap.sh does) to build {service}", service
    )
    env = {**os.environ, "GOBIN": str(binary.parent), "CGO_ENABLED": "0"}
    result = subprocess.run([go, "install", f"{module}@{version}"], capture_output=True, text=True, env=env)
    if result.returncode != 0 or not binary.exists():
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise StackError(
            f"could not build {service} {version} with go install:\n{tail}",
            service=service,
            hint=f"check the Go module proxy is reachable and {setting} names a released version",
        )
    return binary


def require_binary(binary: str, service: str, install: str) -> str:
    """The path of a binary from Debian's packages, or a StackError naming the package."""
    return _require(binary, f"{install} (scripts/bootstrap.sh does)", service)
