"""Property-based: thousands of generated malformed bodies against the exported app (web-service/predict.py,
in-process through Flask's test client, with a stand-in model); every one must get a 4xx with a JSON
message, none a 5xx. Bodies through a real gunicorn are in tests/integration/test_web_service.py."""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ride_duration.rides import EXAMPLE_RIDE, MAX_LOCATION_ID, MAX_TRIP_DISTANCE, RIDE_FIELDS, BadRide, validate_ride
from ride_duration.serving import ModelService
from ride_duration.settings import Settings
from tests.helpers import ROOT, stand_in_model

sys.path.insert(0, str(ROOT / "web-service"))
import predict  # web-service/ is not a package; importing predict builds no app and loads no model

EXAMPLES = 500  # bounded, so that the unit layer stays fast
MAX_RIDES = 20
MAX_BODY_BYTES = 4096

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
bad_location = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=MAX_LOCATION_ID + 1),
    st.booleans(),
    st.none(),
    st.floats(),
    st.text(max_size=5),
    st.just("10"),
    st.just(10.0),
    st.lists(st.integers(), max_size=2),
)
bad_distance = st.one_of(
    st.floats(max_value=-1e-9),
    st.floats(min_value=MAX_TRIP_DISTANCE, exclude_min=True),
    st.just(math.nan),
    st.just(math.inf),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.just("40"),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)


@st.composite
def broken_rides(draw):
    """A valid ride with one thing wrong: a field missing, an unknown field, or a bad value."""
    ride = dict(EXAMPLE_RIDE)
    how = draw(st.sampled_from(["missing", "extra", "PULocationID", "DOLocationID", "trip_distance"]))
    if how == "missing":
        for field in draw(st.lists(st.sampled_from(RIDE_FIELDS), min_size=1, max_size=3, unique=True)):
            del ride[field]
    elif how == "extra":
        ride[draw(st.text(max_size=15).filter(lambda k: k not in RIDE_FIELDS))] = draw(json_scalars)
    else:
        ride[how] = draw(bad_distance if how == "trip_distance" else bad_location)
    return ride


def is_valid_body(body: bytes) -> bool:
    """What the service accepts: a valid ride, or a list of 1..MAX_RIDES valid rides, in a small body."""
    if len(body) > MAX_BODY_BYTES:
        return False
    try:
        payload = json.loads(body)
        rides = payload if isinstance(payload, list) else [payload]
        if not 1 <= len(rides) <= MAX_RIDES:
            return False
        for ride in rides:
            validate_ride(ride)
        return True
    except (ValueError, RecursionError, BadRide):
        return False


def as_json(value) -> bytes:
    return json.dumps(value).encode()


JSON = "application/json"
malformed_requests = st.one_of(
    st.tuples(st.just(JSON), st.binary(max_size=300)),
    st.tuples(st.just(JSON), st.text(max_size=200).map(str.encode)),
    st.tuples(st.just(JSON), json_values.map(as_json)),
    st.tuples(st.just(JSON), broken_rides().map(as_json)),
    st.tuples(st.just(JSON), st.lists(st.just(EXAMPLE_RIDE) | broken_rides(), min_size=1, max_size=5).map(as_json)),
    st.tuples(
        st.just(JSON), st.lists(st.just(EXAMPLE_RIDE), min_size=MAX_RIDES + 1, max_size=MAX_RIDES + 5).map(as_json)
    ),
    st.tuples(st.just(JSON), st.sampled_from([as_json(EXAMPLE_RIDE) + b" " * MAX_BODY_BYTES, b"[" * 3000])),
    st.tuples(
        st.sampled_from(
            ["text/plain", "application/x-www-form-urlencoded", "", "multipart/form-data", "application/jsonl"]
        ),
        st.just(as_json(EXAMPLE_RIDE)),
    ),
).filter(lambda case: case[0] != JSON or not is_valid_body(case[1]))


@pytest.fixture(scope="module")
def small_service():
    """Limits made small, so that oversized bodies and lists are generated often."""
    limits = dataclasses.replace(Settings(), max_rides=MAX_RIDES, max_body_bytes=MAX_BODY_BYTES)
    return predict.create_app(limits, ModelService.for_model(stand_in_model())).test_client()


def test_malformed_bodies_never_get_a_5xx(small_service):
    sent = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(case=malformed_requests)
    def check(case):
        content_type, body = case
        response = small_service.post("/predict", data=body, headers={"Content-Type": content_type})
        sent.append(response.status_code)
        assert 400 <= response.status_code < 500, (response.status_code, body[:200], response.text[:300])
        assert response.get_json()["message"]

    check()
    assert len(sent) >= EXAMPLES
    assert small_service.post("/predict", json=EXAMPLE_RIDE).status_code == 200
