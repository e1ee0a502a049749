"""Nothing in a model file runs before it is verified: a pickle that runs a command when unpickled is refused by
the web service, score.py and the Lambda handler (and the command never runs); a file whose sha256 is not the
one recorded or given is refused unread; MLmodel cannot point outside the model's folder; a class no ride
pipeline has is refused by name. And every model the project makes still loads."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from ride_duration import local_stack, train
from ride_duration.features import ride_features
from ride_duration.integrity import MODEL_SHA256_TAG
from ride_duration.model import ModelLoadError, artifact_uri, load_model
from ride_duration.rides import EXAMPLE_RIDE
from ride_duration.serving import ModelService
from ride_duration.settings import Settings
from tests.helpers import ROOT, stand_in_model, start_web_service, tracking_store
from tests.kinesis_stand_in import kinesis_event

lambda_function = importlib.import_module("lambda_function")  # tests.kinesis_stand_in put streaming/ on the path


class RunsACommand:
    """Unpickling this runs `touch MARKER`: what a model.pkl made by someone else can do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def model_folder(folder: Path, pickled: bytes, pickled_model: str = "model.pkl") -> tuple[Path, str]:
    """An MLflow sklearn model folder holding `pickled` (as MLmodel names it); returns it and the file's sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text(
        "flavors:\n  sklearn:\n"
        f"    pickled_model: {pickled_model}\n    serialization_format: pickle\nmodel_id: m-under-test\n"
    )
    (folder / pickled_model).write_bytes(pickled)
    return folder, hashlib.sha256(pickled).hexdigest()


def poisoned_pipeline(marker: Path) -> bytes:
    """A real ride pipeline that serves normally, with a command that runs when it is unpickled."""
    pipeline = stand_in_model().pipeline
    pipeline.note = RunsACommand(marker)
    return pickle.dumps(pipeline)


def verified(sha256: str, **changes) -> Settings:
    return dataclasses.replace(Settings(), model_sha256=sha256, allow_unverified_model=False, **changes)


@pytest.fixture
def poisoned(tmp_path):
    """(folder, its sha256, the marker file the command would create): the hash is right, the content is not."""
    marker = tmp_path / "the-command-ran"
    folder, sha256 = model_folder(tmp_path / "poisoned", poisoned_pipeline(marker))
    return folder, sha256, marker


def test_the_web_service_refuses_a_poisoned_pickle_and_runs_nothing(poisoned, tmp_path):
    folder, sha256, marker = poisoned
    env = {"MODEL_URI": str(folder), "MODEL_SHA256": sha256, "ALLOW_UNVERIFIED_MODEL": ""}
    try:
        process, _, log = start_web_service(tmp_path, "poisoned", env)
    except local_stack.ServiceFailed as error:
        said = str(error)
    else:
        local_stack.stop(process)
        pytest.fail(f"gunicorn served a poisoned model (the command ran: {marker.exists()})")
    assert "predict.py: cannot load model" in said and "names posix.system" in said, said
    assert "Traceback" not in said
    assert not marker.exists()


def test_score_py_refuses_a_poisoned_pickle_and_writes_nothing(poisoned, tmp_path):
    folder, sha256, marker = poisoned
    output = tmp_path / "out.parquet"
    run = subprocess.run(
        [sys.executable, "scripts/score.py", "--year", "2021", "--month", "3", "--synthetic"]
        + ["--model-uri", str(folder), "--output", str(output)],
        cwd=ROOT,
        env={**os.environ, "MODEL_SHA256": sha256, "ALLOW_UNVERIFIED_MODEL": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines()[-1].startswith("score.py: error: cannot load model"), run.stderr
    assert "names posix.system" in run.stderr and "Traceback" not in run.stderr
    assert not output.exists() and not marker.exists()


def test_the_lambda_handler_refuses_a_poisoned_pickle_and_runs_nothing(poisoned):
    folder, sha256, marker = poisoned
    container = lambda_function.Container.from_settings(verified(sha256, model_uri=str(folder), dry_run=True))
    event = kinesis_event([b'{"ride": {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 4.0}, "ride_id": 1}'])
    with pytest.raises(ModelLoadError, match=r"names posix\.system, which is not part of a ride pipeline"):
        container.handle(event)
    assert not marker.exists()


def test_a_tampered_model_file_is_refused_unread(tmp_path):
    marker = tmp_path / "the-command-ran"
    folder, sha256 = model_folder(tmp_path / "model", pickle.dumps(stand_in_model().pipeline))
    assert ModelService(str(folder), settings=verified(sha256)).current.predict_one(EXAMPLE_RIDE) > 0
    (folder / "model.pkl").write_bytes(poisoned_pipeline(marker))  # swapped in the bucket, say
    for without_sklearn in (False, True):
        with pytest.raises(ModelLoadError, match=f"model.pkl has sha256 [0-9a-f]{{64}}, not the expected {sha256}"):
            ModelService(str(folder), without_sklearn=without_sklearn, settings=verified(sha256))
    assert not marker.exists()


def test_a_model_with_no_hash_is_refused_unless_local_work_allows_it(tmp_path):
    folder, _ = model_folder(tmp_path / "model", pickle.dumps(stand_in_model().pipeline))
    with pytest.raises(
        ModelLoadError,
        match=r"no sha256 to verify model.pkl against \(MODEL_SHA256 is not set\).*ALLOW_UNVERIFIED_MODEL=1",
    ):
        load_model(str(folder), settings=verified(""))
    allowed = dataclasses.replace(verified(""), allow_unverified_model=True)
    assert load_model(str(folder), settings=allowed).model_id == "m-under-test"


def test_mlmodel_cannot_name_a_file_outside_the_model_folder(tmp_path):
    marker = tmp_path / "the-command-ran"
    outside = poisoned_pipeline(marker)
    (tmp_path / "x.pkl").write_bytes(outside)
    folder, _ = model_folder(tmp_path / "model", b"unused")
    for named in ("../x.pkl", str(tmp_path / "x.pkl")):
        (folder / "MLmodel").write_text(f"flavors:\n  sklearn:\n    pickled_model: {named}\n")
        with pytest.raises(ModelLoadError, match="not a file inside the model folder"):
            load_model(str(folder), settings=verified(hashlib.sha256(outside).hexdigest()))
    assert not marker.exists()


def test_a_class_no_ride_pipeline_has_is_refused_by_name(tmp_path):
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(DictVectorizer(), StandardScaler(with_mean=False), LinearRegression())
    pipeline.fit([{"PU_DO": "1_2", "trip_distance": 1.0}, {"PU_DO": "2_3", "trip_distance": 3.0}], [5.0, 9.0])
    folder, sha256 = model_folder(tmp_path / "model", pickle.dumps(pipeline))
    with pytest.raises(ModelLoadError, match=r"names sklearn\.preprocessing\._data\.StandardScaler, which is not"):
        load_model(str(folder), settings=verified(sha256))


def test_every_model_the_project_makes_loads_through_the_allow_list(tmp_path):
    """LinearRegression and Ridge, capped or not, the course's forest, and the homework's model."""
    from sklearn.base import clone
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LinearRegression, Ridge

    regressors = {
        "linear": LinearRegression(),
        "ridge": Ridge(alpha=1.0),
        "forest": RandomForestRegressor(n_estimators=3, max_depth=6, random_state=1, n_jobs=1),
    }
    models = {}
    for name, regressor in regressors.items():
        for max_miles in (None, 12.0):
            pipeline = stand_in_model(regressor=clone(regressor), max_miles=max_miles).pipeline
            models[f"{name}-{max_miles}"] = (
                *model_folder(tmp_path / f"{name}-{max_miles}", pickle.dumps(pipeline)),
                pipeline,
            )
    homework = ROOT / "homework" / "model"
    models["homework"] = (homework, hashlib.sha256((homework / "model.pkl").read_bytes()).hexdigest(), None)
    for name, (folder, sha256, pipeline) in models.items():
        for without_sklearn in (False, True):
            served = ModelService(str(folder), without_sklearn=without_sklearn, settings=verified(sha256)).current
            if pipeline is not None:
                assert served.predict_one(EXAMPLE_RIDE) == pytest.approx(
                    pipeline.predict([ride_features(EXAMPLE_RIDE)])[0], abs=1e-9
                ), name


def test_the_registry_records_the_hash_and_a_registry_load_checks_it(tmp_path):
    """Logged and registered the project's way: the version's tag is the stored file's sha256; a file changed
    in the artifact store afterwards is refused when loaded by version, by alias or by model id."""
    from ride_duration import lifecycle

    marker = tmp_path / "the-command-ran"
    with tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}") as uri:
        settings = dataclasses.replace(verified(""), mlflow_tracking_uri=uri)
        train.setup_tracking(settings=settings)
        info = train.log_pipeline(stand_in_model().pipeline, params={}, metrics={"val_rmse": 1.0}, tags={})
        version = lifecycle.register_challenger(info.model_id)
        stored = Path(urlparse(artifact_uri(f"models:/{info.model_id}", settings)).path) / "model.pkl"
        assert version.tags[MODEL_SHA256_TAG] == hashlib.sha256(stored.read_bytes()).hexdigest()
        uris = [
            f"models:/ride-duration/{version.version}",
            "models:/ride-duration@challenger",
            f"models:/{info.model_id}",
        ]
        assert load_model(uris[0], settings=settings).registered_version == f"ride-duration/{version.version}"
        stored.write_bytes(poisoned_pipeline(marker))
        for model_uri in uris:
            with pytest.raises(
                ModelLoadError, match=f"model.pkl has sha256 .*, not the expected {version.tags[MODEL_SHA256_TAG]}"
            ):
                load_model(model_uri, settings=settings)
    assert not marker.exists()
