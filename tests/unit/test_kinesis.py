"""ride_duration.kinesis.put_records on a stand-in client: Kinesis's limits per call, and only the
records the stream rejected sent again, a bounded number of times."""

from __future__ import annotations

from collections import Counter

from ride_duration.kinesis import MAX_BYTES_PER_PUT, MAX_RECORDS_PER_PUT, put_records
from tests.kinesis_stand_in import StandInKinesis


def numbered(n: int) -> list[dict]:
    return [{"Data": f"record {i};".encode(), "PartitionKey": str(i)} for i in range(n)]


def test_put_records_chunks_and_retries_only_what_was_rejected():
    client = StandInKinesis(refuse={b"record 7;": 2, b"record 700;": 1})
    pauses = []
    assert put_records(client, "s", numbered(1200), sleep=pauses.append) == []
    assert [len(datas) for _, datas in client.calls] == [500, 1, 1, 500, 1, 200]
    assert client.calls[1][1] == client.calls[2][1] == [b"record 7;"] and client.calls[4][1] == [b"record 700;"]
    assert pauses == [0.1, 0.2, 0.1]
    assert Counter(d for _, datas in client.calls for d in datas)[b"record 7;"] == 3
    assert sorted(client.accepted) == sorted(e["Data"] for e in numbered(1200))


def test_put_records_gives_up_after_its_attempts_and_says_which():
    client = StandInKinesis(refuse={b"record 3;": None})
    assert put_records(client, "s", numbered(10), attempts=4, sleep=lambda s: None) == [3]
    assert len(client.calls) == 4


def test_put_records_respects_the_request_size_limit():
    big = b"x" * (1024 * 1024 - 10)
    client = StandInKinesis()
    put_records(client, "s", [{"Data": big, "PartitionKey": str(i)} for i in range(11)])
    assert sum(len(datas) for _, datas in client.calls) == 11
    assert all(len(d) <= MAX_RECORDS_PER_PUT and sum(map(len, d)) <= MAX_BYTES_PER_PUT for _, d in client.calls)
    assert len(client.calls) == 3
