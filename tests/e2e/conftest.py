"""The e2e tier: the chat UI in Debian's Chromium, driven by Playwright, against the
whole stack brought up by the same code as ``a0ctl up`` (tests/conftest.py has already
pointed every ``A0_*`` variable at a private test stack).

Fixtures:

- ``e2e_stack`` (session): the stack, apps included; ``down(purge=True)`` at the end.
- ``second_llm_sim`` (session): one more ``a0ctl run llm-sim`` on a free port, with an API
  key only the tests know: a provider the UI's Settings can switch to.
- ``credential_uses``: how often the worker used a user's stored LLM key (the
  ``credential_audit`` trail of docs/credentials.md).
- ``browser`` (per module), ``context`` and ``page`` (per test): a fresh browser context per
  test (allowed to use the clipboard); the page's final state is saved to
  ``test-artifacts/screenshots/<test>.png``.
- ``local_stack``: the test stack's runtime, to stop and start one of its services.
- ``axe_page``: a page with axe-core loaded before the app's scripts.
- ``axe_script``: axe-core, pinned in stack/ui-vendor and put in place by
  scripts/vendor-js.sh (run here when missing), for the accessibility checks.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from a0ctl.runtime import get_runtime
from a0ctl.runtime.local import LocalRuntime
from a0ctl.runtime.stack import bring_up
from services.common.settings import Settings, load_settings
from tests.support.processes import running_sim

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# The stack's simulator streams slowly enough to click "Stop" mid-answer (~200 words in 5 s).
SIM_TOKENS_PER_S = "40"
SIM_MODEL = "a0-sim-1"


@dataclass(frozen=True)
class Stack:
    settings: Settings

    @property
    def url(self) -> str:
        return self.settings.gateway_url


@dataclass(frozen=True)
class LLMSim:
    base_url: str
    api_key: str
    model: str


@pytest.fixture(scope="session")
def e2e_stack() -> Iterator[Stack]:
    # Set only around start-up: the stack's processes inherit it, later tiers never see it.
    previous = os.environ.get("A0_LLM_SIM_TOKENS_PER_S")
    os.environ["A0_LLM_SIM_TOKENS_PER_S"] = SIM_TOKENS_PER_S
    try:
        runtime, statuses = bring_up(load_settings(), runtime_name="local")
    except BaseException:
        # Stop what did start; keep the logs (no purge) for whoever reads the failure.
        get_runtime(load_settings(), "local").down()
        raise
    finally:
        if previous is None:
            os.environ.pop("A0_LLM_SIM_TOKENS_PER_S", None)
        else:
            os.environ["A0_LLM_SIM_TOKENS_PER_S"] = previous
    try:
        unhealthy = [s for s in statuses if not s.healthy]
        assert not unhealthy, f"stack did not come up healthy: {unhealthy}"
        yield Stack(load_settings())
    finally:
        runtime.down(purge=True)


@pytest.fixture(scope="session")
def second_llm_sim(e2e_stack: Stack) -> Iterator[LLMSim]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_sim(ARTIFACTS) as sim:
        yield LLMSim(base_url=sim.base_url, api_key=sim.api_key, model=SIM_MODEL)


# Module scope, not session: the sync Playwright API keeps an asyncio loop running in this
# thread while it is open, and no other asyncio code (bring_up, the async tests of the
# other tiers in the same run) can start its own loop until it is closed. For the same
# reason the stack is brought up before it.
@pytest.fixture(scope="module")
def playwright_driver(e2e_stack: Stack) -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    chromium = playwright_driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def context(browser: Browser, e2e_stack: Stack) -> Iterator[BrowserContext]:
    fresh = browser.new_context(
        base_url=e2e_stack.url,
        viewport={"width": 1280, "height": 800},
        permissions=["clipboard-read", "clipboard-write"],
    )
    yield fresh
    fresh.close()


def _screenshot_path(request: pytest.FixtureRequest, suffix: str = "") -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    return SCREENSHOTS / f"{name}{'-' + suffix if suffix else ''}.png"


@pytest.fixture
def page(context: BrowserContext, request: pytest.FixtureRequest) -> Iterator[Page]:
    tab = context.new_page()
    crashes: list[str] = []
    tab.on("pageerror", lambda error: crashes.append(str(error)))
    yield tab
    name = request.node.name
    try:
        tab.screenshot(path=str(_screenshot_path(request)), full_page=True)
    except Exception as exc:  # a screenshot must never hide the test's own result
        print(f"screenshot of {name} failed: {exc}")
    assert not crashes, f"uncaught JavaScript errors in the page: {crashes}"


@pytest.fixture
def snapshot(page: Page, request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Save an intermediate state too: ``<test>-<suffix>.png``."""

    def save(suffix: str) -> None:
        page.screenshot(path=str(_screenshot_path(request, suffix)))

    return save


@pytest.fixture
def user_name(request: pytest.FixtureRequest) -> str:
    """A user of its own for each test: conversations and credentials never mix."""
    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:32]
    return f"e2e-{test}-{secrets.token_hex(3)}"


@pytest.fixture
def forget_credential(e2e_stack: Stack, user_name: str) -> Iterator[None]:
    """Remove the test user's stored LLM credential afterwards, so later tests use the default."""
    yield
    try:
        login = httpx.post(f"{e2e_stack.url}/v1/auth/dev-login", json={"user": user_name}, timeout=10)
        token = login.json()["token"]
        httpx.delete(
            f"{e2e_stack.url}/v1/settings/credentials/openai",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        print(f"could not remove the credential of {user_name}: {exc}")


@pytest.fixture
def credential_uses(e2e_stack: Stack) -> Callable[[str], int]:
    """How many times the conversation worker used ``user``'s stored LLM credential."""

    def count(user: str) -> int:
        with psycopg.connect(e2e_stack.settings.postgres_dsn, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM credential_audit WHERE owner_id = %s AND action = 'use' "
                "AND outcome = 'ok'",
                (user,),
            ).fetchone()
        return int(row[0]) if row else 0

    return count


@pytest.fixture
def local_stack(e2e_stack: Stack) -> LocalRuntime:
    runtime = get_runtime(e2e_stack.settings, "local")
    assert isinstance(runtime, LocalRuntime)
    return runtime


AXE = ROOT / "tests" / "e2e" / "vendor" / "axe.min.js"


@pytest.fixture(scope="session")
def axe_script() -> Path:
    if not AXE.is_file():
        subprocess.run([str(ROOT / "scripts" / "vendor-js.sh")], cwd=ROOT, check=True, timeout=600)
    assert AXE.is_file(), f"scripts/vendor-js.sh did not put axe-core at {AXE}"
    return AXE


@pytest.fixture
def axe_page(
    browser: Browser, e2e_stack: Stack, axe_script: Path, request: pytest.FixtureRequest
) -> Iterator[Page]:
    """A page with axe-core loaded into every document before the app's own scripts
    (an init script, so the page's Content-Security-Policy does not apply to it)."""
    context = browser.new_context(base_url=e2e_stack.url, viewport={"width": 1280, "height": 800})
    context.add_init_script(path=str(axe_script))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    shots = SCREENSHOTS
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, errors
