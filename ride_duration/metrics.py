"""Metric updates added up in memory and written to prometheus_client about once a second.

Under gunicorn, prometheus_client's multiprocess mode makes every counter or histogram update a locked
write to a memory-mapped file, several per request. With a `MetricBuffer` a request only appends to a
list; a background thread (one per process, started on first use, so after gunicorn forks its workers)
writes each changed value once per interval, a scrape first writes its own process's pending updates,
and a process that exits writes what it holds.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import math
import os
import threading
import time

logger = logging.getLogger(__name__)


class MetricBuffer:
    def __init__(self, interval: float = 1.0):
        self.interval = interval  # seconds between writes: the most another worker's scrape lags behind
        self._lock = threading.Lock()
        self._counts: dict = {}  # counter (a labelled child) -> amount
        self._observations: list = []  # (histogram child, value)
        self._writer_pid: int | None = None

    def inc(self, counter, amount: float = 1.0) -> None:
        with self._lock:
            self._counts[counter] = self._counts.get(counter, 0) + amount
        self._start_writer()

    def observe(self, histogram, value: float) -> None:
        with self._lock:
            self._observations.append((histogram, value))
        self._start_writer()

    def observe_all(self, histogram, values: list[float]) -> None:
        with self._lock:
            self._observations.extend((histogram, value) for value in values)
        self._start_writer()

    def flush(self) -> None:
        """Write every pending update to its metric now."""
        with self._lock:
            counts, self._counts = self._counts, {}
            observations, self._observations = self._observations, []
        for counter, amount in counts.items():
            counter.inc(amount)
        by_histogram: dict = {}
        for histogram, value in observations:
            by_histogram.setdefault(histogram, []).append(value)
        for histogram, values in by_histogram.items():
            observe_many(histogram, values)

    def _start_writer(self) -> None:
        pid = os.getpid()
        if self._writer_pid == pid:
            return
        with self._lock:
            if self._writer_pid == pid:
                return
            self._writer_pid = pid
        threading.Thread(target=self._write_every_interval, name="metric-writer", daemon=True).start()
        atexit.register(self.flush)

    def _write_every_interval(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.flush()
            except Exception:  # a full disk, say: these updates are lost, the next ones are tried again
                logger.exception("cannot write metric updates")


def observe_many(histogram, values: list[float]) -> None:
    """`histogram.observe(value)` for every value, with one write per bucket and one for the sum.

    prometheus_client's Histogram adds each value to its sum and to the first bucket whose upper bound
    holds it; this does the same additions, counted first (tests/unit/test_metrics.py holds it to
    observe's results).
    """
    bounds = histogram._upper_bounds
    in_bucket = [0] * len(bounds)
    for value in values:
        if not math.isnan(value):  # observe puts NaN in no bucket
            in_bucket[bisect.bisect_left(bounds, value)] += 1
    histogram._sum.inc(sum(values))
    for index, count in enumerate(in_bucket):
        if count:
            histogram._buckets[index].inc(count)


# The buckets of the web service's ride_duration_predicted_minutes histogram, in minutes: the served
# model's reference (below) is counted in the same ones, so that the two can be compared bucket by bucket.
PREDICTED_MINUTES_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120)
REFERENCE_KEY = "reference_predictions"  # where a logged model keeps its reference, in its MLmodel metadata


def reference_shares(predictions) -> dict[str, float]:
    """The share of `predictions` at or below each bucket's upper bound, keyed by the bound as Prometheus
    writes it in a histogram's `le` label ("1.0", ..., "+Inf"): a cumulative distribution, like the buckets."""
    values = sorted(float(value) for value in predictions if not math.isnan(value))
    if not values:
        raise ValueError("no predictions to take a reference from")
    return {label: bisect.bisect_right(values, bound) / len(values) for label, bound in bucket_bounds().items()}


def bucket_bounds() -> dict[str, float]:
    """The predicted-minutes buckets' upper bounds by their `le` label, +Inf included."""
    from prometheus_client.utils import floatToGoString

    return {floatToGoString(bound): float(bound) for bound in (*PREDICTED_MINUTES_BUCKETS, math.inf)}


def reference_of(mlmodel: dict) -> dict[str, float] | None:
    """The reference shares a model was logged with (its MLmodel file, as LoadedModel.info), or None."""
    return (mlmodel.get("metadata") or {}).get(REFERENCE_KEY)
