"""The Lambda handler against a real moto_server, serving the registered model by its artifact URI:
the course's sample event lands on the predictions stream in the course's format, and an output
stream that does not exist fails the invocation (the handler's logic itself: tests/unit/test_lambda_handler.py)."""

from __future__ import annotations

import pytest

from tests.integration.streaming_helpers import (
    expected_durations,
    new_stream,
    read_predictions,
    sample_event,
    serving_container,
    unique,
)


def test_course_sample_event_comes_out_in_the_course_format(moto_url, registered_model):
    out = new_stream()
    container = serving_container(registered_model, out)

    assert container.handle(sample_event()) == {"batchItemFailures": []}

    [record] = read_predictions(out)
    ride = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}
    [expected] = expected_durations(registered_model["pipeline"], [ride])
    assert record == {
        "model": "ride_duration_prediction_model",
        "version": registered_model["model_id"],
        "prediction": {"ride_duration": pytest.approx(expected, abs=1e-9), "ride_id": 256},
    }
    assert registered_model["model_id"].startswith("m-")


def test_a_missing_output_stream_fails_the_invocation(moto_url, registered_model):
    container = serving_container(registered_model, unique("no-such-stream"))
    with pytest.raises(Exception, match="ResourceNotFound"):
        container.handle(sample_event())
    assert not container.written
