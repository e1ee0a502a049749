"""Nothing waits without a time limit: an AWS endpoint or a tracking server that is down (refusing connections,
or accepting them and never answering) fails a call within the limits Settings give, a handler that runs past
the function's timeout is stopped and its batch retried, and --max-seconds stops a call under way. A read-only
artifact store serves as well as a writable one."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from ride_duration import local_stack
from ride_duration.model import ModelLoadError
from ride_duration.serving import ModelService
from ride_duration.settings import Settings, child_environment
from tests.helpers import stand_in_model, tracking_store
from tests.integration.streaming_helpers import STREAMING, lambda_function, new_stream, runner
from tests.kinesis_stand_in import kinesis_event

A_RIDE = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}


@pytest.fixture
def black_hole():
    """http://127.0.0.1:PORT of a socket that accepts connections and never answers (a hung server)."""
    server = socket.create_server((local_stack.HOST, 0))
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://{local_stack.HOST}:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        server.close()


def refused() -> str:
    """The URL of a loopback port nothing listens on: connections are refused."""
    return f"http://{local_stack.HOST}:{local_stack.free_port()}"


def within(seconds: float, call):
    """(what call returned or raised, its duration); fails the test if it is not done within `seconds`
    (the call is left running in a daemon thread)."""
    outcome = {}

    def run():
        started = time.monotonic()
        try:
            outcome["value"] = call()
        except Exception as error:
            outcome["value"] = error
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds}s"
    return outcome["value"], outcome["seconds"]


def test_a_handler_whose_kinesis_endpoint_never_answers_fails_within_the_configured_bound(black_hole):
    settings = dataclasses.replace(
        Settings(), aws_endpoint_url=black_hole, aws_connect_timeout=1, aws_read_timeout=1, aws_max_attempts=2
    )
    container = lambda_function.Container(settings, ModelService.for_model(stand_in_model()))
    event = kinesis_event([json.dumps({"ride": A_RIDE, "ride_id": 1}).encode()])

    error, seconds = within(20, lambda: container.handle(event))

    assert isinstance(error, Exception) and "timeout" in str(error).lower(), error
    assert seconds < 2 * (1 + 1) + 2  # two attempts of connect + read, and botocore's back-off between them


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """An embedded tracking store holding ride-duration version 1 (a stand-in) at @production, its artifacts in
    a file:// folder: (tracking URI, artifact folder, model id, run id)."""
    from mlflow import MlflowClient, register_model

    from ride_duration import train

    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = Path.cwd()
    os.chdir(folder)  # the default artifact root of an embedded store is ./mlartifacts
    try:
        with tracking_store(uri):
            train.setup_tracking()
            info = train.log_pipeline(stand_in_model().pipeline, params={"slope": 2}, metrics={"val_rmse": 1}, tags={})
            version = register_model(f"models:/{info.model_id}", "ride-duration").version
            MlflowClient(uri).set_registered_model_alias("ride-duration", "production", version)
    finally:
        os.chdir(previous)
    return uri, folder / "mlartifacts", info.model_id, info.run_id


REGISTRY_URIS = ["models:/ride-duration@production", "models:/ride-duration/1", "runs:/{run}/model"]


@pytest.mark.parametrize("uri", REGISTRY_URIS)
@pytest.mark.parametrize("server", ["refused", "black hole"])
def test_start_up_with_a_registry_uri_and_the_tracking_server_down_fails_fast_saying_why(
    uri, server, black_hole, registry
):
    tracking = refused() if server == "refused" else black_hole
    settings = dataclasses.replace(
        Settings(), mlflow_tracking_uri=tracking, mlflow_request_timeout=1, mlflow_request_retries=1
    )
    model_uri = uri.format(run=registry[3])

    error, seconds = within(30, lambda: ModelService(model_uri, without_sklearn=True, settings=settings))

    assert isinstance(error, ModelLoadError), error
    assert model_uri in str(error) and "\n" not in str(error)
    assert any(word in str(error) for word in ("Max retries", "timed out", "Connection", "connect")), error
    assert seconds < 15, f"{seconds:.1f}s"


def test_the_project_default_limits_fail_a_black_hole_registry_within_a_docker_start_period(black_hole):
    """The defaults themselves (no limits set by the test): the Dockerfile's start period is 30 s."""
    settings = dataclasses.replace(Settings(), mlflow_tracking_uri=black_hole)

    error, seconds = within(
        40, lambda: ModelService("models:/ride-duration/1", without_sklearn=True, settings=settings)
    )

    assert isinstance(error, ModelLoadError), error
    assert seconds < 30, f"{seconds:.1f}s"


def artifact_tree(folder: Path) -> dict:
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in [folder, *folder.rglob("*")]}


@pytest.mark.parametrize("uri", ["models:/ride-duration@production", "models:/ride-duration/1", "models:/{model}"])
def test_a_read_only_artifact_store_serves_and_nothing_is_written_into_it(uri, registry):
    """Tests run as root, whom permissions do not stop: the store is made read-only (chmod -R a-w, which stops
    any other user) and the test checks that its tree, sizes and times included, is the same afterwards."""
    tracking, artifacts, model_id, _ = registry
    settings = dataclasses.replace(Settings(), mlflow_tracking_uri=tracking)
    subprocess.run(["chmod", "-R", "a-w", str(artifacts)], check=True)
    before = artifact_tree(artifacts)
    try:
        served = ModelService(uri.format(model=model_id), without_sklearn=True, settings=settings).current
    finally:
        after = artifact_tree(artifacts)
        subprocess.run(["chmod", "-R", "u+w", str(artifacts)], check=True)

    assert served.version == model_id
    assert after == before


SLOW_HANDLER = """
import pathlib, time

def lambda_handler(event, context):
    first_call = pathlib.Path(__file__).with_name("first-call")
    if {hang_always} or not first_call.exists():
        first_call.touch()
        time.sleep(600)
        pathlib.Path(__file__).with_name("woke-up").touch()
    pathlib.Path(__file__).with_name("handled").write_text(str(len(event["Records"])))
    return {{"batchItemFailures": []}}
"""


def run_runner(
    tmp_path: Path, stream: str, hang_always: bool, *options: str
) -> tuple[subprocess.CompletedProcess, float]:
    (tmp_path / "slow_handler.py").write_text(SLOW_HANDLER.format(hang_always=hang_always))
    command = [
        sys.executable,
        str(STREAMING / "runner.py"),
        "--stream",
        stream,
        "--checkpoint",
        str(tmp_path / "checkpoint.json"),
        "--handler",
        "slow_handler.lambda_handler",
        "--idle-seconds",
        "0.3",
        "--error-backoff",
        "0.01",
        *options,
    ]
    started = time.monotonic()
    env = child_environment({"PYTHONPATH": str(tmp_path)})
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


def put_rides(stream: str, n: int) -> None:
    entries = [{"Data": b'{"ride": {}, "ride_id": %d}' % i, "PartitionKey": str(i)} for i in range(n)]
    assert boto3.client("kinesis").put_records(StreamName=stream, Records=entries)["FailedRecordCount"] == 0


def test_an_invocation_past_the_function_timeout_is_stopped_and_its_batch_invoked_again(moto_url, tmp_path):
    stream = new_stream()
    put_rides(stream, 3)

    result, seconds = run_runner(tmp_path, stream, False, "--timeout", "1", "--error-retries", "1")

    assert result.returncode == runner.EXIT_OK, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Task timed out after 1.00 seconds" in result.stdout and "1 timed out" in result.stdout
    assert (tmp_path / "handled").read_text() == "3"  # the second invocation, in a fresh process
    assert not (tmp_path / "woke-up").exists()  # the timed-out one was stopped, not left running
    assert '"shardId-000000000000"' in (tmp_path / "checkpoint.json").read_text()
    assert seconds < 30


def test_a_handler_that_always_times_out_stops_the_run_with_nothing_checkpointed(moto_url, tmp_path):
    stream = new_stream()
    put_rides(stream, 2)

    result, _ = run_runner(tmp_path, stream, True, "--timeout", "1", "--error-retries", "1")

    assert result.returncode == runner.EXIT_STOPPED, result.stdout[-2000:] + result.stderr[-2000:]
    assert "failed 2 times" in result.stderr and "HandlerTimedOut: Task timed out" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoint.json").exists() and not (tmp_path / "handled").exists()


def test_max_seconds_stops_a_handler_call_under_way(moto_url, tmp_path):
    stream = new_stream()
    put_rides(stream, 2)

    result, seconds = run_runner(tmp_path, stream, True, "--timeout", "300", "--max-seconds", "3")

    assert result.returncode == runner.EXIT_STOPPED, result.stdout[-2000:] + result.stderr[-2000:]
    assert "--max-seconds (3) ran out while the handler was handling the batch" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoint.json").exists() and not (tmp_path / "woke-up").exists()
    assert seconds < 20, f"{seconds:.1f}s"  # the interpreter and the handler's import, then 3 s
