"""Run notebooks in order with papermill; executed copies go to runs/ (ignored by git).

    python scripts/run_notebooks.py 01-train 02-register
    python scripts/run_notebooks.py 01-train -p train_month 3
    python scripts/run_notebooks.py 05-batch -p save_images True

Stops at the first notebook that fails and says where its executed copy is. Says so when a notebook
worked on a synthetic month, and names any library warning or log line that got into its outputs.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from ride_duration.settings import PROJECT_ROOT

NOTEBOOKS = PROJECT_ROOT / "notebooks"
RUNS = PROJECT_ROOT / "runs"


def run_notebook(name: str, parameters: dict | None = None, output_dir: Path = RUNS) -> Path:
    """Execute notebooks/<name>.ipynb with papermill (cwd notebooks/) and return the executed copy.

    Only the parameters the notebook declares are passed (papermill warns about any other).
    """
    import papermill

    from ride_duration.notebooks import kernel_config

    source = NOTEBOOKS / (name if name.endswith(".ipynb") else f"{name}.ipynb")
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / source.name
    declared = declared_parameters(source)
    parameters = {name: value for name, value in (parameters or {}).items() if name in declared}
    papermill.execute_notebook(
        str(source),
        str(output),
        parameters=parameters,
        cwd=str(NOTEBOOKS),
        progress_bar=False,
        log_output=False,
        config=kernel_config(),
    )
    return output


def declared_parameters(source: Path) -> set[str]:
    """The names assigned in a notebook's cell tagged `parameters` (`a, b = 1, 2` declares both)."""
    import nbformat

    names = set()
    for cell in nbformat.read(str(source), as_version=4).cells:
        if "parameters" in cell.metadata.get("tags", []):
            for targets in re.findall(r"^([A-Za-z_][\w, ]*?)\s*=(?!=)", cell.source, flags=re.MULTILINE):
                names.update(name.strip() for name in targets.split(","))
    return names


def parse_value(text: str):
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def report(output: Path) -> None:
    """Tell the terminal what the executed copy says about its data, and any noise in it."""
    from ride_duration.notebooks import noise, used_synthetic_data

    if used_synthetic_data(output):
        print("  SYNTHETIC data: a TLC month it needed was not available; its numbers are not NYC's", flush=True)
    lines = noise(output)
    if lines:
        print(f"  {len(lines)} library warning or log line(s) in its outputs, the first:\n    {lines[0]}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", help="notebook names in notebooks/, e.g. 01-train")
    parser.add_argument(
        "-p",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter for every notebook that has it",
    )
    args = parser.parse_args(argv)
    parameters = {name: parse_value(value) for name, value in args.p}
    for name in args.notebooks:
        started = time.perf_counter()
        print(f"running notebooks/{name}.ipynb ...", flush=True)
        try:
            output = run_notebook(name, parameters)
        except Exception as error:
            print(f"FAILED: {name}: {error}\n  executed copy: {RUNS / (name + '.ipynb')}", file=sys.stderr)
            return 1
        print(f"  done in {time.perf_counter() - started:.1f}s -> {output.relative_to(PROJECT_ROOT)}", flush=True)
        report(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
