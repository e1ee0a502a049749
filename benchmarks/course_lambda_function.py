"""The course's streaming handler (DataTalksClub mlops-zoomcamp, 04-deployment/streaming), kept
only as the benchmark's baseline; nothing deploys it.

Its habits, unchanged: boto3 client and `mlflow.pyfunc.load_model` at import time, one
`model.predict` and one `put_record` per record, no handling of bad records. The one change: the
model location comes from MODEL_LOCATION instead of a hard-coded S3 bucket and RUN_ID.
"""

import base64
import json
import os

import boto3
import mlflow

kinesis_client = boto3.client("kinesis")

PREDICTIONS_STREAM_NAME = os.getenv("PREDICTIONS_STREAM_NAME", "ride_predictions")
MODEL_LOCATION = os.getenv("MODEL_LOCATION")
model = mlflow.pyfunc.load_model(MODEL_LOCATION)
TEST_RUN = os.getenv("TEST_RUN", "False") == "True"


def prepare_features(ride):
    features = {}
    features["PU_DO"] = "%s_%s" % (ride["PULocationID"], ride["DOLocationID"])
    features["trip_distance"] = ride["trip_distance"]
    return features


def predict(features):
    pred = model.predict(features)
    return float(pred[0])


def lambda_handler(event, context):
    predictions_events = []

    for record in event["Records"]:
        encoded_data = record["kinesis"]["data"]
        decoded_data = base64.b64decode(encoded_data).decode("utf-8")
        ride_event = json.loads(decoded_data)

        ride = ride_event["ride"]
        ride_id = ride_event["ride_id"]

        features = prepare_features(ride)
        prediction = predict(features)

        prediction_event = {
            "model": "ride_duration_prediction_model",
            "version": "123",
            "prediction": {"ride_duration": prediction, "ride_id": ride_id},
        }

        if not TEST_RUN:
            kinesis_client.put_record(
                StreamName=PREDICTIONS_STREAM_NAME,
                Data=json.dumps(prediction_event),
                PartitionKey=str(ride_id),
            )

        predictions_events.append(prediction_event)

    return {"predictions": predictions_events}
