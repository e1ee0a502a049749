"""The stream follows @production while it moves: 10,000 rides produced over about 25 seconds through the
local event-source runner and the handler on a real moto_server, with a real MLflow server holding two
registered versions that predict differently. The alias moves to version 2 mid-stream, and back to version 1
later: nothing is lost, every prediction is the one of the version it names, and every ride sent once the
move had time to be noticed (the poll interval plus a load) is predicted by the version moved to."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter

import boto3
import numpy as np

from ride_duration.model import PRODUCTION_ALIAS, REGISTERED_MODEL
from tests.helpers import move_alias
from tests.integration.streaming_helpers import (
    expected_durations,
    lambda_function,
    new_stream,
    producer,
    quick_settings,
    read_predictions,
    runner,
)

PRODUCTION_URI = f"models:/{REGISTERED_MODEL}@{PRODUCTION_ALIAS}"
RECORDS = 10_000
CHUNK = 50  # records per put
CHUNK_SECONDS = 0.12  # between puts: about 400 records a second, the whole stream in about 25 s
PROMOTE_AT, ROLLBACK_AT = 2_000, 6_000  # records sent before the alias moves to version 2, and back to 1
POLL_SECONDS = 2
LOAD_SLACK_SECONDS = 4.0  # for the batch in hand, asking the server and loading the version moved to
CATCH_UP_SECONDS = 60  # at most, for the runner to handle what was sent before the rollback


def made_up_rides(n: int) -> list[dict]:
    """Rides long enough that the two versions' predictions differ by minutes."""
    generator = np.random.default_rng(11)
    return [
        {
            "PULocationID": int(generator.integers(1, 266)),
            "DOLocationID": int(generator.integers(1, 266)),
            "trip_distance": round(float(generator.uniform(0.5, 20.0)), 2),
        }
        for _ in range(n)
    ]


def test_the_stream_follows_the_alias_as_it_moves_and_moves_back(two_versions, moto_url, tmp_path):
    settings, (first, second) = two_versions
    move_alias(settings, first["number"])
    rides = made_up_rides(RECORDS)
    events = [{"ride": ride, "ride_id": f"ride-{i}"} for i, ride in enumerate(rides)]
    expected = {v["model_id"]: expected_durations(v["pipeline"], rides) for v in (first, second)}
    assert min(abs(a - b) for a, b in zip(*expected.values())) > 0.5  # the versions tell every ride apart

    rides_in, predictions_out = new_stream(shards=2), new_stream()
    container = lambda_function.Container.from_settings(
        dataclasses.replace(
            settings,
            model_uri=PRODUCTION_URI,
            model_poll_seconds=POLL_SECONDS,
            predictions_stream_name=predictions_out,
            aws_endpoint_url=moto_url,
            dry_run=False,
        )
    )
    handled, switches = [0], []  # records handled; (when, version) each time a batch is predicted by another

    def handler(event, context):
        response = container.handle(event, context)
        handled[0] += len(event["Records"])
        version = container.service.current.version
        if not switches or switches[-1][1] != version:
            switches.append((time.time(), version))
        return response

    outcome = {}

    def run():
        try:
            outcome["report"] = runner.run(
                handler, quick_settings(rides_in, tmp_path, max_seconds=240, idle_seconds=5), log=lambda line: None
            )
        except Exception as error:  # the assertion below shows it
            outcome["error"] = error

    thread = threading.Thread(target=run, name="event-source-runner")
    thread.start()
    kinesis = boto3.client("kinesis")
    sent_at, moved = [], {}
    try:
        for start in range(0, RECORDS, CHUNK):
            if start == PROMOTE_AT:
                move_alias(settings, second["number"])
                moved["promoted"] = time.time()
            if start == ROLLBACK_AT:
                deadline = time.monotonic() + CATCH_UP_SECONDS
                while handled[0] < ROLLBACK_AT and time.monotonic() < deadline and thread.is_alive():
                    time.sleep(0.05)
                assert handled[0] >= ROLLBACK_AT, f"the runner handled {handled[0]} of {ROLLBACK_AT} records"
                move_alias(settings, first["number"])
                moved["rolled back"] = time.time()
            put = time.time()
            producer.send(kinesis, rides_in, events[start : start + CHUNK])
            sent_at += [put] * len(events[start : start + CHUNK])
            time.sleep(max(0.0, CHUNK_SECONDS - (time.time() - put)))
    finally:
        thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert report.records == RECORDS and report.failed == 0, report.summary()

    predictions = read_predictions(predictions_out)
    by_ride = {p["prediction"]["ride_id"]: p for p in predictions}
    lost = [e["ride_id"] for e in events if e["ride_id"] not in by_ride]
    assert lost == [], f"{len(lost)} rides without a prediction, e.g. {lost[:5]}"
    assert max(Counter(p["prediction"]["ride_id"] for p in predictions).values()) == 1
    wrong = [
        (i, p["version"], p["prediction"]["ride_duration"])
        for i, p in ((int(e["ride_id"].split("-")[1]), by_ride[e["ride_id"]]) for e in events)
        if p["version"] not in expected or abs(p["prediction"]["ride_duration"] - expected[p["version"]][i]) > 1e-9
    ]
    assert wrong == [], f"{len(wrong)} predictions not those of the version they name, e.g. {wrong[:3]}"

    noticed = POLL_SECONDS + LOAD_SLACK_SECONDS
    promoted, rolled_back = moved["promoted"], moved["rolled back"]
    must_be = {  # the version each ride sent once a move had had time to be noticed must be predicted by
        second["model_id"]: [i for i, t in enumerate(sent_at) if promoted + noticed <= t < rolled_back],
        first["model_id"]: [i for i, t in enumerate(sent_at) if t >= rolled_back + noticed],
    }
    assert min(len(indices) for indices in must_be.values()) >= 500, {v: len(r) for v, r in must_be.items()}
    late = [(i, v) for v, indices in must_be.items() for i in indices if by_ride[f"ride-{i}"]["version"] != v]
    assert late == [], f"{len(late)} rides predicted by the version the alias had left, e.g. {late[:3]}"
    assert [v for _, v in switches] == [first["model_id"], second["model_id"], first["model_id"]]
    assert container.service.failed_polls == 0, container.service.last_poll

    to_second = switches[1][0] - moved["promoted"]
    to_first = switches[2][0] - moved["rolled back"]
    per_version = Counter(p["version"] for p in predictions)
    print(
        f"\n{RECORDS} rides, {len(lost)} lost; promotion followed in {to_second:.2f}s, rollback in {to_first:.2f}s "
        f"(poll interval {POLL_SECONDS}s); predictions by version 1: {per_version[first['model_id']]}, "
        f"by version 2: {per_version[second['model_id']]}; rides that had to be by version 2: "
        f"{len(must_be[second['model_id']])}, by version 1 after the rollback: {len(must_be[first['model_id']])}"
    )
    assert to_second <= noticed and to_first <= noticed
