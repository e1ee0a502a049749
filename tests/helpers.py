"""What tests share besides fixtures: the project root, real-data checks, environment and tracking-store
blocks, the web service's gunicorn command, stand-in models and a stand-in registry of them. Tests import
it as `tests.helpers`."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ride_duration import local_stack
from ride_duration.data import month_filename
from ride_duration.settings import PROJECT_ROOT, Settings, exported

if TYPE_CHECKING:
    from ride_duration.serving import ModelService

ROOT = PROJECT_ROOT
IN_CI = os.environ.get("CI") == "true"


def data_folder() -> Path:
    """Where the project looks for TLC months: TAXI_DATA_DIR, else data/."""
    return Settings.from_environ().taxi_data_dir


def has_real_month(taxi_type: str, year: int, month: int) -> bool:
    return (data_folder() / month_filename(taxi_type, year, month)).exists()


def require_real_months(*months: tuple[str, int, int]) -> None:
    """Skip on a reader's clone without the files; in CI (TAXI_DATA_DIR set) a missing file fails."""
    missing = [month_filename(*m) for m in months if not has_real_month(*m)]
    if missing:
        if IN_CI:
            pytest.fail(f"CI must run real-data tests but TAXI_DATA_DIR lacks {missing}")
        pytest.skip(f"real TLC data not available: {missing} (set TAXI_DATA_DIR)")


def real_green_months() -> list[tuple[int, int]]:
    """Every green month in the data folder, as (year, month)."""
    found = []
    for path in sorted(data_folder().glob("green_tripdata_*.parquet")):
        year, month = path.stem.rsplit("_", 1)[1].split("-")
        found.append((int(year), int(month)))
    return found


@contextmanager
def tracking_store(uri: str):
    """Use this MLflow tracking URI (env and MLflow's global) inside the block, then restore both."""
    import mlflow

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    with exported({"MLFLOW_TRACKING_URI": uri}):
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
    env = {"BIND": f"{local_stack.HOST}:{port}", "PROMETHEUS_MULTIPROC_DIR": "", **env}
    return local_stack.start(WEB_SERVICE_COMMAND, log, f"{url}/health", env=env), url, log


def stand_in_model(version: str = "m-stand-in", *, slope: float = 2.0, regressor=None, max_miles=None):
    """A real ride pipeline fitted in memory on a few made-up rides (no data, no registry), as a LoadedModel.

    Its durations are about 5 + slope * distance minutes, plus a little by zone pair; `version` is what
    every prediction it makes carries. max_miles: cap the distance first (train.make_pipeline).
    """
    import numpy as np
    from sklearn.linear_model import LinearRegression

    from ride_duration import train
    from ride_duration.features import ride_features
    from ride_duration.model import LoadedModel

    generator = np.random.default_rng(7)
    rides = [
        {
            "PULocationID": int(generator.integers(1, 20)),
            "DOLocationID": int(generator.integers(1, 20)),
            "trip_distance": float(generator.uniform(0.1, 15)),
        }
        for _ in range(300)
    ]
    durations = [5 + slope * r["trip_distance"] + (r["PULocationID"] % 3) for r in rides]
    pipeline = train.make_pipeline(LinearRegression() if regressor is None else regressor, max_miles)
    pipeline.fit([ride_features(r) for r in rides], durations)
    return LoadedModel(pipeline=pipeline, model_id=version, uri=f"memory://{version}")


class StandInRegistry:
    """Versions of ride-duration as stand-in models (version N predicts with slope N), and where @production points."""

    def __init__(self, production: int = 1):
        self.production = production
        self.down = False
        self.loads = []

    def resolve(self, uri: str) -> str:
        assert uri == "models:/ride-duration@production"
        if self.down:
            raise ConnectionError("the tracking server is not answering")
        return f"ride-duration/{self.production}"

    def load(self, uri: str):
        self.loads.append(uri)
        number = int(uri.rpartition("/")[2])
        model = stand_in_model(f"m-{number}", slope=float(number))
        if number < 0:  # a version that fails its self-check
            model.pipeline.steps[1][1].intercept_ = float("nan")
        return model

    def service(self, **options) -> ModelService:
        """A service following @production, checking at most once a second."""
        from ride_duration.serving import ModelService

        settings = Settings.from_environ({"MODEL_POLL_SECONDS": "1"})
        uri = "models:/ride-duration@production"
        return ModelService(uri, settings=settings, loader=self.load, resolver=self.resolve, **options)


class Clock:
    """Stands for the time module of ride_duration.serving (monkeypatch it there): time moves when a test says."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def time(self):
        return self.now


@contextmanager
def registry_server(folder: Path, logs_dir: Path):
    """A real `mlflow server` on a free loopback port (sqlite and artifacts in folder); yields the Settings
    naming it as the tracking server, and stops it after the block."""
    import dataclasses

    port = local_stack.free_port()
    server = local_stack.start_mlflow(
        port, logs_dir / f"mlflow-{port}.log", f"sqlite:///{folder / 'mlflow.db'}", str(folder / "artifacts")
    )
    try:
        yield dataclasses.replace(Settings.from_environ(), mlflow_tracking_uri=f"http://{local_stack.HOST}:{port}")
    finally:
        local_stack.stop(server)


def register_stand_ins(settings: Settings, slopes: list[float]) -> list[dict]:
    """Log a stand-in pipeline per slope to the tracking server of settings and register them as versions
    1, 2, ... of ride-duration, with @production at version 1. Returns each version's number, model id
    and in-memory pipeline, in order."""
    from mlflow import register_model

    from ride_duration import train
    from ride_duration.model import REGISTERED_MODEL

    versions = []
    with tracking_store(settings.tracking_uri):
        train.setup_tracking(settings=settings)
        for slope in slopes:
            pipeline = stand_in_model(slope=slope).pipeline
            info = train.log_pipeline(pipeline, params={"slope": slope}, metrics={"val_rmse": 1.0}, tags={})
            registered = register_model(f"models:/{info.model_id}", REGISTERED_MODEL)
            versions.append({"number": int(registered.version), "model_id": info.model_id, "pipeline": pipeline})
    move_alias(settings, versions[0]["number"])
    return versions


def move_alias(settings: Settings, number: int, alias: str = "production") -> None:
    """Point ride-duration@alias at version `number` (by hand, past the gate: a promotion, or a rollback)."""
    from mlflow import MlflowClient

    from ride_duration.model import REGISTERED_MODEL

    MlflowClient(settings.tracking_uri).set_registered_model_alias(REGISTERED_MODEL, alias, str(number))


NGINX_SITE = ROOT / "web-service" / "nginx" / "ride-duration.conf"
# The two addresses in the committed site file that a test replaces with free loopback ports.
NGINX_SITE_LISTEN = "listen 80 default_server;"
NGINX_SITE_UPSTREAM = "server 127.0.0.1:9696;"


def nginx_binary() -> str:
    """Debian's nginx (/usr/sbin is not on every user's PATH); a missing nginx fails with the way to install it."""
    import shutil

    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail(
            "nginx is not installed; the proxy's tests run Debian's: "
            "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx"
        )
    return found


def start_nginx(folder: Path, upstream: str):
    """web-service/nginx/ride-duration.conf in an nginx of its own (prefix, pid, logs and temporary folders in
    folder; its own process group), listening on a free loopback port and proxying to `upstream` (host:port).
    Returns (process, base URL, error log)."""
    port = local_stack.free_port()
    site = NGINX_SITE.read_text()
    for committed, used in (
        (NGINX_SITE_LISTEN, f"listen {local_stack.HOST}:{port};"),
        (NGINX_SITE_UPSTREAM, f"server {upstream};"),
    ):
        assert site.count(committed) == 1, f"{NGINX_SITE.name} should say {committed!r} once"
        site = site.replace(committed, used)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ride-duration.conf").write_text(site)
    temporary = "\n".join(
        f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (folder / "nginx.conf").write_text(
        f"""daemon off;
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
{temporary}
    include {folder / "ride-duration.conf"};
}}
"""
    )
    log = folder / "error.log"
    command = [nginx_binary(), "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(log)]
    url = f"http://{local_stack.HOST}:{port}"
    return local_stack.start(command, log, f"{url}/health"), url, log
