"""Every way of serving, as a function of (ModelService, rides) -> [(duration, model version), ...] in order.

The three deployments are adapters around one ModelService: HTTP requests (web-service/predict.py),
Kinesis records (streaming/lambda_function.py) and Arrow batches of a month file (scripts/score.py).
Here each runs in this process, on the same rides, with whatever service the test gives it: a stand-in
model in tests/unit/test_adapters.py, the registered model in tests/integration/test_parity.py. A fourth
way of serving adds its function to ADAPTERS.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

from ride_duration.batch import read_output
from ride_duration.data import write_month_file
from ride_duration.serving import ModelService
from ride_duration.settings import PROJECT_ROOT, Settings
from tests.batch_support import import_score
from tests.kinesis_stand_in import StandInKinesis, kinesis_event

sys.path[:0] = [str(PROJECT_ROOT / "web-service"), str(PROJECT_ROOT / "streaming")]
predict = importlib.import_module("predict")  # importing builds no app and loads no model
lambda_function = importlib.import_module("lambda_function")
score = import_score()


def the_core(service: ModelService, rides: list[dict]) -> list[tuple[float, str]]:
    served = service.current
    return [(float(d), served.version) for d in served.predict_rides(rides)]


def http_one_ride_per_request(service, rides):
    client = predict.create_app(Settings(), service).test_client()
    answers = [client.post("/predict", json=ride) for ride in rides]
    assert all(a.status_code == 200 for a in answers), [a.get_json() for a in answers if a.status_code != 200]
    return [(a.get_json()["duration"], a.get_json()["model_version"]) for a in answers]


def http_a_list_of_rides(service, rides):
    answer = predict.create_app(Settings(), service).test_client().post("/predict", json=rides)
    assert answer.status_code == 200, answer.get_json()
    return [(a["duration"], a["model_version"]) for a in answer.get_json()]


def kinesis_records(service, rides):
    kinesis = StandInKinesis()
    settings = dataclasses.replace(Settings(), predictions_stream_name="ride_predictions")
    container = lambda_function.Container(settings, service, kinesis)
    event = kinesis_event([json.dumps({"ride": ride, "ride_id": i}).encode() for i, ride in enumerate(rides)])
    assert container.handle(event) == {"batchItemFailures": []}
    written = sorted((json.loads(data) for data in kinesis.accepted), key=lambda p: p["prediction"]["ride_id"])
    assert [p["prediction"]["ride_id"] for p in written] == list(range(len(rides)))
    return [(p["prediction"]["ride_duration"], p["version"]) for p in written]


def arrow_batches_of_a_month_file(service, rides):
    pickup = pd.Timestamp("2021-03-15 08:00:00")
    month = pd.DataFrame(
        {
            "lpep_pickup_datetime": [pickup] * len(rides),
            "lpep_dropoff_datetime": [pickup + pd.Timedelta(minutes=10)] * len(rides),
            **{field: [ride[field] for ride in rides] for field in rides[0]},
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        source = write_month_file(month, Path(folder) / "rides.parquet")
        output = Path(folder) / "scored.parquet"
        score.score_month("green", 2021, 3, service.current, str(output), input_file=str(source))
        scored = read_output(output)
    assert scored["ride_id"].tolist() == [f"2021/03_{i}" for i in range(len(rides))]
    return list(zip(scored["predicted_duration"].tolist(), scored["model_version"].tolist()))


ADAPTERS = {
    "the serving core": the_core,
    "HTTP, one ride per request": http_one_ride_per_request,
    "HTTP, a list of rides": http_a_list_of_rides,
    "Kinesis records": kinesis_records,
    "Arrow batches of a month file": arrow_batches_of_a_month_file,
}
