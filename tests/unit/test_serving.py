"""The serving core on stand-in models: the self-check, the version, lazy loading and the atomic swap."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from ride_duration.features import ride_features
from ride_duration.model import ModelLoadError
from ride_duration.rides import EXAMPLE_RIDE, BadRide
from ride_duration.serving import ModelService, serve
from tests.helpers import Clock, StandInRegistry, stand_in_model

RIDES = [
    EXAMPLE_RIDE,
    {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 0.0},
    {"PULocationID": 300, "DOLocationID": 300, "trip_distance": 999.0},  # a pair never seen
]


def test_a_served_model_predicts_what_its_pipeline_predicts_one_by_one_in_batches_and_by_columns():
    model = stand_in_model()
    served = serve(model)
    expected = model.pipeline.predict([ride_features(r) for r in RIDES])
    columns = {field: np.array([r[field] for r in RIDES]) for field in RIDES[0]}
    assert [served.predict_one(r) for r in RIDES] == pytest.approx(expected, abs=1e-9)
    assert served.predict_rides(RIDES) == pytest.approx(expected, abs=1e-9)
    assert served.predict_columns(columns) == pytest.approx(expected, abs=1e-9)
    assert served.version == "m-stand-in"


def test_a_pipeline_the_fast_path_does_not_know_is_served_by_its_own_predict():
    model = stand_in_model("m-forest", regressor=RandomForestRegressor(n_estimators=5, random_state=1))
    served = ModelService.for_model(model).current
    assert served.predict_rides(RIDES) == pytest.approx(model.pipeline.predict([ride_features(r) for r in RIDES]))


def test_the_self_check_refuses_a_fast_path_that_disagrees_with_the_pipeline():
    model = stand_in_model()
    model.pipeline.steps[1][1].intercept_ += 1.0
    model.pipeline.predict = lambda features: np.zeros(len(features))  # the pipeline now says otherwise
    with pytest.raises(ModelLoadError, match="disagrees with the pipeline"):
        serve(model)


def test_a_model_whose_answer_is_not_finite_is_refused():
    model = stand_in_model()
    model.pipeline.steps[1][1].intercept_ = float("nan")
    with pytest.raises(ModelLoadError, match="nan minutes"):
        serve(model)


def test_a_lazy_service_loads_on_first_use_only():
    registry = StandInRegistry(production=3)
    service = registry.service(lazy=True)
    assert not service.loaded and registry.loads == []
    assert service.current.version == "m-3"
    assert service.current is service.current and registry.loads == ["models:/ride-duration/3"]


def test_an_alias_is_loaded_by_the_version_it_points_at_and_named_by_both():
    served = StandInRegistry(production=3).service().current
    assert (served.uri, served.registered_version, served.version) == (
        "models:/ride-duration@production",
        "ride-duration/3",
        "m-3",
    )


def test_a_check_swaps_in_the_version_the_alias_moved_to_while_work_in_flight_keeps_its_model():
    registry = StandInRegistry(production=1)
    service = registry.service()
    in_flight = service.current
    assert service.check().outcome == "unchanged" and registry.loads == ["models:/ride-duration/1"]
    registry.production = 2
    poll = service.check()
    assert poll.outcome == "swapped" and "ride-duration/2" in poll.message
    assert service.current.version == "m-2" and service.last_poll == poll
    assert in_flight.version == "m-1"
    assert service.current.predict_one(EXAMPLE_RIDE) > in_flight.predict_one(EXAMPLE_RIDE)


def test_a_failed_check_keeps_the_current_model_and_says_why():
    registry = StandInRegistry(production=1)
    service = registry.service()
    registry.down = True
    poll = service.check()
    assert poll.outcome == "failed" and "not answering" in poll.message and "kept ride-duration/1" in poll.message
    registry.down, registry.production = False, -1  # the alias moves to a version that fails its self-check
    poll = service.check()
    assert poll.outcome == "failed" and "nan minutes" in poll.message
    assert service.current.version == "m-1" and service.failed_polls == 2
    registry.production = 2
    assert service.check().outcome == "swapped" and service.current.version == "m-2"


def test_check_if_due_asks_at_most_once_per_interval_and_never_before_the_first_load(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("ride_duration.serving.time", clock)
    registry = StandInRegistry(production=1)
    service = registry.service(lazy=True)
    clock.now += 5
    assert service.check_if_due() is None and not service.loaded  # a cold container asks nothing
    assert service.current.version == "m-1"  # the first batch loads the model
    registry.production = 2
    clock.now += 0.5
    assert service.check_if_due() is None and service.current.version == "m-1"
    clock.now += 0.5
    assert service.check_if_due().outcome == "swapped" and service.current.version == "m-2"
    assert service.check_if_due() is None


def test_follow_checks_in_a_thread_until_stopped():
    registry = StandInRegistry(production=1)
    service = registry.service()
    polls = []
    assert service.follow(polls.append) and service.follow(polls.append)  # the second call starts nothing
    registry.production = 2
    deadline = time.monotonic() + 10
    while service.current.version != "m-2" and time.monotonic() < deadline:
        time.sleep(0.05)
    service.stop_following()
    assert service.current.version == "m-2" and polls[-1].outcome == "swapped"
    assert len([t for t in threading.enumerate() if t.name == "model-poll"]) == 0


def test_a_uri_that_names_one_model_is_never_followed():
    for uri in ("models:/ride-duration/3", "models:/m-abc", "runs:/abc/model", "s3://bucket/models/m-1", "/tmp/model"):
        service = ModelService(uri, lazy=True, loader=lambda uri: stand_in_model(), resolver=None)
        assert not service.follows and service.follow() is False and service.check_if_due() is None
    assert not ModelService.for_model(stand_in_model()).follows


def test_no_uri_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="set MODEL_URI"):
        ModelService("")


def test_a_swap_is_atomic_and_a_bad_model_leaves_the_current_one():
    service = ModelService.for_model(stand_in_model("m-one"))
    before = service.current
    broken = stand_in_model("m-broken")
    broken.pipeline.steps[1][1].intercept_ = float("inf")
    with pytest.raises(ModelLoadError):
        service.swap(broken)
    assert service.current is before
    service.swap(stand_in_model("m-two", slope=3.0))
    assert service.current.version == "m-two"
    assert before.version == "m-one"  # work that took the old model finishes on it
    assert service.current.predict_one(EXAMPLE_RIDE) > before.predict_one(EXAMPLE_RIDE)


def test_readers_during_swaps_always_see_a_whole_model():
    models = [serve(stand_in_model(f"m-{slope}", slope=slope)) for slope in (1.0, 2.0)]
    expected = {m.version: m.predict_one(EXAMPLE_RIDE) for m in models}
    service = ModelService.for_model(models[0].model)
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set() and len(seen) < 20_000:
            served = service.current
            seen.append(expected[served.version] == served.predict_one(EXAMPLE_RIDE))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(200):
        service.swap(models[i % 2])
    stop.set()
    reader.join(timeout=10)
    assert seen and all(seen)


def test_validate_is_the_one_check_of_a_ride():
    assert ModelService.validate({"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40}) == EXAMPLE_RIDE
    with pytest.raises(BadRide, match="trip_distance"):
        ModelService.validate({"PULocationID": 10, "DOLocationID": 50, "trip_distance": "far"})
