#!/usr/bin/env bash
# The whole test suite: lint, types, then the unit, integration, faults, cluster, hostile
# and e2e tiers, each on real services. The integration, faults, hostile and e2e tiers start their
# own stack (same code as `a0ctl up`) on separate ports under .a0-test/, and stop it at the end. Each tier runs
# in its own pytest process (the browser tier's Playwright owns its event loop), and
# the closing line adds them up.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh || exit 1
.venv/bin/ruff check a0ctl services tests bench || exit 1
.venv/bin/ruff format --check a0ctl services tests bench || exit 1
.venv/bin/mypy a0ctl services tests bench || exit 1
# Kafka's jars, opa and jaeger, once (the jaeger build takes minutes on two cores).
.venv/bin/python -m a0ctl.runtime.artifacts || exit 1

mkdir -p test-artifacts
rm -f test-artifacts/junit-*.xml
status=0
for tier in unit integration faults cluster hostile e2e; do
  echo "=== $tier tests ==="
  .venv/bin/python -m pytest "tests/$tier" -p no:cacheprovider \
    --junitxml="test-artifacts/junit-$tier.xml" "$@" || status=1
done
.venv/bin/python - <<'PY'
import glob
import xml.etree.ElementTree as ET

totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for path in sorted(glob.glob("test-artifacts/junit-*.xml")):
    for suite in ET.parse(path).getroot().iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
failed = totals["failures"] + totals["errors"]
passed = totals["tests"] - failed - totals["skipped"]
print(f"all tiers: {passed} passed, {failed} failed, {totals['skipped']} skipped")
PY
exit $status
