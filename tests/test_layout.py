"""The layout is a checked contract: import-linter's layers, independence and no-cycle contracts
(``setup.cfg``) hold, modules stay small, no file gains lines over 100 characters, and every command in
the README resolves to a ``main``.

``python tests/test_layout.py long-lines`` rewrites ``tests/data/long_lines.json`` after lines were
wrapped (the counts may only go down: the test fails on a file with more long lines than recorded, and
on a record that is higher than the file needs, so every wrap is kept)."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.tools.cli import COMMANDS

from conftest import REPO

MAX_MODULE_LINES = 360  # "small files, one purpose each": the layout README.md "Where things are" describes
LINE_LIMIT = 100  # ruff's line-length; lines written before it are counted in LONG_LINES, file by file
LONG_LINES = REPO / "tests" / "data" / "long_lines.json"
CODE_DIRS = ("pipeline", "data_tools", "benchmarks", "tests")


def long_line_counts() -> dict[str, int]:
    """Lines longer than :data:`LINE_LIMIT` per Python file of the code directories (files with none
    left out)."""
    counts = {}
    for top in CODE_DIRS:
        for path in sorted((REPO / top).rglob("*.py")):
            n = sum(len(line) > LINE_LIMIT for line in path.read_text().splitlines())
            if n:
                counts[str(path.relative_to(REPO))] = n
    return counts


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


def test_no_file_gains_lines_over_100_characters():
    """New and changed code keeps to 100 characters; older long lines are a shrinking, recorded count."""
    recorded, now = json.loads(LONG_LINES.read_text()), long_line_counts()
    grown = {f: f"{n} lines > {LINE_LIMIT} characters, {recorded.get(f, 0)} allowed"
             for f, n in now.items() if n > recorded.get(f, 0)}
    assert not grown, f"wrap the new long lines: {grown}"
    stale = {f: f"{now.get(f, 0)} now, {n} recorded" for f, n in recorded.items() if now.get(f, 0) < n}
    assert not stale, f"lines were wrapped: run `python tests/test_layout.py long-lines` ({stale})"


def test_modules_stay_small():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines())
             for package in ("pipeline", "data_tools") for p in (REPO / package).rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v > MAX_MODULE_LINES} == {}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_main(name):
    module = importlib.import_module(COMMANDS[name])
    assert callable(module.main), COMMANDS[name]


if __name__ == "__main__" and sys.argv[1:] == ["long-lines"]:
    LONG_LINES.write_text(json.dumps(long_line_counts(), indent=1, sort_keys=True) + "\n")
    print(f"{LONG_LINES}: {sum(long_line_counts().values())} lines over {LINE_LIMIT} characters")
