"""Shared fixtures: real services on free loopback ports, real data when there is some, and a
registered model made in seconds (the same steps as notebooks 01 and 02, called directly).

Tests in tests/unit are marked `unit` (no servers, no subprocesses, no registry), those in
tests/integration `integration`; helpers that are not fixtures are in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ride_duration import local_stack
from ride_duration.integrity import MODEL_SHA256_TAG
from ride_duration.settings import export, exported
from tests.helpers import IN_CI, has_real_month, register_stand_ins, registry_server, tracking_store

# No test may reach real AWS: dummy credentials from the start; the moto fixture adds the endpoint.
os.environ.update(local_stack.LOCAL_AWS_ENV)
os.environ.pop("AWS_PROFILE", None)
# The web service's keys are each test's to set (an empty one stops the service): none from the shell.
for key in ("API_KEY", "METRICS_API_KEY"):
    os.environ.pop(key, None)

LAYERS = ("unit", "integration")


def pytest_collection_modifyitems(items):
    """Mark each test with its layer, the folder it is in (tests/integration/faults/ is integration too)."""
    for item in items:
        layer = next((folder.name for folder in Path(item.path).parents if folder.name in LAYERS), None)
        if layer:
            item.add_marker(layer)


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def moto_url(logs_dir):
    """A real moto_server on a free loopback port; AWS_ENDPOINT_URL points every boto3 client at it."""
    port = local_stack.free_port()
    process = local_stack.start_moto(port, logs_dir / "moto.log")
    url = f"http://{local_stack.HOST}:{port}"
    try:
        with exported(local_stack.aws_env(url)):
            yield url
    finally:
        local_stack.stop(process)


@pytest.fixture(scope="session")
def training_months():
    """(taxi type, train month, validation month, synthetic?): real green 2021-01/02 when present."""
    real = has_real_month("green", 2021, 1) and has_real_month("green", 2021, 2)
    if IN_CI and not real:
        pytest.fail("CI must train on real green 2021-01/02: set TAXI_DATA_DIR")
    return {"taxi_type": "green", "train": (2021, 1), "val": (2021, 2), "synthetic": not real}


@pytest.fixture(scope="session")
def registered_model(tmp_path_factory, training_months):
    """A LinearRegression pipeline trained like notebook 01 (on plausible rides, its distance capped) and promoted
    through the gate like notebook 02, in an
    embedded tracking store of its own (use it with `tracking_store(model["tracking_uri"])`).
    Returns the URIs, the sha256 its version recorded and the in-memory pipeline. That sha256 is exported as
    MODEL_SHA256 for the session, as a deployment of the artifact URI sets it (registry URIs do not read it)."""
    from sklearn.linear_model import LinearRegression

    from ride_duration import lifecycle, train
    from ride_duration.data import plausible_rides, read_month, training_rides
    from ride_duration.model import artifact_uri

    folder = tmp_path_factory.mktemp("mlflow")
    with tracking_store(f"sqlite:///{folder / 'mlflow.db'}") as uri:
        train.setup_tracking()
        synthetic = training_months["synthetic"]
        taxi = training_months["taxi_type"]
        rides = training_rides(read_month(taxi, *training_months["train"], synthetic=synthetic), taxi)
        val = training_rides(read_month(taxi, *training_months["val"], synthetic=synthetic), taxi)
        rides, _ = plausible_rides(rides)
        pipeline = train.fit(train.make_pipeline(LinearRegression(), float(rides["trip_distance"].max())), rides)
        run = {
            "params": {
                "regressor": "LinearRegression",
                "taxi_type": taxi,
                "train_month": "2021-01",
                "val_month": "2021-02",
            },
            "metrics": {"val_rmse": train.rmse(pipeline, val)},
            "tags": {"data_source": "synthetic" if synthetic else "tlc"},
        }
        info = train.log_pipeline(pipeline, **run, reference_rides=val)
        version = lifecycle.register_best()
        assert version.promoted, version.reason
        model = {
            "uri": "models:/ride-duration@production",
            "model_id": info.model_id,
            "artifact_uri": artifact_uri("models:/ride-duration@production"),
            "version": version.version,
            "pipeline": pipeline,
            "run": run,  # what it was logged with: params, metrics, tags
            "tracking_uri": uri,
            "sha256": version.challenger.tags[MODEL_SHA256_TAG],
        }
    export({"MODEL_SHA256": model["sha256"]})
    return model


@pytest.fixture(scope="session")
def two_versions(tmp_path_factory, logs_dir):
    """A real MLflow server on a free loopback port holding versions 1 (slope 1) and 2 (slope 3) of ride-duration,
    stand-in pipelines that predict differently: (settings naming the server, [version 1, version 2]). Tests
    that move @production start by pointing it at version 1 (tests.helpers.move_alias)."""
    with registry_server(tmp_path_factory.mktemp("two-versions"), logs_dir) as settings:
        yield settings, register_stand_ins(settings, [1.0, 3.0])
