"""Streaming: records/s end to end through local Kinesis, our handler beside the course's and beside
the floor, the handler's own cost per record in-process, and the cold start (import + model load).

Every handler gets the same records from the same input stream, through the same local
event-source runner (streaming/runner.py, batches of 100 as Lambda's default), each writing to
its own output stream; the clock runs from the runner's start to its last checkpoint, with
the model already loaded. The course's handler (benchmarks/course_lambda_function.py) predicts
and `put_record`s one record at a time; ours predicts the batch at once and writes it with
`put_records`. The floor is a handler that copies each record's data unchanged to its output
stream with the same `put_records`: what the runner and local Kinesis cost by themselves, which
no handler can beat. Cold starts are measured in fresh interpreters. The benchmark starts its own
moto_server and stops it; counts and times are bounded.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import Table

ROOT = Path(__file__).resolve().parents[1]
N_RECORDS = 3_000
BATCH_SIZE = 100
BIG_BATCH_SIZE = 500  # what the event-source mapping's BatchSize can be raised to; ours gains, the course's cannot
MAX_SECONDS = 120  # per handler run
COLD_START_REPEATS = 3
IN_PROCESS_REPEATS = 5  # passes over the records in-process; the fastest counts
FLOOR_TARGET = 0.85  # ours should move at least this share of the floor's records/s

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
    "load": "container = lambda_function.container(); container.service.load(); container.kinesis_client()",
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
    from ride_duration.integrity import sha256_of
    from ride_duration.settings import export

    rides = training_rides(read_month("green", 2021, 1, synthetic="fallback"), "green")
    pipeline = train.fit(train.make_pipeline(LinearRegression()), rides)
    path = folder / "model"
    mlflow.sklearn.save_model(
        pipeline, str(path), serialization_format=train.SERIALIZATION_FORMAT, pip_requirements=train.PIP_REQUIREMENTS
    )
    export({"MODEL_SHA256": sha256_of((path / "model.pkl").read_bytes())})  # as a deployment of this folder sets it
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


def copy_records(client, stream: str):
    """The floor: a handler that writes each record's data, unchanged, to `stream` with put_records."""
    from ride_duration.kinesis import put_records

    def handler(event, context):
        entries = [
            {"Data": base64.b64decode(r["kinesis"]["data"]), "PartitionKey": r["kinesis"]["partitionKey"]}
            for r in event["Records"]
        ]
        if put_records(client, stream, entries):
            raise RuntimeError(f"{stream} kept rejecting records")
        return {"batchItemFailures": []}

    return handler


def our_container(model: Path, predictions_stream: str):
    """A fresh container (it remembers nothing written) with the model loaded and the client made."""
    import lambda_function

    from ride_duration.settings import Settings

    settings = dataclasses.replace(
        Settings.from_environ(), model_uri=model.as_uri(), predictions_stream_name=predictions_stream, dry_run=False
    )
    container = lambda_function.Container.from_settings(settings)
    container.service.load()
    container.kinesis_client()
    return container


def throughput(folder: Path, model: Path) -> Table:
    import boto3
    import consumer
    import deploy
    import producer

    from ride_duration.data import read_month

    kinesis = boto3.client("kinesis")
    rides_in, course_out, ours_out, ours_big_out, floor_out, floor_big_out = streams = (
        "ride_events",
        "course_predictions",
        "our_predictions",
        "our_predictions_big_batches",
        "floor_copies",
        "floor_copies_big_batches",
    )
    for name in streams:
        deploy.ensure_stream(kinesis, name)
    month = read_month("green", 2021, 2, synthetic="fallback")
    events = producer.ride_events(month, 2021, 2, N_RECORDS)
    producer.send(kinesis, rides_in, events)

    os.environ.update({"MODEL_LOCATION": str(model), "PREDICTIONS_STREAM_NAME": course_out})
    from benchmarks import course_lambda_function  # loads its model at import, as in the course

    course_seconds, course_records = drive(course_lambda_function.lambda_handler, rides_in, folder / "course.json")
    floor_seconds, floor_records = drive(copy_records(kinesis, floor_out), rides_in, folder / "floor.json")
    ours_seconds, ours_records = drive(our_container(model, ours_out).handle, rides_in, folder / "ours.json")
    floor_big_seconds, floor_big_records = drive(
        copy_records(kinesis, floor_big_out), rides_in, folder / "floor-big.json", BIG_BATCH_SIZE
    )
    big_seconds, big_records = drive(
        our_container(model, ours_big_out).handle, rides_in, folder / "ours-big.json", BIG_BATCH_SIZE
    )

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
    sent = sorted(json.dumps(e).encode() for e in events)
    for stream, records in ((floor_out, floor_records), (floor_big_out, floor_big_records)):
        copied = sorted(read_data(kinesis, stream))
        if copied != sent or records != N_RECORDS:
            raise RuntimeError(f"the floor handler copied {len(copied)} of {N_RECORDS} records, or changed them")

    course_rate, ours_rate, big_rate, floor_rate, floor_big_rate = (
        N_RECORDS / s for s in (course_seconds, ours_seconds, big_seconds, floor_seconds, floor_big_seconds)
    )
    return Table(
        title=f"Streaming: records/s end to end through local Kinesis (moto_server), batches of {BATCH_SIZE}",
        headers=["handler", "records", "seconds", "records/s", "vs course", "vs floor"],
        rows=[
            ["course: predict + put_record per record", N_RECORDS, course_seconds, course_rate, "1x", ""],
            [
                "ours: one predict + put_records per batch",
                N_RECORDS,
                ours_seconds,
                ours_rate,
                f"{ours_rate / course_rate:.1f}x",
                f"{ours_rate / floor_rate:.0%}",
            ],
            ["floor: copy each record's data + put_records", N_RECORDS, floor_seconds, floor_rate, "", "100%"],
            [
                f"ours, batches of {BIG_BATCH_SIZE} (BatchSize={BIG_BATCH_SIZE})",
                N_RECORDS,
                big_seconds,
                big_rate,
                f"{big_rate / course_rate:.1f}x",
                f"{big_rate / floor_big_rate:.0%}",
            ],
            [f"floor, batches of {BIG_BATCH_SIZE}", N_RECORDS, floor_big_seconds, floor_big_rate, "", "100%"],
        ],
        note=(
            f"Same {N_RECORDS:,} rides of green 2021-02 ({month.attrs.get('source')}), same runner, model already loaded; "
            "both handlers' predictions checked equal to 1e-9, the floor's copies checked equal to the input. "
            f"Target: ours at least {FLOOR_TARGET:.0%} of the floor at the same batch size."
        ),
    )


def read_data(kinesis, stream: str) -> list[bytes]:
    from ride_duration.kinesis import read_stream

    return [record["Data"] for record in read_stream(kinesis, stream, idle_seconds=0.5)]


class NullKinesis:
    """A Kinesis client that accepts every record and does nothing: the handler's own cost, without I/O."""

    def put_records(self, StreamName, Records):
        return {"FailedRecordCount": 0, "Records": [{} for _ in Records]}


def in_process(model: Path) -> Table:
    """Microseconds per record spent in the handler itself (decode, validate, predict, encode, entries)."""
    import lambda_function
    import producer
    import runner

    from ride_duration.data import read_month

    events = producer.ride_events(read_month("green", 2021, 2, synthetic="fallback"), 2021, 2, N_RECORDS)
    arrival = datetime.now(UTC)
    batches = []
    for start in range(0, N_RECORDS, BATCH_SIZE):
        records = [
            {
                "Data": json.dumps(e).encode(),
                "PartitionKey": e["ride_id"],
                "SequenceNumber": str(10**20 + start + i),
                "ApproximateArrivalTimestamp": arrival,
            }
            for i, e in enumerate(events[start : start + BATCH_SIZE])
        ]
        batches.append(runner.lambda_event(records, "shardId-000000000000", "arn:aws:kinesis:us-east-1:0:stream/in"))
    warm = our_container(model, "unused")
    rows = []
    for name, make_handler in (
        ("ours", lambda: lambda_function.Container(warm.settings, warm.service, NullKinesis()).handle),
        ("floor: copy each record's data", lambda: copy_records(NullKinesis(), "unused")),
    ):
        best = float("inf")
        for _ in range(IN_PROCESS_REPEATS):
            handler = make_handler()  # a fresh container: nothing remembered as written
            started = time.perf_counter()
            for event in batches:
                handler(event, None)
            best = min(best, time.perf_counter() - started)
        rows.append([name, N_RECORDS, 1e6 * best / N_RECORDS])
    return Table(
        title=f"Streaming: the handler's own cost in-process (no Kinesis), batches of {BATCH_SIZE}",
        headers=["handler", "records", "microseconds per record"],
        rows=rows,
        note=f"Fastest of {IN_PROCESS_REPEATS} passes; the output client accepts every record and does nothing.",
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
            return [throughput(folder, model), in_process(model), cold_starts(folder, model)]
        finally:
            os.environ.clear()
            os.environ.update(saved)
            local_stack.stop(moto)
