"""The homework run for real: keys recomputed (never typed), the worked solution gets every answer right the
learner's way, the checker's command line marks a file and reports a bad one, the starter notebook shows the
marks, and the README's example prints what it says. (tests/unit/test_homework.py checks the marking itself.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import nbformat
import pytest

from tests.helpers import ROOT, require_real_months

sys.path.insert(0, str(ROOT / "homework"))
import answers
import check

REAL_MONTHS = [("green", 2021, m) for m in range(1, 6)]


def variant_data(variant: str) -> None:
    if variant == "tlc":
        require_real_months(*REAL_MONTHS)


def committed_key(variant: str) -> dict:
    return json.loads(answers.key_path(variant).read_text())["answers"]


def same_key(fresh: dict, committed: dict) -> None:
    assert fresh["model_sha256"] == committed["model_sha256"] == answers.model_sha256()
    assert fresh["model_id"] == committed["model_id"]
    assert list(fresh["answers"]) == list(committed["answers"]) == list(answers.OPTIONS)
    for question, expected in committed["answers"].items():
        got = fresh["answers"][question]
        assert got["answer"] == expected["answer"], question
        if isinstance(expected["value"], float):
            assert got["value"] == pytest.approx(expected["value"], rel=1e-9), question
        else:
            assert got["value"] == expected["value"], question


def checker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "homework/check.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("variant", answers.VARIANTS)
def test_committed_key_equals_a_freshly_computed_one(variant):
    variant_data(variant)
    same_key(answers.compute_key(variant), json.loads(answers.key_path(variant).read_text()))


@pytest.mark.parametrize("variant", answers.VARIANTS)
def test_worked_solution_gets_every_answer_right(variant, tmp_path):
    import papermill

    variant_data(variant)
    answers_file = tmp_path / "answers.txt"
    papermill.execute_notebook(
        str(ROOT / "homework" / "solution.ipynb"),
        str(tmp_path / "solution.ipynb"),
        parameters={"variant": variant, "work_dir": str(tmp_path / "work"), "answers_file": str(answers_file)},
        cwd=str(ROOT / "homework"),
        progress_bar=False,
    )
    marks = check.mark(check.read_answers(answers_file), variant)
    assert all(right for _, right, _ in marks), marks
    given = check.read_answers(answers_file)
    for question, expected in committed_key(variant).items():
        if isinstance(expected["value"], float):
            assert float(given[question]) == pytest.approx(expected["value"], rel=1e-6), question


def test_checker_says_which_answer_is_wrong_and_why(tmp_path):
    key = committed_key("tlc")
    wrong_letter = next(letter for letter in "ABCD" if letter != key["q1"]["answer"])
    lines = [f"{q}: {k['answer']}" for q, k in key.items() if q not in ("q1", "q4")]
    (tmp_path / "mine.txt").write_text("\n".join([f"q1: {wrong_letter}", "q4: deadbeef", *lines]) + "\n")
    result = checker(str(tmp_path / "mine.txt"))
    assert result.returncode == 1
    out = result.stdout
    assert re.search(rf"q1: WRONG  {wrong_letter} is not it; hint: .*std", out), out
    assert "q4: WRONG  'deadbeef' is not one of the letters A, B, C, D; hint: " in out
    assert "q2: right" in out and f"{len(key) - 2}/{len(key)} right (tlc months)" in out


def test_the_command_line_reports_an_unreadable_answers_file_in_one_line(tmp_path):
    result = checker(str(tmp_path / "missing.txt"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: {tmp_path / 'missing.txt'}: No such file or directory\n"


def last_cell_text(notebook) -> str:
    return "".join(output.get("text", "") for output in notebook.cells[-1].outputs)


@pytest.mark.parametrize("cwd", ["homework", "."])
def test_starter_notebook_runs_to_the_end_and_shows_marks_and_hints_for_missing_answers(cwd, tmp_path):
    import papermill

    answers_file = tmp_path / "answers.txt"
    papermill.execute_notebook(
        str(ROOT / "homework" / "starter.ipynb"),
        str(tmp_path / "starter.ipynb"),
        parameters={"answers_file": str(answers_file), "variant": "synthetic"},
        cwd=str(ROOT / cwd),
        progress_bar=False,
    )
    shown = last_cell_text(nbformat.read(tmp_path / "starter.ipynb", as_version=4))
    for question in answers.OPTIONS:
        assert f"{question}: WRONG  no answer; hint: {check.HINTS[question]}" in shown, shown
    assert f"0/{len(answers.OPTIONS)} right (synthetic months)" in shown
    assert answers_file.read_text().splitlines() == [f"{q}: " for q in answers.OPTIONS]


def test_starter_notebook_shows_marks_and_hints_for_wrong_answers(tmp_path):
    import papermill

    key = committed_key("tlc")
    notebook = nbformat.read(ROOT / "homework" / "starter.ipynb", as_version=4)
    answers_cell = next(cell for cell in notebook.cells if cell.source.startswith("answers = {"))
    given = {q: "" for q in answers.OPTIONS} | {"q1": "nan", "q3": "Z", "q8": "400,000", "q9": key["q9"]["answer"]}
    answers_cell.source = f"answers = {given!r}"
    nbformat.write(notebook, tmp_path / "filled.ipynb")
    papermill.execute_notebook(
        str(tmp_path / "filled.ipynb"),
        str(tmp_path / "marked.ipynb"),
        parameters={"answers_file": str(tmp_path / "answers.txt")},
        cwd=str(ROOT / "homework"),
        progress_bar=False,
    )
    shown = last_cell_text(nbformat.read(tmp_path / "marked.ipynb", as_version=4))
    assert f"q1: WRONG  'nan' is refused: not a finite number; hint: {check.HINTS['q1']}" in shown
    assert "q3: WRONG  'Z' is not one of the letters A, B, C, D; hint: " in shown
    assert "q8: WRONG  400,000 is not the exact answer; hint: " in shown
    assert "q9: right" in shown and f"1/{len(answers.OPTIONS)} right (tlc months)" in shown


def test_readme_shows_what_the_checker_prints_for_its_example(tmp_path):
    section = (ROOT / "homework" / "README.md").read_text().split("## Check your answers", 1)[1]
    example, printed = re.findall(r"```text\n(.*?)```", section, flags=re.DOTALL)
    (tmp_path / "my-answers.txt").write_text(example)
    result = checker(str(tmp_path / "my-answers.txt"))
    assert result.returncode == 1
    for line in printed.splitlines():
        assert line in result.stdout.splitlines(), line


def test_the_rollback_question_tells_a_refusal_from_a_rollback(tmp_path):
    """Q12 on the registry steps' store: the command refuses (nothing is @previous); once a version is
    @previous, the same computation sees production go there instead."""
    import mlflow
    import registry_steps
    from mlflow import MlflowClient

    before = mlflow.get_tracking_uri()
    try:
        uri = registry_steps.make_store(tmp_path / "store")
        refused = answers.rollback_answer(uri, registry_steps.NAME)
        MlflowClient(uri).set_registered_model_alias(registry_steps.NAME, "previous", "3")
        rolled_back = answers.rollback_answer(uri, registry_steps.NAME)
        aliases = MlflowClient(uri).get_registered_model(registry_steps.NAME).aliases
    finally:
        mlflow.set_tracking_uri(before)
    assert answers.choice_letter("q12", refused) == committed_key("tlc")["q12"]["answer"] == "C"
    assert answers.choice_letter("q12", rolled_back) == "D", rolled_back
    assert {alias: str(version) for alias, version in aliases.items()} == {"production": "3"}  # @previous is gone
