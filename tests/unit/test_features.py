"""Ride validation and the fast path's contract (same answers as pipeline.predict)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from ride_duration import data, train
from ride_duration.features import FastPredictor, frame_features, ride_features
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
    """load_model(without_sklearn=True): stand-ins for a linear ride pipeline (same answers), the real
    pipeline for anything else."""
    import pickle

    from sklearn.feature_extraction import DictVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler

    from ride_duration.model import load_model

    linear = train.fit(train.make_pipeline(LinearRegression()), synthetic_rides)
    scaled = make_pipeline(DictVectorizer(), MaxAbsScaler(), LinearRegression())
    scaled.fit(frame_features(synthetic_rides), synthetic_rides["duration"])
    other = data.synthetic_month("green", 2021, 2, n_rides=5_000)
    other.loc[:50, "PULocationID"] = 265  # pairs never seen in training
    for name, pipeline in [("linear", linear), ("scaled", scaled)]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "MLmodel").write_text(
            "flavors:\n  sklearn:\n    pickled_model: model.pkl\n    serialization_format: pickle\nmodel_id: m-test\n"
        )
        (folder / "model.pkl").write_bytes(pickle.dumps(pipeline))
        loaded = load_model(str(folder), without_sklearn=True)
        assert isinstance(loaded.pipeline, type(pipeline)) == (name == "scaled"), name
        fast = FastPredictor(loaded.pipeline)
        assert fast.linear == (name == "linear")
        assert np.array_equal(fast.predict_columns(other), pipeline.predict(frame_features(other)))


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
