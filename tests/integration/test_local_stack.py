"""The local stack as readers run it (scripts/local_stack.py: moto_server + `mlflow server` with its
artifacts in S3 on moto): a model registered in server mode still loads by its models:/ URI, with
the same predictions, after `stop` and `start`, although moto keeps S3 in memory only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ride_duration import local_stack
from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "local_stack.py"
RIDE = {"PULocationID": 43, "DOLocationID": 151, "trip_distance": 1.8}

REGISTER = """
import json
from sklearn.linear_model import LinearRegression
from ride_duration import lifecycle, train
from ride_duration.data import read_month, training_rides
rides = training_rides(read_month("green", 2021, 1, synthetic=True), "green")
train.setup_tracking()
pipeline = train.fit(train.make_pipeline(LinearRegression()), rides)
params = {"regressor": "LinearRegression", "taxi_type": "green", "train_month": "2021-01", "val_month": "2021-01"}
info = train.log_pipeline(pipeline, params=params,
                          metrics={"val_rmse": train.rmse(pipeline, rides)}, tags={"data_source": "synthetic"})
assert lifecycle.register_best().promoted
print(json.dumps({"model_id": info.model_id}))
"""

LOAD = f"""
import json
from ride_duration.features import ride_features
from ride_duration.model import artifact_uri, load_model
model = load_model("models:/ride-duration@production")
print(json.dumps({{"model_id": model.model_id, "artifact_uri": artifact_uri("models:/ride-duration@production"),
                  "prediction": float(model.pipeline.predict([ride_features({RIDE!r})])[0])}}))
"""


def run(command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    return result


def exported(output: str) -> dict:
    """The `export NAME=value` lines `local_stack.py start` prints for readers."""
    return dict(line[len("export ") :].split("=", 1) for line in output.splitlines() if line.startswith("export "))


@pytest.fixture
def stack_env(tmp_path):
    """The script's settings: free ports and a state folder of this test's own; stops what is left."""
    env = {
        **os.environ,
        "MOTO_PORT": str(local_stack.free_port()),
        "MLFLOW_PORT": str(local_stack.free_port()),
        "LOCAL_STACK_DIR": str(tmp_path / "local-stack"),
    }
    for name in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        env.pop(name, None)
    yield env
    for name in ("mlflow", "moto"):
        pid_file = tmp_path / "local-stack" / f"{name}.pid"
        if pid_file.exists():
            local_stack.stop(int(pid_file.read_text()))


def logs(env: dict) -> str:
    folder = env["LOCAL_STACK_DIR"]
    return "\n".join(
        f"{name}.log:\n{local_stack.log_tail(Path(folder) / f'{name}.log')}" for name in ("moto", "mlflow")
    )


def test_a_model_registered_in_server_mode_loads_after_stop_and_start(stack_env):
    started = run([sys.executable, str(SCRIPT), "start"], stack_env, timeout=300)
    reader = {**stack_env, **exported(started.stdout)}
    assert reader["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{stack_env['MLFLOW_PORT']}"
    registered = json.loads(run([sys.executable, "-c", REGISTER], reader, timeout=300).stdout.splitlines()[-1])
    before = json.loads(run([sys.executable, "-c", LOAD], reader, timeout=120).stdout.splitlines()[-1])
    assert before["model_id"] == registered["model_id"]
    assert before["artifact_uri"].startswith(f"s3://{local_stack.ARTIFACT_BUCKET}/")

    stopped = run([sys.executable, str(SCRIPT), "stop"], stack_env, timeout=120)
    assert "stopped moto" in stopped.stdout and "stopped mlflow" in stopped.stdout
    status = run([sys.executable, str(SCRIPT), "status"], stack_env, timeout=60).stdout
    assert "running" not in status, status

    restarted = run([sys.executable, str(SCRIPT), "start"], stack_env, timeout=300)
    after = subprocess.run(
        [sys.executable, "-c", LOAD], cwd=ROOT, env=reader, capture_output=True, text=True, timeout=120
    )
    assert after.returncode == 0, (
        f"the model did not load after a restart:\n{after.stderr[-3000:]}\n{restarted.stdout}\n{logs(stack_env)}"
    )
    assert json.loads(after.stdout.splitlines()[-1]) == before
    assert "restored" in restarted.stdout
    run([sys.executable, str(SCRIPT), "stop"], stack_env, timeout=120)
