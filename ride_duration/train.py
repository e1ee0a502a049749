"""Training and tracking: the named steps of notebook 01, and the search for its best run.

The notebooks explain and call these; tests call them too, so a registered model can be made
in seconds without running a notebook. Registering and promoting a model is ride_duration.lifecycle.
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

from ride_duration.features import ClipDistance, frame_features
from ride_duration.integrity import MODEL_SHA256_TAG, inside, sha256_of
from ride_duration.metrics import REFERENCE_KEY, reference_shares
from ride_duration.model import quiet_mlflow, tracking_uri
from ride_duration.settings import Settings

EXPERIMENT = "ride-duration"
# Pinned so that logging does not infer requirements (slow) and the model records what it needs.
PIP_REQUIREMENTS = [f"{name}=={version(name)}" for name in ("scikit-learn", "scipy", "numpy")]
# pickle, not MLflow's default skops: skops is the safe format for models you did not make, but it
# stores this pipeline's vocabulary of zone pairs in a file many times pickle's size that takes seconds,
# not milliseconds, to load, and load time is the cold start of every service. We only load
# models we logged ourselves, from our own registry and buckets.
SERIALIZATION_FORMAT = "pickle"


def sqlite_artifact_location(uri: str) -> str | None:
    """Artifacts of an embedded store go in mlartifacts/ beside its database file, whatever the cwd."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()


def setup_tracking(experiment: str = EXPERIMENT, settings: Settings | None = None) -> str:
    """Point MLflow at the tracking store `settings` names (default: the environment's) and make sure the
    experiment exists; returns its id. The steps below then log to, and search, that store.

    In embedded mode the artifacts go to mlartifacts/ beside the database; in server mode the
    server decides (an s3:// root on the local S3 endpoint).
    """
    import mlflow

    uri = tracking_uri(settings)
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


def make_pipeline(regressor, max_miles: float | None = None):
    """DictVectorizer + regressor in one artifact, so that the model carries its features; with max_miles,
    a ClipDistance step first caps the distance (a linear model's minutes per mile hold only so far)."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.pipeline import Pipeline

    steps = [("vectorizer", DictVectorizer()), ("regressor", regressor)]
    if max_miles is not None:
        steps.insert(0, ("clip_distance", ClipDistance(max_miles)))
    return Pipeline(steps)


# The course's random forest: notebook 01 trains it, the benchmarks and tests serve it.
FOREST_PARAMS = {"max_depth": 20, "n_estimators": 100, "min_samples_leaf": 10, "random_state": 1}


def fit_forest(rides, n_estimators: int = FOREST_PARAMS["n_estimators"]):
    """The course's forest (with n_estimators trees) fitted on `rides` on every core, then set to predict on one:
    a deployment predicts a ride or a few at a time, and a thread pool costs more than a hundred small trees."""
    from sklearn.ensemble import RandomForestRegressor

    params = {**FOREST_PARAMS, "n_estimators": n_estimators}
    pipeline = fit(make_pipeline(RandomForestRegressor(**params, n_jobs=-1)), rides)
    return pipeline.set_params(regressor__n_jobs=1)


def minutes_per_mile(pipeline) -> float:
    """A linear pipeline's trip_distance coefficient: the minutes one more mile adds (below any cap)."""
    vectorizer, regressor = pipeline.steps[-2][1], pipeline.steps[-1][1]
    return float(regressor.coef_[vectorizer.vocabulary_["trip_distance"]])


def fit(pipeline, rides):
    return pipeline.fit(frame_features(rides), rides["duration"].to_numpy())


def rmse(pipeline, rides) -> float:
    predicted = pipeline.predict(frame_features(rides))
    return float(np.sqrt(np.mean((rides["duration"].to_numpy() - predicted) ** 2)))


def log_pipeline(
    pipeline, *, params: dict, metrics: dict, tags: dict, figure=None, run_name=None, reference_rides=None
):
    """One MLflow run: params, metrics, tags, an optional plot and the pipeline. Returns the model info.

    reference_rides (the validation month): the model keeps the distribution of its predictions on them in
    its MLmodel metadata, which the web service exports for its drift alert (web-service/monitoring/).
    The logged model records the sha256 of its pickled file (tag model_sha256): loads through the registry check it.
    """
    import mlflow

    metadata = None
    if reference_rides is not None:
        metadata = {REFERENCE_KEY: reference_shares(pipeline.predict(frame_features(reference_rides)))}

    with mlflow.start_run(run_name=run_name):
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        if figure is not None:
            mlflow.log_figure(figure, "predicted_vs_actual.png")
        with quiet_mlflow():
            info = mlflow.sklearn.log_model(
                pipeline,
                name="model",
                pip_requirements=PIP_REQUIREMENTS,
                serialization_format=SERIALIZATION_FORMAT,
                metadata=metadata,
            )
    mlflow.set_logged_model_tags(info.model_id, {MODEL_SHA256_TAG: stored_sha256(info.model_id)})
    return info


def stored_sha256(model_id: str) -> str:
    """The sha256 of a logged model's pickled file as the artifact store holds it: what every load checks."""
    import mlflow
    import yaml

    with tempfile.TemporaryDirectory(prefix="model-") as folder:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=folder))
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["sklearn"]
        return sha256_of(inside(local, flavor["pickled_model"]).read_bytes())


# What a run was validated on, as notebook 01 logs it: params taxi_type and val_month, tag data_source
# ("tlc" for real TLC months, "synthetic" for the generated stand-in). RMSEs compare only within one of these.
REAL_DATA = "tlc"


def validation_data(run) -> dict:
    """{"taxi_type", "val_month", "data_source"} of a run (None where it did not log one)."""
    return {
        "taxi_type": run.data.params.get("taxi_type"),
        "val_month": run.data.params.get("val_month"),
        "data_source": run.data.tags.get("data_source"),
    }


def describe_data(data: dict) -> str:
    """A validation data set in a few words, such as "green 2021-02 (tlc)"."""
    return f"{data['taxi_type'] or '?'} {data['val_month'] or '?'} ({data['data_source'] or 'unknown source'})"


def model_runs(experiment: str = EXPERIMENT, metric: str = "val_rmse") -> list:
    """The finished runs that logged `metric` and a model, newest first."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    return [run for run in runs if metric in run.data.metrics and run.outputs and run.outputs.model_outputs]


def best_run(experiment: str = EXPERIMENT, metric: str = "val_rmse", validation: dict | None = None):
    """The run with the lowest validation RMSE among those validated on the same data.

    validation: the data to compare on (a validation_data dict); by default that of the newest run,
    i.e. what notebook 01 last trained on. Runs on other months or other data are not compared:
    an RMSE on synthetic rides says nothing about one on real rides.
    """
    runs = model_runs(experiment, metric)
    if not runs:
        raise LookupError(f"no finished run with {metric} and a logged model in experiment {experiment!r}")
    validation = validation or validation_data(runs[0])
    comparable = [run for run in runs if validation_data(run) == validation]
    if not comparable:
        raise LookupError(f"no finished run validated on {describe_data(validation)} in experiment {experiment!r}")
    return min(comparable, key=lambda run: run.data.metrics[metric])


def model_data(model_id: str, settings: Settings | None = None) -> dict:
    """What the run that logged this model trained and validated on: taxi_type, train_month, val_month,
    data_source (None where unknown, e.g. a model from another tracking store than the one `settings` names)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(settings))
    try:
        run = client.get_run(client.get_logged_model(model_id).source_run_id)
    except Exception:  # not a model id, or not this tracking store's
        return {"taxi_type": None, "train_month": None, "val_month": None, "data_source": None}
    return {**validation_data(run), "train_month": run.data.params.get("train_month")}
