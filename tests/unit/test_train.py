"""The parts of training and promotion that need no tracking store: where an embedded store keeps its
artifacts, how a run's validation data is read and named. (tests/integration/test_promotion.py runs the
gate against a real registry.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from ride_duration import lifecycle, train


def run(model_id: str = "m-new", val_rmse: float = 6.5, **data):
    """A stand-in for mlflow.entities.Run: what judge and validation_data read of one."""
    params = {"taxi_type": data.get("taxi_type", "green"), "val_month": data.get("val_month", "2021-02")}
    return SimpleNamespace(
        data=SimpleNamespace(
            params=params, tags={"data_source": data.get("data_source", "tlc")}, metrics={"val_rmse": val_rmse}
        ),
        outputs=SimpleNamespace(model_outputs=[SimpleNamespace(model_id=model_id)]),
    )


def test_an_embedded_store_keeps_its_artifacts_beside_its_database(tmp_path):
    assert train.sqlite_artifact_location(f"sqlite:///{tmp_path}/mlflow.db") == (tmp_path / "mlartifacts").as_uri()
    assert train.sqlite_artifact_location("sqlite:///mlflow.db") == (Path.cwd() / "mlartifacts").as_uri()
    assert train.sqlite_artifact_location("http://127.0.0.1:5000") is None


def test_validation_data_is_read_from_params_and_tags_and_named_in_a_few_words():
    data = train.validation_data(run(data_source="synthetic", val_month="2021-03"))
    assert data == {"taxi_type": "green", "val_month": "2021-03", "data_source": "synthetic"}
    assert train.describe_data(data) == "green 2021-03 (synthetic)"
    assert train.describe_data({"taxi_type": None, "val_month": None, "data_source": None}) == "? ? (unknown source)"


def test_a_versions_model_id_is_its_own_or_the_one_its_source_names():
    assert lifecycle.version_model_id(SimpleNamespace(model_id="m-1", source="models:/m-2")) == "m-1"
    assert lifecycle.version_model_id(SimpleNamespace(model_id="", source="models:/m-2")) == "m-2"


def test_a_capped_pipeline_has_the_cap_first_and_minutes_per_mile_read_below_it():
    from sklearn.linear_model import LinearRegression

    from ride_duration.features import ClipDistance

    assert [name for name, _ in train.make_pipeline(LinearRegression()).steps] == ["vectorizer", "regressor"]
    pipeline = train.make_pipeline(LinearRegression(), max_miles=5.0)
    assert [name for name, _ in pipeline.steps] == ["clip_distance", "vectorizer", "regressor"]
    assert isinstance(pipeline.steps[0][1], ClipDistance) and pipeline.steps[0][1].max_miles == 5.0
    features = [{"PU_DO": f"{i % 3}_1", "trip_distance": float(i % 5)} for i in range(60)]  # below the cap
    pipeline.fit(features, [4 + 2.5 * f["trip_distance"] for f in features])
    assert train.minutes_per_mile(pipeline) == pytest.approx(2.5)
    assert pipeline.predict([{"PU_DO": "1_1", "trip_distance": 500.0}]) == pytest.approx([4 + 2.5 * 5])


def test_the_course_forest_trains_on_every_core_and_predicts_on_one():
    import pandas as pd

    rides = pd.DataFrame(
        {"PULocationID": [1, 2] * 50, "DOLocationID": [3] * 100, "trip_distance": [i / 10 for i in range(100)]}
    ).assign(duration=lambda df: 3 + 2 * df["trip_distance"])
    forest = train.fit_forest(rides, n_estimators=3)
    regressor = forest.steps[-1][1]
    assert len(regressor.estimators_) == 3 and regressor.n_jobs == 1
    assert {k: v for k, v in regressor.get_params().items() if k in train.FOREST_PARAMS} == {
        **train.FOREST_PARAMS,
        "n_estimators": 3,
    }
