"""Export the deployable scripts from their notebooks (nbdev's habit: the notebook is the source).

    python scripts/export.py           # regenerate every export (make export)
    python scripts/export.py --check   # fail if a committed export differs (make check-export)

Cells tagged `notebook-only` (starting servers, plots, demo requests) are left out; markdown is
left out; raw cells (a CLI entry point papermill must not run) are kept. Each export starts with
a line naming its notebook.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

from ride_duration.files import write_atomically
from ride_duration.settings import PROJECT_ROOT as ROOT

NOTEBOOK_ONLY_TAG = "notebook-only"
# notebook -> the script exported from it
EXPORTS = {
    "notebooks/03-web-service.ipynb": "web-service/predict.py",
    "notebooks/04-streaming.ipynb": "streaming/lambda_function.py",
    "notebooks/score.ipynb": "scripts/score.py",
    "notebooks/06-orchestrate.ipynb": "scripts/orchestrate.py",
    "notebooks/09-spark.ipynb": "scripts/score_spark.py",
}


class ExportError(ValueError):
    """A notebook that cannot be exported as it stands (e.g. a !shell line in an exported cell)."""


def exporter():
    """nbconvert's script exporter with notebook-only cells and markdown removed."""
    from nbconvert import PythonExporter
    from traitlets.config import Config

    config = Config()
    config.TagRemovePreprocessor.enabled = True
    config.TagRemovePreprocessor.remove_cell_tags = {NOTEBOOK_ONLY_TAG}
    config.TemplateExporter.exclude_markdown = True
    config.TemplateExporter.exclude_input_prompt = True
    return PythonExporter(config=config)


def export_source(notebook: Path) -> str:
    """The script for one notebook, as text, starting with a line naming the notebook."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    relative = notebook.resolve().relative_to(ROOT).as_posix()
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or NOTEBOOK_ONLY_TAG in cell.metadata.get("tags", []):
            continue
        for line in cell.source.splitlines():
            if line.lstrip().startswith(("!", "%")):
                raise ExportError(f"{relative} cell {index}: shell/magic line in an exported cell: {line!r}")
    body, _ = exporter().from_notebook_node(nb)
    body = re.sub(r"\A#!/usr/bin/env python\n(# coding: utf-8\n)?", "", body).strip("\n")
    body = re.sub(r"\n{3,}", "\n\n\n", body)
    header = f"# Exported from {relative} by `make export`: edit the notebook, not this file."
    return f"{header}\n\n{body}\n"


def export_all(check: bool = False) -> int:
    """Write (or, with check, compare) every export; returns the number of stale exports."""
    stale = 0
    for notebook, script in EXPORTS.items():
        notebook_path, script_path = ROOT / notebook, ROOT / script
        fresh = export_source(notebook_path)
        current = script_path.read_text() if script_path.exists() else ""
        if fresh == current:
            continue
        if check:
            stale += 1
            diff = difflib.unified_diff(
                current.splitlines(),
                fresh.splitlines(),
                f"{script} (committed)",
                f"{script} (from {notebook})",
                lineterm="",
            )
            print("\n".join(list(diff)[:60]), file=sys.stderr)
        else:
            write_atomically(script_path, fresh)
            print(f"exported {notebook} -> {script}")
    if check:
        print(f"check-export: {stale} stale export(s)" if stale else "check-export: every export matches its notebook")
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 if any differ")
    args = parser.parse_args(argv)
    return 1 if export_all(check=args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
