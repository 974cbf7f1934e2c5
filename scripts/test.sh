#!/usr/bin/env bash
# The whole test suite: lint, types, then unit, integration and e2e tests on real services.
# Integration tests start their own stack (same code as `a0ctl up`) on separate ports
# under .a0-test/, and stop it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
.venv/bin/ruff check a0ctl services tests bench
.venv/bin/ruff format --check a0ctl services tests bench
.venv/bin/mypy a0ctl services
.venv/bin/python -m pytest -m "not load" -p no:cacheprovider "$@"
