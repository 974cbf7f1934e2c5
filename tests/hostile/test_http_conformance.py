"""The gateway held to its own OpenAPI document: Schemathesis generates requests for every
operation — the schema's examples, its coverage of each boundary, random inputs and the
stateful phase that chains operations through their links — sends them with a valid
token and runs every check it has (``--checks all``).

Any failure fails the test, unless it is one of the intended answers written down, each
with its reason, in ``schemathesis.toml`` beside this file. A run's seed is fixed, so a
failure found here is found again; to explore further, run the same command with
another ``--seed`` (the failing test prints the command).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.auth import mint_token
from services.common.settings import Settings
from tests.conftest import ROOT

pytestmark = pytest.mark.hostile

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.timeout(1800)
def test_the_gateway_answers_as_its_openapi_document_says(settings: Settings) -> None:
    token = mint_token(settings, "schema-tester")
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "run",
        f"{settings.gateway_url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {token}",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1700, check=False)
    shown = shlex.join(command).replace(token, "$TOKEN")
    assert result.returncode == 0, f"{shown}\n\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
