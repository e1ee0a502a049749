"""The local event-source runner as a user runs it (streaming/runner.py, a process of its own, against a
real moto_server): infrastructure failures stop it without losing or misfiling a record, a restart
resumes from the checkpoint, poison alone reaches the failure file, and a failure file replays.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import boto3
import pytest

from ride_duration.data import read_month
from ride_duration.kinesis import put_records, read_stream
from ride_duration.settings import child_environment
from tests.integration.streaming_helpers import STREAMING, new_stream, producer, runner, unique

# A handler with a bug, as a user might deploy one: it names every ride over 10 miles in
# batchItemFailures instead of predicting it.
BUGGY_HANDLER = """
import base64, json
import lambda_function

def lambda_handler(event, context):
    def is_long(record):
        return json.loads(base64.b64decode(record["kinesis"]["data"]))["ride"]["trip_distance"] > 10
    response = lambda_function.lambda_handler({"Records": [r for r in event["Records"] if not is_long(r)]}, context)
    refused = [{"itemIdentifier": r["kinesis"]["sequenceNumber"]} for r in event["Records"] if is_long(r)]
    return {"batchItemFailures": response["batchItemFailures"] + refused}
"""


@pytest.fixture
def kinesis(moto_url):
    return boto3.client("kinesis")


@pytest.fixture(scope="module")
def rides():
    """The first 400 rides of green 2021-01 (a synthetic month where the real one is missing)."""
    return producer.ride_events(read_month("green", 2021, 1, synthetic="fallback"), 2021, 1, 400)


def send(kinesis, stream: str, events: list[dict]) -> None:
    assert producer.send(kinesis, stream, events) == len(events)


def run_replay(failures, stream: str):
    """`runner.py replay` as a user runs it."""
    return subprocess.run(
        [sys.executable, str(STREAMING / "runner.py"), "replay", "--failures", str(failures), "--stream", stream],
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_runner(stream: str, checkpoint: Path, model_uri: str, predictions: str, *options: str, env: dict | None = None):
    """streaming/runner.py as a command, bounded in time, with quick back-offs."""
    command = [
        sys.executable,
        str(STREAMING / "runner.py"),
        "--stream",
        stream,
        "--checkpoint",
        str(checkpoint),
        "--idle-seconds",
        "0.5",
        "--max-seconds",
        "60",
        "--retry-backoff",
        "0.01",
        "--error-retries",
        "2",
        "--error-backoff",
        "0.05",
        *options,
    ]
    env = child_environment(
        {"MODEL_URI": model_uri, "PREDICTIONS_STREAM_NAME": predictions, "DRY_RUN": "", **(env or {})}
    )
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def predicted_ride_ids(kinesis, stream: str) -> Counter:
    return Counter(
        json.loads(r["Data"])["prediction"]["ride_id"] for r in read_stream(kinesis, stream, idle_seconds=0.5)
    )


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_model_that_cannot_load_stops_the_runner_and_files_nothing(kinesis, rides, registered_model, tmp_path):
    stream, out = new_stream(shards=2), new_stream()
    checkpoint = tmp_path / "checkpoint.json"
    send(kinesis, stream, rides[:100])
    first = run_runner(stream, checkpoint, registered_model["artifact_uri"], out)
    assert first.returncode == runner.EXIT_OK, first.stderr[-3000:]
    saved = checkpoint.read_bytes()

    send(kinesis, stream, rides[100:200])
    broken = run_runner(stream, checkpoint, str(tmp_path / "no-model-here"), out)

    assert broken.returncode == runner.EXIT_STOPPED, broken.stdout[-3000:] + broken.stderr[-3000:]
    assert "failed 3 times" in broken.stderr and "no MLmodel file" in broken.stderr
    assert "resume from the checkpoint" in broken.stderr
    assert broken.stdout.count("invocation error") == 2  # the two retries, with their back-off
    assert checkpoint.read_bytes() == saved
    assert not checkpoint.with_suffix(".failures.jsonl").exists()

    fixed = run_runner(stream, checkpoint, registered_model["artifact_uri"], out)
    assert fixed.returncode == runner.EXIT_OK, fixed.stderr[-3000:]
    assert predicted_ride_ids(kinesis, out) == Counter(e["ride_id"] for e in rides[:200])


def test_an_output_stream_back_after_an_outage_gets_every_record_on_restart(kinesis, rides, registered_model, tmp_path):
    stream, out = new_stream(shards=2), new_stream()
    checkpoint = tmp_path / "checkpoint.json"
    send(kinesis, stream, rides[:100])
    assert run_runner(stream, checkpoint, registered_model["artifact_uri"], out).returncode == runner.EXIT_OK
    saved = checkpoint.read_bytes()

    kinesis.delete_stream(StreamName=out)  # the outage: the output stream is gone
    kinesis.get_waiter("stream_not_exists").wait(StreamName=out, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    send(kinesis, stream, rides[100:400])
    outage = run_runner(stream, checkpoint, registered_model["artifact_uri"], out)
    assert outage.returncode == runner.EXIT_STOPPED, outage.stderr[-3000:]
    assert "ResourceNotFoundException" in outage.stderr
    assert checkpoint.read_bytes() == saved
    assert not checkpoint.with_suffix(".failures.jsonl").exists()

    new_stream(name=out)  # back, empty
    restart = run_runner(stream, checkpoint, registered_model["artifact_uri"], out)
    assert restart.returncode == runner.EXIT_OK, restart.stderr[-3000:]
    assert "0 to the failure destination" in restart.stdout
    # Exactly the 300 rides sent during the outage: the restart resumed after the checkpoint.
    assert predicted_ride_ids(kinesis, out) == Counter(e["ride_id"] for e in rides[100:400])


POISON = [
    b"not JSON at all",
    json.dumps(
        {"ride": {"PULocationID": "130", "DOLocationID": 205, "trip_distance": 1.0}, "ride_id": "poison-1"}
    ).encode(),
    json.dumps(
        {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": -3.0}, "ride_id": "poison-2"}
    ).encode(),
    json.dumps({"ride_id": "poison-3"}).encode(),
]


def test_only_poison_reaches_the_failure_file_and_the_exit_code_says_so(kinesis, rides, registered_model, tmp_path):
    stream, out = new_stream(shards=2), new_stream()
    entries = [{"Data": json.dumps(e).encode(), "PartitionKey": e["ride_id"]} for e in rides[:200]]
    for index, data in enumerate(POISON):  # spread through the batches
        entries.insert(30 + 45 * index, {"Data": data, "PartitionKey": f"poison-{index}"})
    assert put_records(kinesis, stream, entries) == []
    checkpoint = tmp_path / "checkpoint.json"

    result = run_runner(stream, checkpoint, registered_model["artifact_uri"], out, "--batch-size", "50")

    assert result.returncode == runner.EXIT_RECORDS_FAILED, result.stderr[-3000:]
    assert f"{len(POISON)} records failed every retry" in result.stdout
    failures = lines_of(checkpoint.with_suffix(".failures.jsonl"))
    assert sorted(base64.b64decode(f["data"]) for f in failures) == sorted(POISON)
    assert {f["reason"] for f in failures} == {"named in batchItemFailures"} and {f["attempts"] for f in failures} == {
        3
    }
    assert predicted_ride_ids(kinesis, out) == Counter(e["ride_id"] for e in rides[:200])


def test_a_failure_file_replays_and_its_records_are_then_processed(kinesis, rides, registered_model, tmp_path):
    stream, out = new_stream(shards=2), new_stream()
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "buggy_handler.py").write_text(BUGGY_HANDLER)
    long_rides = {e["ride_id"] for e in rides if e["ride"]["trip_distance"] > 10}
    assert 0 < len(long_rides) < len(rides)
    send(kinesis, stream, rides)
    checkpoint, failures = tmp_path / "checkpoint.json", tmp_path / "failures.jsonl"
    buggy = run_runner(
        stream,
        checkpoint,
        registered_model["artifact_uri"],
        out,
        "--handler",
        "buggy_handler.lambda_handler",
        "--failures-file",
        str(failures),
        "--max-retries",
        "0",
        env={"PYTHONPATH": str(tmp_path / "handlers")},
    )
    assert buggy.returncode == runner.EXIT_RECORDS_FAILED, buggy.stderr[-3000:]
    filed = lines_of(failures)
    assert {json.loads(base64.b64decode(f["data"]))["ride_id"] for f in filed} == long_rides
    before = Counter((r["Data"], r["PartitionKey"]) for r in read_stream(kinesis, stream, idle_seconds=0.3))

    replay = run_replay(failures, stream)
    assert replay.returncode == runner.EXIT_OK, replay.stderr
    assert replay.stdout.startswith(f"replayed {len(filed)} records")
    assert not failures.exists() and lines_of(failures.with_name("failures.jsonl.replayed")) == filed
    after = Counter((r["Data"], r["PartitionKey"]) for r in read_stream(kinesis, stream, idle_seconds=0.3))
    assert after - before == Counter((base64.b64decode(f["data"]), f["partitionKey"]) for f in filed)

    fixed = run_runner(stream, checkpoint, registered_model["artifact_uri"], out, "--failures-file", str(failures))
    assert fixed.returncode == runner.EXIT_OK, fixed.stderr[-3000:]
    assert f"{len(filed)} records read" in fixed.stdout  # only the replayed ones: resumed after the checkpoint
    assert predicted_ride_ids(kinesis, out) == Counter(e["ride_id"] for e in rides)


def test_replay_to_a_missing_stream_keeps_the_failure_file(moto_url, tmp_path):
    failures = tmp_path / "failures.jsonl"
    failures.write_text(json.dumps({"partitionKey": "k", "data": base64.b64encode(b"ride").decode()}) + "\n")
    before = failures.read_bytes()
    result = run_replay(failures, unique("no-such-stream"))
    assert result.returncode == runner.EXIT_STOPPED and "unchanged" in result.stderr
    assert failures.read_bytes() == before and not failures.with_name("failures.jsonl.replayed").exists()

    failures.write_text("not a failure record\n")
    result = run_replay(failures, "ride_events")
    assert result.returncode == runner.EXIT_USAGE and "failures.jsonl:1" in result.stderr


@pytest.mark.parametrize(
    "script, options",
    [
        ("producer.py", ["--year", "2021", "--month", "1", "-n", "5", "--synthetic", "fallback"]),
        ("consumer.py", ["--idle-seconds", "0.3"]),
    ],
)
def test_producer_and_consumer_say_clearly_when_the_stream_is_missing(moto_url, script, options):
    missing = unique("no-such-stream")
    result = subprocess.run(
        [sys.executable, str(STREAMING / script), "--stream", missing, *options],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.startswith("error: ")
        and missing in result.stderr
        and "ResourceNotFoundException" in result.stderr
    )
