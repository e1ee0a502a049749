"""Buffered metric updates give the same exposition as prometheus_client's own, once written."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ride_duration.metrics import MetricBuffer

BUCKETS = (1, 2, 5, 10, 60)
VALUES = [0.5, 1, 1.0001, 2, 4.99, 5, 59, 60, 61, 1e9, -3, math.nan, 0]


def exposition(registry) -> list[str]:
    """The text format without the _created timestamps, which differ between two registries."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def metrics():
    registry = CollectorRegistry()
    counter = Counter("requests", "requests", ["status"], registry=registry)
    histogram = Histogram("minutes", "minutes", buckets=BUCKETS, registry=registry)
    return registry, counter, histogram


def test_buffered_updates_once_flushed_equal_direct_ones():
    direct, counter, histogram = metrics()
    for value in VALUES:
        histogram.observe(value)
        counter.labels("200").inc()
    counter.labels("422").inc(2)

    buffered, counter, histogram = metrics()
    buffer = MetricBuffer(interval=3600)
    for value in VALUES[:3]:
        buffer.observe(histogram, value)
    buffer.observe_all(histogram, VALUES[3:])
    for _ in VALUES:
        buffer.inc(counter.labels("200"))
    buffer.inc(counter.labels("422"), 2)
    assert exposition(buffered) != exposition(direct)  # nothing written yet
    buffer.flush()
    assert exposition(buffered) == exposition(direct)
    buffer.flush()  # nothing pending: nothing changes
    assert exposition(buffered) == exposition(direct)


def test_the_writer_thread_writes_pending_updates_by_itself():
    import time

    registry, counter, _ = metrics()
    buffer = MetricBuffer(interval=0.05)
    buffer.inc(counter.labels("200"))
    deadline = time.monotonic() + 5
    while registry.get_sample_value("requests_total", {"status": "200"}) != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert registry.get_sample_value("requests_total", {"status": "200"}) == 1
