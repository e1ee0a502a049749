"""A stand-in for boto3's Kinesis client in unit tests: put_records in memory, recording every call,
rejecting chosen entries (as a throttled shard does) or raising (as a missing stream does), and the
Lambda events the local runner would build, without a stream."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from ride_duration.settings import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "streaming"))

import runner

SHARD = "shardId-000000000000"
STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/ride_events"


class StandInKinesis:
    """put_records that rejects the entries whose Data contains a key of `refuse`, as many times as its
    value says (None: always), or raises `error`. `calls` holds (stream, [Data, ...]) of every call,
    `accepted` each Data the stream took, in order."""

    def __init__(self, refuse: dict[bytes, int | None] | None = None, error: Exception | None = None):
        self.refuse, self.error = dict(refuse or {}), error
        self.refused: dict[bytes, int] = {}
        self.calls: list[tuple[str, list[bytes]]] = []
        self.accepted: list[bytes] = []

    def put_records(self, StreamName, Records):  # boto3's argument names
        if self.error is not None:
            raise self.error
        self.calls.append((StreamName, [r["Data"] for r in Records]))
        results = []
        for record in Records:
            if self.refuses(record["Data"]):
                results.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"})
            else:
                self.accepted.append(record["Data"])
                results.append({"SequenceNumber": str(len(self.accepted)), "ShardId": SHARD})
        return {"FailedRecordCount": sum("ErrorCode" in r for r in results), "Records": results}

    def refuses(self, data: bytes) -> bool:
        for part, times in self.refuse.items():
            if part in data:
                self.refused[data] = self.refused.get(data, 0) + 1
                return times is None or self.refused[data] <= times
        return False


def fake_records(datas: list[bytes], first_sequence_number: int = 1000) -> list[dict]:
    """Records as get_records returns them."""
    now = datetime.now(UTC)
    return [
        {
            "Data": data,
            "PartitionKey": f"key-{i}",
            "SequenceNumber": str(first_sequence_number + i),
            "ApproximateArrivalTimestamp": now,
        }
        for i, data in enumerate(datas)
    ]


def kinesis_event(datas: list[bytes], first_sequence_number: int = 1000) -> dict:
    """The Lambda event the local runner hands a handler for records with these data."""
    return runner.lambda_event(fake_records(datas, first_sequence_number), SHARD, STREAM_ARN)
