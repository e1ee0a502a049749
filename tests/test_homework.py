"""The homework: keys recomputed (never typed), the worked solution gets every answer right the
learner's way, the checker explains a wrong answer, the README shows the key's options."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, require_real_months

sys.path.insert(0, str(ROOT / "homework"))
import answers  # noqa: E402
import check  # noqa: E402

REAL_MONTHS = [("green", 2021, m) for m in range(1, 6)]


def variant_data(variant: str) -> None:
    if variant == "tlc":
        require_real_months(*REAL_MONTHS)


def same_key(fresh: dict, committed: dict) -> None:
    assert fresh["model_sha256"] == committed["model_sha256"] == answers.model_sha256()
    assert fresh["model_id"] == committed["model_id"]
    for question, expected in committed["answers"].items():
        got = fresh["answers"][question]
        assert got["answer"] == expected["answer"], question
        if isinstance(expected["value"], float):
            assert got["value"] == pytest.approx(expected["value"], rel=1e-9), question
        else:
            assert got["value"] == expected["value"], question


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
        str(ROOT / "homework" / "solution.ipynb"), str(tmp_path / "solution.ipynb"),
        parameters={"variant": variant, "work_dir": str(tmp_path / "work"), "answers_file": str(answers_file)},
        cwd=str(ROOT / "homework"), progress_bar=False,
    )
    marks = check.mark(check.read_answers(answers_file), variant)
    assert all(right for _, right, _ in marks), marks
    key = json.loads(answers.key_path(variant).read_text())["answers"]
    given = check.read_answers(answers_file)
    for question, expected in key.items():
        if isinstance(expected["value"], float):
            assert float(given[question]) == pytest.approx(expected["value"], rel=1e-6), question


def test_checker_says_which_answer_is_wrong_and_why(tmp_path):
    key = json.loads(answers.key_path("tlc").read_text())["answers"]
    wrong_letter = next(letter for letter in "ABCD" if letter != key["q1"]["answer"])
    lines = [f"{q}: {k['answer']}" for q, k in key.items() if q not in ("q1", "q4")]
    (tmp_path / "mine.txt").write_text("\n".join([f"q1: {wrong_letter}", "q4: deadbeef", *lines]) + "\n")
    result = subprocess.run([sys.executable, "homework/check.py", str(tmp_path / "mine.txt")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    out = result.stdout
    assert re.search(rf"q1: WRONG\s+{wrong_letter} -> {wrong_letter}, which is not it; hint: .*std", out), out
    assert "q4: WRONG  'deadbeef' is not one of the options; hint: " in out
    assert "q2: right" in out and "6/8 right" in out


def test_a_number_counts_as_the_closest_option():
    assert check.as_letter("q6", "tlc", "25.7") == "C"
    assert check.as_letter("q8", "tlc", "400,000") == "A"
    assert check.as_letter("q4", "tlc", "629cada3") == "A"


def test_readme_shows_the_options_of_the_key():
    readme = (ROOT / "homework" / "README.md").read_text()
    sections = re.split(r"^## Q(\d)\.", readme, flags=re.MULTILINE)[1:]
    shown = {f"q{sections[i]}": sections[i + 1] for i in range(0, len(sections), 2)}
    assert set(shown) == set(answers.OPTIONS)
    labels = {"tlc": "real months", "synthetic": "synthetic months"}
    for question, by_variant in answers.OPTIONS.items():
        for variant, options in by_variant.items():
            line = re.search(rf"^Options \({labels[variant]}\): (.*)$", shown[question], flags=re.MULTILINE).group(1)
            values = [v.split(") ", 1)[-1].strip() for v in line.split(" · ")]
            assert values == [f"{o:,}" if isinstance(o, int) else str(o) for o in options], (question, variant)
