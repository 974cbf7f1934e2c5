#!/usr/bin/env bash
# Runs a0's pinned uv: the version of `required-version` under [tool.uv] in pyproject.toml.
# The first time, it is installed from PyPI with pip (and pip's cache) into
# ~/.cache/a0/uv-<version>/, beside the other artifacts a0 caches; after that it just runs.
#   scripts/uv.sh lock --upgrade    move every dependency in uv.lock to its newest release
#   scripts/uv.sh tree              what depends on what, as locked
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
version=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["tool"]["uv"]["required-version"].lstrip("="))')
home="${A0_CACHE_DIR:-$HOME/.cache/a0}/uv-$version"
if [[ "$("$home/bin/uv" --version 2>/dev/null)" != "uv $version"* ]]; then
  echo "uv: installing uv $version into $home" >&2
  rm -rf "$home"
  "$PY" -m venv "$home"
  "$home/bin/pip" install -q --disable-pip-version-check "uv==$version"
fi
# The machine's own Python, never one uv would download.
export UV_PYTHON_DOWNLOADS=never
exec "$home/bin/uv" "$@"
