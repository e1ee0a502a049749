"""The Lambda image kept honest without Docker: streaming/requirements.txt matches the lock's lambda group,
and the task root the Dockerfile's COPY lines make, with only the image's packages, serves the sample
event through the handler its CMD names, writing to a real moto_server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ride_duration import local_stack
from ride_duration.settings import PROJECT_ROOT, child_environment
from tests.helpers import IN_CI
from tests.integration.streaming_helpers import SAMPLE_EVENT, STREAMING, image, new_stream, read_predictions


def uv_or_fail() -> str:
    try:
        return local_stack.uv_binary()
    except FileNotFoundError:
        if IN_CI:
            raise
        pytest.skip("uv not installed")


def without_header(text: str) -> list[str]:
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return lines


def test_lambda_requirements_match_the_lock():
    fresh = subprocess.run(
        [uv_or_fail(), "export", "--only-group", "lambda", "--no-emit-project", "--frozen"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fresh.returncode == 0, fresh.stderr
    committed = (STREAMING / "requirements.txt").read_text()
    assert without_header(committed) == without_header(fresh.stdout), (
        "streaming/requirements.txt is stale: uv export --only-group lambda --no-emit-project "
        "-o streaming/requirements.txt"
    )


@pytest.fixture(scope="session")
def lambda_image(tmp_path_factory):
    uv_or_fail()
    try:
        return image.build(tmp_path_factory.mktemp("lambda-image"))
    except subprocess.CalledProcessError as error:
        pytest.fail(f"could not lay out the Lambda image's packages from its requirements file: {error.stderr}")


def test_lambda_image_serves_the_sample_event_with_only_its_own_packages(lambda_image, registered_model, moto_url):
    """The task root as the Dockerfile's COPY lines make it, the packages of the lambda group only (no
    pandas, no mlflow server, no project install), the handler its CMD names: the sample event's
    prediction lands on the stream, and no `import mlflow` was needed for an artifact URI."""
    assert (
        image.dockerfile_parts()["base"]
        == f"public.ecr.aws/lambda/python:{sys.version_info.major}.{sys.version_info.minor}"
    )
    out = new_stream()
    module, function = lambda_image.handler.rsplit(".", 1)
    probe = f"""
import json, sys
sys.path.insert(0, {str(lambda_image.task_root)!r})
import {module}
import ride_duration
response = {module}.{function}(json.load(open({str(SAMPLE_EVENT)!r})), None)
print(json.dumps({{"response": response, "package": ride_duration.__file__, "mlflow": "mlflow" in sys.modules,
                   "pandas_installed": __import__("importlib.util").util.find_spec("pandas") is not None}}))
"""
    env = child_environment(
        {"MODEL_URI": registered_model["artifact_uri"], "PREDICTIONS_STREAM_NAME": out, "DRY_RUN": ""}
    )
    result = subprocess.run(
        [str(lambda_image.python), "-c", probe],
        cwd=lambda_image.task_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["response"] == {"batchItemFailures": []}
    assert Path(report["package"]).is_relative_to(lambda_image.task_root)
    assert report == {**report, "mlflow": False, "pandas_installed": False}
    [record] = read_predictions(out)
    assert record["prediction"]["ride_id"] == 256 and record["version"] == registered_model["model_id"]
