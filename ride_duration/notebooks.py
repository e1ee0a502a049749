"""Running notebooks under papermill, and checking that what they printed is ours.

scripts/run_notebooks.py (`make tutorial`), notebook 05 (which runs score.ipynb) and the tests share
these, so every executed notebook is run and judged the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

# What a library prints when something is off or merely chatty; none of it belongs in a notebook's
# output. Our own notices never use these words.
NOISE = re.compile(
    r"Warning|WARNING|Traceback|\x1b\[|IProgress|alembic|INFO |DEBUG "
    r"|Kernel is running over TCP|Creating initial MLflow database"
)


def kernel_config():
    """papermill's kernel talks over local IPC sockets, not TCP: no port is opened on the machine
    (and ipykernel has no unencrypted TCP to warn about)."""
    from traitlets.config import Config

    return Config({"KernelManager": {"transport": "ipc"}})


def output_texts(notebook):
    """(cell index, text) for every output of every code cell: streams, displayed text, errors."""
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.output_type == "stream":
                yield index, output.text
            elif output.output_type == "error":
                yield index, "\n".join([f"{output.ename}: {output.evalue}", *output.traceback])
            else:
                yield index, output.get("data", {}).get("text/plain", "")


def noise(path: Path | str) -> list[str]:
    """The lines of an executed notebook's outputs that match NOISE, each prefixed with its cell."""
    import nbformat

    found = []
    for index, text in output_texts(nbformat.read(str(path), as_version=4)):
        found += [f"cell {index}: {line}" for line in text.splitlines() if NOISE.search(line)]
    return found


def used_synthetic_data(path: Path | str) -> bool:
    """Whether an executed notebook says it worked on a synthetic month."""
    import nbformat

    return any("SYNTHETIC" in text for _, text in output_texts(nbformat.read(str(path), as_version=4)))
