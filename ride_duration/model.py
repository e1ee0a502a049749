"""Load the served model by URI, with or without the MLflow tracking server.

Accepted URIs: `models:/ride-duration@production` (alias), `models:/m-...` (model id),
`runs:/...`, or the artifact folder itself as `s3://...`, `file://...` or a plain path.
Registry URIs need MLflow and the tracking server; artifact URIs need neither (no `import mlflow`,
which alone is most of a cold start), so a service started with one keeps working
when the tracking server is down.

Nothing in a model file runs before it is verified (ride_duration.integrity): a registry URI's model must have
the sha256 its version (or its logged model) recorded, an artifact URI's the one MODEL_SHA256 gives (read
only for those), and the pickle may name only the classes of a ride pipeline.
"""

from __future__ import annotations

import io
import logging
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ride_duration.features import CLIP_DISTANCE, LINEAR_REGRESSORS
from ride_duration.integrity import (
    MODEL_SHA256_TAG,
    NUMPY_GLOBALS,
    PIPELINE_CLASSES,
    RestrictedUnpickler,
    UntrustedModel,
    check_sha256,
    inside,
    unpickle,
)
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


_REGISTRY_LIMITS_LOCK = threading.RLock()


@contextmanager
def registry_limits(settings: Settings | None = None):
    """MLflow's request timeout and retries from settings, for the MLflow calls inside the block.

    MLflow's own defaults (a 120 s timeout, 7 retries with back-off) take minutes to give up on a tracking
    server that is down; a start-up or a check of the alias should fail within seconds and say why. MLflow reads
    them from the environment, which is the process's: one block at a time (a poll thread and a load would
    otherwise restore each other's values out of order).
    """
    settings = settings or Settings.from_environ(groups=("model",))
    with (
        _REGISTRY_LIMITS_LOCK,
        exported(
            {
                "MLFLOW_HTTP_REQUEST_TIMEOUT": str(settings.mlflow_request_timeout),
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(settings.mlflow_request_retries),
            }
        ),
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
    settings: where the tracking server is, for registry URIs, and the sha256 an artifact URI's model must
    have (MODEL_SHA256; a registry URI's is the one its version recorded) or ALLOW_UNVERIFIED_MODEL;
    default: the environment's.
    """
    if not uri:
        raise ModelLoadError("no model URI given (set MODEL_URI)")
    settings = settings or Settings.from_environ(groups=("model",))
    scheme = urlparse(uri).scheme
    try:
        if scheme == "models":
            with registry_limits(settings):
                return _load_from_registry(uri, without_sklearn, settings)
        checks = {"sha256": settings.model_sha256.strip() or None, "allow_unverified": settings.allow_unverified_model}
        if scheme == "runs":
            with registry_limits(settings):
                return _load_from_mlflow(uri, without_sklearn, settings, checks)
        if scheme == "s3":
            with tempfile.TemporaryDirectory(prefix="model-") as folder:
                _download_s3_folder(uri, Path(folder), settings)
                return load_model_folder(Path(folder), uri, without_sklearn=without_sklearn, **checks)
        path = Path(urlparse(uri).path if scheme == "file" else uri)
        return load_model_folder(path, uri, without_sklearn=without_sklearn, **checks)
    except ModelLoadError:
        raise
    except UntrustedModel as error:
        raise ModelLoadError(f"cannot load model {uri}: {error}") from None
    except Exception as error:
        reason = " ".join(str(error).split())  # one line, whatever the library's message looked like
        raise ModelLoadError(f"cannot load model {uri}: {type(error).__name__}: {reason}") from error


def load_model_folder(
    folder: Path,
    uri: str | None = None,
    *,
    without_sklearn: bool = False,
    sha256: str | None = None,
    allow_unverified: bool = False,
) -> LoadedModel:
    """Load an MLflow sklearn model folder (MLmodel + model.pkl, or model.skops); see load_model.

    sha256: what the pickled file must hash to; it is read once, hashed, and only then unpickled. Without
    one the model is refused, unless allow_unverified (ALLOW_UNVERIFIED_MODEL, for local work).
    """
    import yaml

    where = uri or folder
    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise ModelLoadError(f"cannot load model {where}: no MLmodel file there")
    info = yaml.safe_load(mlmodel.read_text())
    flavor = info.get("flavors", {}).get("sklearn") if isinstance(info, dict) else None
    if not isinstance(flavor, dict) or not isinstance(flavor.get("pickled_model"), str):
        raise ModelLoadError(f"cannot load model {where}: not a scikit-learn model")
    try:
        path = inside(folder, flavor["pickled_model"])
        if sha256 is None and not allow_unverified:
            unknown = "the registry recorded none" if str(where).startswith("models:/") else "MODEL_SHA256 is not set"
            raise UntrustedModel(
                f"no sha256 to verify {path.name} against ({unknown}): set MODEL_SHA256 to its sha256 "
                "(ALLOW_UNVERIFIED_MODEL=1 skips the check, for local work only)"
            )
        data = path.read_bytes()
        if sha256 is not None:
            check_sha256(data, sha256, path.name)
        if flavor.get("serialization_format") == "skops":
            pipeline = load_skops(data)
        else:
            pipeline = (load_linear_pipeline(data) if without_sklearn else None) or unpickle(data)
    except UntrustedModel as error:
        raise ModelLoadError(f"cannot load model {where}: {error}") from None
    model_id = info.get("model_id") or info.get("run_id") or "unknown"
    return LoadedModel(pipeline=pipeline, model_id=model_id, uri=uri or str(folder), info=info)


class FittedAttributes:
    """A scikit-learn estimator's pickled attributes, without its class: FastPredictor reads them."""

    pickled_class = ""  # e.g. "sklearn.pipeline.Pipeline"


def load_skops(data: bytes):
    """A skops file's object, if it holds only PIPELINE_CLASSES and numpy's types; else UntrustedModel naming the rest."""
    import skops.io

    types = skops.io.get_untrusted_types(data=data)
    allowed = PIPELINE_CLASSES | {f"{module}.{name}" for module, name in NUMPY_GLOBALS}
    refused = sorted(set(types) - allowed)
    if refused:
        raise UntrustedModel(f"the skops file holds {', '.join(refused)}, not part of a ride pipeline: refused")
    return skops.io.loads(data, trusted=types)


# The classes of a linear ride pipeline: load_linear_pipeline unpickles them as FittedAttributes.
STAND_IN_CLASSES = {
    "sklearn.pipeline.Pipeline",
    CLIP_DISTANCE,
    "sklearn.feature_extraction._dict_vectorizer.DictVectorizer",
    *LINEAR_REGRESSORS,
}


class NotStandIn(Exception):
    """The pickle names an allowed class that is not a STAND_IN_CLASSES one (a forest): it needs scikit-learn."""


class StandInUnpickler(RestrictedUnpickler):
    def find_class(self, module, name):
        qualified = f"{module}.{name}"
        if qualified in STAND_IN_CLASSES:
            return type(name, (FittedAttributes,), {"pickled_class": qualified})
        if qualified in PIPELINE_CLASSES:
            raise NotStandIn(qualified)
        return super().find_class(module, name)  # numpy's globals; anything else is refused by name


def load_linear_pipeline(data: bytes):
    """The pickled pipeline as FittedAttributes stand-ins if FastPredictor serves it whole, else None.

    The pickle may name only STAND_IN_CLASSES and numpy's globals (a class outside ALLOWED_GLOBALS is refused
    here as in `unpickle`); another estimator of a ride pipeline needs scikit-learn itself, and the caller
    unpickles it with `unpickle`.
    """
    from ride_duration.features import FastPredictor

    try:
        pipeline = StandInUnpickler(io.BytesIO(data)).load()
    except NotStandIn:
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


def _load_from_registry(uri: str, without_sklearn: bool, settings: Settings) -> LoadedModel:
    """A `models:/` URI: the registry is asked first which version (or logged model) it is, where its files are
    and the sha256 recorded for it, then the file is read and checked against that. An alias is resolved once,
    so the version recorded is the version loaded."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    path = uri[len("models:/") :]
    if path.startswith("m-"):
        logged = client.get_logged_model(path)
        recorded, registered, stored = logged.tags.get(MODEL_SHA256_TAG), None, logged.artifact_location
    else:
        version = registry_version(client, path)
        recorded = version.tags.get(MODEL_SHA256_TAG) or (
            client.get_logged_model(version_model_id(version)).tags.get(MODEL_SHA256_TAG)
        )
        registered = f"{version.name}/{version.version}"
        stored = client.get_model_version_download_uri(version.name, version.version)
    checks = {"sha256": recorded, "allow_unverified": settings.allow_unverified_model}
    loaded = _load_from_mlflow(uri, without_sklearn, settings, checks, stored)
    loaded.registered_version = registered
    return loaded


def registry_version(client, path: str):
    """The model version `NAME@ALIAS` or `NAME/N` names (an MLflow ModelVersion)."""
    if "@" in path:
        return client.get_model_version_by_alias(*path.split("@", 1))
    name, _, number = path.partition("/")
    return client.get_model_version(name, number)


def version_model_id(version) -> str:
    """The logged model ("m-...") behind a registered version: the embedded store leaves model_id empty,
    its source ("models:/m-...") names it."""
    return version.model_id or version.source.removeprefix("models:/")


def _load_from_mlflow(
    uri: str, without_sklearn: bool, settings: Settings, checks: dict, stored: str | None = None
) -> LoadedModel:
    """A model MLflow keeps (at `stored`, else at uri itself: runs:/...), read where it is stored if that is a
    local folder, else from a download.

    Nothing is written into the artifact store, which may be read-only: MLflow's own download of a
    `models:/` URI adds a file to the model's folder in a local store.
    """
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    stored = stored or uri
    if urlparse(stored).scheme in ("", "file"):
        return load_model_folder(Path(urlparse(stored).path), uri, without_sklearn=without_sklearn, **checks)
    with tempfile.TemporaryDirectory(prefix="model-") as folder:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=stored, dst_path=folder))
        return load_model_folder(local, uri, without_sklearn=without_sklearn, **checks)


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
