"""Training, tracking and registration: the named steps of notebooks 01 and 02.

The notebooks explain and call these; tests call them too, so a registered model can be made
in seconds without running a notebook.
"""

from __future__ import annotations

from pathlib import Path
from importlib.metadata import version

import numpy as np

from ride_duration.features import frame_features
from ride_duration.model import PRODUCTION_ALIAS, REGISTERED_MODEL, quiet_mlflow, tracking_uri

EXPERIMENT = "ride-duration"
# Pinned so that logging does not infer requirements (slow) and the model records what it needs.
PIP_REQUIREMENTS = [f"{name}=={version(name)}" for name in ("scikit-learn", "scipy", "numpy")]
# pickle, not MLflow's default skops: skops is the safe format for models you did not make, but it
# stores this pipeline's 13,000-pair vocabulary in 13 MB that take seconds to load, against 0.5 MB
# and milliseconds for pickle, and load time is the cold start of every service. We only load
# models we logged ourselves, from our own registry and buckets.
SERIALIZATION_FORMAT = "pickle"


def sqlite_artifact_location(uri: str) -> str | None:
    """Artifacts of an embedded store go in mlartifacts/ beside its database file, whatever the cwd."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()


def setup_tracking(experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; returns its id.

    In embedded mode the artifacts go to mlartifacts/ beside the database; in server mode the
    server decides (an s3:// root on the local S3 endpoint).
    """
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    with quiet_mlflow():  # the first call creates a new store's tables
        existing = mlflow.get_experiment_by_name(experiment)
    if existing is None:
        location = sqlite_artifact_location(uri)
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    else:
        experiment_id = existing.experiment_id
    mlflow.set_experiment(experiment)
    return experiment_id


def make_pipeline(regressor):
    """DictVectorizer + regressor in one artifact, so that the model carries its features."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.pipeline import Pipeline

    return Pipeline([("vectorizer", DictVectorizer()), ("regressor", regressor)])


def fit(pipeline, rides):
    return pipeline.fit(frame_features(rides), rides["duration"].to_numpy())


def rmse(pipeline, rides) -> float:
    predicted = pipeline.predict(frame_features(rides))
    return float(np.sqrt(np.mean((rides["duration"].to_numpy() - predicted) ** 2)))


def log_pipeline(pipeline, *, params: dict, metrics: dict, tags: dict, figure=None, run_name=None):
    """One MLflow run: params, metrics, tags, an optional plot and the pipeline. Returns the model info."""
    import mlflow

    with mlflow.start_run(run_name=run_name):
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        if figure is not None:
            mlflow.log_figure(figure, "predicted_vs_actual.png")
        with quiet_mlflow():
            return mlflow.sklearn.log_model(
                pipeline,
                name="model",
                pip_requirements=PIP_REQUIREMENTS,
                serialization_format=SERIALIZATION_FORMAT,
            )


def best_run(experiment: str = EXPERIMENT, metric: str = "val_rmse"):
    """The finished run with the lowest validation RMSE that logged a model."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string="attributes.status = 'FINISHED'",
        order_by=[f"metrics.{metric} ASC"],
        output_format="list",
    )
    for run in runs:
        if metric in run.data.metrics and run.outputs and run.outputs.model_outputs:
            return run
    raise LookupError(f"no finished run with {metric} and a logged model in experiment {experiment!r}")


def register_best(experiment: str = EXPERIMENT, name: str = REGISTERED_MODEL, alias: str = PRODUCTION_ALIAS):
    """Register the best run's model under `name` and point `alias` at the new version."""
    import mlflow
    from mlflow import MlflowClient

    run = best_run(experiment)
    model_id = run.outputs.model_outputs[0].model_id
    with quiet_mlflow():
        version = mlflow.register_model(f"models:/{model_id}", name)
    MlflowClient().set_registered_model_alias(name, alias, version.version)
    return version
