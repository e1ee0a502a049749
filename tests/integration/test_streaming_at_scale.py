"""10,000 rides of a real month (green 2021-02) with 1% poison, through the runner and the handler on a
real moto_server: exactly once when nothing crashes, nothing lost when the runner is killed mid-batch."""

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
from collections import Counter
from pathlib import Path

import boto3
import pytest

from ride_duration.data import read_month
from ride_duration.kinesis import put_records
from ride_duration.rides import BadRide, validate_ride
from ride_duration.settings import child_environment
from tests.helpers import require_real_months
from tests.integration.streaming_helpers import (
    STREAMING,
    expected_durations,
    new_stream,
    producer,
    quick_settings,
    read_predictions,
    runner,
    serving_container,
)


def failures_in(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


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
def ten_thousand_rides(moto_url, registered_model):
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
    stream = new_stream(shards=2)
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


def test_ten_thousand_rides_exactly_once_when_nothing_crashes(ten_thousand_rides, registered_model, tmp_path):
    out = new_stream()
    settings = quick_settings(
        ten_thousand_rides["stream"], tmp_path, max_retries=1, retry_backoff=0.01, max_seconds=240, idle_seconds=1
    )

    report = runner.run(serving_container(registered_model, out).handle, settings, log=lambda line: None)

    predictions = read_predictions(out)
    assert len(predictions) == 9_900
    counts = check_predictions(predictions, ten_thousand_rides["expected"], registered_model["model_id"])
    assert set(counts.values()) == {1}
    failures = failures_in(tmp_path / "checkpoint.failures.jsonl")
    assert len(failures) == 100 and {base64.b64decode(f["data"]) for f in failures} == ten_thousand_rides["poison"]
    assert report.records == 10_000 and report.failed == 100


def test_ten_thousand_rides_survive_killing_the_runner(ten_thousand_rides, registered_model, tmp_path, logs_dir):
    """The runner as a command, killed (SIGKILL) in the middle of a batch, then restarted: no ride
    lost, and the rides delivered twice are counted by ride_id.

    The kill lands while the runner waits to re-deliver a batch from its poison record: the good
    rides after the poison are written but not yet checkpointed, so the restart delivers them again."""
    out = new_stream()
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
    env = child_environment(
        {"MODEL_URI": registered_model["artifact_uri"], "PREDICTIONS_STREAM_NAME": out, "DRY_RUN": ""}
    )
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
