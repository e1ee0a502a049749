"""The web service in-process: web-service/predict.py's create_app with a stand-in model, through Flask's
test client (no gunicorn, no registry). What needs a real gunicorn is in tests/integration/test_web_service.py."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ride_duration.rides import EXAMPLE_RIDE
from ride_duration.serving import ModelService
from ride_duration.settings import Settings
from tests.helpers import ROOT, StandInRegistry, stand_in_model

sys.path.insert(0, str(ROOT / "web-service"))
import predict  # web-service/ is not a package; importing predict builds no app and loads no model

API_KEY = "s3cret-key"
SETTINGS = Settings()  # the defaults: 256 KiB bodies, 1000 rides, no key


@pytest.fixture(scope="module")
def model():
    return stand_in_model("m-stand-in")


@pytest.fixture
def service(model):
    return ModelService.for_model(model)


@pytest.fixture
def client(service):
    return predict.create_app(SETTINGS, service).test_client()


def test_importing_predict_builds_no_app():
    assert "app" not in vars(predict)


def test_a_ride_is_answered_with_the_model_and_its_version(client, service):
    response = client.post("/predict", json=EXAMPLE_RIDE)
    assert response.status_code == 200
    assert response.content_type == "application/json"
    assert response.get_json() == {
        "duration": pytest.approx(service.current.predict_one(EXAMPLE_RIDE), abs=1e-12),
        "model_version": "m-stand-in",
        "registered_version": None,
    }
    reference = service.current.model.pipeline.predict([{"PU_DO": "10_50", "trip_distance": 40.0}])[0]
    assert response.get_json()["duration"] == pytest.approx(reference, abs=1e-9)


def test_a_list_of_rides_gets_answers_in_order(client, service):
    rides = [
        EXAMPLE_RIDE,
        {"PULocationID": 7, "DOLocationID": 7, "trip_distance": 1.2},
        {**EXAMPLE_RIDE, "trip_distance": 3},
    ]
    answers = client.post("/predict", json=rides).get_json()
    assert [a["duration"] for a in answers] == pytest.approx(
        service.current.predict_rides([ModelService.validate(r) for r in rides]).tolist(), abs=1e-12
    )
    assert {a["model_version"] for a in answers} == {"m-stand-in"}
    assert answers[0]["duration"] != answers[1]["duration"]


JSON = {"content_type": "application/json"}
BAD_REQUESTS = {
    "not JSON": ({"data": b"{oops", **JSON}, 400, "not valid JSON"),
    "invalid UTF-8": ({"data": b'{"PULocationID": "\xff"}', **JSON}, 400, "not valid JSON"),
    "nested too deep": ({"data": b"[" * 100_000, **JSON}, 400, "not valid JSON"),
    "a 5000-digit number": ({"data": b'{"PULocationID": ' + b"9" * 5000 + b"}", **JSON}, 400, "not valid JSON"),
    "wrong content type": ({"data": json.dumps(EXAMPLE_RIDE), "content_type": "text/plain"}, 415, "Content-Type"),
    "no content type": ({"data": json.dumps(EXAMPLE_RIDE).encode()}, 415, "Content-Type"),
    "a JSON string": ({"json": "ride"}, 422, "not a string"),
    "null": ({"data": b"null", **JSON}, 422, "not null"),
    "missing field": ({"json": {"PULocationID": 10, "DOLocationID": 50}}, 422, "missing field(s): trip_distance"),
    "unknown field": ({"json": {**EXAMPLE_RIDE, "tip": 3}}, 422, "unknown field(s): tip"),
    "string id": ({"json": {**EXAMPLE_RIDE, "PULocationID": "10"}}, 422, "PULocationID must be an integer"),
    "boolean id": ({"json": {**EXAMPLE_RIDE, "DOLocationID": True}}, 422, "DOLocationID must be an integer"),
    "float id": ({"json": {**EXAMPLE_RIDE, "DOLocationID": 50.0}}, 422, "DOLocationID must be an integer"),
    "zone out of range": ({"json": {**EXAMPLE_RIDE, "PULocationID": 0}}, 422, "between 1 and"),
    "negative distance": ({"json": {**EXAMPLE_RIDE, "trip_distance": -3}}, 422, "trip_distance must be between"),
    "absurd distance": ({"json": {**EXAMPLE_RIDE, "trip_distance": 1e6}}, 422, "trip_distance must be between"),
    "NaN distance": (
        {"data": b'{"PULocationID": 10, "DOLocationID": 50, "trip_distance": NaN}', **JSON},
        422,
        "trip_distance",
    ),
    "string distance": ({"json": {**EXAMPLE_RIDE, "trip_distance": "40"}}, 422, "trip_distance must be a number"),
    "empty list": ({"json": []}, 422, "empty"),
    "a bad ride in a list": ({"json": [EXAMPLE_RIDE, {**EXAMPLE_RIDE, "trip_distance": None}]}, 422, "ride 1:"),
    "too many rides": ({"json": [EXAMPLE_RIDE] * 1001}, 413, "the limit is 1000"),
    "body too large": (
        {"data": b" " * 300_000 + json.dumps(EXAMPLE_RIDE).encode(), **JSON},
        413,
        "larger than the limit of 262144 bytes",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_input_gets_its_status_and_a_json_message(client, case):
    kwargs, status, message = BAD_REQUESTS[case]
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert response.content_type == "application/json"
    assert message in response.get_json()["message"]


def test_a_chunked_body_over_the_limit_is_refused_not_cut_short(service):
    """Without Content-Length Werkzeug stops reading at the limit; the app must notice there was more.
    (wsgi.input_terminated is how gunicorn says a chunked body ends by itself.)"""
    small = predict.create_app(dataclasses.replace(SETTINGS, max_body_bytes=100), service).test_client()
    body = json.dumps([EXAMPLE_RIDE] * 3).encode()
    chunked = {
        "headers": {"Transfer-Encoding": "chunked"},
        "content_type": "application/json",
        "environ_overrides": {"wsgi.input_terminated": True},
    }
    response = small.post("/predict", input_stream=io.BytesIO(body), **chunked)
    assert response.status_code == 413, response.text
    assert "larger than the limit of 100 bytes" in response.get_json()["message"]
    whole = small.post("/predict", input_stream=io.BytesIO(json.dumps(EXAMPLE_RIDE).encode()), **chunked)
    assert whole.status_code == 200, whole.text


@pytest.mark.parametrize(
    ("headers", "status"), [({}, 401), ({"X-API-Key": "guess"}, 401), ({"X-API-Key": API_KEY}, 200)]
)
def test_the_api_key_is_required_when_set(service, headers, status):
    keyed = predict.create_app(dataclasses.replace(SETTINGS, api_key=API_KEY), service).test_client()
    response = keyed.post("/predict", json=EXAMPLE_RIDE, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert "X-API-Key" in response.get_json()["message"]
    assert keyed.get("/health").status_code == 200  # no key needed to ask for health


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/predict", 405), ("POST", "/nowhere", 404)])
def test_wrong_route_or_method_is_a_json_error(client, method, path, status):
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.get_json()["error"]


def test_health_names_the_served_model(client, service):
    health = client.get("/health").get_json()
    served = service.current
    assert health == {
        "status": "ready",
        "model_uri": "memory://m-stand-in",
        "model_version": "m-stand-in",
        "registered_version": None,
        "loaded_at": served.loaded_at,
        "follows": None,
        "last_poll": None,
        "failed_polls": 0,
    }


def scrape(client) -> dict:
    """{(sample name, frozenset(labels)): value} from /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_requests_by_endpoint_and_status(client):
    def count(endpoint, status):
        return before.get(
            ("ride_duration_requests_total", frozenset({"endpoint": endpoint, "status": status}.items())), 0
        )

    before = scrape(client)
    ok, refused, missing = count("predict", "200"), count("predict", "422"), count("unknown", "404")
    predicted = before.get(("ride_duration_predicted_minutes_count", frozenset()), 0)
    for _ in range(3):
        client.post("/predict", json=EXAMPLE_RIDE)
    client.post("/predict", json=[EXAMPLE_RIDE, EXAMPLE_RIDE])
    client.post("/predict", json={})
    client.get("/nowhere")
    before = scrape(client)
    assert (count("predict", "200"), count("predict", "422"), count("unknown", "404")) == (
        ok + 4,
        refused + 1,
        missing + 1,
    )
    assert before[("ride_duration_predicted_minutes_count", frozenset())] == predicted + 5
    latency = ("ride_duration_request_seconds_count", frozenset({"endpoint": "predict"}.items()))
    assert before[latency] >= 5


def test_a_swapped_model_answers_the_next_request(client, service):
    first = client.post("/predict", json=EXAMPLE_RIDE).get_json()
    service.swap(stand_in_model("m-next", slope=3.0))
    second = client.post("/predict", json=EXAMPLE_RIDE).get_json()
    assert (first["model_version"], second["model_version"]) == ("m-stand-in", "m-next")
    assert second["duration"] == pytest.approx(first["duration"] + 40.0, abs=0.5)  # 3 instead of 2 minutes a mile
    assert client.get("/health").get_json()["model_version"] == "m-next"
    live = {
        dict(labels)["model_version"]: value
        for (name, labels), value in scrape(client).items()
        if name == "ride_duration_model_info"
    }
    # Other apps made in this process (other tests) may show their own models; this one moved to m-next.
    assert live["m-next"] == 1.0 and live["m-stand-in"] == 0.0


# --- following the registry alias ------------------------------------------------------------------


def polls(client, outcome: str) -> float:
    return scrape(client).get(("ride_duration_model_polls_total", frozenset({("outcome", outcome)})), 0)


def live_models(client) -> dict:
    return {
        dict(labels)["model_version"]: value
        for (name, labels), value in scrape(client).items()
        if name == "ride_duration_model_info"
    }


def test_the_app_follows_the_alias_and_answers_with_the_version_it_moved_to():
    registry = StandInRegistry(production=1)
    service = registry.service()  # polls every second
    app = predict.create_app(SETTINGS, service)
    client = app.test_client()
    swapped_before = polls(client, "swapped")
    assert app.follow_model()
    try:
        first = client.post("/predict", json=EXAMPLE_RIDE).get_json()
        registry.production = 2
        deadline = time.monotonic() + 10
        answer = first
        while answer["model_version"] == "m-1" and time.monotonic() < deadline:
            time.sleep(0.05)
            answer = client.post("/predict", json=EXAMPLE_RIDE).get_json()
    finally:
        service.stop_following()
    assert (first["model_version"], first["registered_version"]) == ("m-1", "ride-duration/1")
    assert (answer["model_version"], answer["registered_version"]) == ("m-2", "ride-duration/2")
    assert answer["duration"] == pytest.approx(service.current.predict_one(EXAMPLE_RIDE), abs=1e-12)
    assert answer["duration"] == pytest.approx(first["duration"] + 40.0, abs=0.5)  # 2 instead of 1 minute a mile
    health = client.get("/health").get_json()
    assert health["status"] == "ready" and health["registered_version"] == "ride-duration/2"
    assert health["follows"] == {"alias": "ride-duration@production", "poll_seconds": 1}
    assert health["last_poll"]["outcome"] in ("swapped", "unchanged") and health["failed_polls"] == 0
    assert polls(client, "swapped") == swapped_before + 1
    assert live_models(client)["m-2"] == 1.0 and live_models(client)["m-1"] == 0.0


def test_a_failed_poll_keeps_the_model_serving_and_shows_in_health_and_metrics():
    registry = StandInRegistry(production=1)
    service = registry.service()
    app = predict.create_app(SETTINGS, service)
    client = app.test_client()
    failed_before = polls(client, "failed")
    registry.down = True
    app.check_model()
    health = client.get("/health").get_json()
    assert health["status"] == "ready" and health["model_version"] == "m-1"
    assert health["last_poll"]["outcome"] == "failed" and health["failed_polls"] == 1
    assert "kept ride-duration/1" in health["last_poll"]["message"]
    assert "not answering" in health["last_poll"]["message"]
    assert health["last_poll"]["at"] == pytest.approx(time.time(), abs=60)
    registry.down, registry.production = False, -1  # the alias moves to a version that fails its self-check
    app.check_model()
    answer = client.post("/predict", json=EXAMPLE_RIDE)
    assert answer.status_code == 200 and answer.get_json()["model_version"] == "m-1"
    health = client.get("/health").get_json()
    assert health["failed_polls"] == 2 and "nan minutes" in health["last_poll"]["message"]
    assert polls(client, "failed") == failed_before + 2
    registry.production = 2  # mended: the next check swaps
    assert app.check_model().outcome == "swapped"
    assert client.post("/predict", json=EXAMPLE_RIDE).get_json()["model_version"] == "m-2"
    assert client.get("/health").get_json()["failed_polls"] == 2


def test_a_service_started_with_an_artifact_uri_never_polls():
    asked = []

    def resolver(uri):
        asked.append(uri)
        return "ride-duration/1"

    service = ModelService("file:///models/m-1", loader=lambda uri: stand_in_model("m-1"), resolver=resolver)
    service.poll_seconds = 0.01
    app = predict.create_app(SETTINGS, service)
    client = app.test_client()
    assert app.follow_model() is False
    time.sleep(0.1)
    assert not [thread for thread in threading.enumerate() if thread.name == "model-poll"]
    assert client.post("/predict", json=EXAMPLE_RIDE).get_json()["model_version"] == "m-1"
    health = client.get("/health").get_json()
    assert (health["follows"], health["last_poll"], health["failed_polls"]) == (None, None, 0)
    assert asked == []


def test_follow_model_checks_at_once_so_a_worker_forked_from_an_old_model_never_answers_with_it():
    """A worker gunicorn forks on a reload starts from the model the master loaded at start-up."""
    registry = StandInRegistry(production=1)
    service = registry.service()
    service.poll_seconds = 600  # the next check is far away: only the first one can swap
    registry.production = 2
    app = predict.create_app(SETTINGS, service)
    try:
        assert app.follow_model()
        assert app.test_client().post("/predict", json=EXAMPLE_RIDE).get_json()["model_version"] == "m-2"
        assert app.test_client().get("/health").get_json()["last_poll"]["outcome"] == "swapped"
    finally:
        service.stop_following(timeout=5)
