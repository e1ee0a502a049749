"""The Lambda handler (streaming/lambda_function.py, exported from notebook 04) as a Kinesis-records
adapter around the serving core: containers built with their own settings, a stand-in model (or a stand-in
registry whose @production moves) and a stand-in Kinesis client; no stream, no tracking server."""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
from functools import partial

import pytest

from ride_duration.features import ride_features
from ride_duration.kinesis import put_records
from ride_duration.model import ModelLoadError
from ride_duration.serving import ModelService
from ride_duration.settings import Settings
from tests.helpers import Clock, StandInRegistry, stand_in_model
from tests.kinesis_stand_in import StandInKinesis, kinesis_event

lambda_function = importlib.import_module("lambda_function")  # tests.kinesis_stand_in put streaming/ on the path

GOOD_RIDES = [
    ({"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, 256),
    ({"PULocationID": 74, "DOLocationID": 75, "trip_distance": 0.8}, "2021/01_17"),
    ({"PULocationID": 299, "DOLocationID": 1, "trip_distance": 12.0}, "never-seen-pair"),
]
A_RIDE = {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.0}
NOT_BASE64 = object()  # stands for a record whose data is not base64 at all
# What makes a record poison, and the words its rejection must say.
POISON = {
    "not base64": (NOT_BASE64, "not base64"),
    "not JSON": (b"ride 42 from 130 to 205", "not JSON"),
    "not UTF-8": (b'{"ride": "\xff"}', "not JSON"),
    "a JSON list": (b"[1, 2]", "not a ride event"),
    "no ride_id": (json.dumps({"ride": A_RIDE}).encode(), "not a ride event"),
    "no ride": (json.dumps({"ride_id": 7}).encode(), "not a ride event"),
    "ride_id null": (json.dumps({"ride": A_RIDE, "ride_id": None}).encode(), "ride_id must be"),
    "ride_id bool": (json.dumps({"ride": A_RIDE, "ride_id": True}).encode(), "ride_id must be"),
    "ride_id too long": (json.dumps({"ride": A_RIDE, "ride_id": "x" * 257}).encode(), "ride_id must be"),
    "integer ride_id too long": (json.dumps({"ride": A_RIDE, "ride_id": 10**300}).encode(), "ride_id must be"),
    "location as text": (
        json.dumps({"ride": {**A_RIDE, "PULocationID": "130"}, "ride_id": 1}).encode(),
        "bad ride: PULocationID",
    ),
    "no distance": (json.dumps({"ride": {"PULocationID": 1, "DOLocationID": 2}, "ride_id": 2}).encode(), "missing"),
    "negative distance": (
        json.dumps({"ride": {**A_RIDE, "trip_distance": -1}, "ride_id": 3}).encode(),
        "bad ride: trip_distance",
    ),
    "NaN distance": (
        b'{"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": NaN}, "ride_id": 4}',
        "bad ride: trip_distance",
    ),
    "extra field": (json.dumps({"ride": {**A_RIDE, "tip": 2}, "ride_id": 5}).encode(), "unknown field"),
}


@pytest.fixture(scope="module")
def model():
    return stand_in_model("m-one")


def ride_event(ride: dict, ride_id) -> bytes:
    return json.dumps({"ride": ride, "ride_id": ride_id}).encode()


def event_of(datas: list, first_sequence_number: int = 1000) -> dict:
    """A Lambda Kinesis event; NOT_BASE64 in datas becomes a record whose data is not base64."""
    event = kinesis_event([b"" if d is NOT_BASE64 else d for d in datas], first_sequence_number)
    for record, data in zip(event["Records"], datas):
        if data is NOT_BASE64:
            record["kinesis"]["data"] = "this is *not* base64!"
    return event


def sequence_numbers(event: dict) -> list[str]:
    return [r["kinesis"]["sequenceNumber"] for r in event["Records"]]


def make_container(model, kinesis=None, **settings) -> lambda_function.Container:
    """A warm container serving `model`, writing to `kinesis` (a stand-in unless given)."""
    return lambda_function.Container(
        dataclasses.replace(Settings(), predictions_stream_name="predictions", **settings),
        ModelService.for_model(model),
        StandInKinesis() if kinesis is None else kinesis,
    )


def expected_duration(model, ride: dict) -> float:
    return float(model.pipeline.predict([ride_features(ride)])[0])


def written(kinesis: StandInKinesis) -> list[dict]:
    return [json.loads(data) for data in kinesis.accepted]


def test_a_good_batch_writes_one_prediction_per_record_in_the_course_format(model):
    container = make_container(model)
    event = event_of([ride_event(*r) for r in GOOD_RIDES])

    assert container.handle(event) == {"batchItemFailures": []}

    [(stream, datas)] = container.kinesis.calls  # one put_records call for the batch
    assert stream == "predictions" and len(datas) == len(GOOD_RIDES)
    assert written(container.kinesis) == [
        {
            "model": "ride_duration_prediction_model",
            "version": "m-one",
            "prediction": {"ride_duration": pytest.approx(expected_duration(model, ride), abs=1e-9), "ride_id": i},
        }
        for ride, i in GOOD_RIDES
    ]


def test_the_partition_key_of_a_prediction_is_its_ride_id(model, monkeypatch):
    entries = []
    monkeypatch.setattr(lambda_function, "put_records", lambda client, stream, e: entries.extend(e) or [])
    make_container(model).handle(event_of([ride_event(*r) for r in GOOD_RIDES]))
    assert [e["PartitionKey"] for e in entries] == ["256", "2021/01_17", "never-seen-pair"]


@pytest.mark.parametrize("kind", POISON)
def test_a_poison_record_fails_alone_and_says_why(model, kind, caplog):
    data, reason = POISON[kind]
    container = make_container(model)
    event = event_of([ride_event(*GOOD_RIDES[0]), data, ride_event(*GOOD_RIDES[1])])

    response = container.handle(event)

    poison = sequence_numbers(event)[1]
    assert response == {"batchItemFailures": [{"itemIdentifier": poison}]}
    assert [p["prediction"]["ride_id"] for p in written(container.kinesis)] == [256, "2021/01_17"]
    with pytest.raises(lambda_function.BadRecord, match=reason):
        lambda_function.decode_record(event["Records"][1])
    assert f"record {poison} rejected" in caplog.text


def test_records_delivered_again_are_not_written_twice(model):
    container = make_container(model)
    event = event_of([ride_event(*GOOD_RIDES[0]), b"poison", ride_event(*GOOD_RIDES[1]), ride_event(*GOOD_RIDES[2])])
    poison = sequence_numbers(event)[1]
    assert container.handle(event) == {"batchItemFailures": [{"itemIdentifier": poison}]}

    again = {"Records": event["Records"][1:]}  # Lambda delivers the batch again from the failed record
    assert container.handle(again) == {"batchItemFailures": [{"itemIdentifier": poison}]}

    assert len(container.kinesis.calls) == 1
    assert [p["prediction"]["ride_id"] for p in written(container.kinesis)] == [i for _, i in GOOD_RIDES]


def test_a_record_of_another_shard_with_the_same_sequence_number_is_not_taken_for_a_duplicate(model):
    container = make_container(model)
    first = event_of([ride_event(*GOOD_RIDES[0])])
    other_shard = json.loads(json.dumps(first))
    other_shard["Records"][0]["eventID"] = "shardId-000000000001:" + sequence_numbers(first)[0]
    container.handle(first)
    container.handle(other_shard)
    assert len(written(container.kinesis)) == 2


def test_a_throttled_stream_fails_the_invocation_and_the_retry_writes_only_the_rest(model, monkeypatch):
    """Throttling is the stream's fault, not the records': the handler raises (an invocation error,
    which Lambda retries) instead of naming good rides in batchItemFailures."""
    monkeypatch.setattr(lambda_function, "put_records", partial(put_records, sleep=lambda seconds: None))
    rides = [({**A_RIDE, "trip_distance": 1.0 + i}, f"ride-{i}") for i in range(5)]
    kinesis = StandInKinesis(refuse={b'"ride-2"': None})
    container = make_container(model, kinesis)
    event = event_of([ride_event(*r) for r in rides] + [b"poison"])

    with pytest.raises(lambda_function.PredictionsNotWritten, match="rejecting 1 of 5"):
        container.handle(event)
    assert sorted(p["prediction"]["ride_id"] for p in written(kinesis)) == ["ride-0", "ride-1", "ride-3", "ride-4"]

    kinesis.calls.clear()
    kinesis.refuse = {}  # the throttling is over; Lambda invokes the same batch again
    response = container.handle(event)

    assert response == {"batchItemFailures": [{"itemIdentifier": sequence_numbers(event)[-1]}]}
    [(_, [only])] = kinesis.calls  # one call, with the one prediction that was rejected
    assert json.loads(only)["prediction"]["ride_id"] == "ride-2"


def test_a_stream_that_cannot_be_written_fails_the_invocation_and_nothing_counts_as_written(model):
    kinesis = StandInKinesis(error=RuntimeError("ResourceNotFoundException: stream predictionz not found"))
    container = make_container(model, kinesis)
    event = event_of([ride_event(*GOOD_RIDES[0])])
    with pytest.raises(RuntimeError, match="ResourceNotFound"):
        container.handle(event)
    assert not container.written

    kinesis.error = None  # the stream is back: the retry writes the prediction
    assert container.handle(event) == {"batchItemFailures": []}
    assert len(written(kinesis)) == 1


def test_a_dry_run_returns_the_predictions_and_makes_no_client(model):
    container = lambda_function.Container(dataclasses.replace(Settings(), dry_run=True), ModelService.for_model(model))
    event = event_of([ride_event(*GOOD_RIDES[0]), b"poison"])

    response = container.handle(event)

    assert response["batchItemFailures"] == [{"itemIdentifier": sequence_numbers(event)[1]}]
    [prediction] = response["predictions"]
    assert prediction["prediction"]["ride_id"] == 256 and prediction["version"] == "m-one"
    assert container.kinesis is None and not container.written


def test_a_cold_container_with_only_bad_records_loads_no_model(tmp_path):
    settings = dataclasses.replace(Settings(), model_uri=str(tmp_path / "no-model-here"))
    container = lambda_function.Container.from_settings(settings)
    kinesis = container.kinesis = StandInKinesis()

    response = container.handle(event_of([b"poison", NOT_BASE64]))

    assert len(response["batchItemFailures"]) == 2
    assert not container.service.loaded and kinesis.calls == []
    with pytest.raises(ModelLoadError, match="no MLmodel file"):  # the first ride needs the model
        container.handle(event_of([ride_event(*GOOD_RIDES[0])], 2000))


def test_a_container_loads_its_model_once_without_scikit_learn(model, monkeypatch):
    loads = []
    monkeypatch.setattr(
        "ride_duration.serving.load_model",
        lambda uri, **options: loads.append((uri, options["without_sklearn"])) or model,
    )
    settings = dataclasses.replace(Settings(), model_uri="s3://models/m-one/artifacts", dry_run=True)
    container = lambda_function.Container.from_settings(settings)
    for batch in range(3):
        container.handle(event_of([ride_event(*GOOD_RIDES[0])], 1000 + batch))
    assert loads == [("s3://models/m-one/artifacts", True)]


def test_a_model_swapped_in_serves_the_next_batch_with_its_version(model):
    container = make_container(model)
    container.handle(event_of([ride_event(*GOOD_RIDES[0])]))
    newer = stand_in_model("m-two", slope=3.0)
    container.service.swap(newer)
    container.handle(event_of([ride_event(*GOOD_RIDES[0])], 2000))

    first, second = written(container.kinesis)
    assert (first["version"], second["version"]) == ("m-one", "m-two")
    ride = GOOD_RIDES[0][0]
    assert second["prediction"]["ride_duration"] == pytest.approx(expected_duration(newer, ride), abs=1e-9)
    assert first["prediction"]["ride_duration"] != pytest.approx(second["prediction"]["ride_duration"])


def test_not_a_kinesis_event_fails_the_invocation(model):
    for event in ({}, {"Records": "no"}, [1, 2], None):
        with pytest.raises(ValueError, match="not a Kinesis event"):
            make_container(model).handle(event)


def test_lambda_handler_hands_events_to_the_container_of_this_process(model, monkeypatch):
    container = make_container(model)
    monkeypatch.setattr(lambda_function, "default_container", container)
    assert lambda_function.lambda_handler(event_of([ride_event(*GOOD_RIDES[0])]), None) == {"batchItemFailures": []}
    assert len(written(container.kinesis)) == 1
    lambda_function.reset_container()
    assert lambda_function.default_container is None


def test_the_sample_event_decodes_to_the_course_ride():
    from ride_duration.settings import PROJECT_ROOT

    event = json.loads((PROJECT_ROOT / "streaming" / "events" / "kinesis-sample.json").read_text())
    [record] = event["Records"]
    assert lambda_function.decode_record(record) == (256, GOOD_RIDES[0][0])
    assert base64.b64decode(record["kinesis"]["data"])  # Lambda's envelope, base64 inside


def test_the_records_written_are_the_json_of_the_prediction_events():
    ride_ids = [256, "2021/01_17", 'quote " and \\ backslash', "zone ü ✓", 10**30, "\0ride_id\0"]
    durations = [13.845678912345, 0.1 + 0.2, 1e-7, 123456789.0, float("nan"), float("inf")]
    version = 'm-"odd" version'
    assert lambda_function.encode_predictions(ride_ids, durations, version) == [
        json.dumps(lambda_function.prediction_event(i, d, version)).encode() for i, d in zip(ride_ids, durations)
    ]


def following_container(registry: StandInRegistry, **settings) -> lambda_function.Container:
    """A cold container following @production of the stand-in registry (checks at most once a second)."""
    return lambda_function.Container(
        dataclasses.replace(Settings(), predictions_stream_name="predictions", **settings),
        registry.service(lazy=True, without_sklearn=True),
        StandInKinesis(),
    )


def test_a_container_following_the_alias_swaps_between_batches_once_the_interval_has_passed(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("ride_duration.serving.time", clock)
    registry = StandInRegistry(production=1)
    container = following_container(registry)
    ride = GOOD_RIDES[0][0]
    for batch in range(2):
        container.handle(event_of([ride_event(ride, f"before-{batch}")], 1000 + batch))
    registry.production = 2  # promoted while the container runs
    clock.now += 0.5
    container.handle(event_of([ride_event(ride, "too-soon")], 2000))
    clock.now += 0.5
    container.handle(event_of([ride_event(ride, "after")], 3000))

    versions = {p["prediction"]["ride_id"]: p["version"] for p in written(container.kinesis)}
    assert versions == {"before-0": "m-1", "before-1": "m-1", "too-soon": "m-1", "after": "m-2"}
    assert registry.loads == ["models:/ride-duration/1", "models:/ride-duration/2"]
    newest = written(container.kinesis)[-1]["prediction"]["ride_duration"]
    assert newest == pytest.approx(expected_duration(registry.load("models:/ride-duration/2"), ride), abs=1e-9)


def test_a_container_asks_the_registry_at_most_once_per_interval(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("ride_duration.serving.time", clock)
    registry = StandInRegistry(production=1)
    asked = []
    resolve = registry.resolve
    monkeypatch.setattr(registry, "resolve", lambda uri: asked.append(clock.now) or resolve(uri))
    container = following_container(registry)
    for batch in range(40):  # 40 batches over 4 seconds: a check at 1, 2, 3 and 4 seconds after the load
        container.handle(event_of([ride_event(*GOOD_RIDES[0])], 1000 + 10 * batch))
        clock.now += 0.1
    assert len(asked) == 1 + 3  # the first load, then one check per second at most
    assert all(b - a >= 1.0 - 1e-9 for a, b in zip(asked, asked[1:]))


def test_a_failed_check_keeps_the_model_the_batch_succeeds_and_one_warning_says_why(monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr("ride_duration.serving.time", clock)
    registry = StandInRegistry(production=1)
    container = following_container(registry)
    container.handle(event_of([ride_event(*GOOD_RIDES[0])], 1000))
    registry.down, registry.production = True, 2
    clock.now += 1
    caplog.clear()

    assert container.handle(event_of([ride_event(*GOOD_RIDES[1])], 2000)) == {"batchItemFailures": []}
    clock.now += 0.5
    assert container.handle(event_of([ride_event(*GOOD_RIDES[2])], 3000)) == {"batchItemFailures": []}

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "not answering" in warnings[0] and "kept ride-duration/1" in warnings[0]
    assert [p["version"] for p in written(container.kinesis)] == ["m-1"] * 3
    assert container.service.failed_polls == 1

    registry.production = -1  # the registry is back, and the alias points at a version failing its self-check
    registry.down = False
    clock.now += 1
    container.handle(event_of([ride_event(*GOOD_RIDES[0])], 4000))
    assert written(container.kinesis)[-1]["version"] == "m-1" and container.service.failed_polls == 2
    registry.production = 2
    clock.now += 1
    container.handle(event_of([ride_event(*GOOD_RIDES[0])], 5000))
    assert written(container.kinesis)[-1]["version"] == "m-2"


def test_a_cold_container_checks_nothing_its_first_load_resolves_the_alias(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("ride_duration.serving.time", clock)
    registry = StandInRegistry(production=3)
    asked = []
    resolve = registry.resolve
    monkeypatch.setattr(registry, "resolve", lambda uri: asked.append(uri) or resolve(uri))
    container = following_container(registry)
    clock.now += 60  # idle long past the interval before its first event

    container.handle(event_of([b"poison"], 1000))  # nothing to predict: nothing loaded, nothing asked
    assert asked == [] and not container.service.loaded
    container.handle(event_of([ride_event(*GOOD_RIDES[0])], 2000))

    assert len(asked) == 1 and registry.loads == ["models:/ride-duration/3"]
    assert container.service.last_poll is None  # the load asked; no check was made
    assert written(container.kinesis)[0]["version"] == "m-3"


def test_a_pinned_uri_is_never_checked(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("ride_duration.serving.time", clock)
    asked = []
    for uri in ("models:/ride-duration/1", "s3://mlflow-artifacts/1/models/m-1/artifacts"):
        settings = dataclasses.replace(Settings(), model_uri=uri, predictions_stream_name="predictions")
        service = ModelService(
            uri, lazy=True, settings=settings, loader=lambda uri: stand_in_model("m-1"), resolver=asked.append
        )
        container = lambda_function.Container(settings, service, StandInKinesis())
        for batch in range(3):
            container.handle(event_of([ride_event(*GOOD_RIDES[0])], 1000 * batch))
            clock.now += 100
        assert not service.follows and service.last_poll is None and asked == []
        assert [p["version"] for p in written(container.kinesis)] == ["m-1"] * 3
