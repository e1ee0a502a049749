"""Kinesis, written once for the Lambda handler, the local event-source runner, the producer and
the consumer: write many records with `put_records` (chunks within Kinesis's limits, retrying only
what the stream rejected) and read every shard of a stream.

Takes a boto3 Kinesis client and imports nothing heavy, so that it costs nothing in a cold start.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

MAX_RECORDS_PER_PUT = 500  # Kinesis's limits for one put_records call
MAX_BYTES_PER_PUT = 5 * 1024 * 1024
PUT_ATTEMPTS = 5  # first try plus retries of the records the stream rejected
PUT_BACKOFF_SECONDS = 0.1  # doubled after every attempt: 0.1, 0.2, 0.4, 0.8
POLL_SECONDS = 0.2  # pause after a round of empty reads (Kinesis allows 5 reads/s per shard)


def entry_size(entry: dict) -> int:
    return len(entry["Data"]) + len(entry["PartitionKey"].encode())


def put_chunks(entries: list[dict]) -> Iterator[list[int]]:
    """Indices of entries, grouped into chunks that one put_records call accepts."""
    chunk, size = [], 0
    for index, entry in enumerate(entries):
        if chunk and (len(chunk) == MAX_RECORDS_PER_PUT or size + entry_size(entry) > MAX_BYTES_PER_PUT):
            yield chunk
            chunk, size = [], 0
        chunk.append(index)
        size += entry_size(entry)
    if chunk:
        yield chunk


def put_records(
    client,
    stream_name: str,
    entries: list[dict],
    *,
    attempts: int = PUT_ATTEMPTS,
    backoff: float = PUT_BACKOFF_SECONDS,
    sleep=time.sleep,
) -> list[int]:
    """Write entries ({"Data": bytes, "PartitionKey": str}) to the stream.

    put_records is not all-or-nothing: the stream may reject single records (throttling, internal
    errors) and say so per record. Those, and only those, are sent again with exponential backoff,
    at most `attempts` times in all. Returns the indices of the entries still rejected at the end
    (empty when everything was written), so that the caller can report them.
    """
    rejected = []
    for chunk in put_chunks(entries):
        pending = chunk
        for attempt in range(attempts):
            if attempt:
                sleep(backoff * 2 ** (attempt - 1))
            response = client.put_records(StreamName=stream_name, Records=[entries[i] for i in pending])
            if not response.get("FailedRecordCount"):
                pending = []
                break
            pending = [i for i, result in zip(pending, response["Records"]) if result.get("ErrorCode")]
        rejected.extend(pending)
    return rejected


def put_all(client, stream_name: str, entries: list[dict]) -> int:
    """put_records, for senders that need every entry on the stream: raise if it kept rejecting some."""
    rejected = put_records(client, stream_name, entries)
    if rejected:
        raise RuntimeError(f"{stream_name} rejected {len(rejected)} of {len(entries)} records after retries")
    return len(entries)


def stream_shards(client, stream_name: str) -> list[str]:
    """The ids of every shard of the stream, in the order Kinesis lists them."""
    shards, token = [], None
    while True:
        page = client.list_shards(NextToken=token) if token else client.list_shards(StreamName=stream_name)
        shards += [shard["ShardId"] for shard in page["Shards"]]
        token = page.get("NextToken")
        if not token:
            return shards


def shard_iterator(
    client, stream_name: str, shard_id: str, start: str = "TRIM_HORIZON", after_sequence_number: str | None = None
) -> str:
    """Where to read a shard from: just after a checkpoint if there is one, else `start`
    (TRIM_HORIZON = the oldest record kept, LATEST = only records that arrive from now on)."""
    if after_sequence_number is not None:
        position = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": after_sequence_number}
    elif start in ("TRIM_HORIZON", "LATEST"):
        position = {"ShardIteratorType": start}
    else:
        raise ValueError(f"starting position must be TRIM_HORIZON or LATEST, got {start!r}")
    return client.get_shard_iterator(StreamName=stream_name, ShardId=shard_id, **position)["ShardIterator"]


def read_stream(
    client,
    stream_name: str,
    *,
    start: str = "TRIM_HORIZON",
    max_records: int | None = None,
    max_seconds: float = 60.0,
    idle_seconds: float = 1.0,
    batch_size: int = 1000,
) -> Iterator[dict]:
    """Yield the records of every shard (get_records' dicts: Data, PartitionKey, SequenceNumber...).

    Stops after max_records, after max_seconds, or once every shard has been caught up (nothing
    new and nothing behind) for idle_seconds: a stream never ends by itself.
    """
    deadline = time.monotonic() + max_seconds
    iterators = {
        shard: shard_iterator(client, stream_name, shard, start) for shard in stream_shards(client, stream_name)
    }
    seen = 0
    idle_since = time.monotonic()
    while iterators and time.monotonic() < deadline:
        caught_up = True
        for shard, iterator in list(iterators.items()):
            response = client.get_records(ShardIterator=iterator, Limit=batch_size)
            for record in response["Records"]:
                yield record
                seen += 1
                if max_records is not None and seen >= max_records:
                    return
            if response["Records"] or response.get("MillisBehindLatest", 0) > 0:
                caught_up = False
            if response.get("NextShardIterator"):
                iterators[shard] = response["NextShardIterator"]
            else:
                del iterators[shard]  # a closed shard, read to its end
        if not caught_up:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= idle_seconds:
            return
        else:
            time.sleep(POLL_SECONDS)
