"""The local event-source runner: what AWS Lambda's Kinesis event-source mapping does for a
deployed function, done in-process (moto_server cannot run Lambda code here: that needs Docker).

    MODEL_URI=... PREDICTIONS_STREAM_NAME=ride_predictions \\
        python streaming/runner.py --stream ride_events --checkpoint runner-checkpoint.json
    python streaming/runner.py replay --failures runner-checkpoint.failures.jsonl --stream ride_events

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

The handler runs in a child process of its own, as a function runs in its Lambda container: the
container stays warm from batch to batch, and an invocation that runs past the function's timeout
(--timeout) is stopped as Lambda stops it. The child is killed, the invocation fails ("timed out")
and, like any invocation error, the batch is invoked again in a fresh (cold) child; nothing of it
is checkpointed. A call still running when --max-seconds is up is stopped the same way and the run
ends (exit code 3): its batch is delivered again by the next run.

Unlike Lambda, which skips a batch once its invocation errors have used up MaximumRetryAttempts,
it stops: a handler that raises (model not loadable, output stream missing, endpoint down) makes
it invoke the same batch again with back-off (--error-retries, --error-backoff), never
checkpointing past it nor sending it to the failure destination; when those retries are used up
the runner stops, and a restart resumes from the checkpoint. Nothing is skipped without a person
deciding.

`replay` puts the records of a failure file back on a stream (after fixing what made them fail),
with their partition keys; the replayed lines move to FILE.replayed.

Exit codes: 0 every record read was handled; 2 bad arguments; 3 stopped by an infrastructure
failure (the handler kept raising or timing out, or cannot be imported, a stream is missing, the
endpoint is down, the checkpoint is another stream's) or by --max-seconds during a call, nothing
checkpointed past it; 4 the run ended but some records
went to the failure destination. (1 is Python's own: the runner crashed, see the traceback.)
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import multiprocessing
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

from ride_duration.files import atomic_path
from ride_duration.kinesis import POLL_SECONDS, put_records, shard_iterator, stream_shards

HANDLER_TIMEOUT_SECONDS = 60.0  # the function's timeout: what the deployed function has (streaming/deploy.py)
MAX_ERROR_BACKOFF_SECONDS = 30.0  # the longest pause between invocations of a batch whose handler raised
EXIT_OK, EXIT_USAGE, EXIT_STOPPED, EXIT_RECORDS_FAILED = 0, 2, 3, 4


def counted(n: int) -> str:
    return f"{n} record" if n == 1 else f"{n} records"


class CheckpointMismatch(RuntimeError):
    """The checkpoint file belongs to another stream (or an older stream of the same name)."""


class InvocationFailed(RuntimeError):
    """The handler kept failing on one batch (it raised, or answered with records not in the batch):
    something it depends on is down. Nothing of that batch was checkpointed or sent anywhere."""


class DestinationFailed(RuntimeError):
    """The failure stream refused records: they are not checkpointed past."""


class HandlerTimedOut(RuntimeError):
    """An invocation ran past the function's timeout and was stopped (its child process killed)."""


class RunTimeUp(RuntimeError):
    """--max-seconds ran out while the handler was handling a batch: the call was stopped, and the batch
    is not checkpointed (the next run delivers it again)."""


class HandlerNotLoaded(RuntimeError):
    """The handler's module cannot be imported (Lambda's Runtime.ImportModuleError)."""


class BadResponse(ValueError):
    """A handler response whose batchItemFailures name records that are not in the batch."""


@dataclass
class RunnerSettings:
    stream: str
    checkpoint: Path
    batch_size: int = 100  # Lambda's default for Kinesis
    starting_position: str = "TRIM_HORIZON"
    max_retries: int = 2  # Lambda's MaximumRetryAttempts: re-deliveries after the first attempt
    retry_backoff: float = 0.2  # seconds before the first re-delivery, doubled after each one
    error_retries: int = 4  # invocations of a batch again after the handler raised, before stopping
    error_backoff: float = 1.0  # seconds before the first of those, doubled after each one
    failures_file: Path | None = None
    failure_stream: str | None = None
    max_batches: int | None = None
    max_seconds: float = 300.0
    idle_seconds: float = 2.0
    timeout: float = HANDLER_TIMEOUT_SECONDS  # the function's timeout, seconds per invocation


@dataclass
class RunReport:
    records: int = 0  # records read from the stream and handed to the handler
    invocations: int = 0  # handler calls, re-deliveries included
    redeliveries: int = 0  # re-deliveries of records named in batchItemFailures
    error_retries: int = 0  # invocations again after the handler raised or timed out
    timeouts: int = 0  # invocations stopped at the function's timeout
    failed: int = 0  # records sent to the failure destination
    stopped: str = ""  # why the run ended

    def summary(self) -> str:
        return (
            f"{counted(self.records)} read, {self.invocations} handler calls ({self.redeliveries} re-deliveries, "
            f"{self.error_retries} retries after errors, {self.timeouts} timed out), "
            f"{self.failed} to the failure destination; "
            f"stopped: {self.stopped}"
        )


class Checkpoint:
    """Per shard, the sequence number of the last record handled. Written atomically (and synced), so
    that a crash leaves the old checkpoint or the new one, never half."""

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
        with atomic_path(self.path) as partial, open(partial, "w") as out:
            json.dump({**self.stream, "shards": self.shards}, out, indent=1)
            out.flush()
            os.fsync(out.fileno())


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
                raise DestinationFailed(f"failure stream {self.stream} rejected records; not checkpointing past them")
            return
        append_lines(self.file, [json.dumps(f) for f in failures])


def append_lines(path: Path, lines: list[str]) -> None:
    """Append lines to a file and fsync, so that what was written survives a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.writelines(line + "\n" for line in lines)
        out.flush()
        os.fsync(out.fileno())


def replace_lines(path: Path, lines: list[str]) -> None:
    """Make the file hold exactly these lines (removed when there are none), atomically."""
    if not lines:
        path.unlink(missing_ok=True)
        return
    with atomic_path(path) as partial:
        append_lines(partial, lines)


class LocalContext:
    """The parts of Lambda's context object a handler may use."""

    function_name = "ride-duration-stream-local"
    memory_limit_in_mb = 1024

    def __init__(self, timeout: float = HANDLER_TIMEOUT_SECONDS):
        self.aws_request_id = str(uuid.uuid4())
        self.deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def handler_worker(spec: str, connection) -> None:
    """The child process a HandlerProcess runs: import the handler, say whether that worked, then handle
    one (event, timeout) at a time, answering ("ok", response) or ("error", "Type: message")."""
    try:
        handler = load_handler(spec)
    except BaseException as error:
        connection.send(("error", f"cannot import the handler {spec}: {type(error).__name__}: {error}"))
        return
    connection.send(("ready", None))
    while True:
        try:
            event, timeout = connection.recv()
        except EOFError:  # the runner is gone
            return
        try:
            response = handler(event, LocalContext(timeout))
            connection.send(("ok", response))
        except Exception as error:
            connection.send(("error", "".join(traceback.format_exception_only(error)).strip()))


class HandlerProcess:
    """A handler ('module.function') run in a child process that can be stopped: a local Lambda container.

    Called like the handler (event, context); context.get_remaining_time_in_millis() is how long the call
    may take. A call past it kills the child and raises HandlerTimedOut; the next call starts a fresh child
    (a cold start, as Lambda's next invocation after a timeout is). A handler that raises raises here too,
    with its message (the child keeps its warm state).
    """

    def __init__(self, spec: str, start_timeout: float = HANDLER_TIMEOUT_SECONDS):
        self.spec, self.start_timeout = spec, start_timeout
        self.process = self.connection = None

    def start(self) -> None:
        """Start the child and wait (at most start_timeout) until it has imported the handler."""
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no locks or threads of this one
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=handler_worker, args=(self.spec, child_end), daemon=True)
        self.process.start()
        child_end.close()
        status, message = self.receive(self.start_timeout, "importing the handler")
        if status != "ready":
            self.stop()
            raise HandlerNotLoaded(message)

    def __call__(self, event, context):
        if self.process is None or not self.process.is_alive():
            self.start()
        timeout = context.get_remaining_time_in_millis() / 1000
        self.connection.send((event, timeout))
        status, answer = self.receive(timeout, "handling the batch")
        if status == "error":
            raise RuntimeError(answer)
        return answer

    def receive(self, timeout: float, doing: str):
        """The child's next message; HandlerTimedOut (the child killed) if none comes within timeout."""
        try:
            if self.connection.poll(max(timeout, 0)):
                return self.connection.recv()
        except (EOFError, OSError):
            self.process.join(5)
            code = self.process.exitcode
            self.stop()
            raise RuntimeError(f"the handler's process died while {doing} (exit code {code})") from None
        self.stop()
        raise HandlerTimedOut(f"Task timed out after {timeout:.2f} seconds ({doing}); its process was stopped")

    def stop(self) -> None:
        """Kill the child, if there is one, and wait for it to be gone."""
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.connection.close()
        self.process = self.connection = None


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
    """The records the handler named in batchItemFailures; no list means success. A response that
    names a record not in the batch (or names it badly) is BadResponse: Lambda fails the whole
    batch then, and this runner treats it like a handler that raised."""
    in_batch = {r["SequenceNumber"] for r in batch}
    items = response.get("batchItemFailures") if isinstance(response, dict) else None
    if not items:
        return set()
    named = {item.get("itemIdentifier") if isinstance(item, dict) else None for item in items}
    if not named <= in_batch:
        strays = sorted(map(str, named - in_batch))[:3]
        raise BadResponse(f"batchItemFailures names records that are not in the batch: {', '.join(strays)}")
    return named


class Runner:
    """One run over a stream: shards read round-robin, one batch per shard per round.

    handler: a HandlerProcess (what the command runs: an invocation past settings.timeout is stopped), or
    any callable (event, context), called in this process, where nothing can stop it (scripted handlers).
    """

    def __init__(self, handler, settings: RunnerSettings, client=None, log=print):
        from ride_duration import aws

        self.handler, self.settings, self.log = handler, settings, log
        self.client = client or aws.client("kinesis")
        summary = self.client.describe_stream_summary(StreamName=settings.stream)["StreamDescriptionSummary"]
        self.stream_arn = summary["StreamARN"]
        self.checkpoint = Checkpoint(
            settings.checkpoint, self.stream_arn, summary["StreamCreationTimestamp"].isoformat()
        )
        failures_file = settings.failures_file
        if failures_file is None and settings.failure_stream is None:
            failures_file = Path(settings.checkpoint).with_suffix(".failures.jsonl")
        self.failures = FailureDestination(self.client, failures_file, settings.failure_stream)
        self.report = RunReport()
        self.deadline = time.monotonic() + settings.max_seconds

    def run(self) -> RunReport:
        s = self.settings
        iterators = {
            shard: shard_iterator(self.client, s.stream, shard, s.starting_position, self.checkpoint.position(shard))
            for shard in stream_shards(self.client, s.stream)
        }
        deadline = self.deadline = time.monotonic() + s.max_seconds
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
                    iterators[shard] = shard_iterator(
                        self.client, s.stream, shard, s.starting_position, self.checkpoint.position(shard)
                    )
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
            failed = self.invoke(shard, batch)
            if not failed:
                self.save(shard, batch, batch[-1])
                return
            lowest = min(failed, key=int)
            handled = [r for r in batch if int(r["SequenceNumber"]) < int(lowest)]
            if handled:
                self.save(shard, handled, handled[-1])
            batch = [r for r in batch if int(r["SequenceNumber"]) >= int(lowest)]
            if attempt >= self.settings.max_retries:
                self.give_up(shard, [r for r in batch if r["SequenceNumber"] in failed], attempt + 1)
                self.save(shard, batch, batch[-1])
                return
            attempt += 1
            self.report.redeliveries += 1
            delay = self.settings.retry_backoff * 2 ** (attempt - 1)
            self.log(
                f"redeliver {shard} from {lowest} ({counted(len(batch))}) in {delay:g}s "
                f"(retry {attempt} of {self.settings.max_retries})"
            )
            time.sleep(delay)

    def invoke(self, shard: str, batch: list[dict]) -> set[str]:
        """The sequence numbers the handler names in batchItemFailures for this batch.

        A handler that raises (or answers nonsense) says nothing about single records: its model,
        its output stream or an endpoint is failing. The same batch is invoked again after a
        back-off; after --error-retries InvocationFailed stops the run, with nothing checkpointed
        past the batch and nothing sent to the failure destination."""
        s = self.settings
        for retry in range(s.error_retries + 1):
            self.report.invocations += 1
            time_left = self.deadline - time.monotonic()
            context = LocalContext(min(s.timeout, max(time_left, 0)))
            try:
                return failed_sequence_numbers(
                    self.handler(lambda_event(batch, shard, self.stream_arn), context), batch
                )
            except HandlerTimedOut as error:
                if time_left < s.timeout:
                    self.report.stopped = f"max seconds ({s.max_seconds:g}) during a handler call"
                    raise RunTimeUp(
                        f"{shard}: --max-seconds ({s.max_seconds:g}) ran out while the handler was handling the "
                        f"batch from sequence number {batch[0]['SequenceNumber']} ({counted(len(batch))}): the "
                        f"call was stopped and the batch is not checkpointed; the next run delivers it again"
                    ) from error
                self.report.timeouts += 1
                problem = f"{type(error).__name__}: {error}"
            except Exception as error:
                problem = "".join(traceback.format_exception_only(error)).strip()
            if retry == s.error_retries:
                break
            delay = min(s.error_backoff * 2**retry, MAX_ERROR_BACKOFF_SECONDS)
            self.log(
                f"{shard}: invocation error: {problem}; invoking the batch again in {delay:g}s "
                f"(retry {retry + 1} of {s.error_retries})"
            )
            self.report.error_retries += 1
            time.sleep(delay)
        self.report.stopped = "invocation error"
        raise InvocationFailed(
            f"{shard}: the handler failed {s.error_retries + 1} times on the batch from sequence number "
            f"{batch[0]['SequenceNumber']} ({counted(len(batch))}): {problem}\n"
            f"Nothing of that batch was checkpointed or sent to the failure destination: fix the cause and "
            f"run again to resume from the checkpoint."
        )

    def give_up(self, shard: str, records: list[dict], attempts: int) -> None:
        self.failures.send(
            [
                {
                    "eventSourceARN": self.stream_arn,
                    "shardId": shard,
                    "sequenceNumber": r["SequenceNumber"],
                    "partitionKey": r["PartitionKey"],
                    "data": base64.b64encode(r["Data"]).decode("ascii"),
                    "reason": "named in batchItemFailures",
                    "attempts": attempts,
                }
                for r in records
            ]
        )
        self.report.failed += len(records)

    def save(self, shard: str, records: list[dict], last: dict) -> None:
        self.checkpoint.save(shard, last["SequenceNumber"])
        self.log(f"checkpoint {shard} {last['SequenceNumber']} ({counted(len(records))})")


def run(handler, settings: RunnerSettings, client=None, log=print) -> RunReport:
    """Run the handler over the stream as Lambda's event-source mapping would; see the module doc."""
    return Runner(handler, settings, client, log).run()


def replay(client, failures_file: Path, stream: str) -> tuple[int, int]:
    """Put the records of a failure file back on a stream, each with its partition key, and return
    (replayed, still rejected). Replayed lines move to FILE.replayed; lines the stream kept rejecting
    stay in FILE. A crash in between replays some records twice, never none: ride_id tells them apart."""
    failures_file = Path(failures_file)
    lines = [line for line in failures_file.read_text().splitlines() if line.strip()]
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            failure = json.loads(line)
            entries.append(
                {"Data": base64.b64decode(failure["data"], validate=True), "PartitionKey": failure["partitionKey"]}
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{failures_file}:{number} is not a failure record of this runner: {error}") from error
    rejected = set(put_records(client, stream, entries))
    append_lines(
        failures_file.with_name(failures_file.name + ".replayed"),
        [line for index, line in enumerate(lines) if index not in rejected],
    )
    replace_lines(failures_file, [lines[index] for index in sorted(rejected)])
    return len(lines) - len(rejected), len(rejected)


def replay_main(argv) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from ride_duration import aws

    parser = argparse.ArgumentParser(prog="runner.py replay", description=replay.__doc__)
    parser.add_argument("--failures", required=True, type=Path, help="a failure file the runner wrote")
    parser.add_argument("--stream", required=True, help="the stream to put the records on, e.g. ride_events")
    args = parser.parse_args(argv)
    if not args.failures.exists():
        print(f"nothing to replay: {args.failures} does not exist", flush=True)
        return EXIT_OK
    try:
        replayed, rejected = replay(aws.client("kinesis"), args.failures, args.stream)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (BotoCoreError, ClientError) as error:
        print(
            f"error: could not put the records on {args.stream}, {args.failures} is unchanged: {error}", file=sys.stderr
        )
        return EXIT_STOPPED
    print(
        f"replayed {counted(replayed)} from {args.failures} to {args.stream} (moved to {args.failures.name}.replayed)",
        flush=True,
    )
    if rejected:
        print(f"error: {args.stream} kept rejecting {counted(rejected)}; they stay in {args.failures}", file=sys.stderr)
        return EXIT_STOPPED
    return EXIT_OK


def load_handler(spec: str):
    """'module.function' -> the function; the module is looked up beside this file first."""
    module, _, function = spec.rpartition(".")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    return getattr(importlib.import_module(module), function)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["replay"]:
        return replay_main(argv[1:])
    from botocore.exceptions import BotoCoreError, ClientError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", required=True, help="the input stream, e.g. ride_events")
    parser.add_argument("--checkpoint", required=True, type=Path, help="JSON file with each shard's position")
    parser.add_argument("--handler", default="lambda_function.lambda_handler", help="module.function to call")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--starting-position",
        choices=["TRIM_HORIZON", "LATEST"],
        default="TRIM_HORIZON",
        help="where to start a shard that has no checkpoint yet",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=2,
        help="re-deliveries of records named in batchItemFailures before they go to the failure destination",
    )
    parser.add_argument("--retry-backoff", type=float, default=0.2, help="seconds before the first re-delivery")
    parser.add_argument(
        "--error-retries",
        type=int,
        default=4,
        help="invocations of a batch again after the handler raised, before the runner stops",
    )
    parser.add_argument(
        "--error-backoff",
        type=float,
        default=1.0,
        help=f"seconds before the first of those, doubled each time (at most {MAX_ERROR_BACKOFF_SECONDS:g})",
    )
    destination = parser.add_mutually_exclusive_group()
    destination.add_argument(
        "--failures-file",
        type=Path,
        help="JSON lines of records that failed every retry (default: beside the checkpoint)",
    )
    destination.add_argument("--failure-stream", help="a Kinesis stream for those records instead")
    parser.add_argument("--max-batches", type=int, help="stop after this many handler calls")
    parser.add_argument(
        "--max-seconds", type=float, default=300.0, help="stop after this long, stopping a handler call under way"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=HANDLER_TIMEOUT_SECONDS,
        help=f"the function's timeout: seconds an invocation may take before it is stopped and counts as an "
        f"error (default {HANDLER_TIMEOUT_SECONDS:g})",
    )
    parser.add_argument("--idle-seconds", type=float, default=2.0, help="stop once caught up for this long")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_retries < 0 or args.error_retries < 0:
        parser.error("--batch-size must be at least 1, --max-retries and --error-retries at least 0")
    if not args.timeout > 0 or not args.max_seconds > 0:
        parser.error("--timeout and --max-seconds must be more than 0")
    settings = RunnerSettings(
        stream=args.stream,
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        starting_position=args.starting_position,
        max_retries=args.max_retries,
        retry_backoff=args.retry_backoff,
        error_retries=args.error_retries,
        error_backoff=args.error_backoff,
        failures_file=args.failures_file,
        failure_stream=args.failure_stream,
        max_batches=args.max_batches,
        max_seconds=args.max_seconds,
        idle_seconds=args.idle_seconds,
        timeout=args.timeout,
    )
    handler = HandlerProcess(args.handler, start_timeout=args.timeout)
    try:
        handler.start()  # Lambda's Runtime.ImportModuleError: an invocation error, not the records' fault
        local_runner = Runner(handler, settings, log=lambda line: print(line, flush=True))
        report = local_runner.run()
    except (
        HandlerNotLoaded,
        CheckpointMismatch,
        InvocationFailed,
        DestinationFailed,
        RunTimeUp,
        BotoCoreError,
        ClientError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_STOPPED
    finally:
        handler.stop()
    print(f"done: {report.summary()}", flush=True)
    if report.failed:
        print(
            f"{counted(report.failed)} failed every retry: see {settings.failure_stream or local_runner.failures.file}; "
            f"`runner.py replay` puts them back on the stream once their cause is fixed",
            flush=True,
        )
        return EXIT_RECORDS_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
