"""The homework: keys recomputed (never typed), the worked solution gets every answer right the
learner's way, the checker counts a number only within its question's tolerance and explains a wrong
answer, a bad answers file is a one-line error, the starter notebook shows the marks, the README shows
the key's options and tolerances."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, date, datetime

import nbformat
import pytest

from tests.helpers import ROOT, require_real_months

sys.path.insert(0, str(ROOT / "homework"))
import answers
import check

REAL_MONTHS = [("green", 2021, m) for m in range(1, 6)]
NUMERIC = sorted(answers.TOLERANCE)


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


def marked(question: str, answer: str, variant: str = "tlc") -> tuple[bool, str]:
    """The checker's (right?, note) for one answer."""
    marks = {q: (right, note) for q, right, note in check.mark({question: answer}, variant)}
    return marks[question]


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
    assert "q2: right" in out and "8/10 right (tlc months)" in out


@pytest.mark.parametrize("variant", answers.VARIANTS)
@pytest.mark.parametrize("question", NUMERIC)
def test_a_number_counts_only_within_the_tolerance(question, variant):
    value, tolerance = committed_key(variant)[question]["value"], answers.TOLERANCE[question]
    if tolerance:
        inside, outside = (
            [value - 0.99 * tolerance, value + 0.99 * tolerance],
            [value - 1.01 * tolerance, value + 1.01 * tolerance],
        )
    else:
        inside, outside = [value], [value - 1, value + 1]
    for number in inside:
        right, note = marked(question, repr(number), variant)
        assert right and (f"within ±{tolerance:g}" in note if tolerance else "exact answer" in note), (number, note)
    for number in outside:
        right, note = marked(question, repr(number), variant)
        assert not right and "hint:" in note, (number, note)


@pytest.mark.parametrize("variant", answers.VARIANTS)
@pytest.mark.parametrize("question", NUMERIC)
def test_the_right_option_is_within_the_tolerance_and_no_other(question, variant):
    expected = committed_key(variant)[question]
    for letter, option in zip(answers.LETTERS, answers.OPTIONS[question][variant]):
        assert marked(question, str(option), variant)[0] == (letter == expected["answer"]), (letter, option)


@pytest.mark.parametrize("question, answer", [("q8", "400,000"), ("q8", "1"), ("q6", "25.5"), ("q1", "9.6")])
def test_a_wrong_number_near_the_right_option_fails(question, answer):
    assert committed_key("tlc")[question]["answer"] == answers.closest(
        answers.OPTIONS[question]["tlc"], float(answer.replace(",", ""))
    )
    right, note = marked(question, answer)
    assert not right and "is not" in note and "hint:" in note, note


def test_nan_and_inf_are_refused_with_a_clear_message(tmp_path):
    (tmp_path / "mine.txt").write_text("q1: nan\nq2: inf\nq5: -Infinity\nq6: 1e999\nq7: 12.3\n")
    result = checker(str(tmp_path / "mine.txt"))
    assert result.returncode == 1 and not result.stderr
    for question, given in [("q1", "nan"), ("q2", "inf"), ("q5", "-Infinity"), ("q6", "1e999")]:
        assert f"{question}: WRONG  '{given}' is refused: not a finite number; hint: " in result.stdout
    assert "q7: right" in result.stdout
    (tmp_path / "mine.json").write_text('{"q1": NaN, "q7": 12.27}')
    assert marked("q1", check.read_answers(tmp_path / "mine.json")["q1"])[1].startswith("'nan' is refused")


MALFORMED = {
    "missing": (None, "No such file or directory"),
    "folder": ("folder", "Is a directory"),
    "not UTF-8": (b"q1: \xff\xfe\n", "not UTF-8 text"),
    "bad JSON": ('{"q1": "B",', "not valid JSON"),
    "JSON list": ('{"q1": ["B"]}', "q1 must be a letter or a number"),
    "no colon": ("q1: B\nq2 3.3\n", "line 2: expected 'q1: <letter or number>', got 'q2 3.3'"),
    "no such question": ("q11: A\n", "line 1: there is no question q11 (q1 to q10)"),
    "answered twice": ("q1: B\n\n# again\nq1: C\n", "line 4: q1 is answered twice"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_an_unreadable_or_malformed_answers_file_is_a_one_line_error(case, tmp_path):
    content, reason = MALFORMED[case]
    path = tmp_path / "mine.txt"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    result = checker(str(path))
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {path}"), result.stderr
    assert reason in result.stderr and "Traceback" not in result.stderr


def test_blank_answers_and_comments_are_fine(tmp_path):
    (tmp_path / "mine.txt").write_text("\ufeff# my answers\nq1:\nQ7 = 12.3  # the handler's\n\n")
    assert check.read_answers(tmp_path / "mine.txt") == {"q7": "12.3"}


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
    assert "0/10 right (synthetic months)" in shown
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
    assert "q9: right" in shown and "1/10 right (tlc months)" in shown


UTC = UTC


@pytest.mark.parametrize(
    "cron, after, expected",
    [
        (
            "0 6 2 * *",
            datetime(2021, 12, 15, 12, 0, tzinfo=UTC),
            [datetime(2022, 1, 2, 6, 0, tzinfo=UTC), datetime(2022, 2, 2, 6, 0, tzinfo=UTC)],
        ),
        (
            "0 6 2 * *",
            datetime(2022, 1, 2, 6, 0, tzinfo=UTC),
            [datetime(2022, 2, 2, 6, 0, tzinfo=UTC), datetime(2022, 3, 2, 6, 0, tzinfo=UTC)],
        ),
        (
            "0 6 2 * *",
            datetime(2022, 1, 2, 5, 59, tzinfo=UTC),
            [datetime(2022, 1, 2, 6, 0, tzinfo=UTC), datetime(2022, 2, 2, 6, 0, tzinfo=UTC)],
        ),
        (
            "30 23 31 * *",
            datetime(2021, 1, 31, 23, 30, tzinfo=UTC),
            [datetime(2021, 3, 31, 23, 30, tzinfo=UTC), datetime(2021, 5, 31, 23, 30, tzinfo=UTC)],
        ),
        (
            "0 0 29 2 *",
            datetime(2021, 1, 1, tzinfo=UTC),
            [datetime(2024, 2, 29, tzinfo=UTC), datetime(2028, 2, 29, tzinfo=UTC)],
        ),
        (
            "0 9 * * 1",
            datetime(2021, 12, 15, tzinfo=UTC),
            [datetime(2021, 12, 20, 9, 0, tzinfo=UTC), datetime(2021, 12, 27, 9, 0, tzinfo=UTC)],
        ),
        (
            "0 9 13 * 5",
            datetime(2021, 12, 1, tzinfo=UTC),
            [
                datetime(2021, 12, 3, 9, 0, tzinfo=UTC),
                datetime(2021, 12, 10, 9, 0, tzinfo=UTC),
                datetime(2021, 12, 13, 9, 0, tzinfo=UTC),
            ],
        ),
        (
            "*/20 8-9 1 1 *",
            datetime(2021, 6, 1, tzinfo=UTC),
            [datetime(2022, 1, 1, h, m, tzinfo=UTC) for h in (8, 9) for m in (0, 20, 40)],
        ),
    ],
)
def test_next_runs_of_a_cron_expression(cron, after, expected):
    assert answers.next_runs(cron, after, len(expected)) == expected


def test_a_cron_expression_that_never_fires_is_an_error():
    with pytest.raises(ValueError, match="fewer than 1 times"):
        answers.next_runs("0 0 30 2 *", datetime(2021, 1, 1, tzinfo=UTC), 1)
    with pytest.raises(ValueError, match="outside 0-23"):
        answers.next_runs("0 24 * * *", datetime(2021, 1, 1, tzinfo=UTC), 1)


def test_the_schedule_is_the_one_orchestrate_runs():
    schedule = answers.orchestration_schedule()
    source = (ROOT / "scripts" / "orchestrate.py").read_text()
    assert f'MONTHLY_CRON = "{schedule["MONTHLY_CRON"]}"' in source
    assert schedule["month_to_score"](date(2022, 1, 2)) == (2021, 12)
    assert schedule["month_to_score"](date(2021, 4, 2)) == (2021, 3)


def readme_sections() -> dict[str, str]:
    readme = (ROOT / "homework" / "README.md").read_text()
    sections = re.split(r"^## Q(\d+)\.", readme, flags=re.MULTILINE)[1:]
    return {f"q{sections[i]}": sections[i + 1] for i in range(0, len(sections), 2)}


def test_readme_shows_the_options_tolerances_and_choices_of_the_key():
    shown = readme_sections()
    assert list(shown) == list(answers.OPTIONS)
    labels = {"tlc": "real months", "synthetic": "synthetic months"}
    for question, by_variant in answers.OPTIONS.items():
        for variant, options in by_variant.items():
            line = re.search(rf"^Options \({labels[variant]}\): (.*)$", shown[question], flags=re.MULTILINE).group(1)
            values = [v.split(") ", 1)[-1].strip() for v in line.split(" · ")]
            assert values == [f"{o:,}" if isinstance(o, int) else str(o) for o in options], (question, variant)
        tolerance = re.findall(r"^Tolerance: ±(\S+)", shown[question], flags=re.MULTILINE)
        assert tolerance == ([f"{answers.TOLERANCE[question]:g}"] if question in answers.TOLERANCE else []), question
    for question, choices in answers.CHOICES.items():
        bullets = dict(re.findall(r"^\* ([A-D])\) (.*)$", shown[question], flags=re.MULTILINE))
        if question == "q3":
            choices = {letter: f"`{command.replace(' --output-dir {out}', '')}`" for letter, command in choices.items()}
        assert bullets == choices, question


def test_readme_says_how_many_records_the_stream_sample_has():
    import send_events

    count = len(send_events.sample_records(answers.STREAM_SAMPLE))
    assert f"holds {count} records" in readme_sections()["q9"]


def test_readme_shows_what_the_checker_prints_for_its_example(tmp_path):
    section = (ROOT / "homework" / "README.md").read_text().split("## Check your answers", 1)[1]
    example, printed = re.findall(r"```text\n(.*?)```", section, flags=re.DOTALL)
    (tmp_path / "my-answers.txt").write_text(example)
    result = checker(str(tmp_path / "my-answers.txt"))
    assert result.returncode == 1
    for line in printed.splitlines():
        assert line in result.stdout.splitlines(), line
