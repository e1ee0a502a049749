"""Mark your homework answers.

    python homework/check.py my-answers.txt                      # real TLC months
    python homework/check.py my-answers.txt --variant synthetic  # the synthetic months

The answers file has one line per question, a letter or the number you found:

    q1: B
    q2: 1.7
    q3: A

A number counts as the option closest to it. Each question is marked right or wrong; a wrong one
gets a hint. The key (homework/key-<variant>.json) is computed by homework/answers.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from answers import OPTIONS, VARIANTS, closest, key_path, model_sha256, MODEL_SHA256  # noqa: E402

HINTS = {
    "q1": "read the papermill run's output parquet with pandas and take .std() of predicted_duration "
          "(pandas' default, ddof=1); check you passed -p model_uri homework/model",
    "q2": "the size of that output file in MB, where 1 MB = 1,000,000 bytes (os.path.getsize(path) / 1e6)",
    "q3": "the export must leave out cells tagged notebook-only and the markdown, as scripts/export.py does",
    "q4": 'find name = "scikit-learn" in uv.lock; its sdist line has hash = "sha256:...": take the first 8 hex digits',
    "q5": "run scripts/score.py for 2021-04 with --model-uri homework/model and take the mean of predicted_duration",
    "q6": "start gunicorn with MODEL_URI=$PWD/homework/model (gunicorn.conf.py moves into web-service/) and run python web-service/client.py: the duration field",
    "q7": "DRY_RUN=1 MODEL_URI=homework/model python streaming/lambda_function.py streaming/events/kinesis-sample.json: "
          "prediction.ride_duration",
    "q8": "add up the rows column of the backfill's summary: every ride of each month file is scored, strays included",
}
LETTERS = "ABCD"


def read_answers(path: Path) -> dict[str, str]:
    """q -> answer text, from 'q1: C' lines (or a JSON object)."""
    text = path.read_text()
    if text.lstrip().startswith("{"):
        return {k.lower(): str(v) for k, v in json.loads(text).items()}
    answers = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"(q\d+)\s*[:=]\s*(.+)", line, flags=re.IGNORECASE)
        if match:
            answers[match.group(1).lower()] = match.group(2).strip()
    return answers


def as_letter(question: str, variant: str, answer: str) -> str:
    """The option a learner's answer picks: a letter as given, a number as the closest option."""
    options = OPTIONS[question][variant]
    if answer.upper() in LETTERS[: len(options)]:
        return answer.upper()
    if isinstance(options[0], str):
        return closest(options, answer.strip().strip('"'))
    try:
        return closest(options, float(answer.replace(",", "")))
    except ValueError:
        return ""


def mark(answers: dict[str, str], variant: str) -> list[tuple[str, bool, str]]:
    """(question, right?, what to say) for every question in the key."""
    key = json.loads(key_path(variant).read_text())["answers"]
    marks = []
    for question, expected in key.items():
        given = answers.get(question)
        if given is None:
            marks.append((question, False, f"no answer; hint: {HINTS[question]}"))
            continue
        letter = as_letter(question, variant, given)
        if letter == expected["answer"]:
            marks.append((question, True, f"{given} -> {letter}"))
        elif not letter:
            marks.append((question, False, f"{given!r} is not one of the options; hint: {HINTS[question]}"))
        else:
            marks.append((question, False, f"{given} -> {letter}, which is not it; hint: {HINTS[question]}"))
    return marks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("answers", type=Path, help="your answers file")
    parser.add_argument("--variant", choices=VARIANTS, default="tlc",
                        help="tlc: real TLC months (default); synthetic: the synthetic months")
    args = parser.parse_args(argv)
    if model_sha256() != MODEL_SHA256:
        print("warning: homework/model/model.pkl is not the published model; answers will not match", file=sys.stderr)
    marks = mark(read_answers(args.answers), args.variant)
    for question, right, note in marks:
        print(f"{question}: {'right' if right else 'WRONG'}  {note}")
    score = sum(right for _, right, _ in marks)
    print(f"{score}/{len(marks)} right ({args.variant} months)")
    return 0 if score == len(marks) else 1


if __name__ == "__main__":
    sys.exit(main())
