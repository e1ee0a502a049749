"""Mark your homework answers.

    python homework/check.py my-answers.txt                      # real TLC months
    python homework/check.py my-answers.txt --variant synthetic  # the synthetic months

The answers file has one line per question, a letter or the number you found (blank lines and
`# comments` are ignored; a question left blank counts as unanswered):

    q1: A
    q2: 7.2
    q3: A

A number is right only within the question's tolerance of the computed answer (homework/README.md
states each one); NaN and infinity are refused. Each question is marked right or wrong; a wrong one
gets a hint. Exit status: 0 all right, 1 some wrong or unanswered, 2 the answers file cannot be read.
The key (homework/key-<variant>.json) is computed by homework/answers.py.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from answers import (  # noqa: E402
    CHOICES,
    LETTERS,
    MODEL_SHA256,
    OPTIONS,
    TOLERANCE,
    VARIANTS,
    key_path,
    model_sha256,
    within_tolerance,
)

HINTS = {
    "q1": "read the papermill run's output parquet with pandas and take .std() of predicted_duration "
    "(pandas' default, ddof=1); check you passed -p model_uri homework/model",
    "q2": "the size of that output file in MB, where 1 MB = 1,000,000 bytes (os.path.getsize(path) / 1e6)",
    "q3": "the export must leave out cells tagged notebook-only and the markdown, as scripts/export.py does",
    "q4": "follow release_steps in homework/registry_steps.py one call at a time, noting what each alias names "
    "after each call (delete_registered_model_alias removes one)",
    "q5": "run scripts/score.py for 2021-04 with --model-uri homework/model and take the mean of predicted_duration",
    "q6": "start gunicorn with MODEL_URI=$PWD/homework/model (an absolute path: gunicorn.conf.py changes into web-service/) "
    "and run python web-service/client.py: the duration field",
    "q7": "DRY_RUN=1 MODEL_URI=homework/model python streaming/lambda_function.py streaming/events/kinesis-sample.json: "
    "prediction.ride_duration",
    "q8": "add up the rows column of the backfill's summary: every ride of each month file is scored, strays included",
    "q9": "a bad record is retried, then written to the failure file once; a good record re-delivered with it is "
    "skipped by the handler, which remembers what it wrote",
    "q10": "the five cron fields are minute, hour, day of month, month, day of week; a run scores the month before its date",
    "q11": "run behaviour() on serve(load_model('homework/model')) and read the line that starts with FAIL: the kind "
    "of test, then its name; compare what it predicts with the range the test expects",
    "q12": "a rollback goes to the version @previous names; see what the aliases name after the registry steps (Q4) "
    "and what the command prints to stderr",
    "q13": "the actual_duration and diff columns of Q5's output: keep the rides of 1 to 60 minutes (both included), "
    "then the percentage whose |diff| is more than 10",
    "q14": "the loop validates on the flagged month and trains on the two latest months before it that are in the data "
    "folder (ride_duration.retraining.training_months); none is downloaded",
}
LINE = re.compile(r"(q\d+)\s*[:=]\s*(.*)", flags=re.IGNORECASE)


class AnswersFileError(ValueError):
    """The answers file cannot be read or is not in the answers format; the message says where."""


def read_answers(path: Path) -> dict[str, str]:
    """question -> answer text, from 'q1: C' lines (or a JSON object); unanswered questions are left out."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM, as some editors write, is fine
    except UnicodeDecodeError:
        raise AnswersFileError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise AnswersFileError(f"{path}: {error.strerror or error}") from None
    if text.lstrip().startswith("{"):
        return answers_from_json(path, text)
    answers = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = LINE.fullmatch(line)
        if not match:
            raise AnswersFileError(f"{path}, line {number}: expected 'q1: <letter or number>', got {line!r}")
        add_answer(answers, match.group(1).lower(), match.group(2).strip(), f"{path}, line {number}")
    return answers


def answers_from_json(path: Path, text: str) -> dict[str, str]:
    try:
        data = json.loads(text)
    except ValueError as error:
        raise AnswersFileError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise AnswersFileError(f'{path}: expected a JSON object like {{"q1": "B"}}')
    answers = {}
    for question, value in data.items():
        if isinstance(value, (dict, list)):
            raise AnswersFileError(f"{path}: {question} must be a letter or a number, got {json.dumps(value)[:60]}")
        add_answer(answers, str(question).lower(), "" if value is None else str(value), path)
    return answers


def add_answer(answers: dict, question: str, answer: str, where) -> None:
    if question not in OPTIONS:
        raise AnswersFileError(f"{where}: there is no question {question} (q1 to q{len(OPTIONS)})")
    if question in answers:
        raise AnswersFileError(f"{where}: {question} is answered twice")
    if answer:
        answers[question] = answer


def judge(question: str, given: str, expected: dict) -> tuple[bool, str]:
    """(right?, what to say) for one answer: a letter, or a number within the question's tolerance."""
    letter = given.strip().upper()
    if letter in LETTERS:
        if letter == expected["answer"]:
            return True, letter
        return False, f"{letter} is not it"
    if question in CHOICES:
        return False, f"{given!r} is not one of the letters {', '.join(LETTERS)}"
    try:
        number = float(given.replace(",", ""))
    except ValueError:
        return False, f"{given!r} is neither a letter nor a number"
    if not math.isfinite(number):
        return False, f"{given!r} is refused: not a finite number"
    within = f"within ±{TOLERANCE[question]:g} of the answer" if TOLERANCE[question] else "the exact answer"
    if within_tolerance(question, number, expected["value"]):
        return True, f"{given} is {within} ({expected['answer']})"
    return False, f"{given} is not {within}"


def mark(answers: dict[str, str], variant: str) -> list[tuple[str, bool, str]]:
    """(question, right?, what to say) for every question in the key; a wrong one gets its hint."""
    key = json.loads(key_path(variant).read_text())["answers"]
    marks = []
    for question, expected in key.items():
        given = answers.get(question)
        right, note = (False, "no answer") if given is None else judge(question, given, expected)
        marks.append((question, right, note if right else f"{note}; hint: {HINTS[question]}"))
    return marks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("answers", type=Path, help="your answers file")
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default="tlc",
        help="tlc: real TLC months (default); synthetic: the synthetic months",
    )
    args = parser.parse_args(argv)
    try:
        answers = read_answers(args.answers)
    except AnswersFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if model_sha256() != MODEL_SHA256:
        print("warning: homework/model/model.pkl is not the published model; answers will not match", file=sys.stderr)
    marks = mark(answers, args.variant)
    for question, right, note in marks:
        print(f"{question}: {'right' if right else 'WRONG'}  {note}")
    score = sum(right for _, right, _ in marks)
    print(f"{score}/{len(marks)} right ({args.variant} months)")
    return 0 if score == len(marks) else 1


if __name__ == "__main__":
    sys.exit(main())
