#!/usr/bin/env bash
# The reference MCP servers that mcp.yaml declares, pinned, where the tool sandbox can run
# them (as the unprivileged tools user, so nowhere under a private home directory):
#   npm:  stack/mcp-servers/package-lock.json → stack/mcp-servers/node_modules
#   PyPI: mcp-server-time at its uv.lock version → stack/mcp-servers/.venv, a virtual
#         environment of the sandbox's interpreter (A0_TOOLS_SANDBOX_PYTHON, /usr/bin/python3)
# Both are installed into a cache keyed by their lock (integrity and hashes checked), then
# linked into place. Idempotent: nothing is fetched or written when the cache holds them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

spec=stack/mcp-servers
cache_root="${A0_CACHE_DIR:-$HOME/.cache/a0}"
# The tools user reads the servers through these links: keep the cache out of a private
# home — in /var/cache/a0 for root (shared by every checkout), else in the checkout.
if [[ "$cache_root" == /root/* || "$cache_root" == "$HOME"/* ]]; then
  if [[ $(id -u) -eq 0 ]]; then cache_root=/var/cache/a0; else cache_root="$PWD/.a0/cache"; fi
fi
mkdir -p "$cache_root"
python="${A0_TOOLS_SANDBOX_PYTHON:-/usr/bin/python3}"

link() {  # target → link name, only when different
  [[ "$(readlink "$2" 2>/dev/null)" == "$1" ]] || ln -sfn "$1" "$2"
}

npm_ci_cached "$spec" "$cache_root" mcp-npm --omit=dev
link "$NPM_CACHE_DIR/node_modules" "$spec/node_modules"

requirements=$(./scripts/uv.sh export --frozen --no-emit-project --no-header --quiet)
# Only what mcp-server-time needs: uv resolves it again from the exact pins of uv.lock.
pins=$(printf '%s\n' "$requirements" | grep -E '^[A-Za-z0-9_.-]+==' | sed 's/ .*//')
time_pin=$(printf '%s\n' "$pins" | grep '^mcp-server-time==')
key=$( (printf '%s\n' "$pins"; "$python" --version) | sha256sum | cut -c1-16)
py_cache="$cache_root/mcp-venv-$key"
if [[ ! -f "$py_cache/.installed" ]]; then
  echo "vendor-mcp: installing $time_pin into a virtual environment of $python"
  rm -rf "$py_cache"
  ./scripts/uv.sh venv --quiet --python "$python" "$py_cache"
  printf '%s\n' "$pins" > "$py_cache/constraints.txt"
  ./scripts/uv.sh pip install --quiet --python "$py_cache/bin/python" \
    --constraint "$py_cache/constraints.txt" "$time_pin"
  touch "$py_cache/.installed"
fi
link "$py_cache" "$spec/.venv"
echo "vendor-mcp: ok"
