"""One ride, one number: every way of serving the model gives each ride the same prediction (to 1e-9).

Each scorer takes (rides, registered_model, tmp_path) and returns one prediction per ride, in order: the
registered model loaded by alias and by artifact URI, every adapter of tests/adapters.py in this process
(the same suite tests/unit/test_adapters.py runs on stand-in models), and the deployments as they run:
gunicorn, scripts/score.py as a command, the Lambda handler as Lambda calls it. A new way of serving adds
its adapter to tests/adapters.py; the test compares every scorer against the trained pipeline.

The models are notebook 01's kinds, trained on real green 2021-01 where it is present and registered: the
course's LinearRegression, a Ridge on the plausible rides with its distance capped (ClipDistance: served as
stand-ins without scikit-learn by score.py and the Lambda handler) and the course's random forest, with 10
trees instead of 100 to save time (the same code path; without scikit-learn it is unpickled for real).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.linear_model import Ridge

from ride_duration import local_stack, train
from ride_duration.batch import read_output
from ride_duration.data import plausible_rides, read_month, training_rides, write_month_file
from ride_duration.features import ride_features
from ride_duration.integrity import MODEL_SHA256_TAG
from ride_duration.model import PRODUCTION_ALIAS, REGISTERED_MODEL, artifact_uri, load_model, quiet_mlflow
from ride_duration.rides import validate_ride
from ride_duration.serving import ModelService
from ride_duration.settings import exported
from tests.adapters import ADAPTERS
from tests.helpers import ROOT, start_web_service, tracking_store

TOLERANCE = 1e-9

# Rides at the edges: a pair never seen in training, the "unknown" zones, no distance, a long ride.
EDGE_RIDES = [
    {"PULocationID": 1, "DOLocationID": 1, "trip_distance": 3.0},
    {"PULocationID": 264, "DOLocationID": 265, "trip_distance": 1.2},
    {"PULocationID": 74, "DOLocationID": 75, "trip_distance": 0.0},
    {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 999.0},
]


@pytest.fixture(scope="module")
def parity_rides() -> list[dict]:
    """200 rides of green 2021-03 (synthetic where the real month is absent) plus the edge rides."""
    month = read_month("green", 2021, 3, synthetic="fallback").sample(200, random_state=3)
    rides = [
        {"PULocationID": int(pu), "DOLocationID": int(do), "trip_distance": float(distance)}
        for pu, do, distance in zip(month["PULocationID"], month["DOLocationID"], month["trip_distance"])
    ]
    return [validate_ride(ride) for ride in rides + EDGE_RIDES]


def registered(pipeline, folder: Path) -> dict:
    """The pipeline logged and registered as REGISTERED_MODEL@PRODUCTION_ALIAS in an embedded store of its own,
    as the registered_model fixture gives it."""
    import mlflow
    from mlflow import MlflowClient

    with tracking_store(f"sqlite:///{folder / 'mlflow.db'}") as uri:
        train.setup_tracking()
        info = train.log_pipeline(pipeline, params={"regressor": type(pipeline[-1]).__name__}, metrics={}, tags={})
        with quiet_mlflow():
            version = mlflow.register_model(f"models:/{info.model_id}", REGISTERED_MODEL)
        MlflowClient().set_registered_model_alias(REGISTERED_MODEL, PRODUCTION_ALIAS, version.version)
        alias = f"models:/{REGISTERED_MODEL}@{PRODUCTION_ALIAS}"
        return {
            "uri": alias,
            "model_id": info.model_id,
            "artifact_uri": artifact_uri(alias),
            "pipeline": pipeline,
            "tracking_uri": uri,
            "sha256": MlflowClient().get_logged_model(info.model_id).tags[MODEL_SHA256_TAG],
        }


@pytest.fixture(scope="module", params=["LinearRegression", "Ridge, distance capped", "random forest, 10 trees"])
def served_model(request, tmp_path_factory, training_months) -> dict:
    """Each kind of model notebook 01 trains, registered: the registered_model fixture's, and two more (whose
    sha256 is MODEL_SHA256 while their tests run, as a deployment of their artifact URI sets it)."""
    if request.param == "LinearRegression":
        yield request.getfixturevalue("registered_model")
        return
    taxi = training_months["taxi_type"]
    month = read_month(taxi, *training_months["train"], synthetic=training_months["synthetic"])
    rides, _ = plausible_rides(training_rides(month, taxi))
    if request.param == "Ridge, distance capped":
        pipeline = train.fit(train.make_pipeline(Ridge(alpha=1.0), float(rides["trip_distance"].max())), rides)
    else:
        pipeline = train.fit_forest(rides, n_estimators=10)
    model = registered(pipeline, tmp_path_factory.mktemp("parity-model"))
    with exported({"MODEL_SHA256": model["sha256"]}):
        yield model


def trained_pipeline(rides, model, tmp_path):
    return model["pipeline"].predict([ride_features(r) for r in rides])


def registered_by_alias(rides, model, tmp_path):
    with tracking_store(model["tracking_uri"]):
        loaded = load_model(model["uri"])
    return loaded.pipeline.predict([ride_features(r) for r in rides])


def registered_by_artifact_uri(rides, model, tmp_path):
    return load_model(model["artifact_uri"]).pipeline.predict([ride_features(r) for r in rides])


def in_process(adapter):
    """One of tests/adapters.py's adapters, serving the registered model from its artifact URI."""

    def scorer(rides, model, tmp_path):
        answers = adapter(ModelService(model["artifact_uri"]), rides)
        assert {version for _, version in answers} == {model["model_id"]}
        return [duration for duration, _ in answers]

    return scorer


def score_py(rides, model, tmp_path):
    """The batch scorer as deployed: the rides as a TLC month file, scored by scripts/score.py."""
    pickup = pd.Timestamp("2021-03-15 08:00:00")
    month = pd.DataFrame(
        {
            "lpep_pickup_datetime": [pickup] * len(rides),
            "lpep_dropoff_datetime": [pickup + pd.Timedelta(minutes=10)] * len(rides),
            "PULocationID": [r["PULocationID"] for r in rides],
            "DOLocationID": [r["DOLocationID"] for r in rides],
            "trip_distance": [r["trip_distance"] for r in rides],
        }
    )
    source = write_month_file(month, tmp_path / "parity-rides.parquet")
    output = tmp_path / "parity-scored.parquet"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "score.py"),
            "--year",
            "2021",
            "--month",
            "3",
            "--model-uri",
            model["artifact_uri"],
            "--input",
            str(source),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    scored = read_output(output)
    assert scored["ride_id"].tolist() == [f"2021/03_{i}" for i in range(len(rides))]
    return scored["predicted_duration"].to_numpy()


def web_service(rides, model, tmp_path):
    """web-service/predict.py under gunicorn, served from the artifact URI, one list request."""
    process, url, log = start_web_service(tmp_path, "parity-web", {"MODEL_URI": model["artifact_uri"]})
    try:
        response = requests.post(f"{url}/predict", json=rides, timeout=30)
    finally:
        local_stack.stop(process)
    assert response.status_code == 200, response.text
    answers = response.json()
    assert {a["model_version"] for a in answers} == {model["model_id"]}
    return [a["duration"] for a in answers]


def lambda_handler(rides, model, tmp_path):
    """streaming/lambda_function.py on one Kinesis event of every ride, in dry-run (no stream needed)."""
    sys.path.insert(0, str(ROOT / "streaming"))
    import lambda_function
    import runner

    records = [
        {
            "Data": json.dumps({"ride": ride, "ride_id": i}).encode(),
            "PartitionKey": str(i),
            "SequenceNumber": str(1000 + i),
            "ApproximateArrivalTimestamp": datetime.now(UTC),
        }
        for i, ride in enumerate(rides)
    ]
    event = runner.lambda_event(records, "shardId-000000000000", "arn:aws:kinesis:us-east-1:000000000000:stream/rides")
    with exported({"MODEL_URI": model["artifact_uri"], "DRY_RUN": "1"}):
        lambda_function.reset_container()
        try:
            response = lambda_function.lambda_handler(event, None)
        finally:
            lambda_function.reset_container()
    assert response["batchItemFailures"] == []
    outputs = sorted(response["predictions"], key=lambda p: p["prediction"]["ride_id"])
    assert [p["prediction"]["ride_id"] for p in outputs] == list(range(len(rides)))
    assert {p["version"] for p in outputs} == {model["model_id"]}
    return [p["prediction"]["ride_duration"] for p in outputs]


# Each way of serving the model.
SCORERS = {
    "trained pipeline": trained_pipeline,
    "registered model by alias": registered_by_alias,
    "registered model by artifact URI": registered_by_artifact_uri,
    **{f"in process: {name}": in_process(adapter) for name, adapter in ADAPTERS.items()},
    "scripts/score.py": score_py,
    "web service (gunicorn)": web_service,
    "Lambda handler": lambda_handler,
}


def test_every_way_gives_each_ride_the_same_number(parity_rides, served_model, tmp_path):
    reference = np.asarray(trained_pipeline(parity_rides, served_model, tmp_path), dtype=float)
    assert reference.shape == (len(parity_rides),) and np.all(np.isfinite(reference))
    worst = {}
    for name, scorer in SCORERS.items():
        predictions = np.asarray(scorer(parity_rides, served_model, Path(tmp_path)), dtype=float)
        assert predictions.shape == reference.shape, name
        worst[name] = float(np.max(np.abs(predictions - reference)))
    assert all(error <= TOLERANCE for error in worst.values()), f"largest difference per scorer: {worst}"
