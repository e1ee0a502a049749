"""The homework without running anything: the checker counts a number only within its question's tolerance
and explains a wrong answer, a bad answers file is a one-line error, the schedule question's cron reading, and
the README shows the key's options and tolerances. (tests/integration/test_homework.py recomputes the keys and
runs the notebooks and the checker's command line.)"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, date, datetime

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "homework"))
import answers
import check

NUMERIC = sorted(answers.TOLERANCE)


def committed_key(variant: str) -> dict:
    return json.loads(answers.key_path(variant).read_text())["answers"]


def marked(question: str, answer: str, variant: str = "tlc") -> tuple[bool, str]:
    """The checker's (right?, note) for one answer."""
    marks = {q: (right, note) for q, right, note in check.mark({question: answer}, variant)}
    return marks[question]


def checked(capsys, *args: str) -> tuple[int, str, str]:
    """homework/check.py's main with these arguments: (exit status, what it printed, what it printed as errors)."""
    status = check.main(list(args))
    printed = capsys.readouterr()
    return status, printed.out, printed.err


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


def test_nan_and_inf_are_refused_with_a_clear_message(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("q1: nan\nq2: inf\nq5: -Infinity\nq6: 1e999\nq7: 12.3\n")
    status, out, err = checked(capsys, str(tmp_path / "mine.txt"))
    assert status == 1 and not err
    for question, given in [("q1", "nan"), ("q2", "inf"), ("q5", "-Infinity"), ("q6", "1e999")]:
        assert f"{question}: WRONG  '{given}' is refused: not a finite number; hint: " in out
    assert "q7: right" in out
    (tmp_path / "mine.json").write_text('{"q1": NaN, "q7": 12.27}')
    assert marked("q1", check.read_answers(tmp_path / "mine.json")["q1"])[1].startswith("'nan' is refused")


MALFORMED = {
    "missing": (None, "No such file or directory"),
    "folder": ("folder", "Is a directory"),
    "not UTF-8": (b"q1: \xff\xfe\n", "not UTF-8 text"),
    "bad JSON": ('{"q1": "B",', "not valid JSON"),
    "JSON list": ('{"q1": ["B"]}', "q1 must be a letter or a number"),
    "no colon": ("q1: B\nq2 3.3\n", "line 2: expected 'q1: <letter or number>', got 'q2 3.3'"),
    "no such question": ("q15: A\n", "line 1: there is no question q15 (q1 to q14)"),
    "answered twice": ("q1: B\n\n# again\nq1: C\n", "line 4: q1 is answered twice"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_an_unreadable_or_malformed_answers_file_is_a_one_line_error(case, tmp_path, capsys):
    content, reason = MALFORMED[case]
    path = tmp_path / "mine.txt"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    status, out, err = checked(capsys, str(path))
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {path}") and reason in err, err


def test_blank_answers_and_comments_are_fine(tmp_path):
    (tmp_path / "mine.txt").write_text("\ufeff# my answers\nq1:\nQ7 = 12.3  # the handler's\n\n")
    assert check.read_answers(tmp_path / "mine.txt") == {"q7": "12.3"}


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


@pytest.mark.parametrize(
    "slope, letter",
    [(2.0, "A"), (0.0, "D")],
    ids=["distance matters: every test passes", "distance ignored: the 40-mile ride fails"],
)
def test_the_behaviour_question_names_the_tests_a_model_fails(slope, letter):
    from tests.helpers import stand_in_model

    found = answers.behaviour_answer(stand_in_model(slope=slope))
    assert answers.choice_letter("q11", found) == letter, found


def test_a_model_failing_several_behavioural_tests_is_none_of_the_choices():
    from tests.helpers import stand_in_model

    found = answers.behaviour_answer(stand_in_model(slope=-0.1))
    assert found.count("directional: ") > 1
    with pytest.raises(RuntimeError, match="none of the choices"):
        answers.choice_letter("q11", found)


def test_the_homework_model_fails_the_example_ride_with_the_web_services_answer():
    """Q11's failing test is Q6's ride: the duration it reports is the one the web service answers."""
    from ride_duration.behaviour import behaviour, failures
    from ride_duration.serving import serve

    failed = failures(behaviour(serve(answers.fixed_model())))
    key = committed_key("tlc")
    assert [f"{f.kind}: {f.name}" for f in failed] == [key["q11"]["value"]]
    assert failed[0].detail.startswith(f"{key['q6']['value']:.1f} min (expected 40 to ")
