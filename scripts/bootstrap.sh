#!/usr/bin/env bash
# Installs everything a0 needs on a Debian machine, idempotently:
#   - Debian packages: redis-server, postgresql, maven, a Java runtime, chromium (browser tests),
#     bubblewrap and python3-seccomp (the tool sandbox)
#   - the unprivileged user `a0-tools` that the tool executor and its sandbox run as
#   - the Python environment in .venv (re-installed only when pyproject.toml changes)
# Kafka's jars (Maven Central) and the opa binary (go install) are fetched into
# ~/.cache/a0 by `a0ctl up` itself, once.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A NEEDS=(
  [redis-server]=redis-server
  [postgresql]=/usr/lib/postgresql
  [maven]=mvn
  [default-jre-headless]=java
  [chromium]=chromium
  [bubblewrap]=bwrap
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

# Go builds opa, and kubeconform and kustomize for `a0ctl deploy validate`.
if ! command -v go >/dev/null 2>&1; then
  echo "bootstrap: go not found; installing golang (builds opa, kubeconform, kustomize)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq golang >/dev/null
fi

# The tool executor drops to this user when started as root; tool code never runs as root.
if ! getent passwd a0-tools >/dev/null; then
  echo "bootstrap: creating the system user a0-tools (runs tool code)"
  $SUDO useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin a0-tools
fi

PY=${PYTHON:-python3}
stamp=".venv/.a0-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -x .venv/bin/python ]]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "bootstrap: installing Python packages into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$want" > "$stamp"
fi
echo "bootstrap: ok"
