"""Artifacts the local runtime needs, resolved once into a cache (``~/.cache/a0``).

- Kafka: Apache Kafka's broker jars from Maven Central, resolved with ``mvn`` from
  ``stack/kafka/pom.xml``.
- OPA: the ``opa`` server binary at a pinned version, from ``go install`` when the
  machine has none of that version.
- kubeconform and kustomize (``a0ctl deploy validate``): ``go install`` at pinned versions.
- Jaeger v2: the ``jaeger`` binary at a pinned version, built with ``go build`` from the
  module the Go module proxy serves (its go.mod has a replace directive, so ``go
  install mod@version`` refuses it). Several minutes on two cores, once; Go's build
  cache makes a rebuild quick.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from a0ctl import subprocesses
from a0ctl.errors import StackError
from services.common.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_POM = REPO_ROOT / "stack" / "kafka" / "pom.xml"
KAFKA_LOG4J = REPO_ROOT / "stack" / "kafka" / "log4j2.properties"
OPA_POLICY_DIR = REPO_ROOT / "stack" / "opa"
OPA_MODULE = "github.com/open-policy-agent/opa"
JAEGER_MODULE = "github.com/jaegertracing/jaeger"


def find_binary(binary: str, fix: str, service: str) -> str:
    """The path of ``binary`` on PATH, or a StackError for ``service`` saying how to ``fix`` it."""
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
    # The jars follow the pom as well as the version: a changed pom resolves them again.
    resolved = f"{settings.kafka.version} {hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()[:16]}"
    if marker.exists() and marker.read_text() == resolved:
        return libs
    mvn = find_binary("mvn", "install Maven (apt-get install maven) or run scripts/bootstrap.sh", "kafka")
    find_binary("java", "install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)", "kafka")
    staging = libs.parent / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    subprocesses.run(
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
        what=f"resolving Apache Kafka {settings.kafka.version} with Maven",
        service="kafka",
        hint="check that Maven Central is reachable and A0_KAFKA_VERSION names a released version",
    )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    marker.write_text(resolved)
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
        probe = subprocesses.run([on_path, "version"], what="opa version", service="opa", check=False)
        if f"Version: {settings.opa.version.lstrip('v')}" in probe.stdout:
            return Path(on_path)
    return go_install(OPA_MODULE, settings.opa.version, cached, service="opa", setting="A0_OPA_VERSION")


def go_install(module: str, version: str, binary: Path, *, service: str, setting: str) -> Path:
    """Build ``module@version`` with ``go install`` into ``binary``'s directory, once."""
    if binary.exists():
        return binary
    go = find_binary(
        "go", f"install Go (apt-get install golang; scripts/bootstrap.sh does) to build {service}", service
    )
    env = {**os.environ, "GOBIN": str(binary.parent), "CGO_ENABLED": "0"}
    hint = f"check the Go module proxy is reachable and {setting} names a released version"
    what = f"building {service} {version} with go install"
    subprocesses.run([go, "install", f"{module}@{version}"], what=what, service=service, hint=hint, env=env)
    if not binary.exists():
        raise StackError(f"{what} left no binary at {binary}", service=service, hint=hint)
    return binary


def jaeger_path(settings: Settings) -> Path:
    return settings.stack.cache_dir / f"jaeger-{settings.telemetry.jaeger_version}" / "jaeger"


JAEGER_HINT = (
    "check the Go module proxy is reachable and A0_OTEL_JAEGER_VERSION names a released version "
    "(or set A0_OTEL_JAEGER=false to run without traces)"
)


def ensure_jaeger(settings: Settings) -> Path:
    """Return the pinned ``jaeger`` binary, building it with Go when missing (one build at a
    time per machine: a second caller waits for the first and finds the binary)."""
    cached = jaeger_path(settings)
    if cached.exists():
        return cached
    version = settings.telemetry.jaeger_version
    go = find_binary("go", "install Go (apt-get install golang; scripts/bootstrap.sh does)", "jaeger")
    cached.parent.mkdir(parents=True, exist_ok=True)
    with open(cached.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached.exists():
            return cached
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-trimpath"}
        download = subprocesses.run(
            [go, "mod", "download", "-json", f"{JAEGER_MODULE}@{version}"],
            what=f"downloading {JAEGER_MODULE}@{version}",
            service="jaeger",
            hint=JAEGER_HINT,
            env=env,
        )
        source = json.loads(download.stdout)["Dir"]
        partial = cached.with_name("jaeger.partial")
        subprocesses.run(
            [go, "build", "-o", str(partial), "./cmd/jaeger"],
            what=f"building jaeger {version}",
            service="jaeger",
            hint=JAEGER_HINT,
            cwd=source,
            env=env,
        )
        if not partial.exists():
            raise StackError(
                f"building jaeger {version} left no binary at {partial}", service="jaeger", hint=JAEGER_HINT
            )
        partial.rename(cached)
    return cached


def require_binary(binary: str, service: str, install: str) -> str:
    """The path of a binary from Debian's packages, or a StackError naming the package."""
    return find_binary(binary, f"{install} (scripts/bootstrap.sh does)", service)


def ensure_all(settings: Settings) -> None:
    """Everything the local runtime builds or resolves, so a first start does not wait on
    it (scripts/test.sh runs this before the tiers: a test's time limit is no build's)."""
    ensure_kafka(settings)
    ensure_opa(settings)
    if settings.telemetry.jaeger:
        ensure_jaeger(settings)


if __name__ == "__main__":
    from services.common.settings import load_settings

    ensure_all(load_settings())
