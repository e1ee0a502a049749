"""The project's habits hold: ruff's lint and format checks pass and the GitHub workflow is valid, by the tools
themselves (tests/unit/test_habits.py checks what needs no tool: the months the workflow downloads, the test targets)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

BIN = Path(sys.executable).parent  # ruff and actionlint come with the dev group
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def run_tool(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command[0]), *command[1:]], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [("ruff", "check", "."), ("ruff", "format", "--check", ".")])
def test_ruff_passes_on_the_repository(command):
    run = run_tool(*command)
    assert run.returncode == 0, f"`{' '.join(command)}` failed (make lint):\n{run.stdout}{run.stderr}"


def test_ruff_uses_the_projects_settings_and_reads_notebooks(tmp_path):
    """The checks above can fail: an unused import in a notebook is found under the project's settings."""
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("import os\n\nvalue = 1")]
    nbformat.write(notebook, tmp_path / "sloppy.ipynb")
    run = run_tool("ruff", "check", "--config", str(ROOT / "pyproject.toml"), "sloppy.ipynb", cwd=tmp_path)
    assert run.returncode == 1 and "F401" in run.stdout, run.stdout + run.stderr


def test_the_github_workflow_passes_actionlint():
    run = run_tool("actionlint", str(WORKFLOW))
    assert run.returncode == 0, f"actionlint {WORKFLOW.relative_to(ROOT)}:\n{run.stdout}{run.stderr}"


def test_actionlint_finds_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  ci:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ matrix.nope }}\n"
    )
    run = run_tool("actionlint", str(broken))
    assert run.returncode == 1 and "matrix" in run.stdout, run.stdout + run.stderr
