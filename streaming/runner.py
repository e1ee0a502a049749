"""The local event-source runner: what AWS Lambda's Kinesis event-source mapping does for a
deployed function, done in-process (moto_server cannot run Lambda code here: that needs Docker).

    MODEL_URI=... PREDICTIONS_STREAM_NAME=ride_predictions \\
        python streaming/runner.py --stream ride_events --checkpoint runner-checkpoint.json

As Lambda does, it
- reads every shard of the input stream in batches (--batch-size, --starting-position),
- hands each batch to the handler as a real Lambda Kinesis event (base64 data, sequence numbers),
- honours ReportBatchItemFailures: when the handler names failed records, the batch is delivered
  again from the lowest failed sequence number, at most --max-retries times; what still fails then
  goes to a failure destination (a JSON-lines file, or a failure stream) and the shard moves on,
- checkpoints each shard (the last sequence number handled, in a JSON file replaced atomically),
  so that a restart resumes where it stopped. Delivery is at least once: records of a batch that
  was being handled when the runner died are delivered again; ride_id identifies them.
It stops after --max-batches handler calls, after --max-seconds, or when every shard has been
caught up for --idle-seconds.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

from ride_duration.kinesis import POLL_SECONDS, put_records, shard_iterator, stream_shards

HANDLER_TIMEOUT_SECONDS = 60  # what context.get_remaining_time_in_millis counts down from


class CheckpointMismatch(RuntimeError):
    """The checkpoint file belongs to another stream (or an older stream of the same name)."""


@dataclass
class RunnerSettings:
    stream: str
    checkpoint: Path
    batch_size: int = 100  # Lambda's default for Kinesis
    starting_position: str = "TRIM_HORIZON"
    max_retries: int = 2  # Lambda's MaximumRetryAttempts: re-deliveries after the first attempt
    retry_backoff: float = 0.2  # seconds before the first re-delivery, doubled after each one
    failures_file: Path | None = None
    failure_stream: str | None = None
    max_batches: int | None = None
    max_seconds: float = 300.0
    idle_seconds: float = 2.0


@dataclass
class RunReport:
    records: int = 0  # records read from the stream and handed to the handler
    invocations: int = 0  # handler calls, re-deliveries included
    redeliveries: int = 0
    failed: int = 0  # records sent to the failure destination
    stopped: str = ""  # why the run ended


class Checkpoint:
    """Per shard, the sequence number of the last record handled. Written to a temporary file and
    renamed over the old one, so that a crash leaves the old checkpoint or the new one, never half."""

    def __init__(self, path: Path, stream_arn: str, stream_created: str):
        self.path = Path(path)
        self.stream = {"stream_arn": stream_arn, "stream_created": stream_created}
        self.shards: dict[str, str] = {}
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if {k: saved.get(k) for k in self.stream} != self.stream:
                raise CheckpointMismatch(
                    f"{self.path} is for stream {saved.get('stream_arn')} created {saved.get('stream_created')}, "
                    f"not {stream_arn} created {stream_created}: delete it to start afresh"
                )
            self.shards = saved["shards"]

    def position(self, shard_id: str) -> str | None:
        return self.shards.get(shard_id)

    def save(self, shard_id: str, sequence_number: str) -> None:
        self.shards[shard_id] = sequence_number
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".tmp")
        with open(partial, "w") as out:
            json.dump({**self.stream, "shards": self.shards}, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, self.path)


class FailureDestination:
    """Where records go that still fail after the last retry: a JSON-lines file or a Kinesis stream.
    Each line says which record (shard, sequence number, its data in base64) and why."""

    def __init__(self, client, file: Path | None = None, stream: str | None = None):
        if (file is None) == (stream is None):
            raise ValueError("give exactly one failure destination: a file or a stream")
        self.client, self.file, self.stream = client, file and Path(file), stream

    def send(self, failures: list[dict]) -> None:
        if self.stream:
            entries = [{"Data": json.dumps(f).encode(), "PartitionKey": f["partitionKey"]} for f in failures]
            if put_records(self.client, self.stream, entries):
                raise RuntimeError(f"failure stream {self.stream} rejected records; not checkpointing past them")
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.file, "a") as out:
            out.writelines(json.dumps(f) + "\n" for f in failures)
            out.flush()
            os.fsync(out.fileno())


class LocalContext:
    """The parts of Lambda's context object a handler may use."""

    function_name = "ride-duration-stream-local"
    memory_limit_in_mb = 1024

    def __init__(self, timeout: float = HANDLER_TIMEOUT_SECONDS):
        self.aws_request_id = str(uuid.uuid4())
        self.deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def lambda_event(records: list[dict], shard_id: str, stream_arn: str) -> dict:
    """The event Lambda hands a function for a batch of Kinesis records (get_records' dicts)."""
    _, _, _, region, account, _ = stream_arn.split(":", 5)
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": record["PartitionKey"],
                    "sequenceNumber": record["SequenceNumber"],
                    "data": base64.b64encode(record["Data"]).decode("ascii"),
                    "approximateArrivalTimestamp": record["ApproximateArrivalTimestamp"].timestamp(),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard_id}:{record['SequenceNumber']}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": f"arn:aws:iam::{account}:role/local-event-source-runner",
                "awsRegion": region,
                "eventSourceARN": stream_arn,
            }
            for record in records
        ]
    }


def failed_sequence_numbers(response, batch: list[dict]) -> set[str]:
    """The records the handler named in batchItemFailures. As in Lambda, a response that names a
    record not in the batch (or names it badly) fails the whole batch; no list means success."""
    in_batch = {r["SequenceNumber"] for r in batch}
    items = response.get("batchItemFailures") if isinstance(response, dict) else None
    if not items:
        return set()
    named = {item.get("itemIdentifier") if isinstance(item, dict) else None for item in items}
    return named if named <= in_batch else in_batch


class Runner:
    """One run over a stream: shards read round-robin, one batch per shard per round."""

    def __init__(self, handler, settings: RunnerSettings, client=None, log=print):
        import boto3

        self.handler, self.settings, self.log = handler, settings, log
        self.client = client or boto3.client("kinesis")
        summary = self.client.describe_stream_summary(StreamName=settings.stream)["StreamDescriptionSummary"]
        self.stream_arn = summary["StreamARN"]
        self.checkpoint = Checkpoint(settings.checkpoint, self.stream_arn, summary["StreamCreationTimestamp"].isoformat())
        failures_file = settings.failures_file
        if failures_file is None and settings.failure_stream is None:
            failures_file = Path(settings.checkpoint).with_suffix(".failures.jsonl")
        self.failures = FailureDestination(self.client, failures_file, settings.failure_stream)
        self.report = RunReport()

    def run(self) -> RunReport:
        s = self.settings
        iterators = {
            shard: shard_iterator(self.client, s.stream, shard, s.starting_position, self.checkpoint.position(shard))
            for shard in stream_shards(self.client, s.stream)
        }
        deadline = time.monotonic() + s.max_seconds
        idle_since = time.monotonic()
        while not self.report.stopped:
            caught_up = True
            for shard, iterator in list(iterators.items()):
                if s.max_batches is not None and self.report.invocations >= s.max_batches:
                    self.report.stopped = f"max batches ({s.max_batches})"
                    break
                try:
                    response = self.client.get_records(ShardIterator=iterator, Limit=s.batch_size)
                except self.client.exceptions.ExpiredIteratorException:  # idle over 5 minutes on real Kinesis
                    iterators[shard] = shard_iterator(self.client, s.stream, shard, s.starting_position,
                                                      self.checkpoint.position(shard))
                    continue
                if response["Records"] or response.get("MillisBehindLatest", 0) > 0:
                    caught_up = False
                if response["Records"]:
                    self.deliver(shard, response["Records"])
                if response.get("NextShardIterator"):
                    iterators[shard] = response["NextShardIterator"]
                else:
                    del iterators[shard]  # a closed shard, read to its end
            if self.report.stopped:
                break
            if not iterators:
                self.report.stopped = "every shard closed"
            elif time.monotonic() >= deadline:
                self.report.stopped = f"max seconds ({s.max_seconds:g})"
            elif not caught_up:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= s.idle_seconds:
                self.report.stopped = f"idle for {s.idle_seconds:g}s"
            else:
                time.sleep(POLL_SECONDS)
        return self.report

    def deliver(self, shard: str, records: list[dict]) -> None:
        """Hand one batch to the handler until it succeeds or its retries are used up, then checkpoint."""
        self.report.records += len(records)
        batch, attempt = records, 0
        while True:
            self.report.invocations += 1
            try:
                failed = failed_sequence_numbers(self.handler(lambda_event(batch, shard, self.stream_arn), LocalContext()), batch)
                reason = "named in batchItemFailures"
            except Exception as error:  # a function error fails the whole batch, as in Lambda
                self.log(f"{shard}: handler raised: {''.join(traceback.format_exception_only(error)).strip()}")
                failed, reason = {r["SequenceNumber"] for r in batch}, f"handler raised {type(error).__name__}: {error}"
            if not failed:
                self.save(shard, batch, batch[-1])
                return
            lowest = min(failed, key=int)
            handled = [r for r in batch if int(r["SequenceNumber"]) < int(lowest)]
            if handled:
                self.save(shard, handled, handled[-1])
            batch = [r for r in batch if int(r["SequenceNumber"]) >= int(lowest)]
            if attempt >= self.settings.max_retries:
                self.give_up(shard, [r for r in batch if r["SequenceNumber"] in failed], reason, attempt + 1)
                self.save(shard, batch, batch[-1])
                return
            attempt += 1
            self.report.redeliveries += 1
            delay = self.settings.retry_backoff * 2 ** (attempt - 1)
            self.log(f"redeliver {shard} from {lowest} ({len(batch)} records) in {delay:g}s "
                     f"(retry {attempt} of {self.settings.max_retries})")
            time.sleep(delay)

    def give_up(self, shard: str, records: list[dict], reason: str, attempts: int) -> None:
        self.failures.send([
            {
                "eventSourceARN": self.stream_arn,
                "shardId": shard,
                "sequenceNumber": r["SequenceNumber"],
                "partitionKey": r["PartitionKey"],
                "data": base64.b64encode(r["Data"]).decode("ascii"),
                "reason": reason,
                "attempts": attempts,
            }
            for r in records
        ])
        self.report.failed += len(records)

    def save(self, shard: str, records: list[dict], last: dict) -> None:
        self.checkpoint.save(shard, last["SequenceNumber"])
        self.log(f"checkpoint {shard} {last['SequenceNumber']} ({len(records)} records)")


def run(handler, settings: RunnerSettings, client=None, log=print) -> RunReport:
    """Run the handler over the stream as Lambda's event-source mapping would; see the module doc."""
    return Runner(handler, settings, client, log).run()


def load_handler(spec: str):
    """'module.function' -> the function; the module is looked up beside this file first."""
    module, _, function = spec.rpartition(".")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    return getattr(importlib.import_module(module), function)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", required=True, help="the input stream, e.g. ride_events")
    parser.add_argument("--checkpoint", required=True, type=Path, help="JSON file with each shard's position")
    parser.add_argument("--handler", default="lambda_function.lambda_handler", help="module.function to call")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--starting-position", choices=["TRIM_HORIZON", "LATEST"], default="TRIM_HORIZON",
                        help="where to start a shard that has no checkpoint yet")
    parser.add_argument("--max-retries", type=int, default=2, help="re-deliveries of a failing batch")
    parser.add_argument("--retry-backoff", type=float, default=0.2, help="seconds before the first re-delivery")
    destination = parser.add_mutually_exclusive_group()
    destination.add_argument("--failures-file", type=Path,
                             help="JSON lines of records that failed every retry (default: beside the checkpoint)")
    destination.add_argument("--failure-stream", help="a Kinesis stream for those records instead")
    parser.add_argument("--max-batches", type=int, help="stop after this many handler calls")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--idle-seconds", type=float, default=2.0, help="stop once caught up for this long")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_retries < 0:
        parser.error("--batch-size must be at least 1 and --max-retries at least 0")
    settings = RunnerSettings(
        stream=args.stream, checkpoint=args.checkpoint, batch_size=args.batch_size,
        starting_position=args.starting_position, max_retries=args.max_retries, retry_backoff=args.retry_backoff,
        failures_file=args.failures_file, failure_stream=args.failure_stream, max_batches=args.max_batches,
        max_seconds=args.max_seconds, idle_seconds=args.idle_seconds,
    )
    try:
        report = run(load_handler(args.handler), settings, log=lambda line: print(line, flush=True))
    except CheckpointMismatch as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"done: {report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
