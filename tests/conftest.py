"""Shared fixtures: real services on free loopback ports, real data when there is some, and a
registered model made in seconds (the same steps as notebooks 01 and 02, called directly)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from ride_duration import local_stack
from ride_duration.data import month_filename

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI") == "true"

# No test may reach real AWS: dummy credentials from the start; the moto fixture adds the endpoint.
os.environ.update(local_stack.LOCAL_AWS_ENV)
os.environ.pop("AWS_PROFILE", None)


def has_real_month(taxi_type: str, year: int, month: int) -> bool:
    folder = os.environ.get("TAXI_DATA_DIR")
    return bool(folder) and (Path(folder) / month_filename(taxi_type, year, month)).exists()


def require_real_months(*months: tuple[str, int, int]) -> None:
    """Skip on a reader's clone without the files; in CI (TAXI_DATA_DIR set) a missing file fails."""
    missing = [month_filename(*m) for m in months if not has_real_month(*m)]
    if missing:
        if IN_CI:
            pytest.fail(f"CI must run real-data tests but TAXI_DATA_DIR lacks {missing}")
        pytest.skip(f"real TLC data not available: {missing} (set TAXI_DATA_DIR)")


def real_green_months() -> list[tuple[int, int]]:
    """Every green month in TAXI_DATA_DIR, as (year, month)."""
    folder = os.environ.get("TAXI_DATA_DIR")
    if not folder:
        return []
    found = []
    for path in sorted(Path(folder).glob("green_tripdata_*.parquet")):
        year, month = path.stem.rsplit("_", 1)[1].split("-")
        found.append((int(year), int(month)))
    return found


@contextmanager
def environment(values: dict):
    """Set these environment variables inside the block (this process and its children), then
    restore what was there before."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def tracking_store(uri: str):
    """Use this MLflow tracking URI (env and MLflow's global) inside the block, then restore both."""
    import mlflow

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    with environment({"MLFLOW_TRACKING_URI": uri}):
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(saved or "")


WEB_SERVICE_COMMAND = [
    local_stack.bin_path("gunicorn"),
    "-c",
    str(ROOT / "web-service" / "gunicorn.conf.py"),
    "predict:app",
]


def start_web_service(logs_dir: Path, name: str, env: dict):
    """web-service/predict.py under gunicorn on a free loopback port; returns (process, base URL, log)."""
    port = local_stack.free_port()
    url = f"http://{local_stack.HOST}:{port}"
    log = logs_dir / f"{name}-{port}.log"
    env = {"BIND": f"{local_stack.HOST}:{port}", "API_KEY": "", "PROMETHEUS_MULTIPROC_DIR": "", **env}
    return local_stack.start(WEB_SERVICE_COMMAND, log, f"{url}/health", env=env), url, log


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
        with environment(local_stack.aws_env(url)):
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
    """A LinearRegression pipeline trained like notebook 01 and registered like notebook 02, in an
    embedded tracking store of its own (use it with `tracking_store(model["tracking_uri"])`).
    Returns the URIs and the in-memory pipeline."""
    from sklearn.linear_model import LinearRegression

    from ride_duration import train
    from ride_duration.data import read_month, training_rides
    from ride_duration.model import artifact_uri

    folder = tmp_path_factory.mktemp("mlflow")
    with tracking_store(f"sqlite:///{folder / 'mlflow.db'}") as uri:
        train.setup_tracking()
        synthetic = training_months["synthetic"]
        taxi = training_months["taxi_type"]
        rides = training_rides(read_month(taxi, *training_months["train"], synthetic=synthetic), taxi)
        val = training_rides(read_month(taxi, *training_months["val"], synthetic=synthetic), taxi)
        pipeline = train.fit(train.make_pipeline(LinearRegression()), rides)
        info = train.log_pipeline(
            pipeline,
            params={
                "regressor": "LinearRegression",
                "taxi_type": taxi,
                "train_month": "2021-01",
                "val_month": "2021-02",
            },
            metrics={"val_rmse": train.rmse(pipeline, val)},
            tags={"data_source": "synthetic" if synthetic else "tlc"},
        )
        version = train.register_best()
        model = {
            "uri": "models:/ride-duration@production",
            "model_id": info.model_id,
            "artifact_uri": artifact_uri("models:/ride-duration@production"),
            "version": version.version,
            "pipeline": pipeline,
            "tracking_uri": uri,
        }
    return model
