"""Streaming (issue 4): the Lambda handler exported from notebook 04, the local event-source runner,
the producer and consumer commands, the deploy script, the Lambda image's contents, the notebook.

Everything talks to a real moto_server (the `moto_url` fixture); the model is the registered one.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import boto3
import pytest

from ride_duration import local_stack
from ride_duration.data import read_month
from ride_duration.features import ride_features
from ride_duration.kinesis import MAX_BYTES_PER_PUT, MAX_RECORDS_PER_PUT, put_records, read_stream
from ride_duration.rides import BadRide, validate_ride
from tests.helpers import IN_CI, ROOT, require_real_months, tracking_store

STREAMING = ROOT / "streaming"
SAMPLE_EVENT = STREAMING / "events" / "kinesis-sample.json"
sys.path.insert(0, str(STREAMING))

import consumer  # noqa: E402
import deploy  # noqa: E402
import image  # noqa: E402
import lambda_function  # noqa: E402
import producer  # noqa: E402
import runner  # noqa: E402


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_stream(moto_url):
    """Create a fresh Kinesis stream on moto_server; returns its name."""
    kinesis = boto3.client("kinesis")

    def make(shards: int = 1) -> str:
        name = unique("stream")
        deploy.ensure_stream(kinesis, name, shards)
        return name

    return make


@pytest.fixture
def handler(monkeypatch, registered_model):
    """lambda_function, cold, serving the registered model by its artifact URI (no tracking server)."""
    monkeypatch.setenv("MODEL_URI", registered_model["artifact_uri"])
    monkeypatch.delenv("DRY_RUN", raising=False)
    lambda_function.reset_container()
    yield lambda_function
    lambda_function.reset_container()


def expected_durations(pipeline, rides: list[dict]) -> list[float]:
    """The registered pipeline's own answer, the course's way (one feature dict per ride)."""
    return [float(x) for x in pipeline.predict([ride_features(r) for r in rides])]


def read_predictions(stream: str) -> list[dict]:
    return consumer.read_predictions(boto3.client("kinesis"), stream, idle_seconds=0.5, max_seconds=60)


def fake_records(datas: list[bytes]) -> list[dict]:
    """Records as get_records returns them, for building events without a stream."""
    now = datetime.now(UTC)
    return [
        {"Data": data, "PartitionKey": f"key-{i}", "SequenceNumber": str(1000 + i), "ApproximateArrivalTimestamp": now}
        for i, data in enumerate(datas)
    ]


def ride_event(ride: dict, ride_id) -> bytes:
    return json.dumps({"ride": ride, "ride_id": ride_id}).encode()


# --- the handler ---------------------------------------------------------------------------------


def test_course_sample_event_comes_out_in_the_course_format(handler, make_stream, monkeypatch, registered_model):
    out = make_stream()
    monkeypatch.setenv("PREDICTIONS_STREAM_NAME", out)
    event = json.loads(SAMPLE_EVENT.read_text())

    assert handler.lambda_handler(event, None) == {"batchItemFailures": []}

    [record] = read_predictions(out)
    ride = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}
    [expected] = expected_durations(registered_model["pipeline"], [ride])
    assert record == {
        "model": "ride_duration_prediction_model",
        "version": registered_model["model_id"],
        "prediction": {"ride_duration": pytest.approx(expected, abs=1e-9), "ride_id": 256},
    }
    assert registered_model["model_id"].startswith("m-")


BAD_DATA = {
    "not JSON": b"ride 42 from 130 to 205",
    "not UTF-8": b'{"ride": "\xff"}',
    "a JSON list": b"[1, 2]",
    "no ride_id": json.dumps({"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.0}}).encode(),
    "no ride": json.dumps({"ride_id": 7}).encode(),
    "ride_id null": ride_event({"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.0}, None),
    "ride_id bool": ride_event({"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.0}, True),
    "ride_id too long": ride_event({"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.0}, "x" * 257),
    "integer ride_id too long": ride_event({"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.0}, 10**300),
    "location as text": ride_event({"PULocationID": "130", "DOLocationID": 205, "trip_distance": 3.66}, 1),
    "no distance": ride_event({"PULocationID": 130, "DOLocationID": 205}, 2),
    "negative distance": ride_event({"PULocationID": 130, "DOLocationID": 205, "trip_distance": -1}, 3),
    "NaN distance": b'{"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": NaN}, "ride_id": 4}',
    "extra field": ride_event({"PULocationID": 130, "DOLocationID": 205, "trip_distance": 1.0, "tip": 2}, 5),
}
GOOD_RIDES = [
    ({"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, 256),
    ({"PULocationID": 74, "DOLocationID": 75, "trip_distance": 0.8}, "2021/01_17"),
    ({"PULocationID": 299, "DOLocationID": 1, "trip_distance": 12.0}, "never-seen-pair"),
]


def test_bad_records_are_reported_and_the_good_ones_still_written(handler, make_stream, monkeypatch, registered_model):
    out = make_stream()
    monkeypatch.setenv("PREDICTIONS_STREAM_NAME", out)
    datas = [ride_event(*GOOD_RIDES[0])] + list(BAD_DATA.values()) + [ride_event(*g) for g in GOOD_RIDES[1:]]
    event = runner.lambda_event(
        fake_records(datas + [b"placeholder"]),
        "shardId-000000000000",
        "arn:aws:kinesis:us-east-1:123456789012:stream/ride_events",
    )
    event["Records"][-1]["kinesis"]["data"] = "this is *not* base64!"
    bad = [r["kinesis"]["sequenceNumber"] for r in event["Records"][1 : len(BAD_DATA) + 1]] + [
        event["Records"][-1]["kinesis"]["sequenceNumber"]
    ]

    response = handler.lambda_handler(event, None)

    assert sorted(item["itemIdentifier"] for item in response["batchItemFailures"]) == sorted(bad)
    written = {p["prediction"]["ride_id"]: p["prediction"]["ride_duration"] for p in read_predictions(out)}
    expected = expected_durations(registered_model["pipeline"], [ride for ride, _ in GOOD_RIDES])
    assert written == {ride_id: pytest.approx(e, abs=1e-9) for (_, ride_id), e in zip(GOOD_RIDES, expected)}


def test_each_bad_record_says_why(handler):
    for what, data in BAD_DATA.items():
        record = runner.lambda_event(fake_records([data]), "shardId-0", "arn:aws:kinesis:us-east-1:1:stream/s")[
            "Records"
        ][0]
        with pytest.raises(lambda_function.BadRecord) as caught:
            lambda_function.decode_record(record)
        assert str(caught.value), what


def test_dry_run_writes_nothing_and_returns_the_predictions(handler, monkeypatch, moto_url):
    monkeypatch.setenv("DRY_RUN", "1")
    monkeypatch.setenv("PREDICTIONS_STREAM_NAME", unique("no-such-stream"))  # a write would fail
    response = handler.lambda_handler(json.loads(SAMPLE_EVENT.read_text()), None)
    assert response["batchItemFailures"] == []
    assert [p["prediction"]["ride_id"] for p in response["predictions"]] == [256]
    assert "kinesis" not in handler.container


def test_model_is_loaded_once_per_container(handler, monkeypatch):
    monkeypatch.setenv("DRY_RUN", "1")
    loads = []
    real_load = handler.load_model
    monkeypatch.setattr(handler, "load_model", lambda uri, **options: loads.append(uri) or real_load(uri, **options))
    event = json.loads(SAMPLE_EVENT.read_text())
    for _ in range(3):
        handler.lambda_handler(event, None)
    assert len(loads) == 1
    handler.reset_container()
    handler.lambda_handler(event, None)
    assert len(loads) == 2


def test_a_bad_model_uri_fails_the_invocation_with_a_clear_reason(handler, monkeypatch, tmp_path):
    monkeypatch.setenv("MODEL_URI", str(tmp_path / "no-model-here"))
    monkeypatch.setenv("DRY_RUN", "1")
    with pytest.raises(Exception, match="no MLmodel file"):
        handler.lambda_handler(json.loads(SAMPLE_EVENT.read_text()), None)


def test_import_creates_no_client_and_loads_no_model():
    code = (
        "import sys; sys.path.insert(0, 'streaming'); import lambda_function as f; "
        "print(f.container, sorted(m for m in ('boto3', 'mlflow', 'pandas', 'sklearn') if m in sys.modules))"
    )
    env = {**os.environ, "MODEL_URI": "/nowhere", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{} []"


class FlakyKinesis:
    """A Kinesis client whose put_records rejects given records (by Data) a given number of times."""

    def __init__(self, refuse: dict[bytes, int] | None = None, refuse_matching: bytes | None = None):
        self.refuse = dict(refuse or {})
        self.refuse_matching = refuse_matching
        self.calls: list[list[bytes]] = []

    def put_records(self, StreamName, Records):  # boto3's argument names
        self.calls.append([r["Data"] for r in Records])
        results = []
        for r in Records:
            forever = self.refuse_matching is not None and self.refuse_matching in r["Data"]
            if forever or self.refuse.get(r["Data"], 0) > 0:
                self.refuse[r["Data"]] = self.refuse.get(r["Data"], 0) - 1
                results.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"})
            else:
                results.append({"SequenceNumber": "1", "ShardId": "shardId-000000000000"})
        return {"FailedRecordCount": sum("ErrorCode" in r for r in results), "Records": results}


def test_put_records_chunks_and_retries_only_what_was_rejected():
    entries = [{"Data": f"record {i}".encode(), "PartitionKey": str(i)} for i in range(1200)]
    client = FlakyKinesis(refuse={b"record 7": 2, b"record 700": 1})
    pauses = []
    assert put_records(client, "s", entries, sleep=pauses.append) == []
    assert [len(call) for call in client.calls] == [500, 1, 1, 500, 1, 200]
    assert client.calls[1] == client.calls[2] == [b"record 7"] and client.calls[4] == [b"record 700"]
    assert pauses == [0.1, 0.2, 0.1]
    assert sorted(Counter(d for call in client.calls for d in call).values())[-1] == 3  # record 7 went thrice


def test_put_records_gives_up_after_its_attempts_and_says_which():
    entries = [{"Data": f"record {i}".encode(), "PartitionKey": str(i)} for i in range(10)]
    client = FlakyKinesis(refuse_matching=b"record 3")
    assert put_records(client, "s", entries, attempts=4, sleep=lambda s: None) == [3]
    assert len(client.calls) == 4


def test_put_records_respects_the_request_size_limit():
    big = b"x" * (1024 * 1024 - 10)
    entries = [{"Data": big, "PartitionKey": str(i)} for i in range(11)]
    client = FlakyKinesis()
    put_records(client, "s", entries)
    assert sum(len(call) for call in client.calls) == 11
    assert all(len(call) <= MAX_RECORDS_PER_PUT and sum(map(len, call)) <= MAX_BYTES_PER_PUT for call in client.calls)
    assert len(client.calls) == 3


def test_predictions_the_stream_keeps_rejecting_fail_the_invocation_and_only_they_are_sent_again(handler, monkeypatch):
    """Throttling is the stream's fault, not the record's: the handler raises (an invocation error,
    retried by Lambda) instead of naming good rides in batchItemFailures."""
    rides = [({"PULocationID": 130, "DOLocationID": 205, "trip_distance": 1.0 + i}, f"ride-{i}") for i in range(5)]
    client = FlakyKinesis(refuse_matching=b'"ride-2"')
    handler.container["kinesis"] = client
    event = runner.lambda_event(
        fake_records([ride_event(*r) for r in rides] + [b"poison"]),
        "shardId-0",
        "arn:aws:kinesis:us-east-1:123456789012:stream/in",
    )
    monkeypatch.setattr(handler, "put_records", partial(put_records, sleep=lambda s: None))

    with pytest.raises(handler.PredictionsNotWritten, match="rejecting 1 of 5"):
        handler.lambda_handler(event, None)

    client.calls.clear()
    client.refuse_matching = None  # the throttling is over; Lambda invokes the same batch again
    response = handler.lambda_handler(event, None)
    assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][-1]["kinesis"]["sequenceNumber"]}]}
    [[only]] = client.calls  # one put_records call with one record: the one that was rejected
    assert b'"ride-2"' in only


def test_a_missing_output_stream_fails_the_invocation(handler, monkeypatch, moto_url):
    monkeypatch.setenv("PREDICTIONS_STREAM_NAME", unique("no-such-stream"))
    with pytest.raises(Exception, match="ResourceNotFound"):
        handler.lambda_handler(json.loads(SAMPLE_EVENT.read_text()), None)


# --- the local event-source runner ---------------------------------------------------------------


class ScriptedHandler:
    """A handler that records the sequence numbers of every batch and answers as scripted."""

    def __init__(self, answer):
        self.answer = answer
        self.batches: list[list[str]] = []

    def __call__(self, event, context):
        assert context.get_remaining_time_in_millis() > 0
        seqs = [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
        assert all(
            r["eventSource"] == "aws:kinesis" and r["eventID"].endswith(r["kinesis"]["sequenceNumber"])
            for r in event["Records"]
        )
        self.batches.append(seqs)
        return self.answer(len(self.batches), seqs)


def put_numbered(stream: str, n: int, start: int = 0) -> list[str]:
    """Put records b"0".. on the stream; returns their sequence numbers in order."""
    kinesis = boto3.client("kinesis")
    response = kinesis.put_records(
        StreamName=stream,
        Records=[{"Data": str(i).encode(), "PartitionKey": "one-key"} for i in range(start, start + n)],
    )
    assert response["FailedRecordCount"] == 0
    return [r["SequenceNumber"] for r in response["Records"]]


def quick_settings(stream: str, tmp_path: Path, **changes) -> runner.RunnerSettings:
    defaults = dict(
        stream=stream,
        checkpoint=tmp_path / "checkpoint.json",
        batch_size=100,
        retry_backoff=0.0,
        error_backoff=0.0,
        max_seconds=30,
        idle_seconds=0.3,
    )
    return runner.RunnerSettings(**{**defaults, **changes})


def failures_in(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_runner_redelivers_from_the_lowest_failed_record(make_stream, tmp_path):
    stream = make_stream()
    seqs = put_numbered(stream, 10)
    handler = ScriptedHandler(
        lambda call, batch: (
            {"batchItemFailures": [{"itemIdentifier": batch[6]}, {"itemIdentifier": batch[3]}]}
            if call == 1
            else {"batchItemFailures": []}
        )
    )
    settings = quick_settings(stream, tmp_path)

    report = runner.run(handler, settings, log=lambda line: None)

    assert handler.batches == [seqs, seqs[3:]]
    assert (report.records, report.invocations, report.redeliveries, report.failed) == (10, 2, 1, 0)
    assert json.loads(settings.checkpoint.read_text())["shards"] == {"shardId-000000000000": seqs[-1]}
    assert failures_in(tmp_path / "checkpoint.failures.jsonl") == []


def test_runner_sends_what_keeps_failing_to_the_failure_file_and_moves_on(make_stream, tmp_path):
    stream = make_stream()
    seqs = put_numbered(stream, 10)
    handler = ScriptedHandler(
        lambda call, batch: {"batchItemFailures": [{"itemIdentifier": seqs[5]}]} if seqs[5] in batch else None
    )
    settings = quick_settings(stream, tmp_path, max_retries=2, failures_file=tmp_path / "failed.jsonl")

    report = runner.run(handler, settings, log=lambda line: None)

    assert handler.batches == [seqs, seqs[5:], seqs[5:]]
    [failure] = failures_in(tmp_path / "failed.jsonl")
    assert (failure["sequenceNumber"], base64.b64decode(failure["data"]), failure["attempts"]) == (seqs[5], b"5", 3)
    assert "batchItemFailures" in failure["reason"] and report.failed == 1
    assert json.loads(settings.checkpoint.read_text())["shards"]["shardId-000000000000"] == seqs[-1]


def test_runner_stops_on_a_handler_that_keeps_raising_or_answers_nonsense(make_stream, tmp_path):
    """Invocation errors: the same batch again with back-off, then the runner stops; nothing is
    checkpointed past the batch and nothing reaches the failure destination."""
    stream = make_stream()
    seqs = put_numbered(stream, 4)

    def crash(call, batch):
        raise RuntimeError("model store unreachable")

    crashing = ScriptedHandler(crash)
    settings = quick_settings(stream, tmp_path, error_retries=2, error_backoff=0.01)
    with pytest.raises(runner.InvocationFailed, match="failed 3 times.*RuntimeError: model store unreachable"):
        runner.run(crashing, settings, log=lambda line: None)
    assert crashing.batches == [seqs] * 3
    assert not settings.checkpoint.exists() and not (tmp_path / "checkpoint.failures.jsonl").exists()

    recovers = ScriptedHandler(lambda call, batch: crash(call, batch) if call == 1 else None)
    report = runner.run(recovers, settings, log=lambda line: None)
    assert recovers.batches == [seqs, seqs] and (report.error_retries, report.failed) == (1, 0)
    assert json.loads(settings.checkpoint.read_text())["shards"]["shardId-000000000000"] == seqs[-1]

    other = make_stream()
    other_seqs = put_numbered(other, 4)
    nonsense = ScriptedHandler(lambda call, batch: {"batchItemFailures": [{"itemIdentifier": "not-in-the-batch"}]})
    with pytest.raises(runner.InvocationFailed, match="not in the batch: not-in-the-batch"):
        runner.run(nonsense, quick_settings(other, tmp_path / "b", error_retries=1), log=lambda line: None)
    assert nonsense.batches == [other_seqs, other_seqs]
    assert not (tmp_path / "b").exists()


def test_runner_resumes_after_its_checkpoint_and_refuses_another_streams(make_stream, tmp_path):
    stream = make_stream(shards=2)
    kinesis = boto3.client("kinesis")
    put_records(kinesis, stream, [{"Data": str(i).encode(), "PartitionKey": str(i)} for i in range(40)])
    first = ScriptedHandler(lambda call, batch: None)
    settings = quick_settings(stream, tmp_path, batch_size=7)
    assert runner.run(first, settings, log=lambda line: None).records == 40
    assert len(json.loads(settings.checkpoint.read_text())["shards"]) == 2

    put_records(kinesis, stream, [{"Data": str(i).encode(), "PartitionKey": str(i)} for i in range(40, 45)])
    second = ScriptedHandler(lambda call, batch: None)
    assert runner.run(second, settings, log=lambda line: None).records == 5
    assert sum(map(len, second.batches)) == 5

    with pytest.raises(runner.CheckpointMismatch, match="delete it"):
        runner.run(second, quick_settings(make_stream(), tmp_path), log=lambda line: None)


def test_runner_can_send_failures_to_a_stream(make_stream, tmp_path):
    stream, failure_stream = make_stream(), make_stream()
    seqs = put_numbered(stream, 3)
    poison_first = ScriptedHandler(lambda call, batch: {"batchItemFailures": [{"itemIdentifier": seqs[0]}]})
    runner.run(
        poison_first,
        quick_settings(stream, tmp_path, max_retries=0, failure_stream=failure_stream),
        log=lambda line: None,
    )
    [failure] = [json.loads(r["Data"]) for r in read_stream(boto3.client("kinesis"), failure_stream, idle_seconds=0.3)]
    assert (failure["sequenceNumber"], base64.b64decode(failure["data"]), failure["attempts"]) == (seqs[0], b"0", 1)
    assert not (tmp_path / "checkpoint.failures.jsonl").exists()


def test_runner_starting_at_latest_skips_what_is_already_there(make_stream, tmp_path):
    stream = make_stream()
    put_numbered(stream, 5)
    handler = ScriptedHandler(lambda call, batch: None)
    report = runner.run(handler, quick_settings(stream, tmp_path, starting_position="LATEST"), log=lambda line: None)
    assert report.records == 0 and handler.batches == []


def test_runner_stops_after_max_batches(make_stream, tmp_path):
    stream = make_stream()
    put_numbered(stream, 30)
    report = runner.run(
        ScriptedHandler(lambda c, b: None),
        quick_settings(stream, tmp_path, batch_size=10, max_batches=2),
        log=lambda line: None,
    )
    assert (report.invocations, report.records) == (2, 20) and "max batches" in report.stopped


# --- 10,000 rides of a real month, 1% poison, a kill in the middle ---------------------------------

POISON_KINDS = [
    lambda i: f"not json #{i}".encode(),
    lambda i: b'{"ride": "\xff", "ride_id": ' + str(i).encode() + b"}",
    lambda i: json.dumps({"ride": {"PULocationID": 130, "DOLocationID": 205}, "ride_id": f"poison-{i}"}).encode(),
    lambda i: json.dumps(
        {"ride": {"PULocationID": "130", "DOLocationID": 205, "trip_distance": 1.0}, "ride_id": f"poison-{i}"}
    ).encode(),
    lambda i: json.dumps(
        {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": -1.0}, "ride_id": f"poison-{i}"}
    ).encode(),
    lambda i: json.dumps(
        {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 1.0}, "poison": i}
    ).encode(),
]


@pytest.fixture
def ten_thousand_rides(make_stream, registered_model):
    """An input stream (2 shards) with 9,900 good rides of green 2021-02 and 100 poison records."""
    require_real_months(("green", 2021, 2))
    df = read_month("green", 2021, 2)
    good = []
    for event in producer.ride_events(df, 2021, 2, 10_500):
        try:
            validate_ride(event["ride"])
        except BadRide:
            continue
        good.append(event)
    good = good[:9_900]
    assert len(good) == 9_900
    poison = [POISON_KINDS[i % len(POISON_KINDS)](i) for i in range(100)]
    good_entries = iter({"Data": json.dumps(e).encode(), "PartitionKey": e["ride_id"]} for e in good)
    entries = [  # one poison record in the middle of every hundred
        {"Data": poison[i // 100], "PartitionKey": f"poison-{i // 100}"} if i % 100 == 50 else next(good_entries)
        for i in range(10_000)
    ]
    stream = make_stream(shards=2)
    assert put_records(boto3.client("kinesis"), stream, entries) == []
    durations = expected_durations(registered_model["pipeline"], [e["ride"] for e in good])
    return {"stream": stream, "expected": {e["ride_id"]: d for e, d in zip(good, durations)}, "poison": set(poison)}


def check_predictions(predictions: list[dict], expected: dict, model_id: str) -> Counter:
    """Every prediction right to 1e-9 with its model version; every good ride present. Returns the counts."""
    counts = Counter(p["prediction"]["ride_id"] for p in predictions)
    assert set(counts) == set(expected), "rides lost or invented"
    worst = max(abs(p["prediction"]["ride_duration"] - expected[p["prediction"]["ride_id"]]) for p in predictions)
    assert worst <= 1e-9
    assert {p["version"] for p in predictions} == {model_id}
    assert {p["model"] for p in predictions} == {"ride_duration_prediction_model"}
    return counts


def test_ten_thousand_rides_exactly_once_when_nothing_crashes(
    handler, ten_thousand_rides, make_stream, monkeypatch, registered_model, tmp_path
):
    out = make_stream()
    monkeypatch.setenv("PREDICTIONS_STREAM_NAME", out)
    settings = quick_settings(
        ten_thousand_rides["stream"], tmp_path, max_retries=1, retry_backoff=0.01, max_seconds=240, idle_seconds=1
    )

    report = runner.run(handler.lambda_handler, settings, log=lambda line: None)

    predictions = read_predictions(out)
    assert len(predictions) == 9_900
    counts = check_predictions(predictions, ten_thousand_rides["expected"], registered_model["model_id"])
    assert set(counts.values()) == {1}
    failures = failures_in(tmp_path / "checkpoint.failures.jsonl")
    assert len(failures) == 100 and {base64.b64decode(f["data"]) for f in failures} == ten_thousand_rides["poison"]
    assert report.records == 10_000 and report.failed == 100


def test_ten_thousand_rides_survive_killing_the_runner(
    ten_thousand_rides, make_stream, registered_model, tmp_path, logs_dir
):
    """The runner as a command, killed (SIGKILL) in the middle of a batch, then restarted: no ride
    lost, and the rides delivered twice are counted by ride_id.

    The kill lands while the runner waits to re-deliver a batch from its poison record: the good
    rides after the poison are written but not yet checkpointed, so the restart delivers them again."""
    out = make_stream()
    checkpoint = tmp_path / "checkpoint.json"
    batch_size = 100
    command = [
        sys.executable,
        str(STREAMING / "runner.py"),
        "--stream",
        ten_thousand_rides["stream"],
        "--checkpoint",
        str(checkpoint),
        "--batch-size",
        str(batch_size),
        "--max-retries",
        "1",
        "--idle-seconds",
        "1",
        "--max-seconds",
        "240",
    ]
    env = {**os.environ, "MODEL_URI": registered_model["artifact_uri"], "PREDICTIONS_STREAM_NAME": out}
    env.pop("DRY_RUN", None)
    log = logs_dir / f"runner-killed-{out}.log"

    with open(log, "w") as stderr:
        first = subprocess.Popen(
            command + ["--retry-backoff", "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in first.stdout], daemon=True).start()
    checkpoints, deadline = 0, time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert first.poll() is None, f"runner exited early ({first.returncode}); log {log}"
                continue
            checkpoints += line.startswith("checkpoint ")
            redelivering = re.match(r"redeliver \S+ from \S+ \((\d+) records?\)", line)
            if checkpoints >= 10 and redelivering and int(redelivering.group(1)) >= 5:
                break  # a poison record and good rides after it, written but not checkpointed
        else:
            pytest.fail(f"no re-delivery after 10 checkpoints within 120 s; log {log}")
        assert first.poll() is None, "the runner finished before it could be killed"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    assert json.loads(checkpoint.read_text())["shards"]

    second = subprocess.run(command + ["--retry-backoff", "0.01"], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == runner.EXIT_RECORDS_FAILED, second.stderr[-3000:]  # the poison
    [done] = [line for line in second.stdout.splitlines() if line.startswith("done: ")]
    assert "stopped: idle" in done

    predictions = read_predictions(out)
    counts = check_predictions(predictions, ten_thousand_rides["expected"], registered_model["model_id"])
    redelivered = sum(n - 1 for n in counts.values())
    print(f"\n{len(predictions)} predictions for 9,900 rides; {redelivered} rides delivered twice after the kill")
    assert len(predictions) == 9_900 + redelivered
    assert 0 < redelivered < batch_size  # the good rides after the poison of the batch being retried
    failed = Counter(base64.b64decode(f["data"]) for f in failures_in(checkpoint.with_suffix(".failures.jsonl")))
    assert set(failed) == ten_thousand_rides["poison"]


# --- the commands --------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["runner.py", "producer.py", "consumer.py", "deploy.py"])
def test_commands_explain_themselves(script):
    out = subprocess.run(
        [sys.executable, str(STREAMING / script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("usage:"), out.stderr


def test_the_handler_runs_on_an_event_file_from_the_command_line(registered_model):
    env = {**os.environ, "MODEL_URI": registered_model["artifact_uri"], "DRY_RUN": "1"}
    out = subprocess.run(
        [sys.executable, str(STREAMING / "lambda_function.py"), str(SAMPLE_EVENT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    response = json.loads(out.stdout)
    assert response["batchItemFailures"] == [] and response["predictions"][0]["prediction"]["ride_id"] == 256


def test_the_local_loop_of_the_readme_with_the_commands(moto_url, registered_model, tmp_path):
    """deploy.py --streams-only, producer.py, runner.py, consumer.py: streaming/README.md's loop."""
    rides_in, out = unique("rides"), unique("predictions")
    env = {**os.environ, "MODEL_URI": registered_model["artifact_uri"], "PREDICTIONS_STREAM_NAME": out}
    env.pop("DRY_RUN", None)

    def command(script, *args):
        result = subprocess.run(
            [sys.executable, str(STREAMING / script), *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    arns = json.loads(
        command("deploy.py", "--streams-only", "--shards", "2", "--input-stream", rides_in, "--output-stream", out)
    )
    assert set(arns) == {rides_in, out}
    sent = command(
        "producer.py",
        "--stream",
        rides_in,
        "--year",
        "2021",
        "--month",
        "1",
        "-n",
        "25",
        "--start-row",
        "100",
        "--synthetic",
        "fallback",
    )
    assert sent.startswith("sent 25 rides")
    command("runner.py", "--stream", rides_in, "--checkpoint", str(tmp_path / "cp.json"), "--idle-seconds", "0.5")
    printed = [
        json.loads(line) for line in command("consumer.py", "--stream", out, "--idle-seconds", "0.5").splitlines()
    ]
    assert sorted(p["prediction"]["ride_id"] for p in printed) == sorted(f"2021/01_{i}" for i in range(100, 125))


# --- deploying -----------------------------------------------------------------------------------


def test_deploy_script_against_moto(moto_url):
    name = unique("ride-duration-stream")
    image = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{name}:v1"
    settings = deploy.DeploySettings(
        image_uri=image,
        model_uri="s3://mlflow-artifacts/1/models/m-0123/artifacts",
        function_name=name,
        input_stream=f"{name}-in",
        output_stream=f"{name}-out",
        role_name=f"{name}-role",
        max_retries=3,
    )
    made = deploy.deploy(settings)

    lambda_client, iam = boto3.client("lambda"), boto3.client("iam")
    function = lambda_client.get_function(FunctionName=name)
    assert function["Configuration"]["PackageType"] == "Image" and function["Code"]["ImageUri"] == image
    assert function["Configuration"]["Role"] == made["role"]
    assert function["Configuration"]["Environment"]["Variables"] == {
        "MODEL_URI": settings.model_uri,
        "PREDICTIONS_STREAM_NAME": f"{name}-out",
    }
    [mapping] = lambda_client.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]
    assert mapping["EventSourceArn"] == made["input_stream"] and mapping["UUID"] == made["event_source_mapping"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"] and mapping["MaximumRetryAttempts"] == 3
    role = iam.get_role(RoleName=f"{name}-role")["Role"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    policy = iam.get_role_policy(RoleName=f"{name}-role", PolicyName=deploy.ROLE_POLICY_NAME)["PolicyDocument"]
    granted = {
        (a, s["Resource"])
        for s in policy["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert ("kinesis:GetRecords", made["input_stream"]) in granted
    assert ("kinesis:PutRecords", made["output_stream"]) in granted
    assert ("s3:GetObject", "arn:aws:s3:::mlflow-artifacts/1/models/m-0123/artifacts/*") in granted

    # Running it again with a new image updates the function and keeps the one mapping.
    assert (
        deploy.main(
            [
                "--image-uri",
                image.replace(":v1", ":v2"),
                "--model-uri",
                settings.model_uri,
                "--function-name",
                name,
                "--input-stream",
                f"{name}-in",
                "--output-stream",
                f"{name}-out",
                "--role-name",
                f"{name}-role",
            ]
        )
        == 0
    )
    assert lambda_client.get_function(FunctionName=name)["Code"]["ImageUri"].endswith(":v2")
    assert len(lambda_client.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]) == 1


# --- the Lambda image: Dockerfile and requirements kept honest without Docker --------------------


def uv_or_fail() -> str:
    try:
        return local_stack.uv_binary()
    except FileNotFoundError:
        if IN_CI:
            raise
        pytest.skip("uv not installed")


def without_header(text: str) -> list[str]:
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return lines


def test_lambda_requirements_match_the_lock():
    fresh = subprocess.run(
        [uv_or_fail(), "export", "--only-group", "lambda", "--no-hashes", "--no-emit-project", "--frozen"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fresh.returncode == 0, fresh.stderr
    committed = (STREAMING / "requirements.txt").read_text()
    assert without_header(committed) == without_header(fresh.stdout), (
        "streaming/requirements.txt is stale: uv export --only-group lambda --no-hashes --no-emit-project "
        "-o streaming/requirements.txt"
    )


@pytest.fixture(scope="session")
def lambda_image(tmp_path_factory):
    uv_or_fail()
    try:
        return image.build(tmp_path_factory.mktemp("lambda-image"))
    except subprocess.CalledProcessError as error:
        pytest.fail(f"could not lay out the Lambda image's packages from its requirements file: {error.stderr}")


def test_lambda_image_serves_the_sample_event_with_only_its_own_packages(lambda_image, registered_model, make_stream):
    """The task root as the Dockerfile's COPY lines make it, the packages of the lambda group only (no
    pandas, no mlflow server, no project install), the handler its CMD names: the sample event's
    prediction lands on the stream, and no `import mlflow` was needed for an artifact URI."""
    assert (
        image.dockerfile_parts()["base"]
        == f"public.ecr.aws/lambda/python:{sys.version_info.major}.{sys.version_info.minor}"
    )
    out = make_stream()
    module, function = lambda_image.handler.rsplit(".", 1)
    probe = f"""
import json, sys
sys.path.insert(0, {str(lambda_image.task_root)!r})
import {module}
import ride_duration
response = {module}.{function}(json.load(open({str(SAMPLE_EVENT)!r})), None)
print(json.dumps({{"response": response, "package": ride_duration.__file__, "mlflow": "mlflow" in sys.modules,
                   "pandas_installed": __import__("importlib.util").util.find_spec("pandas") is not None}}))
"""
    env = {**os.environ, "MODEL_URI": registered_model["artifact_uri"], "PREDICTIONS_STREAM_NAME": out}
    env.pop("DRY_RUN", None)
    result = subprocess.run(
        [str(lambda_image.python), "-c", probe],
        cwd=lambda_image.task_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["response"] == {"batchItemFailures": []}
    assert Path(report["package"]).is_relative_to(lambda_image.task_root)
    assert report == {**report, "mlflow": False, "pandas_installed": False}
    [record] = read_predictions(out)
    assert record["prediction"]["ride_id"] == 256 and record["version"] == registered_model["model_id"]


# --- the notebook --------------------------------------------------------------------------------


def test_notebook_04_runs_the_whole_loop(registered_model, tmp_path):
    import papermill

    from ride_duration.notebooks import noise

    output = tmp_path / "04-streaming.ipynb"
    with tracking_store(registered_model["tracking_uri"]):  # the kernel resolves the alias there
        papermill.execute_notebook(
            str(ROOT / "notebooks" / "04-streaming.ipynb"),
            str(output),
            parameters={"model_uri": registered_model["uri"], "n_rides": 300, "batch_size": 50},
            cwd=str(ROOT / "notebooks"),
            progress_bar=False,
            kernel_name="python3",
        )
    text = output.read_text()
    assert "300 predictions for 300 rides" in text
    assert "rides without a prediction: 0" in text
    assert "the runner stopped:" in text and "ResourceNotFoundException" in text  # the outage
    assert "checkpoint unchanged: True" in text and "records in the failure file: 2" in text
    assert "100 records read" in text and "0 to the failure destination" in text  # the restart
    assert noise(output) == []  # no library warnings or logs
