#!/usr/bin/env bash
# Installs everything a0 needs on a Debian machine, idempotently:
#   - Debian packages: redis-server, postgresql, maven, a Java runtime, prometheus (metrics),
#     chromium (browser tests), npm (the chat UI's pinned browser packages), bubblewrap and
#     python3-seccomp (the tool sandbox), libjemalloc2 (the allocator of a0's services),
#     golang when opa or jaeger is not built yet
#   - the unprivileged user `a0-tools` that the tool executor and its sandbox run as
#   - the Python environment in .venv, exactly as pinned in uv.lock (scripts/uv.sh runs the
#     pinned uv, installed once from PyPI)
#   - the chat UI's browser packages, pinned and integrity-checked (scripts/vendor-js.sh)
#   - the reference MCP servers of mcp.yaml, pinned (scripts/vendor-mcp.sh)
# Kafka's jars (Maven Central), the opa binary (go install) and the jaeger binary (go build)
# are fetched into ~/.cache/a0 by `a0ctl up` itself, once.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A NEEDS=(
  [redis-server]=redis-server
  [postgresql]=/usr/lib/postgresql
  [maven]=mvn
  [default-jre-headless]=java
  [chromium]=chromium
  [npm]=npm
  [bubblewrap]=bwrap
  [prometheus]=prometheus
  [libjemalloc2]=/usr/lib/$(uname -m)-linux-gnu/libjemalloc.so.2
)
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
missing=()
for pkg in "${!NEEDS[@]}"; do
  probe="${NEEDS[$pkg]}"
  if [[ "$probe" == /* ]]; then [[ -e "$probe" ]] || missing+=("$pkg")
  else command -v "$probe" >/dev/null 2>&1 || missing+=("$pkg"); fi
done
# libseccomp's bindings for the system interpreter generate the sandbox's seccomp filter.
/usr/bin/python3 -c 'import seccomp' >/dev/null 2>&1 || missing+=(python3-seccomp)
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Go builds opa and jaeger, and kubeconform and kustomize for `a0ctl deploy validate`.
if ! command -v go >/dev/null 2>&1; then
  echo "bootstrap: go not found; installing golang (builds opa, jaeger, kubeconform, kustomize)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq golang >/dev/null
fi

# The tool executor drops to this user when started as root; tool code never runs as root.
if ! getent passwd a0-tools >/dev/null; then
  echo "bootstrap: creating the system user a0-tools (runs tool code)"
  $SUDO useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin a0-tools
fi

# Exactly the versions in uv.lock (hashes checked), into .venv; a second run checks and
# changes nothing. --locked refuses a uv.lock that no longer matches pyproject.toml.
PY=${PYTHON:-python3}
./scripts/uv.sh sync --locked --extra dev --python "$PY" --quiet
./scripts/vendor-js.sh
./scripts/vendor-mcp.sh
echo "bootstrap: ok"
