"""The homework's questions, their options, and the answer key, computed, never typed.

    python homework/answers.py                 # regenerate homework/key-tlc.json (real TLC months)
    python homework/answers.py --variant synthetic   # homework/key-synthetic.json (no network needed)

The key is computed in-process from the project's library (read_month, the fixed model, the
batch writer, the registry steps in a throwaway MLflow store, the Lambda handler behind the local
event-source runner on a moto_server of its own, the schedule's cron expression, the behavioural
tests on the served model, the lifecycle's rollback command on the registry steps' store, monitoring's quality
figures, the retraining loop's choice of months in a folder of the eleven month files), a different path
from the one a learner takes (papermill, scripts/score.py, the web service, the command lines).
solution.ipynb takes the learner's path; the tests check that both agree and that the committed
keys equal freshly computed ones.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from ride_duration.rides import EXAMPLE_RIDE
from ride_duration.settings import Settings, exported

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL_DIR = HERE / "model"
MODEL_SHA256 = "8c2b16dcfcbd4458fd7ad4fc7c4bb43e41638591a7e78029282a1abb6831c7ee"  # of model/model.pkl
SAMPLE_EVENT = ROOT / "streaming" / "events" / "kinesis-sample.json"
STREAM_SAMPLE = HERE / "stream-sample.jsonl"
BACKFILL_MONTHS = [(2021, m) for m in range(1, 6)]
SCHEDULE_AFTER = datetime(2021, 12, 15, 12, 0, tzinfo=UTC)  # Q10: the next two runs after this
VARIANTS = ("tlc", "synthetic")
LETTERS = "ABCD"

EXPORT_COMMANDS = {
    "A": "jupyter nbconvert --to script notebooks/score.ipynb --output-dir {out}",
    "B": "jupyter nbconvert --to script --TemplateExporter.exclude_code_cell=True notebooks/score.ipynb --output-dir {out}",
    "C": "jupyter nbconvert --to notebook --execute notebooks/score.ipynb --output-dir {out}",
    "D": "jupyter nbconvert --to script --TagRemovePreprocessor.enabled=True "
    "--TagRemovePreprocessor.remove_cell_tags notebook-only --TemplateExporter.exclude_markdown=True "
    "--TemplateExporter.exclude_input_prompt=True notebooks/score.ipynb --output-dir {out}",
}

# The choices of the questions answered with a letter, as homework/README.md shows them.
REGISTRY_CHOICES = {
    "A": "production is version 3; previous is version 2",
    "B": "production is version 2; previous names no version",
    "C": "production is version 2; previous is version 1",
    "D": "production is version 1; previous is version 2",
}
STREAM_CHOICES = {
    "A": "12 predictions, 0 failures",
    "B": "17 predictions, 5 failures",
    "C": "7 predictions, 15 failures",
    "D": "7 predictions, 5 failures",
}
SCHEDULE_CHOICES = {
    "A": "2022-01-02 06:00 (scores 2021-12), 2022-02-02 06:00 (scores 2022-01)",
    "B": "2021-12-02 06:00 (scores 2021-11), 2022-01-02 06:00 (scores 2021-12)",
    "C": "2022-01-02 06:00 (scores 2022-01), 2022-02-02 06:00 (scores 2022-02)",
    "D": "2022-01-06 02:00 (scores 2021-12), 2022-02-06 02:00 (scores 2022-01)",
}
BEHAVIOUR_CHOICES = {
    "A": "none: every test passes",
    "B": "directional: zones 10 to 50, 0.5 to 40 mi",
    "C": "invariance: alone, in a batch, in another order",
    "D": "minimum functionality: the course's example ride, 40 miles",
}
RETRAINING_MONTHS = [
    (2021, 1), (2021, 2), (2021, 3), (2021, 4), (2021, 5), (2022, 1), (2022, 2), (2023, 1), (2023, 2), (2023, 3), (2024, 3)
]  # fmt: skip
RETRAINING_CHOICES = {
    "A": "trained on 2024-01 and 2024-02, validated on 2024-03",
    "B": "trained on 2023-02 and 2023-03, validated on 2024-03",
    "C": "trained on 2023-03 and 2024-03, validated on 2024-03",
    "D": "trained on 2021-01, validated on 2021-02",
}
ROLLBACK_CHOICES = {
    "A": "production goes to version 2 (it was 3)",
    "B": "production goes to version 1 (it was 2)",
    "C": "it refuses, as no version is @previous (exit 2); production stays version 2",
    "D": "production goes to version 3 (it was 2)",
}
CHOICES = {
    "q3": EXPORT_COMMANDS,
    "q4": REGISTRY_CHOICES,
    "q9": STREAM_CHOICES,
    "q10": SCHEDULE_CHOICES,
    "q11": BEHAVIOUR_CHOICES,
    "q12": ROLLBACK_CHOICES,
    "q14": RETRAINING_CHOICES,
}

# Options per question and variant (in homework/README.md too; a test checks they agree). A letter
# question's options are its letters; a numeric question's are numbers, one of them the answer.
OPTIONS = {
    "q1": {"tlc": [3.2, 6.4, 9.5, 12.7], "synthetic": [2.9, 5.8, 8.7, 11.6]},
    "q2": {"tlc": [0.8, 1.6, 3.3, 6.6], "synthetic": [1.2, 2.5, 5.0, 10.0]},
    "q3": {"tlc": list(LETTERS), "synthetic": list(LETTERS)},
    "q4": {"tlc": list(LETTERS), "synthetic": list(LETTERS)},
    "q5": {"tlc": [11.9, 14.4, 16.9, 19.4], "synthetic": [16.5, 19.0, 21.5, 24.0]},
    "q6": {"tlc": [5.8, 15.8, 25.8, 35.8], "synthetic": [5.8, 15.8, 25.8, 35.8]},
    "q7": {"tlc": [12.3, 16.4, 20.5, 24.6], "synthetic": [12.3, 16.4, 20.5, 24.6]},
    "q8": {"tlc": [400_038, 411_527, 450_000, 500_000], "synthetic": [300_000, 350_000, 400_038, 450_000]},
    "q9": {"tlc": list(LETTERS), "synthetic": list(LETTERS)},
    "q10": {"tlc": list(LETTERS), "synthetic": list(LETTERS)},
    "q11": {"tlc": list(LETTERS), "synthetic": list(LETTERS)},
    "q12": {"tlc": list(LETTERS), "synthetic": list(LETTERS)},
    "q13": {"tlc": [5.6, 10.6, 15.6, 20.6], "synthetic": [46.6, 56.6, 66.6, 76.6]},
    "q14": {"tlc": list(LETTERS), "synthetic": list(LETTERS)},
}

# A numeric answer is right when it is within this of the computed value (README: "Tolerance: ±x").
# Each is wide enough for the option itself and for last-digit differences between machines, and
# narrower than the gap to any other option (a test checks both).
TOLERANCE = {"q1": 0.1, "q2": 0.1, "q5": 0.1, "q6": 0.1, "q7": 0.1, "q8": 0, "q13": 0.1}


def model_sha256() -> str:
    return hashlib.sha256((MODEL_DIR / "model.pkl").read_bytes()).hexdigest()


def fixed_model():
    """The homework's model, after checking it is the published one."""
    from ride_duration.model import load_model

    actual = model_sha256()
    if actual != MODEL_SHA256:
        raise SystemExit(f"homework/model/model.pkl has sha256 {actual}, not the published {MODEL_SHA256}")
    checked = replace(Settings.from_environ(groups=("model",)), model_sha256=MODEL_SHA256)
    return load_model(str(MODEL_DIR), settings=checked)


def closest(options: list, value: float) -> str:
    """The letter of the numeric option closest to value: the key's letter for a computed number."""
    return LETTERS[min(range(len(options)), key=lambda i: abs(options[i] - value))]


def within_tolerance(question: str, given: float, value: float) -> bool:
    """Whether a learner's number counts as the computed value: finite and within the question's tolerance."""
    return math.isfinite(given) and abs(given - value) <= TOLERANCE[question] * (1 + 1e-9)  # the bound itself counts


def choice_letter(question: str, text: str) -> str:
    """The letter whose choice reads text; an error if none does (the options would be wrong)."""
    letters = [letter for letter, choice in CHOICES[question].items() if choice == text]
    if not letters:
        raise RuntimeError(f"{question}: the computed answer {text!r} is none of the choices")
    return letters[0]


def scored_month(model, year: int, month: int, synthetic: bool, output: Path):
    """One month scored and written the batch way (the same writer as scripts/score.py)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import score

    score.score_month("green", year, month, model, str(output), synthetic=synthetic)
    from ride_duration.batch import read_output

    return read_output(str(output))


def registry_answers() -> tuple[str, str]:
    """Q4 and Q12: the registry steps run in a throwaway MLflow store; where the aliases lead (Q4), then
    what the lifecycle's rollback command does to that store (Q12)."""
    import mlflow
    import registry_steps
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from ride_duration.model import load_model

    settings = Settings.from_environ()
    try:
        with tempfile.TemporaryDirectory() as folder:
            store = replace(settings, mlflow_tracking_uri=registry_steps.make_store(Path(folder) / "store"))
            production = load_model(f"models:/{registry_steps.NAME}@production", settings=store)
            try:
                previous = MlflowClient(store.tracking_uri).get_model_version_by_alias(registry_steps.NAME, "previous")
                said = f"previous is version {previous.version}"
            except MlflowException:
                said = "previous names no version"
            registry = f"production is version {production.registered_version.split('/')[1]}; {said}"
            rolled_back = rollback_answer(store.tracking_uri, registry_steps.NAME)
    finally:
        mlflow.set_tracking_uri(settings.tracking_uri)  # make_store pointed MLflow itself at the throwaway store
    return registry, rolled_back


def rollback_answer(tracking_uri: str, name: str) -> str:
    """Q12: `python -m ride_duration.lifecycle rollback` run in-process on this store (its settings read from
    the environment, as on the command line), then where production points."""
    import contextlib
    import io

    from mlflow import MlflowClient

    from ride_duration import lifecycle

    before = MlflowClient(tracking_uri).get_model_version_by_alias(name, lifecycle.PRODUCTION_ALIAS).version
    said = io.StringIO()
    with exported({"MLFLOW_TRACKING_URI": tracking_uri}), contextlib.redirect_stdout(said):
        with contextlib.redirect_stderr(said):
            code = lifecycle.main(["rollback", "--name", name])
    after = MlflowClient(tracking_uri).get_model_version_by_alias(name, lifecycle.PRODUCTION_ALIAS).version
    if code == 0:
        return f"production goes to version {after} (it was {before})"
    if code == lifecycle.EXIT_NOTHING_TO_DO and "nothing to roll back to" in said.getvalue() and after == before:
        return (
            f"it refuses, as no version is @{lifecycle.PREVIOUS_ALIAS} (exit {code}); production stays version {after}"
        )
    raise RuntimeError(f"q12: the rollback exited {code}, production {before} -> {after}: {said.getvalue()!r}")


def behaviour_answer(model) -> str:
    """Q11: the behavioural tests of the promotion gate on the homework model as it is served; which fail."""
    from ride_duration.behaviour import behaviour, failures
    from ride_duration.serving import serve

    failed = failures(behaviour(serve(model)))
    return "; ".join(f"{finding.kind}: {finding.name}" for finding in failed) or "none: every test passes"


def off_by_10_percent(rides, output) -> float:
    """Q13: monitoring's share of rides off by more than 10 minutes, in percent, of a scored month (its rides of
    1 to 60 minutes), from the raw month's durations and the output's predictions (numpy, no Evidently)."""
    from ride_duration import monitoring
    from ride_duration.data import add_duration

    frame = monitoring.rides_frame(add_duration(rides, "green"), output["predicted_duration"])
    return 100 * monitoring.quality(frame)["share_off_10min"]


def retraining_answer() -> str:
    """Q14: the months the retraining loop trains and validates on when green 2024-03 is flagged, in a data
    folder holding RETRAINING_MONTHS' files (empty files: the loop only looks for them)."""
    from ride_duration.data import month_filename
    from ride_duration.retraining import month_text, training_months

    with tempfile.TemporaryDirectory() as folder:
        for year, month in RETRAINING_MONTHS:
            (Path(folder) / month_filename("green", year, month)).touch()
        with exported({"TAXI_DATA_DIR": folder}):
            months = training_months("green", 2024, 3)
    return f"trained on {' and '.join(month_text(*m) for m in months)}, validated on 2024-03"


def stream_answer() -> str:
    """Q9: the sample through the local event-source runner and the Lambda handler, on a moto_server of
    its own; then what reached the predictions stream and the failure file."""
    import boto3

    sys.path.insert(0, str(ROOT / "streaming"))
    import lambda_function
    import runner
    import send_events

    from ride_duration import local_stack
    from ride_duration.kinesis import read_stream

    handler_environment = {
        **local_stack.LOCAL_AWS_ENV,
        "MODEL_URI": str(MODEL_DIR),
        "MODEL_SHA256": MODEL_SHA256,
        "PREDICTIONS_STREAM_NAME": "homework_predictions",
    }
    with tempfile.TemporaryDirectory() as folder:
        port = local_stack.free_port()
        moto = local_stack.start_moto(port, Path(folder) / "moto.log")
        moto_environment = local_stack.aws_env(f"http://{local_stack.HOST}:{port}")
        try:
            # The handler reads its settings from the environment, as on Lambda: set them for this run only.
            with exported({**handler_environment, **moto_environment}):
                lambda_function.reset_container()
                kinesis = boto3.client("kinesis")
                for stream in ("homework_events", "homework_predictions"):
                    kinesis.create_stream(StreamName=stream, ShardCount=1)
                    kinesis.get_waiter("stream_exists").wait(StreamName=stream)
                send_events.send(kinesis, "homework_events", STREAM_SAMPLE)
                checkpoint = Path(folder) / "checkpoint.json"
                runner.run(
                    lambda_function.lambda_handler,
                    runner.RunnerSettings(stream="homework_events", checkpoint=checkpoint, idle_seconds=1.0),
                    client=kinesis,
                    log=lambda line: None,
                )
                predictions = len(list(read_stream(kinesis, "homework_predictions", max_seconds=30, idle_seconds=1.0)))
                failures = len(checkpoint.with_suffix(".failures.jsonl").read_text().splitlines())
        finally:
            lambda_function.reset_container()
            local_stack.stop(moto)
    return f"{predictions} predictions, {failures} failures"


def orchestration_schedule() -> dict:
    """MONTHLY_CRON and month_to_score as scripts/orchestrate.py defines them, read from its source,
    since importing it needs Prefect (an optional extra)."""
    source = (ROOT / "scripts" / "orchestrate.py").read_text()
    wanted = {"MONTHLY_CRON", "month_to_score"}
    nodes = [
        node
        for node in ast.parse(source).body
        if (isinstance(node, ast.FunctionDef) and node.name in wanted)
        or (isinstance(node, ast.Assign) and {getattr(t, "id", None) for t in node.targets} & wanted)
    ]
    namespace = {"date": date}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), "scripts/orchestrate.py", "exec"), namespace)
    return {name: namespace[name] for name in wanted}


def cron_values(field: str, low: int, high: int) -> set[int]:
    """The values one cron field allows: `*`, `n`, `a-b`, a step `*/s` or `a-b/s`, and lists of them."""
    values = set()
    for part in field.split(","):
        span, _, step = part.partition("/")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first, last = (int(v) for v in span.split("-"))
        else:
            first = last = int(span)
        if not low <= first <= last <= high:
            raise ValueError(f"cron field {field!r}: {part!r} is outside {low}-{high}")
        values.update(range(first, last + 1, int(step) if step else 1))
    return values


def next_runs(cron: str, after: datetime, count: int) -> list[datetime]:
    """The next count times after `after` (strictly) that a five-field cron expression fires, in after's
    timezone. As in cron, when both day of month and day of week are restricted, either one matching is
    enough."""
    minute, hour, day, month, weekday = cron.split()
    minutes, hours = sorted(cron_values(minute, 0, 59)), sorted(cron_values(hour, 0, 23))
    days, months = cron_values(day, 1, 31), cron_values(month, 1, 12)
    weekdays = {d % 7 for d in cron_values(weekday, 0, 7)}  # 0 and 7 are Sunday
    either = not day.startswith("*") and not weekday.startswith("*")
    runs, current = [], after.date()
    for _ in range(366 * 28):  # every calendar pattern repeats within 28 years
        by_day, by_weekday = current.day in days, (current.isoweekday() % 7) in weekdays
        if current.month in months and ((by_day or by_weekday) if either else (by_day and by_weekday)):
            for h in hours:
                for m in minutes:
                    run = datetime.combine(current, time(h, m), tzinfo=after.tzinfo)
                    if run > after:
                        runs.append(run)
                        if len(runs) == count:
                            return runs
        current += timedelta(days=1)
    raise ValueError(f"cron {cron!r} fires fewer than {count} times in 28 years after {after}")


def schedule_answer() -> str:
    """Q10: the project's monthly schedule, its next two runs after SCHEDULE_AFTER and the months they score."""
    schedule = orchestration_schedule()
    runs = next_runs(schedule["MONTHLY_CRON"], SCHEDULE_AFTER, 2)
    scored = [schedule["month_to_score"](run.date()) for run in runs]
    return ", ".join(f"{run:%Y-%m-%d %H:%M} (scores {y:04d}-{m:02d})" for run, (y, m) in zip(runs, scored))


def export_command() -> str:
    """The option whose command reproduces `make export`'s scripts/score.py (header aside)."""
    expected = (ROOT / "scripts" / "score.py").read_text().split("\n", 2)[2].strip()
    jupyter = Path(sys.executable).with_name("jupyter")
    for letter, command in EXPORT_COMMANDS.items():
        with tempfile.TemporaryDirectory() as out:
            argv = [str(jupyter), *command.format(out=out).split()[1:]]
            subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=300)
            produced = Path(out) / "score.py"
            if produced.exists() and normalise(produced.read_text()) == normalise(expected):
                return letter
    raise RuntimeError("no option reproduces make export")


def normalise(script: str) -> str:
    lines = [line for line in script.splitlines() if line.strip() and not line.startswith(("#!", "# coding"))]
    return "\n".join(lines)


def compute_key(variant: str) -> dict:
    """Every answer, computed from the project's library."""
    import base64

    from ride_duration.data import read_month
    from ride_duration.features import FastPredictor, ride_features

    synthetic = variant == "synthetic"
    model = fixed_model()
    event = json.loads(SAMPLE_EVENT.read_text())
    sample = json.loads(base64.b64decode(event["Records"][0]["kinesis"]["data"]))
    with tempfile.TemporaryDirectory() as folder:
        march = Path(folder) / "green-2021-03.parquet"
        march_rows = scored_month(model, 2021, 3, synthetic, march)
        april = scored_month(model, 2021, 4, synthetic, Path(folder) / "green-2021-04.parquet")
        values = {
            "q1": float(
                march_rows["predicted_duration"].std()
            ),  # as pandas takes it: rides with no prediction left out
            "q2": march.stat().st_size / 1e6,
            "q5": float(april["predicted_duration"].mean()),
            "q6": float(model.pipeline.predict([ride_features(EXAMPLE_RIDE)])[0]),
            "q7": float(FastPredictor(model.pipeline).predict_rides([sample["ride"]])[0]),
            "q8": sum(len(read_month("green", y, m, synthetic=synthetic)) for y, m in BACKFILL_MONTHS),
            "q13": off_by_10_percent(read_month("green", 2021, 4, synthetic=synthetic), april),
        }
    values["q3"] = export_command()
    values["q4"], values["q12"] = registry_answers()
    values["q9"] = stream_answer()
    values["q10"] = schedule_answer()
    values["q11"] = behaviour_answer(model)
    values["q14"] = retraining_answer()
    answers = {}
    for question in OPTIONS:
        value = values[question]
        if question == "q3":
            letter = value
        elif question in CHOICES:
            letter = choice_letter(question, value)
        else:
            letter = closest(OPTIONS[question][variant], value)
        answers[question] = {"value": value, "answer": letter}
    return {"variant": variant, "model_id": model.model_id, "model_sha256": MODEL_SHA256, "answers": answers}


def key_path(variant: str) -> Path:
    return HERE / f"key-{variant}.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS, default="tlc")
    args = parser.parse_args(argv)
    key = compute_key(args.variant)
    key_path(args.variant).write_text(json.dumps(key, indent=2) + "\n")
    print(json.dumps(key, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
