"""The layout is a checked contract: import-linter's layers, independence and no-cycle contracts
(``setup.cfg``) hold, modules stay small, and every command in the README resolves to a ``main``."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.tools.cli import COMMANDS

from conftest import REPO

MAX_MODULE_LINES = 360  # "small files, one purpose each": the layout README.md "Where things are" describes


def _lint_imports() -> str:
    local = Path(sys.executable).with_name("lint-imports")
    return str(local) if local.exists() else shutil.which("lint-imports") or ""


def test_import_contracts_hold():
    """A cycle, an upward import or data_tools used inside pipeline fails here (and in `make lint`)."""
    exe = _lint_imports()
    if not exe:
        pytest.fail("lint-imports not found: pip install import-linter (requirements-cpu.txt)")
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


def test_modules_stay_small():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines())
             for package in ("pipeline", "data_tools") for p in (REPO / package).rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v > MAX_MODULE_LINES} == {}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_main(name):
    module = importlib.import_module(COMMANDS[name])
    assert callable(module.main), COMMANDS[name]
