"""Streaming: records/s end to end through local Kinesis, our handler beside the course's, and the
cold start (import + model load) of each.

Both handlers get the same records from the same input stream, through the same local
event-source runner (streaming/runner.py, batches of 100 as Lambda's default), each writing to
its own predictions stream; the clock runs from the runner's start to its last checkpoint, with
the model already loaded. The course's handler (benchmarks/course_lambda_function.py) predicts
and `put_record`s one record at a time; ours predicts the batch at once and writes it with
`put_records`. Cold starts are measured in fresh interpreters. The benchmark starts its own
moto_server and stops it; counts and times are bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import Table

ROOT = Path(__file__).resolve().parents[1]
N_RECORDS = 3_000
BATCH_SIZE = 100
BIG_BATCH_SIZE = 500  # what the event-source mapping's BatchSize can be raised to; ours gains, the course's cannot
MAX_SECONDS = 120  # per handler run
COLD_START_REPEATS = 3

COLD_START_PROBE = """
import json, sys, time
started = time.perf_counter()
{imports}
imported = time.perf_counter()
{load}
print(json.dumps([imported - started, time.perf_counter() - imported]))
"""
OURS = {
    "imports": "sys.path.insert(0, {streaming!r}); import lambda_function",
    "load": "lambda_function.served_model(); lambda_function.kinesis_client()",
}
COURSE = {
    "imports": "import base64, json, os, boto3, mlflow",  # the course module's own imports
    "load": "import benchmarks.course_lambda_function",  # its client and mlflow.pyfunc.load_model
}


def save_model(folder: Path) -> Path:
    """The course's pipeline (DictVectorizer + LinearRegression on green 2021-01), saved as an
    MLflow sklearn model folder that both handlers load."""
    import mlflow
    from sklearn.linear_model import LinearRegression

    from ride_duration import train
    from ride_duration.data import read_month, training_rides

    rides = training_rides(read_month("green", 2021, 1, synthetic="fallback"), "green")
    pipeline = train.fit(train.make_pipeline(LinearRegression()), rides)
    path = folder / "model"
    mlflow.sklearn.save_model(
        pipeline, str(path), serialization_format=train.SERIALIZATION_FORMAT, pip_requirements=train.PIP_REQUIREMENTS
    )
    return path


def drive(handler, stream: str, checkpoint: Path, batch_size: int = BATCH_SIZE) -> tuple[float, int]:
    """Run the handler over the stream; (seconds to the last checkpoint, records handed over)."""
    import runner

    marks = []
    settings = runner.RunnerSettings(
        stream=stream, checkpoint=checkpoint, batch_size=batch_size, max_seconds=MAX_SECONDS, idle_seconds=0.5
    )
    started = time.perf_counter()
    report = runner.run(handler, settings, log=lambda line: marks.append(time.perf_counter()))
    return marks[-1] - started, report.records


def throughput(folder: Path, model: Path) -> Table:
    import boto3
    import consumer
    import deploy
    import producer

    from ride_duration.data import read_month

    kinesis = boto3.client("kinesis")
    rides_in, course_out, ours_out, ours_big_out = streams = (
        "ride_events",
        "course_predictions",
        "our_predictions",
        "our_predictions_big_batches",
    )
    for name in streams:
        deploy.ensure_stream(kinesis, name)
    month = read_month("green", 2021, 2, synthetic="fallback")
    producer.send(kinesis, rides_in, producer.ride_events(month, 2021, 2, N_RECORDS))

    os.environ.update({"MODEL_LOCATION": str(model), "PREDICTIONS_STREAM_NAME": course_out})
    from benchmarks import course_lambda_function  # loads its model at import, as in the course

    course_seconds, course_records = drive(course_lambda_function.lambda_handler, rides_in, folder / "course.json")

    import lambda_function

    def warm_container(predictions_stream: str) -> None:
        """A fresh container (it remembers nothing written) with the model loaded and the client made."""
        os.environ.update({"MODEL_URI": model.as_uri(), "PREDICTIONS_STREAM_NAME": predictions_stream})
        lambda_function.reset_container()
        lambda_function.served_model()
        lambda_function.kinesis_client()

    warm_container(ours_out)
    ours_seconds, ours_records = drive(lambda_function.lambda_handler, rides_in, folder / "ours.json")
    warm_container(ours_big_out)
    big_seconds, big_records = drive(lambda_function.lambda_handler, rides_in, folder / "ours-big.json", BIG_BATCH_SIZE)

    course = {
        p["prediction"]["ride_id"]: p["prediction"]["ride_duration"]
        for p in consumer.read_predictions(kinesis, course_out, idle_seconds=0.5)
    }
    for stream, records in ((ours_out, ours_records), (ours_big_out, big_records)):
        ours = {
            p["prediction"]["ride_id"]: p["prediction"]["ride_duration"]
            for p in consumer.read_predictions(kinesis, stream, idle_seconds=0.5)
        }
        if not (
            len(course) == len(ours) == N_RECORDS == course_records == records
            and max(abs(course[k] - ours[k]) for k in ours) <= 1e-9
        ):
            raise RuntimeError(
                f"the handlers disagree: {len(course)} vs {len(ours)} predictions for {N_RECORDS} records"
            )

    course_rate, ours_rate, big_rate = (N_RECORDS / s for s in (course_seconds, ours_seconds, big_seconds))
    return Table(
        title=f"Streaming: records/s end to end through local Kinesis (moto_server), batches of {BATCH_SIZE}",
        headers=["handler", "records", "seconds", "records/s", "vs course"],
        rows=[
            ["course: predict + put_record per record", N_RECORDS, course_seconds, course_rate, "1x"],
            [
                "ours: one predict + put_records per batch",
                N_RECORDS,
                ours_seconds,
                ours_rate,
                f"{ours_rate / course_rate:.1f}x",
            ],
            [
                f"ours, batches of {BIG_BATCH_SIZE} (BatchSize={BIG_BATCH_SIZE})",
                N_RECORDS,
                big_seconds,
                big_rate,
                f"{big_rate / course_rate:.1f}x",
            ],
        ],
        note=(
            f"Same {N_RECORDS:,} rides of green 2021-02 ({month.attrs.get('source')}), same runner, model already loaded; "
            "both handlers' predictions checked equal to 1e-9."
        ),
    )


def cold_start(python: str, probe: dict, cwd: Path, env: dict) -> tuple[float, float]:
    """(import seconds, model load + client seconds) of the fastest of a few fresh interpreters:
    the least disturbed by whatever else the machine is doing."""
    code = COLD_START_PROBE.format(imports=probe["imports"].format(streaming=str(cwd)), load=probe["load"])
    runs = []
    for _ in range(COLD_START_REPEATS):
        out = subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"cold start probe failed: {out.stderr[-2000:]}")
        runs.append(json.loads(out.stdout.splitlines()[-1]))
    return min(runs, key=sum)


def cold_starts(folder: Path, model: Path) -> Table:
    import image

    env = {**os.environ, "MODEL_URI": model.as_uri(), "MODEL_LOCATION": str(model)}
    rows = []
    course = cold_start(sys.executable, COURSE, ROOT, env)
    rows.append(["course (mlflow.pyfunc)", "project environment", *course, sum(course)])
    ours = cold_start(sys.executable, OURS, ROOT / "streaming", env)
    rows.append(["ours (ride_duration.model, no mlflow)", "project environment", *ours, sum(ours)])
    try:
        lean = image.build(folder / "image")
    except (OSError, subprocess.CalledProcessError) as error:
        note = f"The Lambda image's packages could not be laid out ({type(error).__name__}); run `make setup` first."
    else:
        ours_lean = cold_start(str(lean.python), OURS, lean.task_root, env)
        rows.append(["ours (ride_duration.model, no mlflow)", "Lambda image packages only", *ours_lean, sum(ours_lean)])
        note = (
            "'Lambda image packages only': streaming/Dockerfile's task root and the lock's lambda group, laid out "
            "by streaming/image.py. Ours loads a linear pipeline without scikit-learn (load_model(without_sklearn=True))."
        )
    return Table(
        title=f"Streaming: cold start (fastest of {COLD_START_REPEATS} fresh interpreters)",
        headers=["handler", "packages", "import (s)", "model load + client (s)", "total (s)"],
        rows=rows,
        note=note,
    )


def run() -> list[Table]:
    from ride_duration import local_stack

    sys.path.insert(0, str(ROOT / "streaming"))
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        folder = Path(tmp)
        port = local_stack.free_port()
        moto = local_stack.start_moto(port, folder / "moto.log")
        try:
            os.environ.update(local_stack.aws_env(f"http://{local_stack.HOST}:{port}"))
            os.environ.pop("DRY_RUN", None)
            model = save_model(folder)
            return [throughput(folder, model), cold_starts(folder, model)]
        finally:
            os.environ.clear()
            os.environ.update(saved)
            local_stack.stop(moto)
