"""make check-export on the repository: the committed exports match their notebooks (the command line, as CI
runs it; tests/unit/test_export.py checks what an export keeps and that a hand edit is caught)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def test_committed_exports_match_their_notebooks():
    result = subprocess.run([sys.executable, "scripts/export.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
