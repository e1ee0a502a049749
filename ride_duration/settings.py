"""Every environment variable the project reads, with its one default and one line saying what it does.

Nothing else in the project reads `os.environ`: code takes a `Settings` (tests build one with
`Settings.from_environ({...})` or `dataclasses.replace`, no global patching). The few places that must
write the process environment (so that boto3, MLflow or a child process sees a value) do it through
`export` and `child_environment` here.

The READMEs' tables of variables are generated from `Settings` (`markdown_table`), and a test keeps them
in sync.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_URI = "models:/ride-duration@production"

# The groups of variables each component reads (Settings.from_environ(groups=...)).
WEB_SERVICE = ("model", "web")
STREAMING = ("model", "streaming")
BATCH = ("model",)
LOCAL_STACK = ("model", "local")
MONITORING = ("model", "monitoring")
SPARK = ("model", "spark")


class SettingError(ValueError):
    """An environment variable holds a value the project cannot use; the message names it."""


def variable(name: str, default, doc: str, *, group: str, shown: str | None = None, secret: bool = False):
    """A Settings field read from the environment variable `name`; `shown` is the default as the docs show it.

    secret: a key that turns a check on. Set but empty, it is an error rather than the default (no check):
    `API_KEY=$TOKEN` with TOKEN unset must stop the service, not open it."""
    return field(default=default, metadata={"env": name, "doc": doc, "group": group, "shown": shown, "secret": secret})


@dataclass(frozen=True)
class Settings:
    # What every deployment serves or scores
    model_uri: str = variable(
        "MODEL_URI",
        DEFAULT_MODEL_URI,
        "the model to serve or score: `models:/NAME@ALIAS`, `models:/m-...`, `runs:/...`, or the artifact folder as `s3://`, `file://` or a path",
        group="model",
    )
    model_sha256: str = variable(
        "MODEL_SHA256",
        "",
        "for a `runs:/`, `s3://`, `file://` or path `MODEL_URI`: the sha256 of its `model.pkl` (`sha256sum model.pkl`), checked before anything in it is loaded (a `models:/` URI is checked against the hash the registry recorded instead)",
        group="model",
        shown="empty",
    )
    allow_unverified_model: bool = variable(
        "ALLOW_UNVERIFIED_MODEL",
        False,
        "`1`: load a model whose sha256 nobody recorded (for local work only; a hash that does not match is refused anyway)",
        group="model",
    )
    model_poll_seconds: int = variable(
        "MODEL_POLL_SECONDS",
        30,
        "how often a web service or Lambda container started with `models:/NAME@ALIAS` checks where the alias points, and swaps in the version it moved to",
        group="model",
    )
    mlflow_tracking_uri: str = variable(
        "MLFLOW_TRACKING_URI",
        "",
        "MLflow's tracking server or store; unset, the project's own `mlflow.db`",
        group="model",
        shown="`sqlite:///mlflow.db` in the project",
    )
    taxi_data_dir: Path = variable(
        "TAXI_DATA_DIR",
        PROJECT_ROOT / "data",
        "where TLC month files are looked up (and downloaded to) before the TLC site is asked",
        group="model",
        shown="`data/` in the project",
    )
    mlflow_request_timeout: int = variable(
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        5,
        "read by MLflow itself: seconds each request to the tracking server may take (the project's default is "
        "short, so that a start-up with a registry URI and the server down fails fast)",
        group="model",
    )
    mlflow_request_retries: int = variable(
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        2,
        "read by MLflow itself: retries of a failed request to the tracking server, with back-off",
        group="model",
    )
    aws_endpoint_url: str = variable(
        "AWS_ENDPOINT_URL",
        "",
        "read by boto3 itself: the local S3/Kinesis endpoint (moto_server); unset, real AWS",
        group="model",
        shown="unset (real AWS)",
    )
    aws_connect_timeout: int = variable(
        "AWS_CONNECT_TIMEOUT",
        5,
        "seconds every S3 and Kinesis client waits for a connection before it counts as a failed attempt",
        group="model",
    )
    aws_read_timeout: int = variable(
        "AWS_READ_TIMEOUT",
        15,
        "seconds every S3 and Kinesis client waits for an answer before it counts as a failed attempt",
        group="model",
    )
    aws_max_attempts: int = variable(
        "AWS_MAX_ATTEMPTS",
        3,
        "attempts of each S3 and Kinesis call (the first one included, botocore's standard retry mode) before it fails",
        group="model",
    )
    # The web service
    api_key: str = variable(
        "API_KEY",
        "",
        "the `X-API-Key` header `/predict` requires (and `/health` for more than its status); unset, no key is asked; set but empty, an error",
        group="web",
        shown="unset",
        secret=True,
    )
    metrics_api_key: str = variable(
        "METRICS_API_KEY",
        "",
        "the bearer token `/metrics` requires (`Authorization: Bearer ...`, as Prometheus sends it); unset, `/metrics` is open; set but empty, an error",
        group="web",
        shown="unset",
        secret=True,
    )
    max_body_bytes: int = variable(
        "MAX_BODY_BYTES", 256 * 1024, "the largest request body accepted (413 beyond it)", group="web"
    )
    max_rides: int = variable("MAX_RIDES", 1000, "the most rides in one request (413 beyond it)", group="web")
    bind: str = variable(
        "BIND",
        "127.0.0.1:9696",
        "the address gunicorn listens on: loopback, behind nginx (`web-service/nginx/`); the container sets `0.0.0.0:9696`",
        group="web",
    )
    web_concurrency: int = variable("WEB_CONCURRENCY", 2, "gunicorn worker processes (one per core)", group="web")
    gunicorn_threads: int = variable("GUNICORN_THREADS", 4, "threads per gunicorn worker", group="web")
    port: int = variable("PORT", 9696, "the port of Flask's development server (`python predict.py`)", group="web")
    prometheus_multiproc_dir: str = variable(
        "PROMETHEUS_MULTIPROC_DIR",
        "",
        "where gunicorn's workers keep their metrics; unset, a fresh folder per start; a named one (one per service) is emptied of its `.db` files at start",
        group="web",
        shown="a fresh temporary folder",
    )
    # Streaming
    predictions_stream_name: str = variable(
        "PREDICTIONS_STREAM_NAME", "ride_predictions", "the Kinesis stream the predictions go to", group="streaming"
    )
    dry_run: bool = variable(
        "DRY_RUN", False, "`1`: return the predictions instead of writing them to the stream", group="streaming"
    )
    # Batch monitoring
    monitoring_db_url: str = variable(
        "MONITORING_DB_URL",
        "",
        "the SQLAlchemy URL of the database monitoring stores a row per month in (e.g. `postgresql+psycopg://...`)",
        group="monitoring",
        shown="`sqlite:///monitoring.db` in the project",
    )
    monitoring_reports_dir: Path = variable(
        "MONITORING_REPORTS_DIR",
        PROJECT_ROOT / "runs" / "monitoring",
        "where monitoring saves each month's Evidently report (HTML)",
        group="monitoring",
        shown="`runs/monitoring/` in the project",
    )
    retrain_flagged_months: bool = variable(
        "RETRAIN_FLAGGED_MONTHS",
        True,
        "`0`: a month monitoring flags is recorded, no challenger is trained (`1`: retrained and gated)",
        group="monitoring",
        shown="`1`",
    )
    # The local stack (moto_server and the MLflow server on loopback)
    local_stack_dir: Path = variable(
        "LOCAL_STACK_DIR",
        PROJECT_ROOT / ".local-stack",
        "where the local stack keeps its logs, pids, MLflow store and saved S3 objects",
        group="local",
        shown="`.local-stack/` in the project",
    )
    moto_port: int = variable("MOTO_PORT", 4566, "moto_server's port", group="local")
    mlflow_port: int = variable("MLFLOW_PORT", 5000, "the MLflow tracking server's port", group="local")
    # Batch scoring on Spark (scripts/score_spark.py)
    java_home: str = variable(
        "JAVA_HOME",
        "",
        "read by Spark itself: the Java (17 or newer) `scripts/score_spark.py` starts Spark with; unset, `java` on the PATH",
        group="spark",
        shown="unset (`java` on the PATH)",
    )
    spark_driver_memory: str = variable(
        "SPARK_DRIVER_MEMORY",
        "4g",
        "the heap of the Spark driver `scripts/score_spark.py` starts (`spark.driver.memory`): it holds a whole scored month (about 320 MB per 3M rides, as Arrow) before writing it; locally it is the executor too",
        group="spark",
    )
    spark_class_archive: bool = variable(
        "SPARK_CLASS_ARCHIVE",
        True,
        "`0`: a local Spark run neither writes nor uses the JVM class archive (`1`: the first run writes it, taking about half a minute longer, and later runs start from it, 5 to 7 s sooner here)",
        group="spark",
        shown="`1`",
    )
    spark_class_archive_dir: Path = variable(
        "SPARK_CLASS_ARCHIVE_DIR",
        PROJECT_ROOT / ".spark-classes",
        "where local Spark runs keep that archive (about 170 MB, one for the Java and pyspark in use; safe to delete)",
        group="spark",
        shown="`.spark-classes/` in the project",
    )

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, *, groups: tuple[str, ...] | None = None
    ) -> Settings:
        """The settings in `environ` (the process environment if None); unset or empty means the default.

        groups: read only these groups' variables ("model", "web", "streaming", "local"), the others keep
        their defaults, so that a variable a component never uses cannot stop it (Kubernetes, for one,
        sets MLFLOW_PORT=tcp://... in every pod when a service is named mlflow).
        """
        environ = os.environ if environ is None else environ
        values = {}
        for spec in fields(cls):
            if groups is not None and spec.metadata["group"] not in groups:
                continue
            text = environ.get(spec.metadata["env"], "")
            if spec.metadata["secret"] and spec.metadata["env"] in environ and not text.strip():
                raise SettingError(
                    f"{spec.metadata['env']} is set but empty: give the key, or unset it to ask for none"
                )
            if text != "":
                values[spec.name] = parse(spec.metadata["env"], text, type(spec.default))
        return cls(**values)

    @property
    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI, else the project's embedded sqlite store."""
        return self.mlflow_tracking_uri or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"

    @property
    def monitoring_url(self) -> str:
        """MONITORING_DB_URL, else monitoring.db in the project (SQLite)."""
        return self.monitoring_db_url or f"sqlite:///{PROJECT_ROOT / 'monitoring.db'}"


def parse(name: str, text: str, kind: type):
    if kind is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise SettingError(f"{name} must be 1 or 0 (true or false), got {text!r}")
    if kind is int:
        try:
            number = int(text)
        except ValueError:
            number = 0
        if number < 1 or not text.strip().isascii():
            raise SettingError(f"{name} must be a positive integer, got {text!r}")
        return number
    if issubclass(kind, Path):
        return Path(text)
    return text


def environment_names() -> list[str]:
    return [spec.metadata["env"] for spec in fields(Settings)]


def markdown_table(group: str) -> str:
    """The README table of one group's variables ("model", "web", "streaming", "local", "monitoring" or "spark")."""
    lines = ["| Variable | Default | What it does |", "|---|---|---|"]
    for spec in fields(Settings):
        if spec.metadata["group"] != group:
            continue
        default = spec.metadata["shown"] or f"`{str(spec.default).lower() if spec.default is False else spec.default}`"
        lines.append(f"| `{spec.metadata['env']}` | {default} | {spec.metadata['doc']} |")
    return "\n".join(lines)


def export(values: Mapping[str, str]) -> None:
    """Set variables in this process's environment, for the libraries that read it themselves (boto3, MLflow)."""
    os.environ.update(values)


def export_defaults(values: Mapping[str, str]) -> None:
    """Set the variables this process's environment does not set yet: its own values win (Prefect's settings)."""
    for name, value in values.items():
        os.environ.setdefault(name, value)


@contextmanager
def exported(values: Mapping[str, str]) -> Iterator[None]:
    """`export(values)` inside the block only, then the environment as it was (unset names unset again):
    for code run in-process that reads the environment itself, such as a Lambda handler."""
    saved = {name: os.environ.get(name) for name in values}
    export(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus `extra`: what a child process (a server, a script) is started with."""
    return {**os.environ, **(extra or {})}


if __name__ == "__main__":  # python -m ride_duration.settings web: the README table of a group
    import sys

    print(markdown_table(sys.argv[1] if len(sys.argv) > 1 else "model"))
