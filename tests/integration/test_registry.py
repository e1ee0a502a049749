"""The registered model loads by alias, by id and by artifact URI, and from s3:// with the
tracking server stopped. (tests/unit/test_model.py: the URIs that fail without a server.)"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ride_duration import lifecycle, local_stack, train
from ride_duration.features import ride_features
from ride_duration.model import ModelLoadError, artifact_uri, load_model
from ride_duration.settings import Settings
from tests.helpers import tracking_store

RIDES = [
    {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40.0},
    {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66},
    {"PULocationID": 264, "DOLocationID": 1, "trip_distance": 0.0},
]
FEATURES = [ride_features(r) for r in RIDES]


@pytest.fixture
def tracking(registered_model):
    with tracking_store(registered_model["tracking_uri"]):
        yield registered_model


def test_loads_by_alias_id_and_artifact_uri(tracking):
    expected = tracking["pipeline"].predict(FEATURES)
    for uri in (tracking["uri"], f"models:/{tracking['model_id']}", tracking["artifact_uri"]):
        loaded = load_model(uri)
        assert loaded.version == tracking["model_id"]
        assert np.array_equal(loaded.pipeline.predict(FEATURES), expected), uri
    assert load_model(tracking["uri"]).registered_version == f"ride-duration/{tracking['version']}"


def test_production_model_loads_from_s3_with_the_tracking_server_stopped(
    registered_model, moto_url, logs_dir, tmp_path
):
    local_stack.ensure_bucket()
    port = local_stack.free_port()
    server = local_stack.start_mlflow(
        port,
        logs_dir / "mlflow-registry.log",
        f"sqlite:///{tmp_path / 'server.db'}",
        f"s3://{local_stack.ARTIFACT_BUCKET}/registry-test",
        env=local_stack.aws_env(moto_url),
    )
    # The environment names the embedded store; the settings handed to each step name the server, and win.
    server_settings = replace(Settings.from_environ(), mlflow_tracking_uri=f"http://127.0.0.1:{port}")
    try:
        with tracking_store(registered_model["tracking_uri"]):
            train.setup_tracking(settings=server_settings)
            train.log_pipeline(registered_model["pipeline"], **registered_model["run"])
            assert lifecycle.register_best(settings=server_settings).promoted
            before = load_model("models:/ride-duration@production", settings=server_settings)
            s3_uri = artifact_uri("models:/ride-duration@production", server_settings)
    finally:
        local_stack.stop(server)
    assert s3_uri.startswith("s3://mlflow-artifacts/registry-test/")
    served = load_model(s3_uri)  # tracking server is down now
    assert served.version == before.version
    assert np.array_equal(served.pipeline.predict(FEATURES), before.pipeline.predict(FEATURES))
    assert np.array_equal(served.pipeline.predict(FEATURES), registered_model["pipeline"].predict(FEATURES))


def test_an_empty_s3_prefix_gives_a_one_line_reason(moto_url):
    with pytest.raises(ModelLoadError, match="nothing stored under that S3 prefix") as error:
        load_model("s3://mlflow-artifacts/nothing-here")
    assert "\n" not in str(error.value)
