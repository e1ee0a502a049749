"""What the streaming integration tests share: the streaming/ modules (imported from here), fresh streams on
the moto_server of the `moto_url` fixture, a handler container serving the registered model, and
the predictions read back. Tests import it as `tests.integration.streaming_helpers`."""

from __future__ import annotations

import dataclasses
import json
import sys
import uuid
from pathlib import Path

import boto3

from ride_duration.features import ride_features
from ride_duration.settings import PROJECT_ROOT, Settings

STREAMING = PROJECT_ROOT / "streaming"
SAMPLE_EVENT = STREAMING / "events" / "kinesis-sample.json"
sys.path.insert(0, str(STREAMING))

import consumer  # noqa: E402
import deploy  # noqa: E402
import image  # noqa: E402
import lambda_function  # noqa: E402
import producer  # noqa: E402
import runner  # noqa: E402

__all__ = ["consumer", "deploy", "image", "lambda_function", "producer", "runner"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def new_stream(shards: int = 1, name: str | None = None) -> str:
    """Create a Kinesis stream (a fresh name unless given) on the moto_server boto3 points at; returns its name."""
    name = name or unique("stream")
    deploy.ensure_stream(boto3.client("kinesis"), name, shards)
    return name


def sample_event() -> dict:
    return json.loads(SAMPLE_EVENT.read_text())


def serving_container(model: dict, predictions_stream: str) -> lambda_function.Container:
    """A cold handler container serving the registered model by its artifact URI (no tracking server),
    writing to predictions_stream on the endpoint of the environment's settings."""
    settings = dataclasses.replace(
        Settings.from_environ(),
        model_uri=model["artifact_uri"],
        predictions_stream_name=predictions_stream,
        dry_run=False,
    )
    return lambda_function.Container.from_settings(settings)


def expected_durations(pipeline, rides: list[dict]) -> list[float]:
    """The registered pipeline's own answer, the course's way (one feature dict per ride)."""
    return [float(x) for x in pipeline.predict([ride_features(r) for r in rides])]


def read_predictions(stream: str) -> list[dict]:
    return consumer.read_predictions(boto3.client("kinesis"), stream, idle_seconds=0.5, max_seconds=60)


def quick_settings(stream: str, tmp_path: Path, **changes) -> runner.RunnerSettings:
    """Runner settings for tests: no back-off, short idle stop, bounded in time."""
    defaults = dict(
        stream=stream,
        checkpoint=tmp_path / "checkpoint.json",
        batch_size=100,
        retry_backoff=0.0,
        error_backoff=0.0,
        max_seconds=30,
        idle_seconds=0.3,
    )
    return runner.RunnerSettings(**{**defaults, **changes})
