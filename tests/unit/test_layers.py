"""The code's structure holds: the layer and no-cycle contracts of pyproject.toml
(import-linter), and no module of a0 imports another module's private name (tests may
reach into what they test)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("a0ctl", "services", "bench")


def test_import_contracts_are_kept() -> None:
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _private_imports(path: Path) -> list[str]:
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith(PACKAGES):
                continue  # a third party's
            found += [
                f"{module}: {node.module}.{alias.name}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            ]
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    found = [
        hit
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for hit in _private_imports(path)
    ]
    assert found == []


CLI = {"a0ctl.commands", "a0ctl.console", "a0ctl.main", "a0ctl.__main__", "a0ctl.__init__"}


def test_the_cli_contract_names_every_module_of_a0ctl() -> None:
    """A new concern of a0ctl (a module or package beside ``commands``) falls under the
    contract that keeps typer and rich out of its logic."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    cli = next(c for c in contracts if "typer" in c.get("forbidden_modules", ()))
    children = {
        f"a0ctl.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "a0ctl").iterdir()
        if (path.suffix == ".py" or (path / "__init__.py").exists())
    }
    assert sorted(children - CLI) == sorted(cli["source_modules"])
