"""The streaming commands as a user runs them, each a process of its own: their --help, the handler on an
event file, streaming/README.md's local loop (deploy.py, producer.py, runner.py, consumer.py) on a real
moto_server, and importing the handler, which must load nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ride_duration.settings import PROJECT_ROOT, child_environment
from tests.integration.streaming_helpers import SAMPLE_EVENT, STREAMING, unique


@pytest.mark.parametrize("script", ["runner.py", "producer.py", "consumer.py", "deploy.py"])
def test_commands_explain_themselves(script):
    out = subprocess.run(
        [sys.executable, str(STREAMING / script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("usage:"), out.stderr


def test_the_handler_runs_on_an_event_file_from_the_command_line(registered_model):
    env = child_environment({"MODEL_URI": registered_model["artifact_uri"], "DRY_RUN": "1"})
    out = subprocess.run(
        [sys.executable, str(STREAMING / "lambda_function.py"), str(SAMPLE_EVENT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    response = json.loads(out.stdout)
    assert response["batchItemFailures"] == [] and response["predictions"][0]["prediction"]["ride_id"] == 256


def test_the_local_loop_of_the_readme_with_the_commands(moto_url, registered_model, tmp_path):
    """deploy.py --streams-only, producer.py, runner.py, consumer.py: streaming/README.md's loop."""
    rides_in, out = unique("rides"), unique("predictions")
    env = child_environment(
        {"MODEL_URI": registered_model["artifact_uri"], "PREDICTIONS_STREAM_NAME": out, "DRY_RUN": ""}
    )

    def command(script, *args):
        result = subprocess.run(
            [sys.executable, str(STREAMING / script), *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    arns = json.loads(
        command("deploy.py", "--streams-only", "--shards", "2", "--input-stream", rides_in, "--output-stream", out)
    )
    assert set(arns) == {rides_in, out}
    sent = command(
        "producer.py",
        "--stream",
        rides_in,
        "--year",
        "2021",
        "--month",
        "1",
        "-n",
        "25",
        "--start-row",
        "100",
        "--synthetic",
        "fallback",
    )
    assert sent.startswith("sent 25 rides")
    command("runner.py", "--stream", rides_in, "--checkpoint", str(tmp_path / "cp.json"), "--idle-seconds", "0.5")
    printed = [
        json.loads(line) for line in command("consumer.py", "--stream", out, "--idle-seconds", "0.5").splitlines()
    ]
    assert sorted(p["prediction"]["ride_id"] for p in printed) == sorted(f"2021/01_{i}" for i in range(100, 125))


def test_import_creates_no_client_and_loads_no_model():
    code = (
        "import sys; sys.path.insert(0, 'streaming'); import lambda_function as f; "
        "print(f.default_container, sorted(m for m in ('boto3', 'mlflow', 'pandas', 'sklearn') if m in sys.modules))"
    )
    env = child_environment({"MODEL_URI": "/nowhere", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None []"
