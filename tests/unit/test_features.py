"""Ride validation and the fast path's contract (same answers as pipeline.predict)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from ride_duration import data, train
from ride_duration.features import ClipDistance, FastPredictor, frame_features, ride_features
from ride_duration.rides import BadRide, validate_ride


@pytest.fixture(scope="module")
def synthetic_rides():
    return data.training_rides(data.synthetic_month("green", 2021, 1, n_rides=20_000), "green")


def test_pu_do_is_a_string():
    assert ride_features({"PULocationID": 1, "DOLocationID": 23, "trip_distance": 2.0})["PU_DO"] == "1_23"


@pytest.mark.parametrize(
    "ride, message",
    [
        ([1, 2, 3], "JSON object"),
        ({"PULocationID": 1, "DOLocationID": 2}, "missing field"),
        ({"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1, "tip": 3}, "unknown field"),
        ({"PULocationID": "1", "DOLocationID": 2, "trip_distance": 1}, "PULocationID must be an integer"),
        ({"PULocationID": True, "DOLocationID": 2, "trip_distance": 1}, "PULocationID must be an integer"),
        ({"PULocationID": 1, "DOLocationID": 0, "trip_distance": 1}, "DOLocationID must be between"),
        ({"PULocationID": 1, "DOLocationID": 2, "trip_distance": -1}, "trip_distance must be between"),
        ({"PULocationID": 1, "DOLocationID": 2, "trip_distance": float("nan")}, "trip_distance must be between"),
        ({"PULocationID": 1, "DOLocationID": 2, "trip_distance": "far"}, "number of miles"),
    ],
)
def test_bad_rides_say_what_is_wrong(ride, message):
    with pytest.raises(BadRide, match=message):
        validate_ride(ride)


def test_fast_path_equals_pipeline_predict_including_unseen_pairs(synthetic_rides):
    pipeline = train.fit(train.make_pipeline(LinearRegression()), synthetic_rides)
    fast = FastPredictor(pipeline)
    assert fast.fast
    other = data.synthetic_month("green", 2021, 2, n_rides=20_000)
    other.loc[:50, "PULocationID"] = 265  # pairs never seen in training
    expected = pipeline.predict(frame_features(other))
    assert np.array_equal(fast.predict_columns(other), expected)


def test_unrecognised_pipeline_falls_back_to_its_own_predict(synthetic_rides):
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler

    pipeline = make_pipeline(DictVectorizer(), MaxAbsScaler(), LinearRegression())
    pipeline.fit(frame_features(synthetic_rides), synthetic_rides["duration"])
    fast = FastPredictor(pipeline)
    assert not fast.fast
    rides = synthetic_rides.head(500)
    assert np.array_equal(fast.predict_columns(rides), pipeline.predict(frame_features(rides)))


def test_loading_without_sklearn_serves_linear_pipelines_only(synthetic_rides, tmp_path):
    """load_model(without_sklearn=True): stand-ins for a linear ride pipeline, with or without a distance cap
    (same answers), the real pipeline for a forest; a step no ride pipeline has is refused."""
    import hashlib
    import pickle

    from sklearn.ensemble import RandomForestRegressor
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler

    from ride_duration.model import ModelLoadError, load_model
    from ride_duration.settings import Settings

    scaled = make_pipeline(DictVectorizer(), MaxAbsScaler(), LinearRegression())
    scaled.fit(frame_features(synthetic_rides), synthetic_rides["duration"])
    pipelines = {
        "linear": train.fit(train.make_pipeline(LinearRegression()), synthetic_rides),
        "capped": train.fit(train.make_pipeline(LinearRegression(), max_miles=4.0), synthetic_rides),
        "scaled": scaled,
        "forest": train.fit(
            train.make_pipeline(RandomForestRegressor(n_estimators=5, max_depth=8, random_state=1)),
            synthetic_rides.head(5000),
        ),
    }
    other = data.synthetic_month("green", 2021, 2, n_rides=5_000)
    other.loc[:50, "PULocationID"] = 265  # pairs never seen in training
    other.loc[50:60, "trip_distance"] = 244_152.01  # far past any cap, as in real months
    for name, pipeline in pipelines.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "MLmodel").write_text(
            "flavors:\n  sklearn:\n    pickled_model: model.pkl\n    serialization_format: pickle\nmodel_id: m-test\n"
        )
        pickled = pickle.dumps(pipeline)
        (folder / "model.pkl").write_bytes(pickled)
        settings = Settings.from_environ({"MODEL_SHA256": hashlib.sha256(pickled).hexdigest()})
        if name == "scaled":  # not a step of the project's pipelines: refused by name, unpickled by no one
            with pytest.raises(ModelLoadError, match=r"names sklearn\.preprocessing\._data\.MaxAbsScaler"):
                load_model(str(folder), without_sklearn=True, settings=settings)
            continue
        loaded = load_model(str(folder), without_sklearn=True, settings=settings)
        stand_ins = name in ("linear", "capped")
        assert isinstance(loaded.pipeline, type(pipeline)) != stand_ins, name
        fast = FastPredictor(loaded.pipeline)
        assert fast.linear == stand_ins, name
        assert fast.max_miles == (4.0 if name == "capped" else None), name
        assert np.array_equal(fast.predict_columns(other), pipeline.predict(frame_features(other))), name


def test_clip_distance_caps_the_distance_and_nothing_else():
    clip = ClipDistance(10.0)
    features = [{"PU_DO": "1_2", "trip_distance": 3.5}, {"PU_DO": "3_4", "trip_distance": 244_152.01}]
    assert clip.fit(features).transform(features) == [
        {"PU_DO": "1_2", "trip_distance": 3.5},
        {"PU_DO": "3_4", "trip_distance": 10.0},
    ]
    assert features[1]["trip_distance"] == 244_152.01  # its input is left as it was
    assert clip.get_params() == {"max_miles": 10.0} and repr(clip) == "ClipDistance(max_miles=10.0)"
    assert clip.set_params(max_miles=20.0).max_miles == 20.0
    with pytest.raises(ValueError, match="only max_miles"):
        clip.set_params(miles=3)


@pytest.mark.parametrize("regressor", ["linear", "ridge", "tree"])
def test_a_capped_pipeline_is_served_fast_with_the_same_cap_and_the_same_bits(regressor, synthetic_rides):
    """A ClipDistance step first: FastPredictor applies the cap itself, in every path, and answers as
    pipeline.predict does, bit for bit, below, at and far above the cap."""
    from sklearn.linear_model import Ridge
    from sklearn.tree import DecisionTreeRegressor

    model = {"linear": LinearRegression(), "ridge": Ridge(alpha=1.0), "tree": DecisionTreeRegressor(max_depth=8)}
    pipeline = train.fit(train.make_pipeline(model[regressor], max_miles=3.0), synthetic_rides.head(5000))
    rides = [
        {"PULocationID": int(pu), "DOLocationID": int(do), "trip_distance": distance}
        for pu, do in zip(synthetic_rides["PULocationID"][:40], synthetic_rides["DOLocationID"][:40])
        for distance in (0.0, 1.5, 3.0, 3.01, 7, 999.5)
    ]
    expected = pipeline.predict([ride_features(r) for r in rides])
    fast = FastPredictor(pipeline)
    assert fast.fast and fast.max_miles == 3.0 and fast.linear == (regressor != "tree")
    assert [fast.predict_one(r) for r in rides] == expected.tolist()
    assert np.array_equal(fast.predict_rides(rides), expected)
    columns = {field: np.array([r[field] for r in rides]) for field in rides[0]}
    assert np.array_equal(fast.predict_columns(columns), expected)
    at_cap, seven_miles, far = expected[2::6], expected[4::6], expected[5::6]
    assert np.array_equal(seven_miles, at_cap) and np.array_equal(far, at_cap)


@pytest.mark.parametrize("regressor", ["linear", "ridge", "tree"])
def test_one_ride_and_a_list_of_rides_get_the_pipelines_numbers(regressor, synthetic_rides):
    """predict_one (the web service's path) and predict_rides (a batch of events) against pipeline.predict,
    for a linear regressor (plain floats), and a tree (the sparse matrix, through the regressor)."""
    from sklearn.linear_model import Ridge
    from sklearn.tree import DecisionTreeRegressor

    model = {"linear": LinearRegression(), "ridge": Ridge(alpha=1.0), "tree": DecisionTreeRegressor(max_depth=6)}
    pipeline = train.fit(train.make_pipeline(model[regressor]), synthetic_rides.head(5000))
    rides = [
        validate_ride({"PULocationID": int(pu), "DOLocationID": int(do), "trip_distance": float(distance)})
        for pu, do, distance in zip(
            synthetic_rides["PULocationID"][:300],
            synthetic_rides["DOLocationID"][-300:],
            synthetic_rides["trip_distance"][:300],
        )
    ] + [{"PULocationID": 264, "DOLocationID": 265, "trip_distance": 0.0}]
    expected = pipeline.predict([ride_features(r) for r in rides])
    fast = FastPredictor(pipeline)
    assert fast.linear == (regressor != "tree")
    assert [fast.predict_one(r) for r in rides] == pytest.approx(expected, abs=1e-9)
    assert np.array_equal(fast.predict_rides(rides), expected)
