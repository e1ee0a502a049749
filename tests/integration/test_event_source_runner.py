"""The local event-source runner (streaming/runner.py) in-process against a real moto_server, with
scripted handlers: re-delivery from the lowest failed record, the failure destination, invocation
errors, checkpoints, starting positions and limits. (The runner as a command: test_runner.py.)"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import boto3
import pytest

from ride_duration.kinesis import put_records, read_stream
from tests.integration.streaming_helpers import new_stream, quick_settings, runner


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


def failures_in(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_runner_redelivers_from_the_lowest_failed_record(moto_url, tmp_path):
    stream = new_stream()
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


def test_runner_sends_what_keeps_failing_to_the_failure_file_and_moves_on(moto_url, tmp_path):
    stream = new_stream()
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


def test_runner_stops_on_a_handler_that_keeps_raising_or_answers_nonsense(moto_url, tmp_path):
    """Invocation errors: the same batch again with back-off, then the runner stops; nothing is
    checkpointed past the batch and nothing reaches the failure destination."""
    stream = new_stream()
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

    other = new_stream()
    other_seqs = put_numbered(other, 4)
    nonsense = ScriptedHandler(lambda call, batch: {"batchItemFailures": [{"itemIdentifier": "not-in-the-batch"}]})
    with pytest.raises(runner.InvocationFailed, match="not in the batch: not-in-the-batch"):
        runner.run(nonsense, quick_settings(other, tmp_path / "b", error_retries=1), log=lambda line: None)
    assert nonsense.batches == [other_seqs, other_seqs]
    assert not (tmp_path / "b").exists()


def test_runner_resumes_after_its_checkpoint_and_refuses_another_streams(moto_url, tmp_path):
    stream = new_stream(shards=2)
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
        runner.run(second, quick_settings(new_stream(), tmp_path), log=lambda line: None)


def test_runner_can_send_failures_to_a_stream(moto_url, tmp_path):
    stream, failure_stream = new_stream(), new_stream()
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


def test_runner_starting_at_latest_skips_what_is_already_there(moto_url, tmp_path):
    stream = new_stream()
    put_numbered(stream, 5)
    handler = ScriptedHandler(lambda call, batch: None)
    report = runner.run(handler, quick_settings(stream, tmp_path, starting_position="LATEST"), log=lambda line: None)
    assert report.records == 0 and handler.batches == []


def test_runner_stops_after_max_batches(moto_url, tmp_path):
    stream = new_stream()
    put_numbered(stream, 30)
    report = runner.run(
        ScriptedHandler(lambda c, b: None),
        quick_settings(stream, tmp_path, batch_size=10, max_batches=2),
        log=lambda line: None,
    )
    assert (report.invocations, report.records) == (2, 20) and "max batches" in report.stopped
