"""Words that belong to the project's planning, not to its code and docs: issue numbers, acceptance wording,
and the design notes kept beside the project. A reader of a clone has none of these, so no file may cite them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.helpers import ROOT

# What is not the project's own text: environments, data, run outputs, caches, binary artifacts, the lock file.
SKIPPED_FOLDERS = {
    ".venv",
    ".tools",
    "data",
    "output",
    "runs",
    "mlruns",
    "mlartifacts",
    ".git",
    "images",
    ".local-stack",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
}
SKIPPED_FILES = {"uv.lock", "mlflow.db"}
SKIPPED_SUFFIXES = {".parquet", ".pkl", ".png", ".db"}

FORBIDDEN = re.compile(r"\bissue\s+#?\d+|\bissue\s+#|\bDone[ -]when\b|DESIGN\.md|\.\./shared", flags=re.IGNORECASE)


def project_text_files(root: Path = ROOT):
    """Every text file under root outside SKIPPED_FOLDERS, as (path relative to root, text)."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if name not in SKIPPED_FOLDERS)
        for name in sorted(files):
            path = Path(folder) / name
            if name in SKIPPED_FILES or path.suffix in SKIPPED_SUFFIXES:
                continue
            try:
                yield path.relative_to(root), path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # not text


def findings(root: Path = ROOT) -> list[str]:
    """'path:line: the words' for each forbidden phrase in the project's text files."""
    found = []
    for relative, text in project_text_files(root):
        for number, line in enumerate(text.splitlines(), start=1):
            for match in FORBIDDEN.finditer(line):
                found.append(f"{relative}:{number}: {match.group(0)}")
    return found


def test_no_file_cites_issues_acceptance_wording_or_the_design_notes():
    found = findings()
    assert not found, "planning words in the project's files:\n" + "\n".join(found)


# The phrases, assembled so that this file does not match itself.
ISSUE, DONE, NOTES, SHARED = "iss" + "ue", "Do" + "ne", "DES" + "IGN.md", ".." + "/shared"


def test_the_scan_finds_each_kind_of_word_and_skips_what_is_not_ours(tmp_path):
    (tmp_path / "notes.md").write_text(
        f"fixes {ISSUE} 12\nsee {ISSUE.title()} #3\n{DONE} when it runs\n{DONE.lower()}-when\nread {NOTES}\n"
    )
    (tmp_path / "code.py").write_text(f"PATH = '{SHARED}/data'\nissues are fine, as is a tissue 3\n")
    for folder in (".venv", "data", "runs"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "readme.txt").write_text(f"{ISSUE} 7\n")
    (tmp_path / "uv.lock").write_text(f"{ISSUE} 8\n")
    (tmp_path / "model.pkl").write_bytes(f"\x80\x04{ISSUE} 9".encode("latin-1"))
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe" + f"{ISSUE} 10".encode())
    assert findings(tmp_path) == [
        f"code.py:1: {SHARED}",
        f"notes.md:1: {ISSUE} 12",
        f"notes.md:2: {ISSUE.title()} #3",
        f"notes.md:3: {DONE} when",
        f"notes.md:4: {DONE.lower()}-when",
        f"notes.md:5: {NOTES}",
    ]
