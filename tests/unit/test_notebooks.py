"""Judging an executed notebook, without running one: the noise check catches each kind of library noise and
passes our own notices, each notebook is given only the parameters it declares, and the terminal is told."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ride_duration.notebooks import noise
from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from run_notebooks import declared_parameters, parse_value, report


def notebook_with_outputs(path: Path, outputs: list) -> Path:
    import nbformat

    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("pass")
    cell.outputs = outputs
    notebook.cells = [cell]
    nbformat.write(notebook, str(path))
    return path


@pytest.mark.parametrize(
    "text",
    [
        "/x/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please update jupyter and ipywidgets.",
        "2026/12/01 09:36:31 WARNING mlflow.sklearn: Saving scikit-learn models in the pickle format",
        "2026/12/01 09:36:23 INFO mlflow.store.db.utils: Creating initial MLflow database tables...",
        "INFO  [alembic.runtime.migration] Running upgrade",
        "[IPKernelApp] WARNING | Kernel is running over TCP without encryption.",
        "Traceback (most recent call last):",
        "\x1b[0;31mValueError\x1b[0m",
    ],
)
def test_the_noise_check_catches_each_kind_of_noise(tmp_path, text):
    import nbformat

    stream = nbformat.v4.new_output("stream", name="stderr", text=f"ours\n{text}\n")
    shown = nbformat.v4.new_output("display_data", data={"text/plain": text})
    assert noise(notebook_with_outputs(tmp_path / "stream.ipynb", [stream])) == [f"cell 0: {text}"]
    assert noise(notebook_with_outputs(tmp_path / "shown.ipynb", [shown])) == [f"cell 0: {text}"]


def test_the_noise_check_passes_our_own_notices(tmp_path):
    import nbformat

    ours = [
        nbformat.v4.new_output("stream", name="stdout", text="best on validation: Ridge alpha=1.0 (RMSE 6.9876)\n"),
        nbformat.v4.new_output(
            "stream", name="stderr", text="*** SYNTHETIC DATA: green 2021-02 is a generated month ***\n"
        ),
        nbformat.v4.new_output("stream", name="stderr", text="record 998 rejected: data is not JSON\n"),
    ]
    assert noise(notebook_with_outputs(tmp_path / "ours.ipynb", ours)) == []


def test_each_notebook_gets_only_the_parameters_it_declares():
    train, batch = (declared_parameters(ROOT / "notebooks" / f"{name}.ipynb") for name in ("01-train", "05-batch"))
    assert {"train_year", "train_month", "synthetic"} <= train and "save_images" not in train
    assert {"backfill_from", "backfill_to", "save_images"} <= batch  # `a, b = ...` declares both
    assert parse_value("True") is True and parse_value("3") == 3 and parse_value("2021-03") == "2021-03"


def test_the_terminal_is_told_of_synthetic_data_and_of_noise(tmp_path, capsys):
    import nbformat

    synthetic = nbformat.v4.new_output("stream", name="stdout", text="*** SYNTHETIC DATA: results are not NYC's ***\n")
    report(notebook_with_outputs(tmp_path / "synthetic.ipynb", [synthetic]))
    assert "SYNTHETIC data" in capsys.readouterr().out
    warned = nbformat.v4.new_output("stream", name="stderr", text="x.py:1: UserWarning: careful\n")
    report(notebook_with_outputs(tmp_path / "warned.ipynb", [warned]))
    printed = capsys.readouterr().out
    assert "SYNTHETIC" not in printed and "cell 0: x.py:1: UserWarning: careful" in printed
