"""Helpers the batch tests of both layers share: the exported scorer as a module, small month files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ride_duration import data
from ride_duration.data import month_filename
from ride_duration.settings import PROJECT_ROOT

SCORE_PY = PROJECT_ROOT / "scripts" / "score.py"


def import_script(path: Path):
    """An exported script as a module, named after its file (the exported code, not the notebook)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_score():
    """scripts/score.py as a module."""
    return import_script(SCORE_PY)


def month_file(folder: Path, year: int, month: int, *, synthetic: bool, n_rides: int = 500) -> Path:
    """A small month file named as the TLC names it: synthetic rides, labelled synthetic or, as a stand-in
    for a real TLC file, not."""
    frame = data.synthetic_month("green", year, month, n_rides=n_rides)
    if not synthetic:
        frame.attrs["source"] = "TLC stand-in"
    return data.write_month_file(frame, folder / month_filename("green", year, month))


def leftovers(folder: Path) -> list[str]:
    """Temporary files (ride_duration.files.atomic_path's) left in a folder."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def run_cli(score, argv, capsys) -> tuple[int, str, str]:
    """score.py's main() in this process: (exit code, stdout, stderr)."""
    try:
        code = score.main([str(a) for a in argv])
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(code: int, err: str, destination: Path, *fragments: str) -> None:
    """A run that failed as score.py promises: one line on stderr (or argparse's usage) naming the fragments,
    and nothing left at the destination, not even a temporary file."""
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 or "usage:" in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not destination.exists() and leftovers(destination.parent) == []
