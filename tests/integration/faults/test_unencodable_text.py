"""Text nothing can encode: a lone UTF-16 surrogate, which JSON can spell (`"\\ud800"`) but which is no character.
Anywhere in a request body it gets a JSON 4xx from the web service under gunicorn (never a 500, never a
traceback in the log); in a Kinesis record, as its ride_id or anywhere else, that record alone fails and the
others of its batch reach the real (local) predictions stream."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import pickle

import boto3
import pytest
import requests

from ride_duration import local_stack
from ride_duration.kinesis import read_stream
from ride_duration.serving import ModelService
from ride_duration.settings import Settings
from tests.helpers import stand_in_model, start_web_service
from tests.kinesis_stand_in import kinesis_event

lambda_function = importlib.import_module("lambda_function")  # tests.kinesis_stand_in put streaming/ on the path

RIDE = '{"PULocationID": 10, "DOLocationID": 50, "trip_distance": 4.0}'
# Bodies as clients send them: the surrogate is a JSON escape, the bytes are plain ASCII.
BODIES = {
    "key of a ride": '{"PULocationID": 10, "DOLocationID": 50, "trip_distance": 4.0, "\\ud800": 1}',
    "value of a ride": '{"PULocationID": 10, "DOLocationID": "\\udfff", "trip_distance": 4.0}',
    "key in a batch": f'[{RIDE}, {{"PULocationID": 10, "DOLocationID": 50, "\\ud800trip_distance": 4.0}}]',
    "value in a batch": f'[{RIDE}, {{"PULocationID": 10, "DOLocationID": 50, "trip_distance": "x\\ud800"}}]',
}


@pytest.fixture(scope="module")
def web_service(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    pickled = pickle.dumps(stand_in_model().pipeline)
    (folder / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: model.pkl\nmodel_id: m-text\n")
    (folder / "model.pkl").write_bytes(pickled)
    env = {"MODEL_URI": str(folder), "MODEL_SHA256": hashlib.sha256(pickled).hexdigest()}
    process, url, log = start_web_service(tmp_path_factory.mktemp("logs"), "unencodable", env)
    yield url, log
    local_stack.stop(process)


@pytest.mark.parametrize("where", BODIES)
def test_a_lone_surrogate_in_a_body_gets_a_json_4xx(web_service, where):
    url, log = web_service
    response = requests.post(
        f"{url}/predict", data=BODIES[where], headers={"Content-Type": "application/json"}, timeout=10
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert "lone UTF-16 surrogate" in response.json()["message"]
    assert requests.post(f"{url}/predict", data=RIDE, headers={"Content-Type": "application/json"}, timeout=10).ok
    assert "Traceback" not in log.read_text(errors="replace")


def test_a_lone_surrogate_in_a_record_fails_that_record_alone(moto_url, tmp_path, capfd):
    kinesis = boto3.client("kinesis")
    stream = "unencodable_predictions"
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    settings = dataclasses.replace(Settings(), predictions_stream_name=stream, aws_endpoint_url=moto_url)
    container = lambda_function.Container(settings, ModelService.for_model(stand_in_model()))
    datas = [
        f'{{"ride": {RIDE}, "ride_id": "first"}}',
        f'{{"ride": {RIDE}, "ride_id": "\\ud800"}}',
        f'{{"ride": {RIDE}, "ride_id": "third", "\\udc00": "anywhere"}}',
        f'{{"ride": {RIDE}, "ride_id": "last"}}',
    ]
    event = kinesis_event([data.encode() for data in datas])
    log = tmp_path / "lambda.log"
    handler = logging.FileHandler(log, encoding="utf-8")  # strict UTF-8, as a log shipper reads it
    logger = logging.getLogger("lambda_function")
    logger.addHandler(handler)
    try:
        response = container.handle(event)
    finally:
        logger.removeHandler(handler)
        handler.close()
    failed = [item["itemIdentifier"] for item in response["batchItemFailures"]]
    assert failed == [
        event["Records"][1]["kinesis"]["sequenceNumber"],
        event["Records"][2]["kinesis"]["sequenceNumber"],
    ]
    written = [json.loads(r["Data"]) for r in read_stream(kinesis, stream, max_records=10, max_seconds=20)]
    assert [w["prediction"]["ride_id"] for w in written] == ["first", "last"]
    text = log.read_text(encoding="utf-8")
    assert text.count("lone UTF-16 surrogate") == 2 and "Traceback" not in text
    assert "Traceback" not in capfd.readouterr().err
