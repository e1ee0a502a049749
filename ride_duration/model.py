"""Load the served model by URI, with or without the MLflow tracking server.

Accepted URIs: `models:/ride-duration@production` (alias), `models:/m-...` (model id),
`runs:/...`, or the artifact folder itself as `s3://...`, `file://...` or a plain path.
Registry URIs need MLflow and the tracking server; artifact URIs need neither (no `import mlflow`,
which alone is most of a cold start), so a service started with one keeps working
when the tracking server is down.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ride_duration.features import CLIP_DISTANCE, LINEAR_REGRESSORS
from ride_duration.settings import Settings, exported

REGISTERED_MODEL = "ride-duration"
PRODUCTION_ALIAS = "production"


def tracking_uri(settings: Settings | None = None) -> str:
    """MLFLOW_TRACKING_URI if set (server mode), else the project's embedded sqlite database."""
    return (settings or Settings.from_environ()).tracking_uri


# MLflow's log lines that tell a reader of this tutorial nothing, by logger: the caution about pickle
# (chosen on purpose, ride_duration/train.py says why), no pip version to record (uv's venvs have no
# pip), creating the tables of a new store, and waiting for a model version that is ready at once.
MLFLOW_CHATTER = {
    "mlflow.sklearn": logging.ERROR,
    "mlflow.utils.environment": logging.ERROR,
    "mlflow.store.db.utils": logging.WARNING,
    "mlflow.store.model_registry.abstract_store": logging.WARNING,
}


@contextmanager
def quiet_mlflow():
    """Raise MLFLOW_CHATTER's loggers to their levels inside the block, then restore them."""
    loggers = {logging.getLogger(name): level for name, level in MLFLOW_CHATTER.items()}
    saved = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, level in saved.items():
            logger.setLevel(level)


@contextmanager
def registry_limits(settings: Settings | None = None):
    """MLflow's request timeout and retries from settings, for the MLflow calls inside the block.

    MLflow's own defaults (a 120 s timeout, 7 retries with back-off) take minutes to give up on a tracking
    server that is down; a start-up or a check of the alias should fail within seconds and say why.
    """
    settings = settings or Settings.from_environ(groups=("model",))
    with exported(
        {
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(settings.mlflow_request_timeout),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(settings.mlflow_request_retries),
        }
    ):
        yield


class ModelLoadError(RuntimeError):
    """The model URI does not lead to a loadable scikit-learn model; the message says why."""


@dataclass
class LoadedModel:
    pipeline: object
    model_id: str  # MLflow's id of the logged model, "m-..."; the version every prediction carries
    uri: str
    registered_version: str | None = None  # "ride-duration/3" when loaded through the registry
    info: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.model_id


def load_model(uri: str, *, without_sklearn: bool = False, settings: Settings | None = None) -> LoadedModel:
    """Load a model by URI; raise ModelLoadError with a one-line reason if it cannot be done.

    without_sklearn: for callers that only predict through FastPredictor (batch scoring). A pickled
    linear ride pipeline is then loaded as its fitted attributes, without importing scikit-learn
    (seconds of every cold start); `pipeline` is then only good for FastPredictor, which serves it
    exactly. Any other model loads as usual.
    settings: where the tracking server is, for registry URIs (default: the environment's).
    """
    if not uri:
        raise ModelLoadError("no model URI given (set MODEL_URI)")
    scheme = urlparse(uri).scheme
    try:
        if scheme in ("models", "runs"):
            with registry_limits(settings):
                return _load_from_mlflow(uri, without_sklearn, settings)
        if scheme == "s3":
            with tempfile.TemporaryDirectory(prefix="model-") as folder:
                _download_s3_folder(uri, Path(folder), settings)
                return load_model_folder(Path(folder), uri, without_sklearn=without_sklearn)
        path = Path(urlparse(uri).path if scheme == "file" else uri)
        return load_model_folder(path, uri, without_sklearn=without_sklearn)
    except ModelLoadError:
        raise
    except Exception as error:
        reason = " ".join(str(error).split())  # one line, whatever the library's message looked like
        raise ModelLoadError(f"cannot load model {uri}: {type(error).__name__}: {reason}") from error


def load_model_folder(folder: Path, uri: str | None = None, *, without_sklearn: bool = False) -> LoadedModel:
    """Load an MLflow sklearn model folder (MLmodel + model.pkl, or model.skops); see load_model."""
    import yaml

    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise ModelLoadError(f"cannot load model {uri or folder}: no MLmodel file there")
    info = yaml.safe_load(mlmodel.read_text())
    flavor = info.get("flavors", {}).get("sklearn")
    if flavor is None:
        raise ModelLoadError(f"cannot load model {uri or folder}: not a scikit-learn model")
    data = folder / flavor["pickled_model"]
    if flavor.get("serialization_format") == "skops":
        import skops.io

        pipeline = skops.io.load(data, trusted=skops.io.get_untrusted_types(file=data))
    else:
        import pickle

        pipeline = load_linear_pipeline(data) if without_sklearn else None
        if pipeline is None:
            with open(data, "rb") as f:
                pipeline = pickle.load(f)  # only our own registry's models are loaded
    model_id = info.get("model_id") or info.get("run_id") or "unknown"
    return LoadedModel(pipeline=pipeline, model_id=model_id, uri=uri or str(folder), info=info)


class FittedAttributes:
    """A scikit-learn estimator's pickled attributes, without its class: FastPredictor reads them."""

    pickled_class = ""  # e.g. "sklearn.pipeline.Pipeline"


# The classes of a linear ride pipeline, and the numpy globals its arrays and scalars pickle with.
STAND_IN_CLASSES = {
    "sklearn.pipeline.Pipeline",
    CLIP_DISTANCE,
    "sklearn.feature_extraction._dict_vectorizer.DictVectorizer",
    *LINEAR_REGRESSORS,
}
NUMPY_GLOBALS = {
    (module, name)
    for module in ("numpy", "numpy._core.multiarray", "numpy.core.multiarray")
    for name in ("_reconstruct", "scalar", "ndarray", "dtype", "float64", "float32", "int64", "int32")
}


def load_linear_pipeline(path: Path):
    """The pickled pipeline as FittedAttributes stand-ins if FastPredictor serves it whole, else None.

    The pickle may name only STAND_IN_CLASSES and NUMPY_GLOBALS; anything else (another
    estimator, a transformer) needs scikit-learn itself, and the caller unpickles it as usual.
    """
    import pickle

    from ride_duration.features import FastPredictor

    class Unknown(Exception):
        pass

    class StandInUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if f"{module}.{name}" in STAND_IN_CLASSES:
                return type(name, (FittedAttributes,), {"pickled_class": f"{module}.{name}"})
            if (module, name) in NUMPY_GLOBALS:
                return super().find_class(module, name)
            raise Unknown(f"{module}.{name}")

    with open(path, "rb") as f:
        try:
            pipeline = StandInUnpickler(f).load()  # only our own registry's models are loaded
        except Unknown:
            return None
    return pipeline if FastPredictor(pipeline).linear else None


def _download_s3_folder(uri: str, dest: Path, settings: Settings | None = None) -> None:
    from ride_duration import aws

    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/").rstrip("/") + "/"
    s3 = aws.client("s3", settings)
    found = False
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            target = dest / item["Key"][len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))
            found = True
    if not found:
        raise ModelLoadError(f"cannot load model {uri}: nothing stored under that S3 prefix")


def _load_from_mlflow(uri: str, without_sklearn: bool, settings: Settings | None) -> LoadedModel:
    """A registry URI's model, read where it is stored if that is a local folder, else from a download.

    Nothing is written into the artifact store, which may be read-only: MLflow's own download of a
    `models:/` URI adds a file to the model's folder in a local store.
    """
    import mlflow

    tracking = tracking_uri(settings)
    mlflow.set_tracking_uri(tracking)
    stored = artifact_uri(uri, settings) if uri.startswith("models:/") else uri
    if urlparse(stored).scheme in ("", "file"):
        loaded = load_model_folder(Path(urlparse(stored).path), uri, without_sklearn=without_sklearn)
    else:
        with tempfile.TemporaryDirectory(prefix="model-") as folder:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=stored, dst_path=folder))
            loaded = load_model_folder(local, uri, without_sklearn=without_sklearn)
    loaded.registered_version = _registered_version(uri, tracking)
    return loaded


def alias_of(uri: str) -> tuple[str, str] | None:
    """(name, alias) of a `models:/NAME@ALIAS` URI, the only kind that can point at another version later."""
    path = uri[len("models:/") :] if uri.startswith("models:/") else ""
    name, at, alias = path.partition("@")
    return (name, alias) if at and name and alias else None


def resolve_alias(uri: str, settings: Settings | None = None) -> str:
    """The registered version ("NAME/N") a `models:/NAME@ALIAS` URI points at now, asked of the tracking store."""
    from mlflow import MlflowClient

    name, alias = alias_of(uri)
    with registry_limits(settings):
        return f"{name}/{MlflowClient(tracking_uri(settings)).get_model_version_by_alias(name, alias).version}"


def _registered_version(uri: str, tracking: str) -> str | None:
    """'name/version' for models:/name@alias and models:/name/version URIs."""
    from mlflow import MlflowClient

    path = uri[len("models:/") :] if uri.startswith("models:/") else ""
    if not path or path.startswith("m-"):
        return None
    client = MlflowClient(tracking)
    if "@" in path:
        name, alias = path.split("@", 1)
        return f"{name}/{client.get_model_version_by_alias(name, alias).version}"
    name, _, version = path.partition("/")
    return f"{name}/{version}" if version.isdigit() else None


def artifact_uri(model_uri: str, settings: Settings | None = None) -> str:
    """Where a registered model's files are stored (s3://... in server mode), asked of the tracking store
    that `settings` names (default: the environment's)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(settings))
    path = model_uri[len("models:/") :]
    if path.startswith("m-"):
        return client.get_logged_model(path).artifact_location
    if "@" in path:
        name, alias = path.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, number = path.split("/", 1)
        version = client.get_model_version(name, number)
    return client.get_model_version_download_uri(version.name, version.version)
